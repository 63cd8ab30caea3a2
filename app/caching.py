"""HTTP caching: conditional GETs, Cache-Control for pages, versioned static files.

What is cached, and by whom (`install(app)` adds the response hook; views that know better set
their own Cache-Control, which the hook leaves alone):

- **Pages** (HTML, GET, 200). Every page built on `base.html` carries a CSRF token (the
  `csrf-token` meta tag and the `<body hx-headers>`) bound to the visitor's session, signed-out
  visitors included, and a first visit also writes that session (Set-Cookie). Such a page must
  never sit in a shared cache, where another visitor would get someone else's token. So:
  signed-in pages are `private, no-cache`; a public page (`PUBLIC_PAGES`) for a signed-out
  visitor is `private, max-age=30` (the visitor's own browser only, `Vary: Cookie`, so signing
  in or out fetches it afresh), or `private, no-cache` while the response writes the session
  (a new token, a flashed message shown) or answers an htmx request. Only a public page that
  rendered no CSRF token, wrote no session and went to a signed-out visitor may be
  `public, max-age=30`; none does today, the rule makes it safe should one ever stop embedding
  the token.
  Every such page gets a weak ETag over its body with the CSRF token replaced by a fingerprint
  of the session's token (an older signed token of the same session is just as valid), and a
  revalidation of an unchanged page is answered 304 without the body.
- **Status cards** (`/songs/<id>/status`, polled by HTMX): `status_etag(song, position)` from the
  few columns the card shows while the song is being made, the viewer and the CSRF fingerprint;
  the view answers an unchanged poll 304 before rendering anything. The browser sends
  If-None-Match by itself for htmx's XHR polls and hands htmx the cached card (as a 200) on a
  304, so the card swaps in unchanged, re-arms its poll, and changes when the ETag does.
- **Media redirects** (`/songs/<id>/cover`, avatars): `private, max-age` a third of the signed
  URL's lifetime, so the cached redirect never outlives its signature.
- **Static files**: `static_url("js/app.js")` is `/static/js/app.js?v=<sha256[:12]>` of the file
  (hashed once per file version); a request whose `v` matches the file gets
  `public, max-age=31536000, immutable`, any other (no `v`, a stale one) `public, max-age=60`.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from flask import current_app, g, make_response, request, session, url_for
from flask_login import current_user

PUBLIC_PAGES = frozenset({"main.index", "songs.page", "playlists.page", "profiles.profile"})
PUBLIC_PAGE_MAX_AGE = 30
STATIC_IMMUTABLE = "public, max-age=31536000, immutable"
STATIC_SHORT = "public, max-age=60"
REVALIDATE = "private, no-cache"

_file_hashes: dict[str, tuple[tuple[int, int], str]] = {}


# ---------------------------------------------------------------------------------- static files
def file_version(filename: str) -> str | None:
    """The first 12 hex digits of the static file's SHA-256, hashed once per version of the file
    (its size and modification time); None when there is no such file."""
    folder = current_app.static_folder
    if not folder:
        return None
    path = Path(folder) / filename
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = str(path)
    stamp = (st.st_mtime_ns, st.st_size)
    cached = _file_hashes.get(key)
    if cached is None or cached[0] != stamp:
        cached = (stamp, hashlib.sha256(path.read_bytes()).hexdigest()[:12])
        _file_hashes[key] = cached
    return cached[1]


def static_url(filename: str) -> str:
    version = file_version(filename)
    return url_for("static", filename=filename, v=version) if version else url_for("static", filename=filename)


# ---------------------------------------------------------------------------------- ETags
def csrf_fingerprint() -> str:
    """Stands for this session's CSRF token in an ETag: a cached page's older signed token is as
    good as a fresh one while the session keeps its raw token (and, with a time limit set, while
    the token is young)."""
    raw = session.get(current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token")) or ""
    limit = current_app.config.get("WTF_CSRF_TIME_LIMIT")
    bucket = ""
    if limit:
        bucket = str(int(time.time() // max(1, int(limit) // 2)))
    return hashlib.sha256(f"{raw}|{bucket}".encode()).hexdigest()[:16]


def viewer() -> str:
    if current_user.is_authenticated:
        return f"u{current_user.id}.{current_user.session_version}"
    return "anon"


def etag(*parts) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


def status_etag(song, position) -> str:
    """Everything a status card of an unfinished song shows: its row's moving parts, the queue
    position, who looks (owner actions, their CSRF token)."""
    return etag("song-card", song.id, song.status, song.stage, song.progress, song.attempt, song.updated_at,
                song.title, position, viewer(), csrf_fingerprint())


def not_modified(tag: str, cache_control: str = REVALIDATE):
    """A 304 for a request whose If-None-Match holds `tag`; None otherwise (render as usual)."""
    if request.method not in ("GET", "HEAD") or not request.if_none_match.contains_weak(tag):
        return None
    resp = make_response("", 304)
    resp.set_etag(tag, weak=True)
    resp.headers["Cache-Control"] = cache_control
    resp.vary.add("Cookie")
    return resp


def with_etag(resp, tag: str, cache_control: str = REVALIDATE):
    resp.set_etag(tag, weak=True)
    resp.headers["Cache-Control"] = cache_control
    resp.vary.add("Cookie")
    return resp


# ---------------------------------------------------------------------------------- pages
def page_policy(*, endpoint: str | None, signed_in: bool, csrf_rendered: bool, session_written: bool,
                fragment: bool = False) -> str:
    """Cache-Control for a page (see the module's notes). An htmx request (a fragment chosen by
    its HX-Target, or a boosted page) is always revalidated: the ETag, not a Vary list, keeps one
    answer from standing in for another."""
    if signed_in or endpoint not in PUBLIC_PAGES or session_written or fragment:
        return REVALIDATE
    if csrf_rendered:
        return f"private, max-age={PUBLIC_PAGE_MAX_AGE}"
    return f"public, max-age={PUBLIC_PAGE_MAX_AGE}"


def _page_etag(resp) -> str:
    body = resp.get_data()
    token = g.get(current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token"))
    if token:
        body = body.replace(token.encode(), csrf_fingerprint().encode())
    return hashlib.sha256(body).hexdigest()[:32]


def _page_headers(resp):
    if "Cache-Control" not in resp.headers:
        token_field = current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token")
        resp.headers["Cache-Control"] = page_policy(
            endpoint=request.endpoint, signed_in=bool(current_user.is_authenticated),
            csrf_rendered=token_field in g, session_written=bool(getattr(session, "modified", False)),
            fragment="HX-Request" in request.headers)
    resp.vary.add("Cookie")
    if "no-store" in resp.headers["Cache-Control"] or "ETag" in resp.headers:
        return resp
    resp.set_etag(_page_etag(resp), weak=True)
    return resp.make_conditional(request)


def _static_headers(resp):
    filename = (request.view_args or {}).get("filename", "")
    wanted = request.args.get("v")
    immutable = bool(wanted) and resp.status_code in (200, 304) and wanted == file_version(filename)
    resp.headers["Cache-Control"] = STATIC_IMMUTABLE if immutable else STATIC_SHORT
    return resp


def install(app) -> None:
    @app.after_request
    def _caching(resp):
        if request.endpoint == "static":
            return _static_headers(resp)
        if (request.method in ("GET", "HEAD") and resp.status_code == 200 and resp.mimetype == "text/html"
                and not resp.is_streamed and not resp.direct_passthrough):
            return _page_headers(resp)
        return resp

    app.jinja_env.globals["static_url"] = static_url
