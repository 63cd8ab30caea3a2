from flask import abort, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from core import dispatch, search, songs
from models import Song, User

from ..api import paging
from ..extensions import htmx, settings
from ..main.feed import read_cursor
from . import bp, get_owned_song_or_404

PAGE_SIZE = 24
MAX_SEARCH_PAGE = 500


@bp.route("/library")
@login_required
def library():
    """The signed-in person's songs, newest first (variants in order), `?status=` filtered. The
    list pages by keyset (`?after=<cursor>`, the API's cursor over (created_at, variant, id), on
    song (user_id, created_at DESC, variant, id)); a search (`?q=`) is ranked, so it pages by
    `?page=N`, an OFFSET bounded to MAX_SEARCH_PAGE. An old `?page=N` without a search shows the
    first page; a cursor that does not decode is a 400."""
    q = (request.args.get("q") or "").strip()[:100]
    status = request.args.get("status") or ""
    query = Song.select(Song, User).join(User).where(Song.user == current_user.id)  # author joined: no query per card
    if status in Song.STATUSES:
        query = query.where(Song.status == status)
    page, after, next_cursor = 1, None, None
    if q:
        try:
            page = max(1, min(MAX_SEARCH_PAGE, int(request.args.get("page", 1))))
        except ValueError:
            page = 1
        songs = search.page(query, q, (page - 1) * PAGE_SIZE, PAGE_SIZE + 1, newest=paging.order(Song))  # best first
        has_more = len(songs) > PAGE_SIZE
        songs = songs[:PAGE_SIZE]
    else:
        after = (request.args.get("after") or "").strip() or None
        key = read_cursor(after)  # a 400 for a cursor we did not give out
        if key is not None:  # the range's start, so the index scan begins where the last page ended
            query = query.where(Song.created_at <= key[0])
        songs, next_cursor = paging.page(query, Song, after, PAGE_SIZE)
        has_more = next_cursor is not None
    template = "songs/_library_list.html" if htmx and htmx.target == "library-list" else "songs/library.html"
    return render_template(template, songs=songs, q=q, status=status, page=page, has_more=has_more,
                           after=after, next_cursor=next_cursor)


@bp.route("/songs/<song_id>/status")
def status(song_id):
    """The song's card, polled by HTMX while the song is being made. While it is unfinished the
    card carries an ETag (`caching.status_etag`): a poll of an unchanged song reads a few columns
    of one row by its key and is answered 304 without rendering. A finished card (the viewer's
    playlists, likes) is rendered each time; it is fetched once, when the song finishes."""
    from .. import caching

    def position(s):
        return queue_position(s) if s.owned_by(current_user) else None

    # A revalidating poll reads the card's moving parts first (most are answered 304 from them);
    # a first poll, which cannot be a 304, reads the whole row once.
    slim = bool(request.if_none_match)
    row = Song.polled(song_id, whole=not slim) if len(song_id) <= 32 else None
    if row is None or not row.visible_to(current_user):
        abort(404)
    if slim and not row.is_final:
        unchanged = caching.not_modified(caching.status_etag(row, position(row)))
        if unchanged is not None:
            return unchanged
    song = Song.polled(song_id, whole=True) if slim else row  # visibility was checked on `row`
    if song is None:
        abort(404)
    if song.is_final:
        return render_template("songs/_song_card.html", song=song), 200, {"Cache-Control": "no-store"}
    pos = position(song)
    html = render_template("songs/_song_card.html", song=song,
                           queue_position=lambda s: pos if s.id == song.id else queue_position(s))
    return caching.with_etag(make_response(html), caching.status_etag(song, pos))


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
