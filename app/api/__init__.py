"""The JSON API under /api/v1: token-authenticated (`Authorization: Bearer <token>`), CSRF-exempt
(no cookie ever authenticates it), rate-limited per token. Errors are `{error: {code, message,
field?}}`. The OpenAPI 3.1 document is served at /api/v1/openapi.json."""
from __future__ import annotations

from flask import Blueprint

from ..extensions import csrf

bp = Blueprint("api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)


def register(app):
    from . import actions, events, views  # noqa: F401  (views register on bp)

    app.register_blueprint(bp)
