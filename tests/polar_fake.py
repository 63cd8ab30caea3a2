"""A local HTTP server that answers like Polar's API for the calls Tunesmith makes (create a
checkout, create a customer session) and records every request it receives.

Real HTTP on a free loopback port: point POLAR_API_URL at `server.url`. Responses carry the
fields Polar's API returns for API version 2026-10, so the real SDK parses them.
"""
from __future__ import annotations

import json
import secrets
import threading
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ORG_ID = "5b7c3a44-1d0e-4a57-9c1f-2f6f0c7d1e10"
ORG_SLUG = "tunesmith-test"


def _now(delta: timedelta = timedelta(0)) -> str:
    return (datetime.now(timezone.utc) + delta).isoformat().replace("+00:00", "Z")


def product_json(product_id: str, name: str, price_cents: int) -> dict:
    return {
        "id": product_id, "created_at": _now(), "modified_at": None, "metadata": {},
        "trial_interval": None, "trial_interval_count": None,
        "name": name, "description": None, "visibility": "public",
        "recurring_interval": None, "recurring_interval_count": None,
        "meter_interval": None, "meter_interval_count": None,
        "is_recurring": False, "is_archived": False, "organization_id": ORG_ID,
        "prices": [{
            "created_at": _now(), "modified_at": None, "id": str(uuid.uuid4()), "source": "catalog",
            "amount_type": "fixed", "price_currency": "usd", "tax_behavior": None, "is_archived": False,
            "product_id": product_id, "price_amount": price_cents,
        }],
        "benefits": [], "medias": [],
    }


def customer_json(customer_id: str, external_id: str | None, email: str) -> dict:
    return {
        "id": customer_id, "created_at": _now(), "modified_at": None, "metadata": {},
        "external_id": external_id, "email": email, "email_verified": False, "type": "individual",
        "name": None, "billing_name": None, "billing_address": None, "tax_id": None, "locale": None,
        "organization_id": ORG_ID, "default_payment_method_id": None, "deleted_at": None,
        "first_user_event_at": None, "avatar_url": None,
    }


def order_json(order_id: str, product_id: str, *, external_id: str | None, status: str = "paid",
               amount: int = 500, refunded_amount: int = 0, metadata: dict | None = None,
               product_name: str = "Credit pack") -> dict:
    """An Order as Polar sends it in order.* webhooks (API version 2026-10)."""
    customer_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"customer:{external_id}"))
    customer = customer_json(customer_id, external_id, f"customer-{external_id}@example.com")
    product = product_json(product_id, product_name, amount)
    for key in ("prices", "benefits", "medias"):
        product.pop(key)
    return {
        "id": order_id, "created_at": _now(), "modified_at": _now(), "status": status,
        "paid": status != "pending", "subtotal_amount": amount, "discount_amount": 0, "net_amount": amount,
        "tax_amount": 0, "total_amount": amount, "applied_balance_amount": 0, "due_amount": 0,
        "refunded_amount": refunded_amount, "refunded_tax_amount": 0, "currency": "usd",
        "billing_reason": "purchase", "billing_name": None, "billing_address": {"country": "US"},
        "invoice_number": "TS-0001", "is_invoice_generated": False, "receipt_number": None, "seats": None,
        "units": None, "customer_id": customer_id, "product_id": product_id, "discount_id": None,
        "subscription_id": None, "checkout_id": str(uuid.uuid4()), "metadata": metadata or {},
        "custom_field_data": {}, "platform_fee_amount": 0, "platform_fee_currency": None,
        "customer": customer, "product": product, "discount": None, "subscription": None,
        "items": [{"created_at": _now(), "modified_at": None, "id": str(uuid.uuid4()), "label": product_name,
                   "amount": amount, "tax_amount": 0, "proration": False, "product_price_id": str(uuid.uuid4()),
                   "start_timestamp": None, "end_timestamp": None}],
        "description": product_name, "refundable_amount": amount - refunded_amount, "refundable_tax_amount": 0,
    }


def event_json(event_type: str, data: dict) -> dict:
    return {"type": event_type, "timestamp": _now(), "api_version": "2026-10", "data": data}


class FakePolar:
    """Polar's API for checkouts and customer sessions. `products` maps product id -> (name, cents)."""

    def __init__(self, token: str, products: dict[str, tuple[str, int]]):
        self.token = token
        self.products = products
        self.requests: list[dict] = []
        self.customers: dict[str, dict] = {}  # external id -> customer
        self.fail_next: int | None = None  # answer the next call with this 5xx status
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                fake._handle(self)

            def do_GET(self):
                fake._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def calls(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["path"] == path]

    # ------------------------------------------------------------------ requests
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record = {"method": h.command, "path": h.path, "headers": {k.lower(): v for k, v in h.headers.items()},
                  "json": body}
        with self._lock:
            self.requests.append(record)
            fail, self.fail_next = self.fail_next, None
        if fail:
            return self._send(h, fail, {"detail": "Internal Server Error"})
        if h.headers.get("Authorization") != f"Bearer {self.token}":
            return self._send(h, 401, {"error": "invalid_token", "error_description": "The access token provided is "
                                       "expired, revoked, malformed, or invalid for other reasons."})
        if h.command == "POST" and h.path == "/v1/checkouts/":
            return self._checkout(h, body or {})
        if h.command == "POST" and h.path == "/v1/customer-sessions/":
            return self._customer_session(h, body or {})
        return self._send(h, 404, {"detail": "Not Found"})

    def _send(self, h, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def _invalid(loc: list, msg: str, value) -> dict:
        return {"detail": [{"loc": loc, "msg": msg, "type": "value_error", "input": value}]}

    def _checkout(self, h, body: dict) -> None:
        product_ids = body.get("products") or []
        unknown = [p for p in product_ids if p not in self.products]
        if not product_ids or unknown:
            return self._send(h, 422, self._invalid(["body", "products", 0], "Product does not exist.", unknown))
        external_id = body.get("external_customer_id")
        if external_id:
            with self._lock:
                self.customers.setdefault(external_id, customer_json(
                    str(uuid.uuid4()), external_id, f"customer-{external_id}@example.com"))
        client_secret = "polar_c_" + secrets.token_urlsafe(24)
        products = [product_json(pid, *self.products[pid]) for pid in product_ids]
        first = products[0]
        price = first["prices"][0]
        amount = price["price_amount"]
        checkout = {
            "id": str(uuid.uuid4()), "created_at": _now(), "modified_at": None, "custom_field_data": {},
            "payment_processor": "stripe", "status": "open", "client_secret": client_secret,
            "url": f"https://sandbox.polar.sh/checkout/{client_secret}",
            "expires_at": _now(timedelta(hours=1)), "success_url": body.get("success_url") or "",
            "return_url": body.get("return_url"), "embed_origin": None, "amount": amount,
            "seats": None, "min_seats": None, "max_seats": None, "units": None, "min_units": None,
            "max_units": None, "discount_amount": 0, "net_amount": amount, "tax_amount": None,
            "tax_behavior": None, "total_amount": amount, "currency": "usd", "allow_trial": None,
            "active_trial_interval": None, "active_trial_interval_count": None, "trial_end": None,
            "organization_id": ORG_ID, "product_id": first["id"], "product_price_id": price["id"],
            "discount_id": None, "allow_discount_codes": True, "require_billing_address": False,
            "is_discount_applicable": True, "is_free_product_price": False, "is_payment_required": True,
            "is_payment_setup_required": False, "is_payment_form_required": True, "customer_id": None,
            "is_business_customer": False, "customer_name": None, "customer_email": body.get("customer_email"),
            "customer_ip_address": None, "customer_billing_name": None, "customer_billing_address": None,
            "customer_tax_id": None, "locale": None, "payment_method_type": None,
            "payment_processor_metadata": {},
            "billing_address_fields": {"country": "required", "state": "disabled", "city": "disabled",
                                       "postal_code": "disabled", "line1": "disabled", "line2": "disabled"},
            "trial_interval": None, "trial_interval_count": None, "metadata": body.get("metadata") or {},
            "external_customer_id": external_id, "products": products, "product": first,
            "product_price": price, "prices": {p["id"]: p["prices"] for p in products}, "discount": None,
            "subscription_id": None, "attached_custom_fields": [], "customer_metadata": {},
        }
        self._send(h, 201, checkout)

    def _customer_session(self, h, body: dict) -> None:
        external_id = body.get("external_customer_id")
        customer = self.customers.get(external_id)
        if customer is None:
            return self._send(h, 422, self._invalid(["body", "external_customer_id"], "Customer does not exist.",
                                                    external_id))
        token = "polar_cst_" + secrets.token_urlsafe(24)
        session = {
            "created_at": _now(), "modified_at": None, "id": str(uuid.uuid4()), "token": token,
            "expires_at": _now(timedelta(hours=1)), "return_url": body.get("return_url"),
            "customer_portal_url": f"https://sandbox.polar.sh/{ORG_SLUG}/portal?customer_session_token={token}",
            "customer_id": customer["id"], "customer": customer,
        }
        self._send(h, 201, session)
