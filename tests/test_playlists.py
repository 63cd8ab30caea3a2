"""Playlists as their owner, another signed-in person and a visitor see them: making one, adding,
removing and reordering songs (with and without JavaScript), publishing, renaming, deleting,
the "Add to playlist" form on song cards and pages, who sees which entries, and link previews.
Every refused request is checked against the database: nothing written."""
from __future__ import annotations

import re

import pytest

import models
from models import Playlist, PlaylistEntry, Song, User
from tests import song_factory as make
from tests.conftest import AuthActions
from tests.helpers import connected

pytestmark = pytest.mark.sqlite_only  # forms and pages: the same on both databases (order and uniqueness run on both)

HX = {"HX-Request": "true"}


def text(resp) -> str:
    return resp.get_data(as_text=True)


def person(app, email, name):
    """A second browser, signed in as a new person."""
    c = app.test_client()
    a = AuthActions(c)
    a.register(email, name=name)
    return a


def new_song(app, email, title, **kwargs):
    with connected(app):
        return make.song(User.get(User.email == email), title=title, **kwargs)


def create(auth, title="Road trip", **fields):
    resp = auth.post("/playlists", {"title": title, **fields})
    assert resp.status_code == 303, text(resp)
    return resp.headers["Location"].rsplit("/", 1)[-1]


def entry_ids(html: str) -> list[str]:
    """The song ids the page lists, in order: every data-song-id inside the list container."""
    start = html.index('data-playlist-id="')
    return re.findall(r'data-song-id="([^"]+)"', html[start:html.index("</ol>", start)])


def stored(app, playlist_id) -> list[str]:
    with connected(app):
        return [e.song_id for e in PlaylistEntry.select().where(PlaylistEntry.playlist == playlist_id)
                .order_by(PlaylistEntry.position, PlaylistEntry.id)]


def row(app, playlist_id):
    with connected(app):
        return Playlist.get_or_none(Playlist.id == playlist_id)


def meta(html, prop):
    m = re.search(rf'<meta (?:property|name)="{re.escape(prop)}" content="([^"]*)"', html)
    return m and m.group(1)


@pytest.fixture
def alice(auth):
    auth.register("alice@example.com", name="Alice")
    return auth


# ------------------------------------------------------------------------------- make and list
def test_make_a_playlist_and_see_it_listed_and_on_its_page(app, client, alice):
    page = client.get("/playlists")
    assert page.status_code == 200 and 'action="/playlists"' in text(page) and "No playlists yet" in text(page)
    assert 'href="/playlists"' in text(page)  # the nav link for signed-in people

    pid = create(alice, "  Road   trip  ", description="Songs for the long drive.\nWindows down.", public="1")
    stored_row = row(app, pid)
    assert stored_row.title == "Road trip" and stored_row.public and len(pid) == 32

    listing = text(client.get("/playlists"))
    assert f'data-playlist-id="{pid}"' in listing and "Road trip" in listing and "0 songs" in listing

    html = text(client.get(f"/playlists/{pid}"))
    assert '<h1 class="playlist-title">Road trip</h1>' in html and "Alice" in html
    assert "Songs for the long drive.\nWindows down." in html
    assert html.count("data-playlist-id=") == 1 and entry_ids(html) == []
    assert "Make private" in html and "Delete" in html  # owner controls

    # a visitor is sent to log in; the nav link is for signed-in people only
    alice.logout()
    resp = client.get("/playlists")
    assert resp.status_code == 302 and "/auth/login" in resp.headers["Location"]
    assert 'href="/playlists"' not in text(client.get("/"))


def test_bad_titles_and_descriptions_are_refused_and_nothing_is_written(app, client, alice):
    for fields, field_message in [({"title": "   "}, "Give the playlist a title."),
                                  ({"title": "x" * 121}, "Keep the title to 120 characters"),
                                  ({"title": "ok", "description": "d" * 1001}, "Keep the description to 1000")]:
        resp = alice.post("/playlists", fields)
        assert resp.status_code == 422, fields
        assert field_message in text(resp)
    # without the CSRF token: refused too
    resp = client.post("/playlists", data={"title": "No token"})
    assert resp.status_code == 400
    with connected(app):
        assert Playlist.select().count() == 0
    # 120 characters after trimming is fine
    pid = create(alice, "  " + "y" * 120 + "  ")
    assert row(app, pid).title == "y" * 120


# ------------------------------------------------------------------------------- songs in it
@pytest.mark.both_backends
def test_add_reorder_move_and_remove_songs_in_order(app, client, alice):
    bob = person(app, "bob@example.com", "Bob")
    a1 = new_song(app, "alice@example.com", "Alpha", published=False)  # her own private song: allowed
    a2 = new_song(app, "alice@example.com", "Bravo")
    b1 = new_song(app, "bob@example.com", "Bob public")
    b_private = new_song(app, "bob@example.com", "Bob private", published=False)
    unfinished = new_song(app, "alice@example.com", "Still rendering", status="processing", published=False)
    pid = create(alice, "Mix")

    for song in (a1, a2, b1):
        resp = alice.post(f"/playlists/{pid}/add", {"song_id": song.id})
        assert resp.status_code == 303 and resp.headers["Location"] == f"/playlists/{pid}"
    assert stored(app, pid) == [a1.id, a2.id, b1.id]
    assert entry_ids(text(client.get(f"/playlists/{pid}"))) == [a1.id, a2.id, b1.id]

    # refused: already in it (409), another person's private song and an unknown one (404),
    # an unfinished song (409), no song (400); nothing written
    for song_id, status, message in [(a2.id, 409, "is already in"), (b_private.id, 404, "no such song"),
                                     ("0" * 32, 404, "no such song"), ("x" * 60, 404, "no such song"),
                                     (unfinished.id, 409, "Only a finished song"), ("", 400, "Choose a song")]:
        resp = alice.post(f"/playlists/{pid}/add", {"song_id": song_id})
        assert resp.status_code == status, (song_id, text(resp))
        assert message in text(resp)
        assert "Bob private" not in text(resp)
    assert stored(app, pid) == [a1.id, a2.id, b1.id]

    # up / down without JavaScript: 303 back to the page
    resp = alice.post(f"/playlists/{pid}/move", {"song_id": b1.id, "direction": "up"})
    assert resp.status_code == 303 and resp.headers["Location"] == f"/playlists/{pid}"
    assert stored(app, pid) == [a1.id, b1.id, a2.id]
    alice.post(f"/playlists/{pid}/move", {"song_id": a1.id, "direction": "down"})
    assert stored(app, pid) == [b1.id, a1.id, a2.id]
    alice.post(f"/playlists/{pid}/move", {"song_id": b1.id, "direction": "up"})  # already first: no change
    assert stored(app, pid) == [b1.id, a1.id, a2.id]
    assert alice.post(f"/playlists/{pid}/move", {"song_id": a1.id, "direction": "sideways"}).status_code == 400
    assert entry_ids(text(client.get(f"/playlists/{pid}"))) == [b1.id, a1.id, a2.id]

    # the whole order: repeated fields or comma-separated
    resp = alice.post(f"/playlists/{pid}/reorder", {"song_ids": [a2.id, b1.id, a1.id]})
    assert resp.status_code == 303
    assert stored(app, pid) == [a2.id, b1.id, a1.id]
    alice.post(f"/playlists/{pid}/reorder", {"song_ids": f"{a1.id},{a2.id},{b1.id}"})
    assert entry_ids(text(client.get(f"/playlists/{pid}"))) == [a1.id, a2.id, b1.id]
    for wrong in ([a1.id, a2.id], [a1.id, a2.id, b1.id, b_private.id], [a1.id, a1.id, a2.id],
                  [a1.id, a2.id, b1.id, b1.id], [a1.id, a2.id, "0" * 32], []):
        resp = alice.post(f"/playlists/{pid}/reorder", {"song_ids": wrong})
        assert resp.status_code == 400, wrong
        assert "exactly the songs of this playlist" in text(resp)
    assert stored(app, pid) == [a1.id, a2.id, b1.id]

    resp = alice.post(f"/playlists/{pid}/remove", {"song_id": a2.id})
    assert resp.status_code == 303
    assert stored(app, pid) == [a1.id, b1.id]
    assert alice.post(f"/playlists/{pid}/remove", {"song_id": a2.id}).status_code == 404
    assert entry_ids(text(client.get(f"/playlists/{pid}"))) == [a1.id, b1.id]
    # the song itself is untouched, and can be added again (at the end)
    alice.post(f"/playlists/{pid}/add", {"song_id": a2.id})
    assert stored(app, pid) == [a1.id, b1.id, a2.id]
    # a song's link works as well as its id
    other = new_song(app, "bob@example.com", "Linked")
    alice.post(f"/playlists/{pid}/add", {"song_id": f"http://localhost/songs/{other.id}"})
    assert stored(app, pid)[-1] == other.id


def test_htmx_gets_the_fragment_and_drag_and_drop_posts_the_order(app, client, alice):
    s1, s2, s3 = (new_song(app, "alice@example.com", t) for t in ("One", "Two", "Three"))
    pid = create(alice, "Live")
    for s in (s1, s2, s3):
        alice.post(f"/playlists/{pid}/add", {"song_id": s.id})
    html = text(client.get(f"/playlists/{pid}"))
    assert f'data-reorder-url="/playlists/{pid}/reorder"' in html and 'draggable="true"' in html
    assert 'src="/static/js/playlists.js?v=' in html  # versioned by its content hash
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', html).group(1)

    # what js/playlists.js sends after a drop: the CSRF header, HX-Request, song_ids comma-joined
    resp = client.post(f"/playlists/{pid}/reorder", data={"song_ids": f"{s3.id},{s1.id},{s2.id}"},
                       headers={**HX, "X-CSRFToken": token})
    assert resp.status_code == 200
    fragment = text(resp)
    assert "<html" not in fragment
    assert 'id="playlist-main"' in fragment and entry_ids(fragment) == [s3.id, s1.id, s2.id]
    assert stored(app, pid) == [s3.id, s1.id, s2.id]

    resp = client.post(f"/playlists/{pid}/reorder", data={"song_ids": f"{s3.id},{s1.id}"},
                       headers={**HX, "X-CSRFToken": token})
    assert resp.status_code == 400 and 'id="playlist-main"' in text(resp) and "reload the page" in text(resp)
    assert stored(app, pid) == [s3.id, s1.id, s2.id]

    resp = client.post(f"/playlists/{pid}/move", data={"song_id": s2.id, "direction": "up"},
                       headers={**HX, "X-CSRFToken": token})
    assert resp.status_code == 200 and entry_ids(text(resp)) == [s3.id, s2.id, s1.id]
    resp = client.post(f"/playlists/{pid}/rename", data={"title": ""}, headers={**HX, "X-CSRFToken": token})
    assert resp.status_code == 422 and "Give the playlist a title." in text(resp) and "<html" not in text(resp)
    assert row(app, pid).title == "Live"
    # without the token: refused
    assert client.post(f"/playlists/{pid}/reorder", data={"song_ids": f"{s1.id},{s2.id},{s3.id}"},
                       headers=HX).status_code == 400
    assert stored(app, pid) == [s3.id, s2.id, s1.id]


# ------------------------------------------------------------------------------- who sees what
def test_other_people_get_404_for_a_private_playlist_and_for_every_change(app, client, alice):
    song = new_song(app, "alice@example.com", "Mine")
    theirs = new_song(app, "alice@example.com", "Another")
    pid = create(alice, "Secret list")
    alice.post(f"/playlists/{pid}/add", {"song_id": song.id})
    public_pid = create(alice, "Open list", public="1")
    alice.post(f"/playlists/{public_pid}/add", {"song_id": song.id})

    bob = person(app, "bob@example.com", "Bob")
    visitor = AuthActions(app.test_client())
    posts = [("add", {"song_id": theirs.id}), ("remove", {"song_id": song.id}),
             ("move", {"song_id": song.id, "direction": "down"}), ("reorder", {"song_ids": song.id}),
             ("rename", {"title": "Taken over"}), ("publish", {}), ("unpublish", {}), ("delete", {})]
    for who in (bob, visitor):
        resp = who.client.get(f"/playlists/{pid}")
        assert resp.status_code == 404 and "Secret list" not in text(resp)
        assert who.client.get(f"/playlists/{public_pid}").status_code == 200
        for target in (pid, public_pid):
            for action, data in posts:
                resp = who.post(f"/playlists/{target}/{action}", data)
                assert resp.status_code == 404, (action, target)
                assert "Secret list" not in text(resp)
        resp = who.post("/playlists/add", {"playlist_id": pid, "song_id": theirs.id, "view": "card"})
        assert resp.status_code == 404
    assert bob.client.get("/playlists/" + "x" * 40).status_code == 404
    assert bob.client.get("/playlists/nothing-here").status_code == 404
    # nothing changed
    for target, title, public in ((pid, "Secret list", False), (public_pid, "Open list", True)):
        r = row(app, target)
        assert (r.title, r.public) == (title, public)
        assert stored(app, target) == [song.id]
    # Bob's own list does not show Alice's
    assert "Secret list" not in text(bob.client.get("/playlists"))


def test_a_song_made_private_leaves_other_peoples_view_but_not_the_owners(app, client, alice):
    bob = person(app, "bob@example.com", "Bob")
    mine = new_song(app, "alice@example.com", "Alice public")
    my_private = new_song(app, "alice@example.com", "Alice demo", published=False)
    bobs = new_song(app, "bob@example.com", "Bob anthem")
    pid = create(alice, "Our mix", public="1", description="Best of both")
    for s in (mine, my_private, bobs):
        assert alice.post(f"/playlists/{pid}/add", {"song_id": s.id}).status_code == 303

    visitor = app.test_client()
    html = text(visitor.get(f"/playlists/{pid}"))
    assert entry_ids(html) == [mine.id, bobs.id]  # her private song is not shown to others
    assert "Alice demo" not in html and "Bob anthem" in html and "Our mix" in html and "Alice" in html
    assert "Make private" not in html and "/remove" not in html and "data-reorder-url" not in html
    assert f'data-playlist-play="/songs/{mine.id}/audio"' in html  # the player counts listens as everywhere
    assert entry_ids(text(alice.client.get(f"/playlists/{pid}"))) == [mine.id, my_private.id, bobs.id]

    # Bob makes his song private: gone for visitors, still his to see, kept (without details) for Alice
    assert bob.post(f"/songs/{bobs.id}/unpublish").status_code == 303
    html = text(visitor.get(f"/playlists/{pid}"))
    assert entry_ids(html) == [mine.id] and "Bob anthem" not in html
    assert entry_ids(text(bob.client.get(f"/playlists/{pid}"))) == [mine.id, bobs.id]
    owner_html = text(alice.client.get(f"/playlists/{pid}"))
    assert entry_ids(owner_html) == [mine.id, my_private.id, bobs.id]
    assert "Alice demo" in owner_html and "Bob anthem" not in owner_html
    assert "no longer available" in owner_html and owner_html.count("data-private>Private<") == 2
    # ... and she can still reorder (the full set includes it) or remove it
    assert alice.post(f"/playlists/{pid}/reorder", {"song_ids": [bobs.id, mine.id, my_private.id]}).status_code == 303
    assert alice.post(f"/playlists/{pid}/remove", {"song_id": bobs.id}).status_code == 303
    assert stored(app, pid) == [mine.id, my_private.id]


def test_a_visitor_sees_a_public_playlist_with_link_previews(app, client, alice):
    s1 = new_song(app, "alice@example.com", "Opening")
    s2 = new_song(app, "alice@example.com", "Closer")
    pid = create(alice, "Sunday <morning>", description="Slow songs & coffee", public="1")
    for s in (s1, s2):
        alice.post(f"/playlists/{pid}/add", {"song_id": s.id})
    alice.logout()

    resp = client.get(f"/playlists/{pid}")
    assert resp.status_code == 200 and "no-store" not in resp.headers.get("Cache-Control", "")
    html = text(resp)
    assert "Sunday &lt;morning&gt;" in html and "Slow songs &amp; coffee" in html and "Alice" in html
    assert entry_ids(html) == [s1.id, s2.id] and "Opening" in html and "Closer" in html
    assert meta(html, "og:type") == "music.playlist" and meta(html, "og:title") == "Sunday &lt;morning&gt;"
    assert meta(html, "og:url") == f"http://localhost/playlists/{pid}"
    assert meta(html, "og:image") == f"http://localhost/songs/{s1.id}/cover"
    assert "A playlist by Alice · 2 songs · Slow songs &amp; coffee" == meta(html, "og:description")
    assert meta(html, "twitter:card") == "summary_large_image"
    assert re.findall(r'<meta property="music:song" content="([^"]+)"', html) == [
        f"http://localhost/songs/{s1.id}", f"http://localhost/songs/{s2.id}"]
    assert f'value="http://localhost/playlists/{pid}"' in html  # the share box
    assert "Add to playlist" not in html and "/move" not in html
    with connected(app):  # an account suspended by the moderators: its playlists are not shown either
        User.update(suspended_at=models.utcnow()).where(User.email == "alice@example.com").execute()
    assert client.get(f"/playlists/{pid}").status_code == 404
    with connected(app):
        User.update(suspended_at=None).where(User.email == "alice@example.com").execute()

    # a private playlist is not previewed, even for its owner
    alice.login()
    private = create(alice, "Drafts")
    resp = client.get(f"/playlists/{private}")
    assert meta(text(resp), "og:title") is None and meta(text(resp), "robots") == "noindex, nofollow"
    assert "no-store" in resp.headers["Cache-Control"]


# ------------------------------------------------------------------------------- the playlist itself
def test_publish_unpublish_rename_and_delete(app, client, alice):
    song = new_song(app, "alice@example.com", "Kept")
    pid = create(alice, "Changing", description="first")
    alice.post(f"/playlists/{pid}/add", {"song_id": song.id})
    visitor = app.test_client()
    assert visitor.get(f"/playlists/{pid}").status_code == 404

    resp = alice.post(f"/playlists/{pid}/publish")
    assert resp.status_code == 303 and resp.headers["Location"] == f"/playlists/{pid}"
    assert row(app, pid).public and visitor.get(f"/playlists/{pid}").status_code == 200
    assert "is public" in text(client.get(f"/playlists/{pid}"))  # the flash after the redirect
    assert alice.post(f"/playlists/{pid}/unpublish").status_code == 303
    assert not row(app, pid).public and visitor.get(f"/playlists/{pid}").status_code == 404

    resp = alice.post(f"/playlists/{pid}/rename", {"title": "  Changed  "})
    assert resp.status_code == 303
    assert (row(app, pid).title, row(app, pid).description) == ("Changed", "first")  # description kept
    alice.post(f"/playlists/{pid}/rename", {"title": "Changed", "description": "second"})
    assert row(app, pid).description == "second"
    for bad in ("", "   ", "z" * 121):
        resp = alice.post(f"/playlists/{pid}/rename", {"title": bad})
        assert resp.status_code == 422 and "title" in text(resp)
    assert alice.post(f"/playlists/{pid}/rename", {"title": "ok", "description": "d" * 1001}).status_code == 422
    assert (row(app, pid).title, row(app, pid).description) == ("Changed", "second")

    resp = alice.post(f"/playlists/{pid}/delete")
    assert resp.status_code == 303 and resp.headers["Location"] == "/playlists"
    assert row(app, pid) is None and stored(app, pid) == []
    assert client.get(f"/playlists/{pid}").status_code == 404
    with connected(app):
        assert Song.get_or_none(Song.id == song.id) is not None  # the songs stay


@pytest.mark.both_backends
def test_deleting_a_song_or_an_account_removes_its_entries(app, client, alice):
    gone = new_song(app, "alice@example.com", "Deleted soon")
    stays = new_song(app, "alice@example.com", "Stays")
    pid = create(alice, "Cascade", public="1")
    for s in (gone, stays):
        alice.post(f"/playlists/{pid}/add", {"song_id": s.id})
    assert alice.post(f"/songs/{gone.id}/delete").status_code == 303
    assert stored(app, pid) == [stays.id]
    assert entry_ids(text(app.test_client().get(f"/playlists/{pid}"))) == [stays.id]

    # a deleted account takes its songs out of other people's playlists, and its playlists with it
    from core.accounts import delete_account
    from core.storage import get_storage

    bob = person(app, "bob@example.com", "Bob")
    bobs = new_song(app, "bob@example.com", "Bob leaves")
    alice.post(f"/playlists/{pid}/add", {"song_id": bobs.id})
    bobs_list = create(bob, "Bob's list")
    bob.post(f"/playlists/{bobs_list}/add", {"song_id": stays.id})
    assert stored(app, pid) == [stays.id, bobs.id]
    with connected(app):
        delete_account(User.get(User.email == "bob@example.com"), get_storage(app.extensions["tunesmith_config"]))
    assert stored(app, pid) == [stays.id] and row(app, bobs_list) is None and stored(app, bobs_list) == []
    with connected(app):  # the database itself holds the rule (foreign keys, ON DELETE CASCADE)
        Playlist.delete().where(Playlist.id == pid).execute()
        assert PlaylistEntry.select().count() == 0


# ------------------------------------------------------------------------------- "Add to playlist"
def test_add_to_playlist_form_on_cards_and_song_pages(app, client, alice, monkeypatch):
    bob = person(app, "bob@example.com", "Bob")
    bobs = new_song(app, "bob@example.com", "Bob tune")
    mine = [new_song(app, "alice@example.com", f"Card {i}") for i in range(2)]
    # no playlists yet: the song page offers to make one with this song in it
    html = text(client.get(f"/songs/{bobs.id}"))
    assert f'href="/playlists?add={bobs.id}"' in html and 'name="playlist_id"' not in html
    page = text(client.get(f"/playlists?add={bobs.id}"))
    assert f'name="song_id" value="{bobs.id}"' in page and "Bob tune" in page
    resp = alice.post("/playlists", {"title": "Started from a song", "song_id": bobs.id})
    assert resp.status_code == 303
    first = resp.headers["Location"].rsplit("/", 1)[-1]
    assert stored(app, first) == [bobs.id]
    # ... but not with a song she may not see: neither the playlist nor the entry is written
    hidden = new_song(app, "bob@example.com", "Bob secret", published=False)
    resp = alice.post("/playlists", {"title": "Sneaky", "song_id": hidden.id})
    assert resp.status_code == 404 and "Bob secret" not in text(resp)
    with connected(app):
        assert Playlist.select().where(Playlist.title == "Sneaky").count() == 0

    second = create(alice, "Second")
    library = text(client.get("/library"))
    forms = re.findall(r'<form class="add-to-playlist.*?</form>', library, re.S)
    assert len(forms) == 2
    assert all(f'<option value="{first}"' in f and f'<option value="{second}"' in f for f in forms)
    song_page = text(client.get(f"/songs/{bobs.id}"))
    assert 'action="/playlists/add"' in song_page and f'value="{second}"' in song_page
    assert 'name="playlist_id"' not in text(app.test_client().get(f"/songs/{bobs.id}"))  # visitors: no form
    # the Discover tiles carry it too (folded away), for signed-in people only
    tile = re.search(rf'<li class="song-card feed-card" data-song-id="{bobs.id}".*?</li>', text(client.get("/")), re.S)
    assert tile and 'action="/playlists/add"' in tile.group(0) and f'value="{bobs.id}"' in tile.group(0)
    assert 'action="/playlists/add"' not in text(app.test_client().get("/"))

    # plain form post from the library: 303 back to where it came from
    resp = alice.post("/playlists/add", {"playlist_id": second, "song_id": mine[0].id, "view": "card",
                                         "next": "/library?q=Card"})
    assert resp.status_code == 303 and resp.headers["Location"] == "/library?q=Card"
    assert stored(app, second) == [mine[0].id]
    resp = alice.post("/playlists/add", {"playlist_id": second, "song_id": mine[1].id, "next": "https://evil.example/"})
    assert resp.status_code == 303 and resp.headers["Location"] == f"/playlists/{second}"
    # HTMX: the form comes back with the outcome
    resp = alice.post("/playlists/add", {"playlist_id": first, "song_id": mine[0].id, "view": "card"}, headers=HX)
    assert resp.status_code == 200 and "Added “Card 0” to “Started from a song”." in text(resp)
    assert text(resp).lstrip().startswith("<form") and f'value="{first}" selected' in text(resp)
    resp = alice.post("/playlists/add", {"playlist_id": first, "song_id": mine[0].id, "view": "card"}, headers=HX)
    assert resp.status_code == 409 and "is already in" in text(resp)
    # Bob's playlist is not Alice's to add to
    bobs_list = create(bob, "Bob's")
    resp = alice.post("/playlists/add", {"playlist_id": bobs_list, "song_id": mine[1].id, "view": "card"}, headers=HX)
    assert resp.status_code == 404 and stored(app, bobs_list) == []
    assert stored(app, first) == [bobs.id, mine[0].id]

    # the person's playlists are read once per page, however many cards it has
    def queries(path):
        seen = []
        real = models.db.obj.execute_sql

        def counting(sql, params=None, *args, **kwargs):
            seen.append(sql)
            return real(sql, params, *args, **kwargs)

        monkeypatch.setattr(models.db.obj, "execute_sql", counting)
        try:
            assert client.get(path).status_code == 200
        finally:
            monkeypatch.undo()
        return sum(1 for sql in seen if 'FROM "playlist"' in sql)

    assert queries("/library") == 1
    for i in range(6):
        new_song(app, "alice@example.com", f"More {i}")
    assert queries("/library") == 1
