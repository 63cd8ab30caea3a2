"""Playlists (/playlists): a person's ordered lists of songs, private or public, and the
"Add to playlist" form on song cards and song pages. The rules are in core.playlists."""
from flask import Blueprint, g
from flask_login import current_user

bp = Blueprint("playlists", __name__, url_prefix="/playlists")


def my_playlists() -> list:
    """The signed-in person's playlists (id, title) for the "Add to playlist" forms: read once
    per request, however many song cards the page has; empty for visitors."""
    if "my_playlists" not in g:
        from core import playlists

        g.my_playlists = playlists.choices(current_user) if current_user.is_authenticated else []
    return g.my_playlists


def register(app):
    from . import views  # noqa: F401  (views register on bp)

    app.register_blueprint(bp)
    app.jinja_env.globals["my_playlists"] = my_playlists
