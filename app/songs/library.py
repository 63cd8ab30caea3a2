from flask import render_template, request
from flask_login import current_user, login_required

from models import Song, User

from ..extensions import htmx
from . import bp, get_visible_song_or_404

PAGE_SIZE = 24


@bp.route("/library")
@login_required
def library():
    q = (request.args.get("q") or "").strip()[:100]
    status = request.args.get("status") or ""
    try:
        page = max(1, int(request.args.get("page", 1)))
    except ValueError:
        page = 1
    query = Song.select(Song, User).join(User).where(Song.user == current_user.id)  # author joined: no query per card
    if q:
        query = query.where(Song.search_expression(q))
    if status in Song.STATUSES:
        query = query.where(Song.status == status)
    songs = list(query.order_by(Song.created_at.desc(), Song.variant).paginate(page, PAGE_SIZE + 1))
    has_more = len(songs) > PAGE_SIZE
    songs = songs[:PAGE_SIZE]
    template = "songs/_library_list.html" if htmx and htmx.target == "library-list" else "songs/library.html"
    return render_template(template, songs=songs, q=q, status=status, page=page, has_more=has_more)


@bp.route("/songs/<song_id>/status")
def status(song_id):
    """The song's card, polled by HTMX while the song is being made."""
    song = get_visible_song_or_404(song_id)
    resp = render_template("songs/_song_card.html", song=song)
    return resp, 200, {"Cache-Control": "no-store", "Vary": "HX-Request"}
