from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from core import dispatch, search, songs
from models import Song, User

from ..extensions import htmx, settings
from . import bp, get_owned_song_or_404, get_visible_song_or_404

PAGE_SIZE = 24


@bp.route("/library")
@login_required
def library():
    q = (request.args.get("q") or "").strip()[:100]
    status = request.args.get("status") or ""
    try:
        page = max(1, min(100_000, int(request.args.get("page", 1))))  # a huge page overflows the OFFSET
    except ValueError:
        page = 1
    query = Song.select(Song, User).join(User).where(Song.user == current_user.id)  # author joined: no query per card
    if status in Song.STATUSES:
        query = query.where(Song.status == status)
    newest = (Song.created_at.desc(), Song.variant)
    query = search.songs(query, q, newest=newest) if q else query.order_by(*newest)  # best match first
    songs = list(query.limit(PAGE_SIZE + 1).offset((page - 1) * PAGE_SIZE))
    has_more = len(songs) > PAGE_SIZE
    songs = songs[:PAGE_SIZE]
    template = "songs/_library_list.html" if htmx and htmx.target == "library-list" else "songs/library.html"
    return render_template(template, songs=songs, q=q, status=status, page=page, has_more=has_more)


@bp.route("/songs/<song_id>/status")
def status(song_id):
    """The song's card, polled by HTMX while the song is being made."""
    song = get_visible_song_or_404(song_id)
    resp = render_template("songs/_song_card.html", song=song)
    return resp, 200, {"Cache-Control": "no-store"}


@bp.route("/songs/<song_id>/cancel", methods=["POST"])
@login_required
def cancel(song_id):
    """Cancel the song's generation: a queued one never reaches a worker and its credits come
    back at once; a running one stops at its next step and then returns its credits."""
    song = get_owned_song_or_404(song_id)
    outcome = songs.cancel(settings(), song.generation)
    message = {"finished": "This song is already finished.", "cancelled": "Cancelled. Your credits are back.",
               "stopping": "Stopping… your credits come back as soon as the worker stops."}[outcome]
    song = Song.get_by_id(song.id)
    if htmx:
        return render_template("songs/_song_card.html", song=song)
    flash(message, "info")
    return redirect(url_for("songs.library"), 303)


def queue_position(song) -> int | None:
    """How many generations start before this queued song (None when unknown)."""
    if song.status != "queued":
        return None
    try:
        return dispatch.position(settings(), song.generation)
    except Exception:  # Redis away: the card simply shows no position
        return None
