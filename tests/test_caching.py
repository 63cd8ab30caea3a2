"""Conditional GETs and cache headers: status cards answer 304 while nothing changed, media
redirects are cached privately for less than their signature lives, pages carrying a CSRF token
or a person's name are never `public`, and static files are content-hashed and immutable."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

import models
from app import caching
from core import playlists
from models import Song, User, utcnow
from tests import song_factory as make
from tests.helpers import connected

pytestmark = pytest.mark.sqlite_only

HX = {"HX-Request": "true"}
STATIC = Path(__file__).resolve().parent.parent / "app" / "static"


def max_age(cache_control: str) -> int:
    m = re.search(r"max-age=(\d+)", cache_control)
    assert m, cache_control
    return int(m.group(1))


def owner_song(app, auth, **fields) -> Song:
    auth.register()
    with connected(app):
        alice = User.get(User.email == "alice@example.com")
        return make.song(alice, "Work in progress", published=False, **fields)


def count_queries(client, monkeypatch, path, headers):
    database = models.db.obj
    seen = []
    real = database.execute_sql

    def counting(sql, params=None, *args, **kwargs):
        seen.append(sql)
        return real(sql, params, *args, **kwargs)

    monkeypatch.setattr(database, "execute_sql", counting)
    try:
        resp = client.get(path, headers=headers)
    finally:
        monkeypatch.undo()
    return resp, seen


@pytest.mark.both_backends
def test_status_card_is_304_while_unchanged_and_200_once_it_moves(app, client, auth, monkeypatch):
    song = owner_song(app, auth, status="processing", stage="rendering", progress=20)
    url = f"/songs/{song.id}/status"

    first, queries = count_queries(client, monkeypatch, url, HX)
    assert first.status_code == 200
    assert len(queries) <= 2, queries  # a first poll (nothing to revalidate): who, and the song once
    tag = first.headers["ETag"]
    assert tag and "20%" in first.get_data(as_text=True)
    assert first.headers["Cache-Control"] == "private, no-cache"  # stored, revalidated on every poll
    assert "Cookie" in first.headers["Vary"]

    again, queries = count_queries(client, monkeypatch, url, {**HX, "If-None-Match": tag})
    assert again.status_code == 304 and again.data == b""
    assert again.headers["ETag"] == tag
    assert len(queries) <= 2, queries  # who is signed in, and the song's few moving columns

    with connected(app):
        Song.update(progress=55, stage="encoding", updated_at=utcnow()).where(Song.id == song.id).execute()
    moved = client.get(url, headers={**HX, "If-None-Match": tag})
    assert moved.status_code == 200
    assert moved.headers["ETag"] != tag
    assert "55%" in moved.get_data(as_text=True)

    with connected(app):
        Song.update(status="processed", stage="done", progress=100, updated_at=utcnow()).where(
            Song.id == song.id).execute()
    done = client.get(url, headers={**HX, "If-None-Match": moved.headers["ETag"]})
    assert done.status_code == 200
    html = done.get_data(as_text=True)
    assert 'data-status="processed"' in html and "hx-get" not in html  # the final card stops polling


def test_status_etag_is_not_shared_with_other_viewers(app, client, auth):
    song = owner_song(app, auth, status="queued", stage="queued", progress=0)
    url = f"/songs/{song.id}/status"
    tag = client.get(url, headers=HX).headers["ETag"]
    auth.logout()
    stranger = client.get(url, headers={**HX, "If-None-Match": tag})
    assert stranger.status_code == 404  # an unfinished song is its owner's alone, cached or not


def test_cover_redirect_is_cached_privately_for_less_than_the_signature_lives(app, client):
    with connected(app):
        song = make.song(make.user("bob@example.com", "Bob"), "Shared", app=app)
    ttl = app.extensions["tunesmith_config"].SIGNED_URL_TTL

    cover = client.get(f"/songs/{song.id}/cover")
    assert cover.status_code == 302
    cc = cover.headers["Cache-Control"]
    assert cc.startswith("private") and 0 < max_age(cc) < ttl
    assert "public" not in cc

    audio = client.get(f"/songs/{song.id}/audio")  # counts a listen: never answered from a cache
    assert audio.headers["Cache-Control"] == "no-store"

    file = client.get(cover.headers["Location"])
    assert file.status_code == 200 and file.headers["ETag"]
    assert file.headers["Cache-Control"].startswith("private")
    assert client.get(cover.headers["Location"], headers={"If-None-Match": file.headers["ETag"]}).status_code == 304


def public_pages(app, auth) -> tuple[dict[str, str], str]:
    """The public pages (Discover, a song, a playlist, a profile) of Alice, who is signed out."""
    auth.register()
    with connected(app):
        alice = User.get(User.email == "alice@example.com")
        song = make.song(alice, "Open Air", app=app)
        playlist = playlists.create(alice, "Summer", public=True, song_id=song.id)
        handle = User.get_by_id(alice.id).handle
    auth.logout()
    return {"discover": "/", "song": f"/songs/{song.id}", "playlist": f"/playlists/{playlist.id}",
            "profile": f"/u/{handle}"}, "Alice"


def test_public_pages_for_visitors_are_cached_only_by_their_browser_and_revalidate(app, client, auth):
    pages, _ = public_pages(app, auth)
    client.get("/")  # signed out: the first page starts the visitor's session (its CSRF token)
    for name, path in pages.items():
        resp = client.get(path)
        assert resp.status_code == 200, name
        cc = resp.headers["Cache-Control"]
        # The page embeds the visitor's CSRF token: never in a shared cache.
        assert cc == f"private, max-age={caching.PUBLIC_PAGE_MAX_AGE}", (name, cc)
        assert "Cookie" in resp.headers["Vary"], name
        again = client.get(path, headers={"If-None-Match": resp.headers["ETag"]})
        assert again.status_code == 304 and again.data == b"", name

    discover = client.get("/")
    with connected(app):
        make.song(make.user("bob@example.com", "Bob"), "Brand New Tune")
    changed = client.get("/", headers={"If-None-Match": discover.headers["ETag"]})
    assert changed.status_code == 200 and "Brand New Tune" in changed.get_data(as_text=True)


def test_a_first_visit_that_starts_a_session_is_not_kept(app):
    fresh = app.test_client()
    resp = fresh.get("/")
    assert "Set-Cookie" in resp.headers  # the new session holding the CSRF token
    assert resp.headers["Cache-Control"] == "private, no-cache"


def test_no_page_with_a_csrf_token_or_a_name_is_public(app, client, auth):
    pages, name = public_pages(app, auth)
    auth.login()
    for page, path in {**pages, "library": "/library", "create": "/create"}.items():
        resp = client.get(path)
        html = resp.get_data(as_text=True)
        assert resp.status_code == 200, page
        assert 'name="csrf-token"' in html and name in html
        cc = resp.headers["Cache-Control"]
        assert "public" not in cc, (page, cc)
        assert cc in ("private, no-cache", "no-store", "private, no-store"), (page, cc)
    member = client.get("/")
    assert member.headers["Cache-Control"] == "private, no-cache"
    assert client.get("/", headers={"If-None-Match": member.headers["ETag"]}).status_code == 304


def test_only_an_anonymous_page_without_token_or_session_write_may_be_shared():
    public = dict(endpoint="main.index", signed_in=False, csrf_rendered=False, session_written=False)
    assert caching.page_policy(**public).startswith("public")
    for change in ({"signed_in": True}, {"csrf_rendered": True}, {"session_written": True},
                   {"endpoint": "songs.library"}, {"fragment": True}):
        assert not caching.page_policy(**{**public, **change}).startswith("public"), change


def test_static_urls_carry_the_content_hash_and_are_immutable(app, client):
    html = client.get("/").get_data(as_text=True)
    src = re.search(r'src="(/static/js/app\.js\?v=([0-9a-f]+))"', html)
    assert src, "app.js is linked without its version"
    url, version = src.groups()
    assert version == hashlib.sha256((STATIC / "js" / "app.js").read_bytes()).hexdigest()[:12]

    fresh = client.get(url)
    assert fresh.status_code == 200
    assert fresh.headers["Cache-Control"] == "public, max-age=31536000, immutable"

    for other in ("/static/js/app.js?v=0123456789ab", "/static/js/app.js"):
        resp = client.get(other)
        assert resp.status_code == 200
        assert "immutable" not in resp.headers["Cache-Control"], other
        assert max_age(resp.headers["Cache-Control"]) <= 300, other


@pytest.mark.sqlite_only
@pytest.mark.parametrize("script_root", ["", "/studio"])
def test_links_built_once_per_request_equal_url_for(app, script_root):
    """The tiles' `link()` gives exactly what `url_for` gives: ids in paths, slugs in query
    strings, text that needs quoting, no arguments, and under a script root (a sub-path proxy)."""
    from flask import url_for

    from app import link

    calls = [("songs.page", {"song_id": "0123abcd" * 4}), ("songs.cover", {"song_id": "ffee" * 8}),
             ("songs.page", {"song_id": "ab" * 16}), ("profiles.profile", {"handle": "night_owl"}),
             ("main.index", {"category": "lo-fi"}), ("main.index", {"category": "rock"}),
             ("auth.login", {"next": "/?q=neon rain&category=lo-fi"}), ("auth.login", {"next": "/u/ünïcode"}),
             ("songs.page", {"song_id": "has space"}), ("playlists.add_from_card", {}),
             ("playlists.index", {"add": "0123abcd" * 4})]
    with app.test_request_context("/", base_url=f"http://localhost{script_root}/"):
        for _ in range(2):  # the second round comes from the request's cache
            for endpoint, values in calls:
                assert link(endpoint, **values) == url_for(endpoint, **values), (endpoint, values)
        assert url_for("songs.page", song_id="x").startswith(script_root + "/songs/")
