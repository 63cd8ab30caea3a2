"""Settings: outbound webhooks (/settings/webhooks) — add an endpoint (its signing secret is
shown once), send a test event, read the delivery log, disable, enable, delete.

Deliveries are made by the worker (core/webhooks.py); this page only writes the endpoints and
queues test events. Every form is a CSRF-checked POST that works without JavaScript (303 back
to the page, or the page with a 4xx and the message); other people's endpoints are 404.
"""
from __future__ import annotations

from flask import abort, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from core import webhooks
from core.errors import UserError
from models import WebhookAttempt, WebhookDelivery, WebhookEndpoint

from ..extensions import settings
from . import bp

LOG_SIZE = 20
DESCRIPTION_MAX = 200
EVENT_HELP = {"song.processed": "a song is made", "song.failed": "a song could not be made (or was cancelled)",
              "generation.finished": "every song of a request is made or failed"}


def _endpoints():
    return list(WebhookEndpoint.select().where(WebhookEndpoint.user == current_user.id)
                .order_by(WebhookEndpoint.created_at.desc(), WebhookEndpoint.id.desc()))


def _log(endpoint_ids) -> dict[int, list]:
    """The latest deliveries of each endpoint, with their attempts (newest first)."""
    out: dict[int, list] = {}
    for eid in endpoint_ids:
        out[eid] = list(WebhookDelivery.select().where(WebhookDelivery.endpoint == eid)
                        .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id).limit(LOG_SIZE))
    ids = [d.id for rows in out.values() for d in rows]
    attempts: dict[str, list] = {}
    if ids:
        for a in (WebhookAttempt.select().where(WebhookAttempt.delivery.in_(ids))
                  .order_by(WebhookAttempt.number.desc())):
            attempts.setdefault(a.delivery_id, []).append(a)
    for rows in out.values():
        for d in rows:
            d.log = attempts.get(d.id, [])
    return out


def _render(status: int = 200, errors: dict | None = None, form: dict | None = None,
            new_secret: str | None = None, new_id: int | None = None):
    endpoints = _endpoints()
    resp = make_response(render_template(
        "settings/webhooks.html", endpoints=endpoints, log=_log([e.id for e in endpoints]), errors=errors or {},
        form=form or {"events": list(webhooks.EVENTS)}, events=webhooks.EVENTS, event_help=EVENT_HELP,
        new_secret=new_secret, new_id=new_id, max_endpoints=settings().WEBHOOK_MAX_ENDPOINTS,
        schedule=webhooks.schedule(settings())), status)
    resp.headers["Cache-Control"] = "no-store"  # a new secret is on this page exactly once
    return resp


def _owned_or_404(endpoint_id) -> WebhookEndpoint:
    try:
        endpoint_id = int(endpoint_id)
    except (TypeError, ValueError):
        abort(404)
    if not 0 < endpoint_id < 2**63:
        abort(404)
    endpoint = WebhookEndpoint.get_or_none((WebhookEndpoint.id == endpoint_id)
                                           & (WebhookEndpoint.user == current_user.id))
    if endpoint is None:
        abort(404)
    return endpoint


@bp.get("/webhooks")
@login_required
def webhooks_page():
    return _render()


@bp.post("/webhooks")
@login_required
def create_webhook():
    cfg = settings()
    url = request.form.get("url", "")
    events = request.form.getlist("events")
    description = " ".join(request.form.get("description", "").split())
    form = {"url": url[:2100], "events": events, "description": description[:300]}
    try:
        unknown = [e for e in events if e not in webhooks.EVENTS]
        if unknown or not events:
            raise UserError("Choose at least one event from the list.", 422, "events")
        if len(description) > DESCRIPTION_MAX:
            raise UserError(f"Keep the description to {DESCRIPTION_MAX} characters.", 422, "description")
        clean = webhooks.clean_url(url, cfg.ALLOW_PRIVATE_WEBHOOKS)
        if WebhookEndpoint.select().where(WebhookEndpoint.user == current_user.id).count() >= cfg.WEBHOOK_MAX_ENDPOINTS:
            raise UserError(f"You have {cfg.WEBHOOK_MAX_ENDPOINTS} endpoints; delete one first.", 409, "url")
    except UserError as exc:
        return _render(exc.status, errors={exc.field or "form": exc.message}, form=form)
    secret = webhooks.new_secret()
    endpoint = WebhookEndpoint.create(user=current_user.id, url=clean, description=description,
                                      events=[e for e in webhooks.EVENTS if e in events], secret=secret)
    # Rendered, not redirected: the secret is shown in this answer only.
    return _render(201, new_secret=secret, new_id=endpoint.id)


@bp.post("/webhooks/<endpoint_id>/test")
@login_required
def test_webhook(endpoint_id):
    endpoint = _owned_or_404(endpoint_id)
    try:
        webhooks.send_test(endpoint)
    except UserError as exc:
        return _render(exc.status, errors={f"endpoint-{endpoint.id}": exc.message})
    flash("Test event queued: it shows in the log below once the worker has sent it.", "success")
    return redirect(url_for("settings.webhooks_page"), 303)


@bp.post("/webhooks/<endpoint_id>/disable")
@login_required
def disable_webhook(endpoint_id):
    endpoint = _owned_or_404(endpoint_id)
    webhooks.disable(endpoint, "Disabled by you.")
    flash("Endpoint disabled: no more events are sent to it.", "success")
    return redirect(url_for("settings.webhooks_page"), 303)


@bp.post("/webhooks/<endpoint_id>/enable")
@login_required
def enable_webhook(endpoint_id):
    endpoint = _owned_or_404(endpoint_id)
    webhooks.enable(endpoint)
    flash("Endpoint enabled: new events are sent to it again.", "success")
    return redirect(url_for("settings.webhooks_page"), 303)


@bp.post("/webhooks/<endpoint_id>/delete")
@login_required
def delete_webhook(endpoint_id):
    endpoint = _owned_or_404(endpoint_id)
    WebhookEndpoint.delete().where(WebhookEndpoint.id == endpoint.id).execute()
    flash("Endpoint deleted with its delivery log.", "success")
    return redirect(url_for("settings.webhooks_page"), 303)
