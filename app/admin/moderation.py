"""Moderation, for admins (/admin/moderation): open reports grouped by song, and the steps a
moderator takes on them — hide a song from the public (its owner sees the reason), unhide it,
dismiss its reports, suspend its account or lift the suspension — with the log of recent steps.

The rules and the log are `core.moderation`; this module reads the form, calls it and renders.
Every step is a CSRF-checked POST: a plain form gets a 303 back to the page with a flash, HTMX
the page's body fragment (`admin/_moderation_body.html`); a refused step re-renders with the
message and its 4xx. Guarded like the people pages (`abort_unless_admin`).
"""
from __future__ import annotations

from flask import Blueprint, abort, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user

from core import moderation
from core.errors import UserError
from models import Song

from ..extensions import htmx
from .users import _user_or_404

bp = Blueprint("admin_moderation", __name__, url_prefix="/admin/moderation")


@bp.before_request
def _admins_only():
    from ..auth.views import abort_unless_admin

    return abort_unless_admin()


def _song_or_404(song_id: str) -> Song:
    song = Song.get_or_none(Song.id == song_id) if len(song_id) <= 32 else None
    if song is None:
        abort(404)
    return song


def _render(status: int = 200, error: str | None = None, error_for: str | None = None, message: str | None = None):
    ctx = dict(groups=moderation.open_reports(), hidden=moderation.hidden_songs(),
               suspended=moderation.suspended_users(), actions=moderation.recent_actions(),
               reasons=moderation.REASONS, error=error, error_for=error_for, message=message)
    template = "admin/_moderation_body.html" if htmx and not htmx.boosted else "admin/moderation.html"
    resp = make_response(render_template(template, **ctx), status)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _done(message: str):
    from ..main import feed

    feed.invalidate()  # this process's cached rankings; every process re-reads songs through the rule anyway
    if htmx:
        return _render(message=message)
    flash(message, "success")
    return redirect(url_for("admin_moderation.index"), 303)


def _refused(exc: UserError, target: str):
    return _render(exc.status, exc.message, target)


@bp.get("")
def index():
    return _render()


@bp.post("/songs/<song_id>/hide")
def hide(song_id):
    song = _song_or_404(song_id)
    try:
        closed = moderation.hide(song, current_user, request.form.get("reason", ""))
    except UserError as exc:
        return _refused(exc, f"song:{song.id}")
    extra = f" {closed} report{'s' if closed != 1 else ''} closed." if closed else ""
    return _done(f"“{song.title or 'Untitled'}” is hidden from the public; its owner sees why.{extra}")


@bp.post("/songs/<song_id>/unhide")
def unhide(song_id):
    song = _song_or_404(song_id)
    try:
        moderation.unhide(song, current_user)
    except UserError as exc:
        return _refused(exc, f"song:{song.id}")
    return _done(f"“{song.title or 'Untitled'}” is no longer hidden.")


@bp.post("/songs/<song_id>/dismiss")
def dismiss(song_id):
    song = _song_or_404(song_id)
    try:
        closed = moderation.dismiss(song, current_user, request.form.get("note", ""))
    except UserError as exc:
        return _refused(exc, f"song:{song.id}")
    return _done(f"Dismissed {closed} report{'s' if closed != 1 else ''} on “{song.title or 'Untitled'}”.")


@bp.post("/users/<user_id>/suspend")
def suspend(user_id):
    user = _user_or_404(user_id)
    song_id = request.form.get("song_id") or ""
    song = _song_or_404(song_id) if song_id else None
    if song is not None and song.user_id != user.id:
        abort(404)
    try:
        moderation.suspend(user, current_user, request.form.get("note", ""), song=song)
    except UserError as exc:
        return _refused(exc, f"user:{user.id}")
    return _done(f"{user.email} is suspended: signed out everywhere, API tokens revoked, songs hidden.")


@bp.post("/users/<user_id>/lift")
def lift(user_id):
    user = _user_or_404(user_id)
    try:
        moderation.lift(user, current_user, request.form.get("note", ""))
    except UserError as exc:
        return _refused(exc, f"user:{user.id}")
    return _done(f"{user.email} is no longer suspended.")
