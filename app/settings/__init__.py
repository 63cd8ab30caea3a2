"""Settings: API tokens (/settings/tokens) — make one (shown once), rename, revoke."""
from __future__ import annotations

from flask import Blueprint, abort, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from core.errors import UserError
from models import ApiToken

from ..api import tokens
from ..extensions import htmx

bp = Blueprint("settings", __name__, url_prefix="/settings")


def _render(status: int = 200, new_token: str | None = None, new_id: int | None = None,
            errors: dict | None = None, name: str = ""):
    rows = list(ApiToken.select().where(ApiToken.user == current_user.id)
                .order_by(ApiToken.revoked_at.is_null(False), ApiToken.created_at.desc(), ApiToken.id.desc()))
    template = "settings/_tokens.html" if htmx and not htmx.boosted else "settings/tokens.html"
    resp = make_response(render_template(template, tokens=rows, new_token=new_token, new_id=new_id,
                                         errors=errors or {}, name=name, max_active=tokens.MAX_ACTIVE,
                                         name_max=tokens.NAME_MAX), status)
    resp.headers["Cache-Control"] = "no-store"  # a new token is on this page exactly once
    return resp


def _done():
    if htmx:
        return _render()
    return redirect(url_for("settings.api_tokens"), 303)


@bp.get("/tokens")
@login_required
def api_tokens():
    return _render()


@bp.post("/tokens")
@login_required
def create_token():
    name = request.form.get("name", "")
    try:
        token, raw = tokens.issue(current_user, name)
    except UserError as exc:
        return _render(exc.status, errors={exc.field or "form": exc.message}, name=name[:200])
    # Rendered, not redirected: the token exists in plain text only in this response.
    return _render(201, new_token=raw, new_id=token.id)


def _owned_or_404(token_id):
    token = tokens.owned(current_user, token_id)
    if token is None:
        abort(404)
    return token


@bp.post("/tokens/<token_id>/revoke")
@login_required
def revoke_token(token_id):
    tokens.revoke(_owned_or_404(token_id))
    return _done()


@bp.post("/tokens/<token_id>/rename")
@login_required
def rename_token(token_id):
    token = _owned_or_404(token_id)
    try:
        tokens.rename(token, request.form.get("name", ""))
    except UserError as exc:
        return _render(exc.status, errors={f"rename-{token.id}": exc.message})
    return _done()


from . import account  # noqa: E402,F401  (the account page's routes on this blueprint)


from . import webhooks  # noqa: E402,F401  (outbound webhooks: /settings/webhooks)
