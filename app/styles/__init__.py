"""Styles (/styles): a person trains a style from 4-30 of their own songs or uploads, watches
its training, publishes it for others to use (never to download) and deletes it; the create
form, the studio and the API take its `style_id`. The rules are in core.styles."""
from flask import Blueprint, g
from flask_login import current_user

bp = Blueprint("styles", __name__, url_prefix="/styles")


def my_styles() -> list:
    """The styles the signed-in person may make songs with (their own ready ones, then
    published ones), read once per request; empty for visitors."""
    if "my_styles" not in g:
        from core import styles

        g.my_styles = styles.choices(current_user) if current_user.is_authenticated else []
    return g.my_styles


def register(app):
    from . import views  # noqa: F401  (views register on bp)

    app.register_blueprint(bp)
    app.jinja_env.globals["my_styles"] = my_styles
