"""Song pages, owner actions (publish, unpublish, rename, delete), likes and listens, as a visitor,
the owner and another person see them. Objects live on an S3 endpoint over real HTTP; runs on
SQLite and PostgreSQL."""
from __future__ import annotations

import datetime as dt
import re
import threading

import pytest
import requests
from markupsafe import escape

import models
from core.catalogue import song_prefix
from core.songs import reserve_ref, settle_ref
from core.storage import StorageUnavailable, get_storage
from models import Like, Listen, Song, User
from tests import song_factory as make
from tests.conftest import AuthActions, csrf_from
from tests.helpers import connected, live_server

HX = {"HX-Request": "true"}


@pytest.fixture
def app_overrides(s3_url):
    return {"STORAGE_URL": s3_url}


def new_song(app, email="alice@example.com", **kwargs):
    with connected(app):
        owner = User.get(User.email == email)
        kwargs.setdefault("categories", ["Synthwave", "Night Drive"])
        return make.song(owner, app=app, **kwargs)


def fresh(app, song_id):
    with connected(app):
        return Song.get_or_none(Song.id == song_id)


def other_client(app, email):
    c = app.test_client()
    AuthActions(c).register(email, name=email.split("@")[0].title())
    return c, AuthActions(c)


def stored_keys(app, song):
    with app.app_context():
        return get_storage(app.extensions["tunesmith_config"]).list(song_prefix(song.user_id, song.id))


def text(resp):
    return resp.get_data(as_text=True)


def meta(html, prop):
    m = re.search(rf'<meta (?:property|name)="{re.escape(prop)}" content="([^"]*)"', html)
    return m and m.group(1)


# ------------------------------------------------------------------------------- the page
def test_visitor_sees_a_published_song_page_with_everything_and_404_for_a_private_one(app, client, auth):
    auth.register("alice@example.com", name="Alice")
    public = new_song(app, title="Neon Nights", lyrics="[verse]\nNeon rain on the boulevard\n[chorus]\nDrive")
    private = new_song(app, title="Secret Demo", published=False)
    auth.logout()

    page = client.get(f"/songs/{public.id}")
    assert page.status_code == 200
    html = text(page)
    assert "<h1 class=\"song-title\">Neon Nights</h1>" in html and "Alice" in html
    assert "synthwave, dreamy, 120 bpm" in html and "Neon rain on the boulevard" in html
    assert 'href="/?category=synthwave"' in html and "Night Drive" in html
    assert f'data-play="/songs/{public.id}/audio"' in html
    assert f'data-seek-wave data-song-id="{public.id}"' in html and "<path d=\"M1.5" in html
    assert "data-seed>1234<" in html and "offline-arranger" in html and "7.5" in html and "0:12" in html
    assert "0 listens" in html and 'data-like-count="0"' in html
    assert "/download" not in html and "Unpublish" not in html and "Rename" not in html
    assert f'href="/auth/login?next=/songs/{public.id}"' in html  # the like button asks a visitor to log in
    # link previews: absolute URLs, the cover image and a playable audio URL
    assert meta(html, "og:title") == "Neon Nights"
    assert meta(html, "og:url") == f"http://localhost/songs/{public.id}"
    assert meta(html, "og:image") == f"http://localhost/songs/{public.id}/cover"
    assert meta(html, "og:audio") == f"http://localhost/songs/{public.id}/audio"
    assert meta(html, "og:audio:type") == "audio/wav" and meta(html, "twitter:card") == "summary_large_image"
    cover = client.get(f"/songs/{public.id}/cover")
    assert cover.status_code == 302 and requests.get(cover.headers["Location"], timeout=10).content == make.PNG_1PX

    for path in (f"/songs/{private.id}", f"/songs/{private.id}/audio", f"/songs/{private.id}/cover",
                 "/songs/not-a-song", "/songs/" + "x" * 40):
        resp = client.get(path)
        assert resp.status_code == 404, path
        assert "Secret Demo" not in text(resp)

    # someone else logged in: same as a visitor
    _, bob = other_client(app, "bob@example.com")
    assert bob.client.get(f"/songs/{private.id}").status_code == 404

    # the owner sees both, with the owner's controls
    auth.login("alice@example.com")
    html = text(client.get(f"/songs/{private.id}"))
    assert "Secret Demo" in html and "Private — only you can see it" in html
    assert meta(html, "robots") == "noindex, nofollow"
    assert ">Publish</button>" in html and "Rename" in html and ">Delete</button>" in html
    assert f'href="/songs/{private.id}/download"' in html
    html = text(client.get(f"/songs/{public.id}"))
    assert ">Unpublish</button>" in html and f'value="http://localhost/songs/{public.id}"' in html  # share box

    # behind a proxy, BASE_URL names the public address for link previews
    app.extensions["tunesmith_config"].BASE_URL = "https://music.example.org/"
    html = text(client.get(f"/songs/{public.id}"))
    assert meta(html, "og:url") == f"https://music.example.org/songs/{public.id}"
    assert meta(html, "og:audio") == f"https://music.example.org/songs/{public.id}/audio"
    assert meta(html, "og:audio:secure_url") == f"https://music.example.org/songs/{public.id}/audio"


def test_owner_downloads_with_a_proper_file_name_and_others_cannot(app, client, auth):
    auth.register()
    song = new_song(app, title="Road Trip: Part 2")
    resp = client.get(f"/songs/{song.id}/download")
    assert resp.status_code == 302
    got = requests.get(resp.headers["Location"], timeout=10)
    assert got.status_code == 200 and got.content[:4] == b"RIFF"
    assert 'filename="Road Trip Part 2.wav"' in got.headers["Content-Disposition"]
    auth.logout()
    assert client.get(f"/songs/{song.id}/download").status_code == 404


# ------------------------------------------------------------------------- owner actions
def test_publish_and_unpublish_change_what_visitors_see(app, client, auth):
    auth.register()
    song = new_song(app, title="Quiet Song", published=False)
    visitor = app.test_client()
    assert "Quiet Song" not in text(visitor.get("/"))

    resp = auth.post(f"/songs/{song.id}/publish")  # plain form post
    assert resp.status_code == 303 and resp.headers["Location"] == f"/songs/{song.id}"
    assert "is public" in text(client.get(resp.headers["Location"]))
    assert "Quiet Song" in text(visitor.get("/"))
    assert visitor.get(f"/songs/{song.id}").status_code == 200
    first_published = fresh(app, song.id).published_at

    resp = auth.post(f"/songs/{song.id}/unpublish", data={"view": "page"}, headers=HX)  # HTMX, from the page
    assert resp.status_code == 200 and "HX-Request" in resp.headers["Vary"]
    html = text(resp)
    assert "<html" not in html and 'id="song-main"' in html and ">Publish</button>" in html
    assert 'data-published="false"' in html
    assert "Quiet Song" not in text(visitor.get("/"))
    assert visitor.get(f"/songs/{song.id}").status_code == 404

    resp = auth.post(f"/songs/{song.id}/publish", data={"view": "card"}, headers=HX)  # HTMX, from the library card
    html = text(resp)
    assert resp.status_code == 200 and html.lstrip().startswith("<li class=\"song-card")
    assert "Public</span>" in html and ">Unpublish</button>" in html
    assert fresh(app, song.id).published_at == first_published  # publishing again keeps its place


def test_an_unfinished_song_cannot_be_published(app, client, auth):
    auth.register()
    song = new_song(app, title="Still cooking", published=False, status="processing", categories=[])
    resp = auth.post(f"/songs/{song.id}/publish")
    assert resp.status_code == 409 and "Only a finished song can be published." in text(resp)
    resp = auth.post(f"/songs/{song.id}/publish", data={"view": "page"}, headers=HX)
    assert resp.status_code == 409 and "Only a finished song can be published." in text(resp)
    assert fresh(app, song.id).published is False
    assert "still being made" in text(client.get(f"/songs/{song.id}"))


def test_owner_actions_are_404_for_everyone_else_and_change_nothing(app, client, auth):
    auth.register()
    song = new_song(app, title="Mine")
    auth.logout()
    bob_client, bob = other_client(app, "bob@example.com")
    visitor = AuthActions(app.test_client())
    for actor in (bob, visitor):
        for action, data in (("publish", {}), ("unpublish", {}), ("rename", {"title": "Stolen"}), ("delete", {})):
            resp = actor.post(f"/songs/{song.id}/{action}", data=data)
            assert resp.status_code == 404, (action, resp.status_code)
            assert "Mine" not in text(resp)
    after = fresh(app, song.id)
    assert after is not None and after.title == "Mine" and after.published is True
    assert len(stored_keys(app, song)) == 3
    assert "Mine" in text(bob_client.get(f"/songs/{song.id}"))


def test_actions_need_the_csrf_token(app, client, auth):
    auth.register()
    song = new_song(app, title="Guarded", published=False)
    for action in ("publish", "rename", "delete", "like"):
        resp = client.post(f"/songs/{song.id}/{action}", data={"title": "x"})
        assert resp.status_code == 400 and "Form expired" in text(resp)
    after = fresh(app, song.id)
    assert after.title == "Guarded" and after.published is False and after.like_count == 0


BAD_TITLES = [
    ("", "Give the song a title."),
    ("   \n\t ", "Give the song a title."),
    ("x" * 121, "Keep the title to 120 characters (this one has 121)."),
]


def test_rename_refuses_bad_titles_with_a_message(app, client, auth):
    auth.register()
    song = new_song(app, title="Original")
    for title, message in BAD_TITLES:
        resp = auth.post(f"/songs/{song.id}/rename", data={"title": title})  # without JavaScript: the page again
        assert resp.status_code == 422, title
        html = text(resp)
        assert message in html and 'aria-invalid="true"' in html and "<details class=\"rename\" open>" in html
        resp = auth.post(f"/songs/{song.id}/rename", data={"title": title, "view": "card"}, headers=HX)
        assert resp.status_code == 422 and message in text(resp) and "<html" not in text(resp)
        assert fresh(app, song.id).title == "Original"
    assert "Original" in text(client.get(f"/songs/{song.id}"))


def test_rename_trims_and_shows_the_new_title_everywhere(app, client, auth):
    auth.register()
    song = new_song(app, title="Original")
    resp = auth.post(f"/songs/{song.id}/rename", data={"title": "  Midnight   Drive \n"})
    assert resp.status_code == 303
    assert "Renamed to “Midnight Drive”." in text(client.get(resp.headers["Location"]))
    assert "Midnight Drive" in text(client.get("/")) and "Midnight Drive" in text(client.get("/library"))
    longest = "y" * 120
    resp = auth.post(f"/songs/{song.id}/rename", data={"title": longest, "view": "page"}, headers=HX)
    assert resp.status_code == 200 and f'<h1 class="song-title">{longest}</h1>' in text(resp)
    assert fresh(app, song.id).title == longest


def test_delete_removes_the_song_and_its_stored_objects(app, client, auth, monkeypatch):
    auth.register()
    keep = new_song(app, title="Keeper")
    gone = new_song(app, title="Gone")
    song = new_song(app, title="Doomed")
    auth.post(f"/songs/{song.id}/like", data={"liked": "1"})
    client.get(f"/songs/{song.id}/audio")
    assert len(stored_keys(app, song)) == 3

    def unreachable(prefix):
        raise StorageUnavailable("storage unreachable: connection refused")

    with app.app_context():
        storage = get_storage(app.extensions["tunesmith_config"])
    monkeypatch.setattr(storage, "delete_prefix", unreachable)
    resp = auth.post(f"/songs/{song.id}/delete", data={"view": "card"}, headers=HX)
    assert resp.status_code == 503 and "nothing was deleted" in text(resp)
    monkeypatch.undo()
    assert fresh(app, song.id) is not None and len(stored_keys(app, song)) == 3

    resp = auth.post(f"/songs/{song.id}/delete", data={"view": "card"}, headers=HX)  # from a library card
    assert resp.status_code == 200
    assert 'hx-swap-oob="beforeend:#flashes"' in text(resp) and "Deleted “Doomed”" in text(resp)
    assert stored_keys(app, song) == []
    assert client.get(f"/songs/{song.id}").status_code == 404
    assert "Doomed" not in text(client.get("/library")) and "Doomed" not in text(client.get("/"))
    with connected(app):
        assert Like.select().where(Like.song == song.id).count() == 0
        assert Listen.select().where(Listen.song == song.id).count() == 0

    resp = auth.post(f"/songs/{keep.id}/delete")  # plain form post from the song page
    assert resp.status_code == 303 and resp.headers["Location"] == "/library"
    assert "Deleted “Keeper” and its files." in text(client.get("/library"))
    assert stored_keys(app, keep) == []
    assert auth.post(f"/songs/{keep.id}/delete").status_code == 404

    resp = auth.post(f"/songs/{gone.id}/delete", data={"view": "page"}, headers=HX)  # HTMX, from the song page
    assert resp.status_code == 200 and resp.headers["HX-Redirect"] == "/library"
    assert stored_keys(app, gone) == [] and fresh(app, gone.id) is None


def test_deleting_an_unfinished_song_returns_its_credit_once(app, client, auth):
    auth.register()
    with connected(app):
        owner = User.get(User.email == "alice@example.com")
        song = make.song(owner, "Half made", status="processing", published=False)
        with models.write_transaction():
            models.apply_credits(owner, -1, "reserve", reserve_ref(song.generation_id))
        assert owner.balance() == 99
    resp = auth.post(f"/songs/{song.id}/delete")
    assert resp.status_code == 303
    assert 'data-credits="100"' in text(client.get("/library"))
    with connected(app):
        # the worker finishing or failing it later cannot settle it again: the row is gone
        assert models.apply_credits(owner.id, 1, "release", settle_ref(song.id)) is None
        assert owner.balance() == 100 == owner.ledger_balance()


# ---------------------------------------------------------------------------- likes
def test_like_and_unlike_change_the_count_people_see(app, client, auth):
    auth.register()
    song = new_song(app, title="Likeable")
    private = new_song(app, title="Hidden", published=False)
    auth.logout()
    resp = auth.post(f"/songs/{song.id}/like")  # a visitor is asked to log in first
    assert resp.status_code == 303 and resp.headers["Location"] == f"/auth/login?next=/songs/{song.id}"
    resp = auth.post(f"/songs/{song.id}/like", headers=HX)
    assert resp.status_code == 401 and resp.headers["HX-Redirect"] == f"/auth/login?next=/songs/{song.id}"
    assert fresh(app, song.id).like_count == 0
    bob_client, bob = other_client(app, "bob@example.com")

    resp = bob.post(f"/songs/{song.id}/like", data={"next": "/"})  # no JavaScript: back where it was
    assert resp.status_code == 303 and resp.headers["Location"] == "/"
    html = text(bob_client.get(f"/songs/{song.id}"))
    assert 'aria-pressed="true"' in html and 'data-like-count="1"' in html
    assert 'data-like-count="1"' in text(client.get(f"/songs/{song.id}"))  # a visitor sees the count too

    # a double click asks for the same state twice: still one like
    resp = bob.post(f"/songs/{song.id}/like", data={"liked": "1"}, headers=HX)
    assert resp.status_code == 200 and 'data-like-count="1"' in text(resp) and 'name="liked" value="0"' in text(resp)
    resp = bob.post(f"/songs/{song.id}/like", data={"liked": "0"}, headers=HX)
    assert 'data-like-count="0"' in text(resp) and 'aria-pressed="false"' in text(resp)
    resp = bob.post(f"/songs/{song.id}/like", headers=HX)  # no state asked: toggles
    assert 'data-like-count="1"' in text(resp)
    assert 'data-like-count="1"' in text(client.get("/"))

    assert bob.post(f"/songs/{private.id}/like").status_code == 404
    with connected(app):
        assert Song.get_by_id(private.id).like_count == 0
        assert Like.select().count() == 1 == Song.get_by_id(song.id).like_count


def test_concurrent_clicks_keep_like_counts_exact(app):
    """Real HTTP, real threads: 8 people each click Like twice at once, then all toggle at once."""
    with connected(app):
        owner = make.user("owner@example.com", "Owner")
        song = make.song(owner, "Hot track")
        hashed = User.register("fan0@example.com", "correct horse").password_hash
        for i in range(1, 8):
            User.create(email=f"fan{i}@example.com", password_hash=hashed)
    with live_server(app) as base:
        sessions = [None] * 8

        def log_in(i):
            s = requests.Session()
            page = s.get(f"{base}/auth/login").text
            s.post(f"{base}/auth/login", data={"email": f"fan{i}@example.com", "password": "correct horse",
                                              "csrf_token": csrf_from(page)}, allow_redirects=False)
            sessions[i] = (s, csrf_from(s.get(f"{base}/songs/{song.id}").text))

        logins = [threading.Thread(target=log_in, args=(i,)) for i in range(8)]
        [t.start() for t in logins]
        [t.join(30) for t in logins]

        def storm(data, per_session):
            barrier = threading.Barrier(len(sessions) * per_session)
            codes = []

            def click(s, token):
                barrier.wait()
                r = s.post(f"{base}/songs/{song.id}/like", data={"csrf_token": token, **data},
                           headers=HX, timeout=30)
                codes.append(r.status_code)

            threads = [threading.Thread(target=click, args=pair) for pair in sessions for _ in range(per_session)]
            [t.start() for t in threads]
            [t.join(60) for t in threads]
            return codes

        assert storm({"liked": "1"}, 2) == [200] * 16
        page = requests.get(f"{base}/songs/{song.id}", timeout=10).text
        assert 'data-like-count="8"' in page
        assert storm({}, 1) == [200] * 8  # everyone toggles: all unliked
        page = requests.get(f"{base}/songs/{song.id}", timeout=10).text
        assert 'data-like-count="0"' in page
    with connected(app):
        assert Like.select().count() == 0 and Song.get_by_id(song.id).like_count == 0


# --------------------------------------------------------------------------- listens
def test_a_listen_counts_once_per_person_per_half_hour(app, client, auth):
    auth.register()
    song = new_song(app, title="Earworm")
    listens = lambda c: re.search(r'data-listen-count="(\d+)"', text(c.get(f"/songs/{song.id}"))).group(1)  # noqa: E731

    resp = client.get(f"/songs/{song.id}/audio")
    assert resp.status_code == 302 and resp.headers["Cache-Control"] == "no-store"
    got = requests.get(resp.headers["Location"], timeout=10)
    assert got.status_code == 200 and got.content[:4] == b"RIFF"
    for _ in range(3):  # seeks and reloads
        client.get(f"/songs/{song.id}/audio")
    assert listens(client) == "1"

    bob_client, _ = other_client(app, "bob@example.com")
    bob_client.get(f"/songs/{song.id}/audio")
    visitor = app.test_client()
    visitor.get(f"/songs/{song.id}/audio", headers={"User-Agent": "FeedTest/1.0"})
    visitor.get(f"/songs/{song.id}/audio", headers={"User-Agent": "FeedTest/1.0"})
    assert listens(visitor) == "3"

    with connected(app):  # half an hour later the same person counts again
        Listen.update(created_at=models.utcnow() - dt.timedelta(minutes=31)).execute()
    client.get(f"/songs/{song.id}/audio")
    assert listens(client) == "4"
    assert "4 listens" in text(client.get(f"/songs/{song.id}"))


# --------------------------------------------------------------------------- library
def test_library_search_matches_title_tags_and_lyrics_and_filters_by_status(app, client, auth):
    auth.register()
    new_song(app, title="Sunset Boulevard", tags="jazz, smooth", lyrics="[verse]\nsaxophone at dusk", published=False)
    new_song(app, title="Morning", tags="folk, acoustic", lyrics="[verse]\nroosters and coffee", published=False)
    new_song(app, title="Broken", status="failed", published=False, categories=[])
    for q, expect, never in (("sunset", "Sunset Boulevard", "Morning"), ("ACOUSTIC", "Morning", "Sunset"),
                             ("coffee", "Morning", "Sunset"), ("saxophone dusk", "Sunset Boulevard", "Morning")):
        html = text(client.get("/library", query_string={"q": q}))
        assert expect in html and never not in html, q
    html = text(client.get("/library", query_string={"q": "%"}))
    assert "No songs match" in html
    html = text(client.get("/library", query_string={"status": "failed"}))
    assert "Broken" in html and "Morning" not in html
    html = text(client.get("/library"))
    assert html.index("Broken") < html.index("Morning") < html.index("Sunset Boulevard")  # newest first
    card = text(client.get("/library", query_string={"q": "Morning"}))
    assert ">Publish</button>" in card and "Rename" in card and ">Delete</button>" in card


# ------------------------------------------------------------------- the real path
def test_a_made_song_goes_from_the_library_to_the_feed_and_away_again(app, client, auth):
    """Create -> the in-process worker (offline engines) -> publish from the library card -> a
    visitor finds it in the feed and on its page -> the owner deletes it and its objects go."""
    from tests.helpers import run_worker

    auth.register()
    resp = auth.post("/create", data={"mode": "description", "description": "a dreamy synthwave song about neon rain",
                                      "duration": "10", "variants": "1"})
    assert resp.status_code == 303
    run_worker(app)
    with connected(app):
        song = Song.get()
        assert song.status == "processed" and song.peaks
    card = text(client.get("/library"))
    assert ">Publish</button>" in card and f'action="/songs/{song.id}/publish"' in card

    title = str(escape(song.title))
    visitor = app.test_client()
    assert title not in text(visitor.get("/"))
    resp = auth.post(f"/songs/{song.id}/publish", data={"view": "card"}, headers=HX)
    assert resp.status_code == 200 and "Public</span>" in text(resp)

    feed = text(visitor.get("/"))
    assert f'data-song-id="{song.id}"' in feed and title in feed
    page = text(visitor.get(f"/songs/{song.id}"))
    assert f'data-seek-wave data-song-id="{song.id}"' in page and song.engine in page
    with connected(app):
        for name in Song.get_by_id(song.id).category_names():
            assert str(escape(name)) in page
    audio = visitor.get(f"/songs/{song.id}/audio")
    assert audio.status_code == 302 and requests.get(audio.headers["Location"], timeout=10).status_code == 200
    assert 'data-listen-count="1"' in text(visitor.get(f"/songs/{song.id}"))

    keys = stored_keys(app, song)
    assert len(keys) == 3
    assert auth.post(f"/songs/{song.id}/delete").status_code == 303
    assert stored_keys(app, song) == []
    assert visitor.get(f"/songs/{song.id}").status_code == 404 and title not in text(visitor.get("/"))


def test_library_cards_kept_rendered_still_show_every_change(app, client, auth):
    """Final cards are kept rendered (app.tiles) while nothing they show changes: publishing,
    a rename, new tags, moderation hiding it and a failure all show on the next load; a song
    being made is rendered afresh with its progress."""
    auth.register()
    done = new_song(app, title="Kept Card", published=False)
    making = new_song(app, title="In The Making", status="processing", stage="composing", progress=40)

    def card(song_id):
        html = text(client.get("/library"))
        start = html.index(f'id="song-{song_id}"')
        return html[start:html.index("</li>", start)]

    first = card(done.id)
    assert "Kept Card" in first and ">Publish</button>" in first and "Public</span>" not in first
    assert '<span class="pct">40%</span>' in card(making.id)
    auth.post(f"/songs/{done.id}/publish")
    assert "Public</span>" in card(done.id) and ">Unpublish</button>" in card(done.id)
    auth.post(f"/songs/{done.id}/rename", data={"title": "Renamed Card"})
    assert "Renamed Card" in card(done.id)
    with connected(app):
        Song.update(tags="lofi, rainy").where(Song.id == done.id).execute()
    assert "lofi, rainy" in card(done.id)
    with connected(app):
        Song.update(hidden_at=models.utcnow(), hidden_reason="reported").where(Song.id == done.id).execute()
    assert "Hidden by moderation" in card(done.id)
    with connected(app):
        Song.update(progress=70).where(Song.id == making.id).execute()
    assert '<span class="pct">70%</span>' in card(making.id)
    with connected(app):
        Song.update(status="failed", error="The worker ran out of memory.").where(Song.id == making.id).execute()
    failed = card(making.id)
    assert "ran out of memory" in failed and "pct" not in failed


def test_the_waveform_draws_one_clamped_centred_bar_per_peak(app, client, auth):
    auth.register()
    song = new_song(app, title="Five Peaks", peaks=[0, 0.5, 1, 2, -1])
    html = text(client.get(f"/songs/{song.id}"))
    path = "M1.5 31.0v2.0M5.5 17.0v30.0M9.5 2.0v60.0M13.5 2.0v60.0M17.5 31.0v2.0"  # 64 high, 2 at least
    assert html.count(f'<path d="{path}"/>') == 2 and 'viewBox="0 0 20 64"' in html  # base and played part
