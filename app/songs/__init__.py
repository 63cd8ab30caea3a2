"""Songs: the library, live status cards, media (audio/cover/download) and owner actions."""
from flask import Blueprint

bp = Blueprint("songs", __name__)


def register(app):
    from . import library, media  # noqa: F401  (views register on bp)

    import importlib

    try:
        importlib.import_module(f"{__name__}.pages")  # song page and owner actions
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.pages":
            raise
    importlib.import_module(f"{__name__}.studio")  # retake, extend, repaint, remix, stems
    app.register_blueprint(bp)
    app.register_blueprint(media.files_bp)
    app.jinja_env.globals["queue_position"] = library.queue_position


def get_visible_song_or_404(song_id: str):
    """The song if the current person may see it; 404 otherwise (never 403: a private song's
    existence is not revealed)."""
    from flask import abort
    from flask_login import current_user

    from models import Song

    song = Song.get_or_none(Song.id == song_id) if len(song_id) <= 32 else None
    if song is None or not song.visible_to(current_user):
        abort(404)
    return song


def get_owned_song_or_404(song_id: str):
    from flask import abort
    from flask_login import current_user

    from models import Song

    song = Song.get_or_none(Song.id == song_id) if len(song_id) <= 32 else None
    if song is None or not song.owned_by(current_user):
        abort(404)
    return song
