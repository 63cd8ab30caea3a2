"""The song page and the actions on a song: publish, unpublish, rename, delete (owner), like and
report (signed-in people who do not own it).

Every action is a POST (CSRF-checked by the global CSRFProtect; HTMX sends the token as a header).
HTMX requests get the fragment that changed back (the library card or the song page's main
block, chosen by the form's `view` field); plain form posts get a 303 redirect. Bad input gets a
4xx with a message and changes nothing. Owner actions on someone else's song are 404, as is any
action on a song the person may not see.
"""
from __future__ import annotations

import mimetypes
from urllib.parse import urlparse

from flask import flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user

from core import moderation, songs
from core.errors import UserError
from core.storage import StorageUnavailable, get_storage
from models import Song

from ..extensions import htmx, limiter, settings
from . import bp, get_owned_song_or_404, get_visible_song_or_404

AUDIO_TYPES = {"mp3": "audio/mpeg", "ogg": "audio/ogg", "wav": "audio/wav", "flac": "audio/flac"}
VIEWS = {"card": "songs/_song_card.html", "page": "songs/_song_main.html"}


def absolute_url(endpoint: str, **values) -> str:
    """An absolute URL for link previews: BASE_URL when set, else the request's host."""
    base = settings().BASE_URL
    if base:
        return base.rstrip("/") + url_for(endpoint, **values)
    return url_for(endpoint, _external=True, **values)


def share_meta(song: Song) -> dict:
    """Open Graph / Twitter card fields for a song page (absolute URLs)."""
    minutes, seconds = divmod(int(song.duration or 0), 60)
    parts = [f"by {song.user.display_name}", f"{minutes}:{seconds:02d}"]
    if song.tags:
        parts.append(song.tags[:160])
    meta = {"title": song.title or "Untitled", "description": " · ".join(parts),
            "url": absolute_url("songs.page", song_id=song.id), "image": None, "audio": None, "audio_type": None}
    if song.cover_key:
        meta["image"] = absolute_url("songs.cover", song_id=song.id)
    if song.status == "processed" and (song.stream_key or song.audio_key):
        meta["audio"] = absolute_url("songs.audio", song_id=song.id)
        key = song.stream_key or song.audio_key
        ext = key.rsplit(".", 1)[-1].lower()
        meta["audio_type"] = AUDIO_TYPES.get(ext) or mimetypes.guess_type(key)[0] or "audio/mpeg"
    return meta


def _view() -> str:
    view = request.form.get("view", "page")
    return view if view in VIEWS else "page"


def _safe_next(target: str | None, default: str) -> str:
    if target:
        parsed = urlparse(target)
        if not parsed.scheme and not parsed.netloc and target.startswith("/") and not target.startswith("//"):
            return target
    return default


def _page_context(song: Song) -> dict:
    categories = Song.categories_for([song.id]).get(song.id, [])
    return dict(song=song, categories=categories, liked=song.liked_by(current_user), og=share_meta(song))


def _render_view(song: Song, view: str, status: int = 200, **extra):
    ctx = _page_context(song) if view == "page" else {"song": song}
    ctx.update(extra)
    resp = make_response(render_template(VIEWS[view], **ctx), status)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _done(song: Song, message: str):
    """After a successful owner action: the changed fragment for HTMX, else back to the page."""
    if htmx:
        return _render_view(song, _view())
    flash(message, "success")
    target = url_for("songs.library") if _view() == "card" else url_for("songs.page", song_id=song.id)
    return redirect(target, 303)


def _failed(song: Song, exc: UserError, **extra):
    """A refused action: the fragment with the message (HTMX) or the whole page, with a 4xx."""
    if htmx:
        return _render_view(song, _view(), exc.status, action_error=exc.message, **extra)
    ctx = _page_context(song)
    ctx.update(action_error=exc.message, **extra)
    return render_template("songs/page.html", **ctx), exc.status


@bp.route("/songs/<song_id>")
def page(song_id):
    song = get_visible_song_or_404(song_id)
    resp = make_response(render_template("songs/page.html", **_page_context(song)))
    if not song.published or song.is_hidden:
        resp.headers["Cache-Control"] = "private, no-store"
    return resp


@bp.route("/songs/<song_id>/publish", methods=["POST"])
def publish(song_id):
    song = get_owned_song_or_404(song_id)
    try:
        songs.publish(song)
    except UserError as exc:
        return _failed(song, exc)
    return _done(song, f"“{song.title}” is public: it shows in the feed and anyone with the link can play it.")


@bp.route("/songs/<song_id>/unpublish", methods=["POST"])
def unpublish(song_id):
    song = get_owned_song_or_404(song_id)
    song.unpublish()
    return _done(song, f"“{song.title}” is private again: only you can see it.")


@bp.route("/songs/<song_id>/rename", methods=["POST"])
def rename(song_id):
    song = get_owned_song_or_404(song_id)
    raw = request.form.get("title", "")
    try:
        songs.rename(song, raw)
    except UserError as exc:
        return _failed(song, exc, rename_error=exc.message, rename_value=raw[:500])
    return _done(song, f"Renamed to “{song.title}”.")


@bp.route("/songs/<song_id>/delete", methods=["POST"])
def delete(song_id):
    song = get_owned_song_or_404(song_id)
    title = song.title or "Untitled"
    try:
        songs.delete_song(song, get_storage(settings()))
    except StorageUnavailable:
        return _failed(song, UserError(
            "The file store did not answer, so nothing was deleted. Try again in a moment.", 503, code="unavailable"))
    message = f"Deleted “{title}” and its files."
    if htmx and _view() == "card":
        # The card swaps itself out (empty body); the message joins the flashes out of band.
        return render_template("songs/_flash_oob.html", message=message, category="success")
    flash(message, "success")
    if htmx:
        resp = make_response("", 200)
        resp.headers["HX-Redirect"] = url_for("songs.library")
        return resp
    return redirect(url_for("songs.library"), 303)


@bp.route("/songs/<song_id>/like", methods=["POST"])
def like(song_id):
    song = get_visible_song_or_404(song_id)
    back = _safe_next(request.form.get("next"), url_for("songs.page", song_id=song.id))
    if not current_user.is_authenticated:
        login = url_for("auth.login", next=back)
        if htmx:
            resp = make_response("Log in to like songs.", 401)
            resp.headers["HX-Redirect"] = login
            return resp
        flash("Log in to like songs.", "info")
        return redirect(login, 303)
    wanted = request.form.get("liked")
    try:
        liked = songs.like(song, current_user, None if wanted not in ("0", "1") else wanted == "1")
    except UserError as exc:
        if htmx:
            return render_template("songs/_like_button.html", song=song, liked=song.liked_by(current_user),
                                   like_error=exc.message), exc.status
        flash(exc.message, "error")
        return redirect(back, 303)
    if htmx:
        resp = make_response(render_template("songs/_like_button.html", song=song, liked=liked, next_url=back))
        resp.headers["Cache-Control"] = "no-store"
        return resp
    return redirect(back, 303)


def _reporter_key() -> str:
    return f"report:{current_user.get_id()}" if current_user.is_authenticated else f"report:{request.remote_addr}"


@bp.route("/songs/<song_id>/report", methods=["POST"])
@limiter.limit(lambda: settings().REPORT_RATE_LIMIT, key_func=_reporter_key, methods=["POST"])
def report(song_id):
    """Report a song to the moderators (core.moderation.report): the same answer whether or not
    this person reported it before; 404 for a song they cannot see; 400 for a bad reason or
    their own song, nothing written."""
    song = get_visible_song_or_404(song_id)
    if not current_user.is_authenticated:
        login = url_for("auth.login", next=url_for("songs.page", song_id=song.id))
        if htmx:
            resp = make_response("Log in to report songs.", 401)
            resp.headers["HX-Redirect"] = login
            return resp
        flash("Log in to report songs.", "info")
        return redirect(login, 303)
    form = {"reason": request.form.get("reason", "")[:20], "details": request.form.get("details", "")[:5000]}
    try:
        moderation.report(song, current_user, request.form.get("reason"), request.form.get("details"))
    except UserError as exc:
        if htmx:
            return render_template("songs/_report.html", song=song, report_error=exc.message, report_form=form,
                                   report_open=True), exc.status
        ctx = _page_context(song)
        ctx.update(report_error=exc.message, report_form=form, report_open=True)
        if song.owned_by(current_user):  # the owner has no report form to show the message in
            ctx["action_error"] = exc.message
        return render_template("songs/page.html", **ctx), exc.status
    if htmx:
        resp = make_response(render_template("songs/_report.html", song=song, report_sent=True))
        resp.headers["Cache-Control"] = "no-store"
        return resp
    flash(moderation.THANKS, "success")
    return redirect(url_for("songs.page", song_id=song.id), 303)
