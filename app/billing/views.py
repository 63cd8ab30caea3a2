"""Billing views: read the request, call the billing module, render or redirect."""
from __future__ import annotations

import logging

from flask import jsonify, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from .. import error_json
from ..extensions import csrf, htmx, settings
from . import bp, polar, service

log = logging.getLogger("tunesmith.billing")


def _external(endpoint: str, **values) -> str:
    """An absolute URL for Polar to send the customer back to (BASE_URL when set)."""
    base = settings().BASE_URL
    if base:
        return base.rstrip("/") + url_for(endpoint, **values)
    return url_for(endpoint, _external=True, **values)


def _page() -> int:
    try:
        return max(1, min(100_000, int(request.args.get("page", 1))))  # a huge page overflows the OFFSET
    except ValueError:
        return 1


def _render(status: int = 200, error: str | None = None):
    cfg = settings()
    page = service.history(current_user, _page())
    return render_template(
        "billing/index.html",
        balance=current_user.balance(),
        packs=service.packs(cfg),
        configured=polar.is_configured(cfg),
        missing=polar.missing_settings(cfg),
        history=page,
        labels=service.KIND_LABELS,
        checkout_state=request.args.get("checkout"),
        error=error,
        variants=cfg.DEFAULT_VARIANTS,
    ), status


def _go(url: str):
    """Send the browser to Polar: a 303, or HX-Redirect when HTMX sent the request."""
    if htmx:
        resp = make_response("", 204)
        resp.headers["HX-Redirect"] = url
        return resp
    return redirect(url, 303)


@bp.get("")
@login_required
def index():
    return _render()


@bp.post("/checkout")
@login_required
def checkout():
    cfg = settings()
    if not polar.is_configured(cfg):
        return _render(503, "Buying credits is not set up on this server yet.")
    pack = (request.form.get("pack") or "").strip()
    credits = cfg.POLAR_PRODUCTS.get(pack)
    if not pack:
        return _render(422, "Choose a credit pack to buy.")
    if credits is None:
        return _render(422, "That credit pack is not on sale. Choose one of the packs below.")
    try:
        url = polar.create_checkout(
            cfg, product_id=pack, external_customer_id=str(current_user.id),
            success_url=_external("billing.index", checkout="success"),
            return_url=_external("billing.index"),
            metadata={"user_id": str(current_user.id), "pack": pack, "credits": credits})
    except polar.PolarUnavailable as exc:
        return _render(502, str(exc))
    return _go(url)


@bp.get("/portal")
@login_required
def portal():
    cfg = settings()
    if not polar.is_configured(cfg):
        return _render(503, "Billing is not set up on this server yet.")
    try:
        url = polar.customer_portal_url(cfg, external_customer_id=str(current_user.id),
                                        return_url=_external("billing.index"))
    except polar.PolarUnavailable as exc:
        return _render(exc.status, str(exc))
    return _go(url)


@bp.post("/webhook")
@csrf.exempt
def webhook():
    cfg = settings()
    body = request.get_data(cache=True)  # the raw bytes: verified before anything parses them
    try:
        delivery = polar.verify_webhook(cfg.POLAR_WEBHOOK_SECRET, body, dict(request.headers))
    except polar.NotConfigured as exc:
        log.error("POLAR WEBHOOK NEEDS ATTENTION: received a webhook but %s", exc)
        return error_json(503, "not_configured", "Webhooks are not set up on this server.")
    except polar.BadSignature as exc:
        log.warning("rejected a webhook (webhook-id %r): %s", request.headers.get("webhook-id"), exc)
        return error_json(403, "bad_signature", "The webhook signature is missing, wrong or expired.")
    except ValueError as exc:
        log.error("POLAR WEBHOOK NEEDS ATTENTION: signed webhook %r is unreadable: %s",
                  request.headers.get("webhook-id"), exc)
        return error_json(400, "bad_payload", "The webhook body is not a JSON object.")
    outcome = service.handle_delivery(cfg, delivery)
    return jsonify({"status": outcome.code, "message": outcome.message}), outcome.status
