"""The public feed at `/`: what visitors and members see, Trending with time decay, Newest with
"Load more", search, category sections and filter, and a query count that does not grow with the
number of songs. Runs on SQLite and PostgreSQL."""
from __future__ import annotations

import datetime as dt
import re

import pytest

import models
from models import Category, Generation, Like, Listen, Song, SongCategory, utcnow
from tests import song_factory as make
from tests.helpers import connected

HX = {"HX-Request": "true"}


def text(resp):
    return resp.get_data(as_text=True)


def section(html: str, section_id: str) -> str:
    start = html.index(f'id="{section_id}"')
    return html[start:html.index("</section>", start)]


def ids_in(html: str) -> list[str]:
    return re.findall(r'<li class="song-card feed-card" data-song-id="([0-9a-f]+)"', html)


def titles_in(html: str) -> list[str]:
    return re.findall(r'<a class="title" href="/songs/[0-9a-f]+">([^<]*)</a>', html)


@pytest.fixture
def owner(app):
    with connected(app):
        return make.user("maker@example.com", "Maker")


def add(app, owner, title, **kwargs):
    with connected(app):
        return make.song(owner, title, **kwargs)


def like_by(app, song, n, when):
    """`n` people like `song` at time `when`."""
    with connected(app):
        for _ in range(n):
            fan = make.user(f"fan-{models.new_id()[:10]}@example.com")
            Like.create(user=fan, song=song.id, created_at=when)
        Song.update(like_count=Song.like_count + n).where(Song.id == song.id).execute()


def test_visitors_see_only_published_finished_songs(app, client, owner):
    html = text(client.get("/"))
    assert "Nothing published yet" in html and "Sign up" in html
    add(app, owner, "Out In The Open", categories=["Pop"])
    add(app, owner, "Kept Private", published=False, categories=["Pop"])
    add(app, owner, "Published While Cooking", status="processing", categories=["Pop"])
    add(app, owner, "Failed Attempt", status="failed", categories=["Pop"])
    resp = client.get("/")
    assert resp.status_code == 200 and "HX-Request" in resp.headers["Vary"]
    html = text(resp)
    assert "Out In The Open" in html and "by Maker" in html
    assert 'id="trending"' not in html  # nothing liked or played yet: no Trending shelf that repeats Newest
    for hidden in ("Kept Private", "Published While Cooking", "Failed Attempt"):
        assert hidden not in html
        assert hidden not in text(client.get("/", query_string={"q": hidden.split()[0]}))
    assert "Log in to like Out In The Open" in html  # visitors get a login link instead of a like button


def test_trending_puts_recent_likes_above_newer_songs_and_old_likes_fade(app, client, owner):
    now = utcnow()
    older_liked = add(app, owner, "Older But Loved", published_at=now - dt.timedelta(days=3))
    newest = add(app, owner, "Brand New", published_at=now)
    faded = add(app, owner, "Faded Glory", published_at=now - dt.timedelta(days=6, hours=20))
    fresh_pick = add(app, owner, "Fresh Pick", published_at=now - dt.timedelta(days=5))
    ancient = add(app, owner, "Ancient Hit", published_at=now - dt.timedelta(days=30))
    like_by(app, older_liked, 3, now - dt.timedelta(hours=2))
    like_by(app, faded, 6, now - dt.timedelta(days=6, hours=12))  # many likes, but almost a week ago
    like_by(app, fresh_pick, 1, now - dt.timedelta(minutes=30))
    like_by(app, ancient, 9, now - dt.timedelta(days=20))  # outside the window: no longer trending
    with connected(app):  # listens count too, for less than a like
        for i in range(2):
            Listen.create(song=newest.id, listener=f"v:{i}", created_at=now - dt.timedelta(minutes=5))

    html = text(client.get("/"))
    trending = section(html, "trending")
    assert titles_in(trending) == ["Older But Loved", "Fresh Pick", "Brand New", "Faded Glory"]
    assert "Ancient Hit" not in trending
    # Newest is by publication time, whatever the likes
    assert titles_in(section(html, "newest")) == ["Brand New", "Older But Loved", "Fresh Pick", "Faded Glory",
                                                  "Ancient Hit"]


def test_newest_loads_more_with_htmx_and_pages_without_javascript(app, client, owner):
    now = utcnow()
    for i in range(30):
        add(app, owner, f"Song {i:02d}", published_at=now - dt.timedelta(minutes=i))
    html = text(client.get("/"))
    newest = section(html, "newest")
    assert titles_in(newest) == [f"Song {i:02d}" for i in range(12)]
    # "Load more" carries the cursor of the last song shown (keyset paging)
    page2_url = re.search(r'hx-get="(/\?after=[^"]+)"', newest).group(1)
    assert f'href="{page2_url}"' in newest and 'hx-target="#feed-more"' in newest

    more = client.get(page2_url, headers={**HX, "HX-Target": "feed-more"})
    assert more.status_code == 200
    fragment = text(more)
    assert "<html" not in fragment and "<section" not in fragment
    assert titles_in(fragment) == [f"Song {i:02d}" for i in range(12, 24)]
    page3_url = re.search(r'hx-get="(/\?after=[^"]+)"', fragment).group(1)
    assert 'id="feed-more"' in fragment
    last = text(client.get(page3_url, headers={**HX, "HX-Target": "feed-more"}))
    assert titles_in(last) == [f"Song {i:02d}" for i in range(24, 30)] and "feed-more" not in last

    page2 = text(client.get(page2_url))  # no JavaScript: a whole page with a way back
    assert "<html" in page2 and "· older" in page2 and 'href="/">← Newest first' in page2
    assert titles_in(page2) == [f"Song {i:02d}" for i in range(12, 24)]
    assert text(client.get("/?page=abc")).count('class="song-card feed-card"') > 0  # a bad page is page 1
    assert titles_in(section(text(client.get("/?page=2")), "newest"))[0] == "Song 00"  # an old link: the first page


def test_search_matches_title_tags_and_lyrics(app, client, owner):
    add(app, owner, "Harbor Lights", tags="ambient, calm", lyrics="[verse]\nships sleep in the bay")
    add(app, owner, "City Run", tags="drum and bass, energetic", lyrics="[verse]\nconcrete and neon")
    add(app, owner, "100% Real", tags="hip-hop", lyrics="[verse]\nkeep it true")
    add(app, owner, "Hidden Harbor", tags="ambient", published=False)

    def found(q):
        return titles_in(section(text(client.get("/", query_string={"q": q})), "feed-body"))

    assert found("harbor") == ["Harbor Lights"]
    assert found("ENERGETIC") == ["City Run"]
    assert found("bay") == ["Harbor Lights"]
    assert found("neon concrete") == ["City Run"]  # every word, anywhere
    assert found("neon bay") == []
    assert found("100%") == ["100% Real"] and found("%") == ["100% Real"]  # % is not a wildcard
    html = text(client.get("/", query_string={"q": "nothing-like-this"}))
    assert "No published songs match “nothing-like-this”" in html
    live = client.get("/", query_string={"q": "harbor"}, headers={**HX, "HX-Target": "feed-body"})
    assert "<html" not in text(live) and text(live).lstrip().startswith('<div id="feed-body">')
    assert titles_in(text(live)) == ["Harbor Lights"]


def test_category_sections_and_filter(app, client, owner):
    now = utcnow()
    add(app, owner, "Pop One", categories=["Pop"], published_at=now - dt.timedelta(minutes=3))
    add(app, owner, "Pop Two", categories=["Pop", "Dance"], published_at=now - dt.timedelta(minutes=2))
    add(app, owner, "Rock One", categories=["Rock"], published_at=now - dt.timedelta(minutes=1))
    add(app, owner, "Secret Pop", categories=["Pop"], published=False)
    html = text(client.get("/"))
    assert titles_in(section(html, "category-pop")) == ["Pop Two", "Pop One"]
    assert titles_in(section(html, "category-rock")) == ["Rock One"]
    assert titles_in(section(html, "category-dance")) == ["Pop Two"]
    assert html.index('id="category-pop"') < html.index('id="category-dance"')  # biggest category first
    assert 'href="/?category=pop">See all' in html
    assert '<option value="pop" >Pop</option>' in html

    filtered = text(client.get("/?category=pop"))
    assert titles_in(section(filtered, "feed-body")) == ["Pop Two", "Pop One"]
    assert "<h2 id=\"results-h\">Pop" in filtered and '<option value="pop" selected>' in filtered
    both = text(client.get("/", query_string={"category": "pop", "q": "two"}))
    assert titles_in(section(both, "feed-body")) == ["Pop Two"]
    missing = client.get("/?category=no-such-thing")
    assert missing.status_code == 404 and "There is nothing here." in text(missing)


def test_members_see_their_likes_in_the_feed(app, client, auth, owner):
    song = add(app, owner, "Crowd Favourite")
    auth.register("fan@example.com")
    auth.post(f"/songs/{song.id}/like", data={"liked": "1"})
    html = text(client.get("/"))
    newest = section(html, "newest")
    assert 'aria-pressed="true"' in newest and 'data-like-count="1"' in newest
    assert 'name="next" value="/"' in newest  # without JavaScript, a like comes back to the feed



def test_compiled_tile_reads_follow_their_values(app, owner):
    """The feed's reads whose SQL is built once (the songs of the rankings, their categories, a
    member's likes) give, for each new list of ids, what the same peewee query gives: only the
    publicly visible ones, each field as peewee reads it, the author attached."""
    with connected(app):
        other = make.user("other@example.com", "Other")
        shown = [make.song(owner, f"Shown {i}", categories=["Lo-fi"] if i % 2 else ["Rock", "Jazz"])
                 for i in range(4)]
        hidden = [make.song(owner, "Draft", published=False), make.song(owner, "Cooking", status="processing"),
                  make.song(other, "Taken down", hidden_at=utcnow())]
        fan = make.user("fan@example.com", "Fan")
        Like.create(user=fan, song=shown[1].id)
        Like.create(user=other, song=shown[2].id)
        everyone = [s.id for s in shown + hidden]
        for ids in (everyone, [shown[0].id], everyone[::-1] + ["0" * 32], [shown[3].id, hidden[0].id]):
            got = Song.tiles_by_ids(ids)
            want = {s.id: s for s in Song.public_tiles().where(Song.id.in_(ids))}
            assert set(got) == set(want) == {i for i in ids if i in {s.id for s in shown}}
            for sid, song in got.items():
                assert song.__data__ == want[sid].__data__
                assert song.user.__data__ == want[sid].user.__data__
                assert song.user.name == "Maker" and song.user_id == owner.id
            categories = Song.categories_for(ids)
            assert {sid: [c.name for c in cs] for sid, cs in categories.items()} == {
                s.id: ["Jazz", "Rock"] if i % 2 == 0 else ["Lo-fi"] for i, s in enumerate(shown) if s.id in ids}
            assert Like.song_ids_liked_by(fan, ids) == {shown[1].id} & set(ids)
            assert Like.song_ids_liked_by(other, ids) == {shown[2].id} & set(ids)
        assert Song.tiles_by_ids([]) == {} and Song.categories_for([]) == {}


def test_a_tile_shown_again_shows_what_changed_since(app, client, auth, owner):
    """Tiles are kept rendered (app.tiles) while nothing they show changes: a like, a rename,
    new listens, a new category, the viewer signing in or making a playlist all show at once."""
    song = add(app, owner, "First Name", categories=["Pop"])
    visitor = app.test_client()
    first = section(text(visitor.get("/")), "newest")
    assert titles_in(first) == ["First Name"] and 'data-like-count="0"' in first
    assert "Log in to like" in first and "Pop" in first

    auth.register("fan@example.com")
    member = section(text(client.get("/")), "newest")
    assert 'aria-pressed="false"' in member and "Log in to like" not in member
    assert "add-to-playlist" not in member  # no playlist yet: no form
    auth.post(f"/songs/{song.id}/like", data={"liked": "1"})
    auth.post("/playlists", {"title": "Road Trip"})
    member = section(text(client.get("/")), "newest")
    assert 'aria-pressed="true"' in member and 'data-like-count="1"' in member
    assert ">Road Trip</option>" in member
    seen = section(text(visitor.get("/")), "newest")  # the visitor's own tile, with the new count
    assert 'data-like-count="1"' in seen and "Log in to like" in seen and "Road Trip" not in seen

    with connected(app):  # it is played (each change alone, so each is seen on its own)
        Song.update(listen_count=Song.listen_count + 3).where(Song.id == song.id).execute()
    assert 'data-listen-count="3"' in section(text(visitor.get("/")), "newest")
    with connected(app):  # it gets a second category
        SongCategory.create(song=song.id, category=Category.named("Jazz").id)
    assert ">Jazz</a>" in section(text(visitor.get("/")), "newest")
    with connected(app):  # the owner renames it
        Song.update(title="Second Name").where(Song.id == song.id).execute()
    again = section(text(visitor.get("/")), "newest")
    assert titles_in(again) == ["Second Name"] and 'data-like-count="1"' in again
    assert 'aria-pressed="true"' in section(text(client.get("/")), "newest")


def test_new_visitors_share_the_kept_tiles(app, owner):
    """A visitor's tile holds no CSRF token, so a first visit (a new session, a new token) shows
    the tiles another visitor's visit kept instead of rendering them again."""
    for i in range(3):
        add(app, owner, f"Shared {i}")
    kept = app.extensions["tunesmith_tiles"]
    first = app.test_client().get("/")
    assert first.status_code == 200 and "tunesmith_session" in first.headers.get("Set-Cookie", "")
    before = len(kept)
    assert before >= 3
    second = app.test_client().get("/")  # another new visitor: another session and token
    html = text(second)
    assert len(kept) == before
    assert titles_in(section(html, "newest")) == ["Shared 2", "Shared 1", "Shared 0"]
    assert "Log in to like" in section(html, "newest")
    assert 'name="csrf_token"' not in section(html, "newest")


# ------------------------------------------------------------------------ query count
def bulk_feed(app, n_songs: int) -> None:
    """`n_songs` published songs in 5 categories with likes and listens, inserted in bulk."""
    with connected(app):
        owner = make.user("bulk@example.com", "Bulk")
        fans = [make.user(f"bulkfan{i}@example.com") for i in range(3)]
        gen = Generation.create(user=owner, mode="description", duration=12, variants=1)
        cats = [Category.named(name) for name in ("Pop", "Rock", "Jazz", "Lo-fi", "Ambient")]
        now = utcnow()
        rows = [dict(id=models.new_id(), generation=gen.id, user=owner.id, title=f"Bulk {i}", status="processed",
                     stage="done", progress=100, tags="bulk, test", lyrics="[verse]\nla", duration=12.0,
                     audio_key=f"k/{i}.wav", stream_key=f"k/{i}.mp3", cover_key=f"k/{i}.png", peaks=make.PEAKS,
                     published=True, published_at=now - dt.timedelta(minutes=i), created_at=now, updated_at=now,
                     engine="offline-arranger")
                for i in range(n_songs)]
        with models.db.atomic():
            for chunk in range(0, len(rows), 50):
                Song.insert_many(rows[chunk:chunk + 50]).execute()
            links = [dict(song=r["id"], category=cats[i % 5].id) for i, r in enumerate(rows)]
            for chunk in range(0, len(links), 200):
                SongCategory.insert_many(links[chunk:chunk + 200]).execute()
            likes = [dict(user=fans[i % 3].id, song=r["id"], created_at=now - dt.timedelta(hours=i % 50))
                     for i, r in enumerate(rows) if i % 2 == 0]
            for chunk in range(0, len(likes), 200):
                Like.insert_many(likes[chunk:chunk + 200]).execute()
            listens = [dict(song=r["id"], listener=f"v:{i}", created_at=now - dt.timedelta(hours=i % 100))
                       for i, r in enumerate(rows)]
            for chunk in range(0, len(listens), 200):
                Listen.insert_many(listens[chunk:chunk + 200]).execute()


def refresh_rankings(app) -> None:
    """What the worker does every FEED_REFRESH_SECONDS: recompute Trending and the sections."""
    from core import feed_rank

    with connected(app):
        feed_rank.refresh()


def count_queries(app, client, monkeypatch, path="/"):
    database = models.db.obj
    seen = []
    real = database.execute_sql

    def counting(sql, params=None, *args, **kwargs):
        seen.append(sql)
        return real(sql, params, *args, **kwargs)

    monkeypatch.setattr(database, "execute_sql", counting)
    try:
        resp = client.get(path)
    finally:
        monkeypatch.undo()
    assert resp.status_code == 200
    return len(seen), text(resp)


@pytest.mark.parametrize("who", ["visitor", "member"])
def test_feed_query_count_does_not_grow_with_the_number_of_songs(app, client, auth, monkeypatch, who):
    if who == "member":
        auth.register("reader@example.com")
    bulk_feed(app, 10)
    refresh_rankings(app)  # the worker's step (before it, the first request computes them once)
    small, html = count_queries(app, client, monkeypatch)
    assert len(re.findall(r'id="category-', html)) == 5 and 'id="trending"' in html
    small_search, _ = count_queries(app, client, monkeypatch, "/?q=bulk&category=pop")

    bulk_feed_more = 990
    with connected(app):
        assert Song.select().count() == 10
    bulk_feed(app, bulk_feed_more)
    with connected(app):
        assert Song.select().count() == 1000
    refresh_rankings(app)
    large, html = count_queries(app, client, monkeypatch)
    assert len(ids_in(section(html, "newest"))) == 12 and 'hx-get="/?after=' in html
    large_search, _ = count_queries(app, client, monkeypatch, "/?q=bulk&category=pop")
    assert small == large and small_search == large_search, (small, large, small_search, large_search)
    # two more than without the ranking cache: Trending and the sections read their songs by id
    assert large <= (10 if who == "member" else 8)


def test_feed_orderings_have_indexes(app, db):
    names = {ix.name for table in ("song", "song_category", "like", "listen") for ix in db.get_indexes(table)}
    assert {"song_feed_published_at", "song_category_category_song", "like_song_created_at",
            "listen_created_at_song"} <= names
    if app.backend == "sqlite":  # the Newest ordering walks the index: no sort step
        from app.main import feed

        query = feed.newest_first(feed.public()).limit(12)
        sql, params = query.sql()
        plan = " ".join(str(r) for r in db.execute_sql("EXPLAIN QUERY PLAN " + sql, params).fetchall())
        assert "song_feed_published_at" in plan and "TEMP B-TREE" not in plan, plan
