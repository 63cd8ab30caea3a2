"""Songs: the library, live status cards, the song page, owner actions, media and the studio."""
from flask import Blueprint, abort
from flask_login import current_user

from models import Song

bp = Blueprint("songs", __name__)


def register(app):
    from . import library, media, pages, studio  # noqa: F401  (views register on bp)

    app.register_blueprint(bp)
    app.register_blueprint(media.files_bp)
    app.jinja_env.globals["queue_position"] = library.queue_position


def _song_or_none(song_id: str) -> Song | None:
    return Song.by_id(song_id) if len(song_id) <= 32 else None


def get_visible_song_or_404(song_id: str) -> Song:
    """The song if the current person may see it; 404 otherwise (never 403: a private song's
    existence is not revealed)."""
    song = _song_or_none(song_id)
    if song is None or not song.visible_to(current_user):
        abort(404)
    return song


def get_owned_song_or_404(song_id: str) -> Song:
    song = _song_or_none(song_id)
    if song is None or not song.owned_by(current_user):
        abort(404)
    return song
