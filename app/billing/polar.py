"""The thin wrapper around polar-sdk: a client for the configured server, checkouts, customer
portal sessions, and webhook verification.

Everything Polar-specific is here, so the rest of the billing area deals in plain values:
URLs, product ids and `Delivery` objects.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import threading
from typing import Any

from polar import PolarClientError, PolarError, deserialize
from polar.v2026_10 import Polar
from polar.v2026_10 import webhooks as polar_webhooks

log = logging.getLogger("tunesmith.billing")

SERVERS = ("sandbox", "production")
TIMEOUT = 10.0


class NotConfigured(Exception):
    """Billing settings are missing or wrong; the message says which."""


class PolarUnavailable(Exception):
    """Polar answered with an error or could not be reached; the message is safe to show."""

    def __init__(self, message: str, status: int = 502):
        super().__init__(message)
        self.status = status


class BadSignature(Exception):
    """The webhook is not signed by Polar with our secret (or too old/new); nothing may change."""


@dataclasses.dataclass
class Delivery:
    """A verified webhook delivery."""

    webhook_id: str
    type: str
    known: bool  # a type this SDK version knows (its payload was loaded or at least parsed)
    payload: Any = None  # the SDK's typed payload, or None when only the raw JSON could be read
    raw: dict | None = None  # the JSON body (read only after the signature was verified)


@dataclasses.dataclass
class OrderInfo:
    order_id: str
    product_id: str | None
    external_customer_id: str | None
    metadata: dict
    status: str | None


def missing_settings(cfg) -> list[str]:
    """The settings selling credit packs needs that are not set."""
    missing = [name for name in ("POLAR_ACCESS_TOKEN", "POLAR_WEBHOOK_SECRET", "POLAR_PRODUCTS")
               if not getattr(cfg, name, None)]
    if not cfg.POLAR_API_URL and cfg.POLAR_SERVER not in SERVERS:
        missing.append("POLAR_SERVER (sandbox or production)")
    return missing


def is_configured(cfg) -> bool:
    return not missing_settings(cfg)


def client(cfg) -> Polar:
    if not cfg.POLAR_ACCESS_TOKEN:
        raise NotConfigured("POLAR_ACCESS_TOKEN is not set")
    server = cfg.POLAR_SERVER if cfg.POLAR_SERVER in SERVERS else "sandbox"
    if not cfg.POLAR_API_URL and cfg.POLAR_SERVER not in SERVERS:
        raise NotConfigured(f"POLAR_SERVER must be sandbox or production, not {cfg.POLAR_SERVER!r}")
    return Polar(cfg.POLAR_ACCESS_TOKEN, environment=server, base_url=cfg.POLAR_API_URL or None,
                 timeout=TIMEOUT)


def _describe(exc: PolarError) -> str:
    if isinstance(exc, PolarClientError):
        return f"HTTP {exc.status_code}: {exc.error}"
    return str(exc)


CHECKOUT_FAILED = "The payment provider could not start a checkout. Please try again in a moment."
PORTAL_FAILED = "The payment provider could not open your billing portal. Please try again in a moment."
NO_CUSTOMER = "There is no billing account for you yet: it is created with your first purchase."


def create_checkout(cfg, *, product_id: str, external_customer_id: str, success_url: str, return_url: str,
                    metadata: dict) -> str:
    """Create a checkout session for one product; returns the URL to send the customer to."""
    try:
        with client(cfg) as polar:
            checkout = polar.checkouts.create(
                products=[product_id],
                external_customer_id=external_customer_id,
                success_url=success_url,
                return_url=return_url,
                metadata=metadata,
            )
    except PolarError as exc:
        log.error("Polar checkout for product %s failed: %s", product_id, _describe(exc))
        raise PolarUnavailable(CHECKOUT_FAILED) from exc
    return checkout.url


def customer_portal_url(cfg, *, external_customer_id: str, return_url: str) -> str:
    """A customer-portal session for the customer with our user id; returns its URL."""
    try:
        with client(cfg) as polar:
            session = polar.customer_sessions.create(external_customer_id=external_customer_id,
                                                     return_url=return_url)
    except PolarClientError as exc:
        if exc.status_code in (404, 422):
            raise PolarUnavailable(NO_CUSTOMER, status=404) from exc
        log.error("Polar customer session failed: %s", _describe(exc))
        raise PolarUnavailable(PORTAL_FAILED) from exc
    except PolarError as exc:
        log.error("Polar customer session failed: %s", _describe(exc))
        raise PolarUnavailable(PORTAL_FAILED) from exc
    return session.customer_portal_url


_loader_lock = threading.Lock()
_loader_ready = False


def _ensure_payload_loader() -> None:
    """polar-sdk builds its typed webhook loader (a union of every event type) on first use,
    which takes seconds of CPU. Build it once per process under a lock, so that concurrent first
    deliveries wait for one build instead of each doing their own."""
    global _loader_ready
    if _loader_ready:
        return
    with _loader_lock:
        if not _loader_ready:
            try:
                deserialize({}, polar_webhooks.WebhookPayload)
            except PolarError:
                pass  # expected: the empty object is not an event; the loader is built and cached
            _loader_ready = True


def verify_webhook(secret: str, body: bytes, headers: dict[str, str]) -> Delivery:
    """Verify the raw body and headers with the SDK's `validate_event` before anything reads
    the body. Raises BadSignature; otherwise returns the delivery (known or not)."""
    if not secret:
        raise NotConfigured("POLAR_WEBHOOK_SECRET is not set")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:  # the SDK would fail before verifying: nothing signed is not UTF-8
        raise BadSignature("body is not UTF-8") from exc
    webhook_id = {k.lower(): v for k, v in headers.items()}.get("webhook-id", "")
    _ensure_payload_loader()
    try:
        payload = polar_webhooks.validate_event(body, headers, secret)
    except polar_webhooks.PolarWebhookVerificationError as exc:
        raise BadSignature(str(exc)) from exc
    except polar_webhooks.PolarWebhookUnknownTypeError as exc:
        # raised only after the signature was verified
        return Delivery(webhook_id=webhook_id, type=exc.event_type or "", known=False)
    except polar_webhooks.PolarWebhookError as exc:
        # The signature was verified (the body is UTF-8, so only JSON parsing or the typed
        # loading can have failed). Read the JSON ourselves so a payload newer than this SDK
        # still reaches the handler.
        try:
            raw = json.loads(body)
        except ValueError:
            raise ValueError("the signed body is not JSON") from exc
        if not isinstance(raw, dict):
            raise ValueError("the signed body is not a JSON object") from exc
        log.warning("webhook %s (%s): the SDK could not load the payload (%s); using the raw JSON",
                    webhook_id, raw.get("type"), str(exc.__cause__ or exc)[:200])
        return Delivery(webhook_id=webhook_id, type=str(raw.get("type") or ""), known=True, raw=raw)
    return Delivery(webhook_id=webhook_id, type=payload.type, known=True, payload=payload)


def order_info(delivery: Delivery) -> OrderInfo | None:
    """The fields of an order.* delivery the ledger needs, from the typed payload or the raw JSON."""
    data = getattr(delivery.payload, "data", None)
    if data is not None and hasattr(data, "customer"):
        return OrderInfo(order_id=data.id, product_id=data.product_id,
                         external_customer_id=data.customer.external_id,
                         metadata=dict(data.metadata or {}), status=data.status)
    raw = (delivery.raw or {}).get("data")
    if not isinstance(raw, dict) or not raw.get("id"):
        return None
    customer = raw.get("customer") if isinstance(raw.get("customer"), dict) else {}
    product = raw.get("product") if isinstance(raw.get("product"), dict) else {}
    metadata = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    return OrderInfo(order_id=str(raw["id"]), product_id=raw.get("product_id") or product.get("id"),
                     external_customer_id=customer.get("external_id"), metadata=metadata,
                     status=raw.get("status"))
