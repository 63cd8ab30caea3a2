"""Song tiles and library cards rendered once and reused while nothing they show changes.

Discover, search results, profiles and the Following tab show a grid of tiles
(`main/_song_tile.html`): rendering them was the largest part of those pages (70 tiles on
Discover). `song_tile(song)` renders a tile through that template and keeps the HTML in this
app, keyed by everything the tile shows, read fresh in the request like the songs themselves:

- the song: id, status, title, duration, listens, likes, its first three categories;
- its author: display name and handle;
- the viewer: whether they liked it, who they are, the page the like form (or a visitor's link
  to log in) comes back to and, signed in, their session's CSRF token and their playlists (the
  "Add to playlist" form).

A like, a rename, an unpublished song (it is no longer read) or a new playlist changes the key,
so a tile is never stale; the same tile shown again (to every visitor of Discover, or on the next
poll) costs a dictionary look-up. At most TILE_CACHE_SIZE tiles are kept (the least recently
shown go first), about 2 KB each. A change to what the tile template shows must be reflected in
`tile_key` (tests/test_feed.py renders a changed song and asserts the page shows the change).

The library's cards (`songs/_song_card.html`, through `song_card(song)`) are kept the same way
once a song is final (processed or failed: a card still being made shows its live progress and
queue position and is rendered every time), keyed by what a final card shows: title, tags,
duration, instrumental, offline, published, hidden and why, the error, the author's name,
whether the viewer owns it, and the viewer (`card_key`; tests/test_song_pages.py).
"""
from __future__ import annotations

import threading
from collections import OrderedDict

from flask import current_app, g, render_template, request
from flask_login import current_user
from markupsafe import Markup

TILE_CACHE_SIZE = 4096
TEMPLATE = "main/_song_tile.html"
CARD_TEMPLATE = "songs/_song_card.html"

_lock = threading.Lock()


def install(app) -> None:
    """The app's kept tiles (one store per app: two apps in a process may build different
    links) and the template functions."""
    app.extensions["tunesmith_tiles"] = OrderedDict()
    app.jinja_env.globals.update(song_tile=song_tile, song_card=song_card)


def _viewer() -> tuple:
    """What a tile shows of the viewer and the page, the same for every tile of a request: who
    looks (`caching.viewer`), the page a form or a link comes back to and, signed in, their
    session's CSRF token (`caching.csrf_fingerprint`: a kept tile's older signed token of the
    same session is as good as a new one, as for a cached page) and their playlists. A
    visitor's tile holds no token (the like is a link to log in), so every visitor shares the
    same kept tiles: a first visit, which starts a new session, renders none of them again."""
    from .caching import csrf_fingerprint, viewer

    key = g.get("_tile_viewer")
    if key is None:
        back = request.full_path.rstrip("?") if request.method == "GET" else None
        if current_user.is_authenticated:
            from flask_wtf.csrf import generate_csrf

            from .playlists import my_playlists

            generate_csrf()  # the session's raw token exists before it is fingerprinted
            playlists = tuple((p.id, p.title) for p in my_playlists())
            key = (viewer(), csrf_fingerprint(), back, playlists)
        else:
            key = (viewer(), None, back, ())
        g._tile_viewer = key
    return key


def tile_key(song) -> tuple:
    user = song.user
    cats = tuple((c.slug, c.name) for c in (getattr(song, "categories", None) or [])[:3])
    return (song.id, song.status, song.title, song.duration, song.listen_count, song.like_count,
            bool(getattr(song, "liked", False)), cats, user.display_name, user.handle, _viewer())


def card_key(song) -> tuple | None:
    """What a final song's card shows (None while it is being made: not kept)."""
    if song.status not in ("processed", "failed"):
        return None
    return ("card", song.id, song.status, song.title, song.tags, song.duration, song.instrumental, song.offline,
            song.published, song.hidden_at is not None, song.hidden_reason, song.error,
            song.user.display_name if song.status == "processed" else None, song.owned_by(current_user), _viewer())


def song_card(song) -> Markup:
    """The library card of `song` (`songs/_song_card.html`)."""
    key = card_key(song)
    if key is None:
        return Markup(render_template(CARD_TEMPLATE, song=song))
    return _kept(key, CARD_TEMPLATE, song)


def song_tile(song) -> Markup:
    """The tile of `song` (with `categories` and `liked` attached, as `feed.annotate` does)."""
    return _kept(tile_key(song), TEMPLATE, song)


def _kept(key: tuple, template: str, song) -> Markup:
    tiles = current_app.extensions["tunesmith_tiles"]
    with _lock:
        html = tiles.get(key)
        if html is not None:
            tiles.move_to_end(key)
            return html
    html = Markup(render_template(template, song=song))
    with _lock:
        tiles[key] = html
        while len(tiles) > TILE_CACHE_SIZE:
            tiles.popitem(last=False)
    return html
