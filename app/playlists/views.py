"""Playlist pages and actions.

GET /playlists lists the signed-in person's playlists with a form to make one; GET
/playlists/<id> shows one to its owner, or to anyone while it is public (404 otherwise, never
403). Every change is a POST (CSRF-checked; HTMX sends the token as a header) that only the
owner may make: others get 404. Plain form posts are answered with a 303 back to the page (or
to `next`, for the "Add to playlist" form on song cards); HTMX requests get the fragment that
changed. Refused input gets a 4xx with the message and changes nothing.

The "Add to playlist" form on a card posts to /playlists/add with `playlist_id` and `song_id`
(a <select> cannot change a form's URL without JavaScript); /playlists/<id>/add does the same
for one playlist.
"""
from __future__ import annotations

from urllib.parse import urlparse

from flask import abort, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from core import playlists
from core.errors import UserError
from models import Playlist, Song

from ..extensions import go_to, htmx
from ..songs.pages import absolute_url
from . import bp

OG_SONGS = 10


def _fragment() -> bool:
    """An HTMX request that wants a fragment back (a boosted form wants the whole page)."""
    return bool(htmx) and not htmx.boosted


def _safe_next(target: str | None, default: str) -> str:
    if target:
        parsed = urlparse(target)
        if not parsed.scheme and not parsed.netloc and target.startswith("/") and not target.startswith("//"):
            return target
    return default


def _owned_or_404(playlist_id) -> Playlist:
    playlist = playlists.get(playlist_id)
    if playlist is None or not playlist.owned_by(current_user):
        abort(404)
    return playlist


def _flag(name: str) -> bool:
    return (request.form.get(name) or "").strip().lower() in ("1", "on", "true", "yes")


def _song_id_from(raw) -> str:
    """A song id, or the id in a pasted song link (…/songs/<id>)."""
    value = str(raw or "").strip()
    if "/songs/" in value:
        value = value.split("/songs/", 1)[1].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    return value


def _visible_song(song_id) -> Song | None:
    song_id = str(song_id or "")
    song = Song.get_or_none(Song.id == song_id) if song_id and len(song_id) <= playlists.ID_MAX else None
    return song if song is not None and song.visible_to(current_user) else None


# ------------------------------------------------------------------------------- rendering
def share_meta(playlist: Playlist, shown: list) -> dict:
    """Open Graph / Twitter card fields for a public playlist page (absolute URLs)."""
    public = [e for e in shown if e.public]
    count = len(public)
    parts = [f"A playlist by {playlist.user.display_name}", f"{count} song{'' if count == 1 else 's'}"]
    if playlist.description:
        parts.append(" ".join(playlist.description.split())[:160])
    cover = next((e.song for e in public if e.song.cover_key), None)
    return {"title": playlist.title, "description": " · ".join(parts),
            "url": absolute_url("playlists.page", playlist_id=playlist.id),
            "image": absolute_url("songs.cover", song_id=cover.id) if cover else None,
            "songs": [absolute_url("songs.page", song_id=e.song.id) for e in public[:OG_SONGS]]}


def _page_context(playlist: Playlist, **extra) -> dict:
    shown = playlists.entries(playlist, current_user)
    ctx = dict(playlist=playlist, entries=shown, owner=playlist.owned_by(current_user),
               og=share_meta(playlist, shown) if playlist.public else None,
               title_max=playlists.TITLE_MAX, description_max=playlists.DESCRIPTION_MAX)
    ctx.update(extra)
    return ctx


def _no_store(resp, playlist: Playlist | None = None):
    if playlist is None or not playlist.public or playlist.owned_by(current_user):
        resp.headers["Cache-Control"] = "private, no-store"
    return resp


def _render_page(playlist: Playlist, status: int = 200, **extra):
    template = "playlists/_main.html" if _fragment() else "playlists/page.html"
    return _no_store(make_response(render_template(template, **_page_context(playlist, **extra)), status), playlist)


def _render_index(status: int = 200, errors: dict | None = None, form: dict | None = None, add_song=None):
    resp = make_response(render_template(
        "playlists/index.html", playlists=playlists.of(current_user), errors=errors or {}, form=form or {},
        add_song=add_song, title_max=playlists.TITLE_MAX, description_max=playlists.DESCRIPTION_MAX), status)
    return _no_store(resp)


def _done(playlist: Playlist, message: str):
    """After an owner action on the playlist page: the fragment for HTMX, else a 303 back."""
    if _fragment():
        return _render_page(playlist, notice=message)
    flash(message, "success")
    return redirect(url_for("playlists.page", playlist_id=playlist.id), 303)


def _failed(playlist: Playlist, exc: UserError, **extra):
    """A refused action: the page (or its fragment) with the message, and the 4xx."""
    errors = {exc.field or "form": exc.message}
    return _render_page(playlist, exc.status, action_error=exc.message, errors=errors, **extra)


# ------------------------------------------------------------------------------- pages
@bp.get("")
@login_required
def index():
    return _render_index(add_song=_visible_song(request.args.get("add")))  # "New playlist with this song"


@bp.post("")
@login_required
def create():
    form = {"title": (request.form.get("title") or "")[:500],
            "description": (request.form.get("description") or "")[:5000], "public": _flag("public")}
    song_id = (request.form.get("song_id") or "").strip()
    try:
        playlist = playlists.create(current_user, form["title"], form["description"], form["public"],
                                    song_id=song_id or None)
    except UserError as exc:
        return _render_index(exc.status, {exc.field or "form": exc.message}, form, _visible_song(song_id))
    flash(f"Made the playlist “{playlist.title}”." + (" The song is in it." if song_id else ""), "success")
    target = url_for("playlists.page", playlist_id=playlist.id)
    return go_to(target, _fragment(), 201)


@bp.get("/<playlist_id>")
def page(playlist_id):
    playlist = playlists.get(playlist_id)
    if playlist is None or not playlist.visible_to(current_user):
        abort(404)
    return _render_page(playlist)


# ------------------------------------------------------------------------------- adding
def _card(song_id: str, selected: Playlist | None, error: UserError | None = None, notice: str | None = None):
    """The "Add to playlist" form again, with what happened (HTMX, view=card)."""
    status = error.status if error else 200
    song = _visible_song(song_id)
    if song is None:
        return make_response(error.message if error else "", status)
    resp = make_response(render_template("playlists/_add_form.html", song=song,
                                         selected=selected.id if selected else None,
                                         add_error=error.message if error else None, add_notice=notice), status)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _add(playlist: Playlist):
    song_id = _song_id_from(request.form.get("song_id"))
    card = _fragment() and request.form.get("view") == "card"
    try:
        song = playlists.add(playlist, song_id)
    except UserError as exc:
        return _card(song_id, playlist, error=exc) if card else _failed(playlist, exc)
    message = f"Added “{song.title or 'Untitled'}” to “{playlist.title}”."
    if card:
        return _card(song_id, playlist, notice=message)
    if _fragment():
        return _render_page(playlist, notice=message)
    flash(message, "success")
    return redirect(_safe_next(request.form.get("next"), url_for("playlists.page", playlist_id=playlist.id)), 303)


@bp.post("/add")
def add_from_card():
    """The "Add to playlist" form of a song card or page: `playlist_id` and `song_id`."""
    playlist = playlists.get(request.form.get("playlist_id"))
    if playlist is None or not playlist.owned_by(current_user):
        if current_user.is_authenticated and _fragment() and request.form.get("view") == "card":
            return _card(_song_id_from(request.form.get("song_id")), None,
                         error=UserError("Choose one of your playlists.", 404, "playlist_id", code="not_found"))
        abort(404)
    return _add(playlist)


@bp.post("/<playlist_id>/add")
def add(playlist_id):
    return _add(_owned_or_404(playlist_id))


# ------------------------------------------------------------------------------- the order
def _change(playlist_id, change, message: str):
    """Apply `change(playlist)` to one of the person's playlists: its refusal, or the page."""
    playlist = _owned_or_404(playlist_id)
    try:
        change(playlist)
    except UserError as exc:
        return _failed(playlist, exc)
    return _done(playlist, message)


@bp.post("/<playlist_id>/remove")
def remove(playlist_id):
    return _change(playlist_id, lambda p: playlists.remove(p, request.form.get("song_id")),
                   "Removed from the playlist.")


@bp.post("/<playlist_id>/move")
def move(playlist_id):
    return _change(playlist_id, lambda p: playlists.move(p, request.form.get("song_id"),
                                                          request.form.get("direction")), "Moved.")


@bp.post("/<playlist_id>/reorder")
def reorder(playlist_id):
    return _change(playlist_id, lambda p: playlists.reorder(p, playlists.parse_ids(request.form.getlist("song_ids"))),
                   "Saved the new order.")


# ------------------------------------------------------------------------------- the playlist
@bp.post("/<playlist_id>/rename")
def rename(playlist_id):
    playlist = _owned_or_404(playlist_id)
    title = request.form.get("title", "")
    description = request.form.get("description")  # optional: only changed when sent
    try:
        playlists.rename(playlist, title, description)
    except UserError as exc:
        return _failed(playlist, exc, edit_open=True, edit_title=title[:500],
                       edit_description=(description if description is not None else playlist.description)[:5000])
    return _done(playlist, f"Saved “{playlist.title}”.")


@bp.post("/<playlist_id>/publish")
def publish(playlist_id):
    playlist = _owned_or_404(playlist_id)
    playlists.set_public(playlist, True)
    return _done(playlist, f"“{playlist.title}” is public: anyone with the link can open it.")


@bp.post("/<playlist_id>/unpublish")
def unpublish(playlist_id):
    playlist = _owned_or_404(playlist_id)
    playlists.set_public(playlist, False)
    return _done(playlist, f"“{playlist.title}” is private again: only you can open it.")


@bp.post("/<playlist_id>/delete")
def delete(playlist_id):
    playlist = _owned_or_404(playlist_id)
    playlists.delete(playlist)
    flash(f"Deleted the playlist “{playlist.title}”. Its songs are still in their places.", "success")
    return go_to(url_for("playlists.index"), _fragment())
