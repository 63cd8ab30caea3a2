"""Credits and Polar billing, on SQLite and PostgreSQL.

Webhooks are signed with the independent `standardwebhooks` library; checkout and the customer
portal talk real HTTP to a local server that answers like Polar's API (tests/polar_fake.py).
"""
from __future__ import annotations

import base64
import json
import logging
import re
import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import requests
from standardwebhooks import Webhook

import models
from models import CreditEntry, User, WebhookEvent
from tests.conftest import csrf_from
from tests.helpers import connected, live_server
from tests.polar_fake import FakePolar, event_json, order_json

TOKEN = "polar_oat_test_access_token"
SECRET = "whsec_" + base64.b64encode(b"tunesmith-test-webhook-signing-k").decode()
PRODUCTS = {"prod_25": 25, "prod_50": 50, "prod_10": 10}  # deliberately not in credit order
CATALOG = {"prod_10": ("10 credits", 500), "prod_25": ("25 credits", 1000), "prod_50": ("50 credits", 1800)}


@pytest.fixture(scope="module")
def polar_server():
    with FakePolar(TOKEN, CATALOG) as fake:
        yield fake


@pytest.fixture
def fake_polar(polar_server):
    polar_server.requests.clear()
    polar_server.customers.clear()
    polar_server.fail_next = None
    return polar_server


@pytest.fixture
def app_overrides(fake_polar):
    return dict(POLAR_ACCESS_TOKEN=TOKEN, POLAR_WEBHOOK_SECRET=SECRET, POLAR_SERVER="sandbox",
                POLAR_API_URL=fake_polar.url, POLAR_PRODUCTS=dict(PRODUCTS))


# ---------------------------------------------------------------------------- helpers
def signed(body: str, *, secret: str = SECRET, msg_id: str | None = None, at: datetime | None = None,
           legacy: bool = False) -> dict:
    """Headers for `body` signed the Standard Webhooks way by an independent library. `legacy`:
    Polar's pre-standard secrets, whose HMAC key is the secret's own UTF-8 bytes."""
    hook = Webhook(base64.b64encode(secret.encode()).decode() if legacy else secret)
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(timezone.utc)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": hook.sign(msg_id, at, body), "content-type": "application/json"}


def order_event(event_type: str, order_id: str, user_id, product: str = "prod_25", **kw) -> str:
    data = order_json(order_id, product, external_id=None if user_id is None else str(user_id),
                      metadata={"user_id": str(user_id), "pack": product}, **kw)
    return json.dumps(event_json(event_type, data))


def deliver(client, body: str, headers: dict):
    return client.post("/billing/webhook", data=body, headers=headers)


def user_id(app, email="alice@example.com") -> int:
    with connected(app):
        return User.get(User.email == email).id


def balance(app, uid: int) -> int:
    with connected(app):
        user = User.get_by_id(uid)
        assert user.balance() == user.ledger_balance()
        return user.balance()


def page_balance(html: str) -> int:
    values = set(re.findall(r'data-credits="(-?\d+)"', html))
    assert len(values) == 1, values
    return int(values.pop())


def rows(html: str) -> list[tuple[int, int]]:
    return [(int(d), int(b)) for d, b in re.findall(r'<tr data-delta="(-?\d+)" data-balance-after="(-?\d+)"', html)]


def counts(app) -> tuple[int, int]:
    with connected(app):
        return CreditEntry.select().count(), WebhookEvent.select().count()


# ---------------------------------------------------------------------------- the page
def test_billing_page_shows_packs_balance_and_history(app, client, auth):
    auth.register()
    uid = user_id(app)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["credits", "grant", "alice@example.com", "5", "--reason", "Beta tester"])
    assert result.exit_code == 0, result.output
    body = order_event("order.paid", "ord_page", uid)
    assert deliver(client, body, signed(body)).status_code == 200
    result = runner.invoke(args=["credits", "grant", "--reason", "Correction", "--", "alice@example.com", "-3"])
    assert result.exit_code == 0, result.output

    resp = client.get("/billing")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert page_balance(html) == 127 == balance(app, uid)
    assert [int(c) for c in re.findall(r'data-pack-credits="(\d+)"', html)] == [10, 25, 50]
    assert html.count('action="/billing/checkout"') == 3
    assert rows(html) == [(-3, 127), (25, 130), (5, 105), (100, 100)]
    assert sum(delta for delta, _ in rows(html)) == page_balance(html)
    for text in ("Credit pack bought", "Beta tester", "Correction", "Credits granted", "+25", "−3"):
        assert text in html
    assert "Receipts and billing details" in html  # has purchased: the portal is offered


def test_history_is_paginated_and_running_balance_adds_up(app, client, auth):
    auth.register()
    uid = user_id(app)
    with connected(app), models.write_transaction():
        for i in range(45):
            models.apply_credits(uid, -1 if i % 3 else 2, "admin", f"test:{i}", f"step {i}")
    pages, page = [], 1
    while True:
        html = client.get(f"/billing?page={page}").get_data(as_text=True)
        pages.append(rows(html))
        if "Older →" not in html:
            break
        page += 1
    assert [len(p) for p in pages] == [20, 20, 6]
    entries = [r for p in pages for r in p]
    assert sum(d for d, _ in entries) == entries[0][1] == balance(app, uid) == page_balance(html)
    for (delta, after), (_, before) in zip(entries, entries[1:]):
        assert after - delta == before
    assert "← Newer" in client.get("/billing?page=2").get_data(as_text=True)
    assert client.get("/billing?page=nonsense").status_code == 200


def test_billing_needs_login(client):
    resp = client.get("/billing")
    assert resp.status_code == 302 and "/auth/login" in resp.headers["Location"]


@pytest.mark.parametrize("app_overrides", [dict(POLAR_ACCESS_TOKEN=None, POLAR_WEBHOOK_SECRET=None,
                                                POLAR_PRODUCTS={})])
def test_without_polar_the_page_says_so_and_checkout_refuses(app, client, auth, polar_server):
    polar_server.requests.clear()
    auth.register()
    html = client.get("/billing").get_data(as_text=True)
    assert "Buying credits is not available on this server yet" in html
    assert "/billing/checkout" not in html and "data-pack" not in html
    assert page_balance(html) == 100
    resp = auth.post("/billing/checkout", {"pack": "prod_25"})
    assert resp.status_code == 503
    assert "not set up" in resp.get_data(as_text=True)
    assert client.get("/billing/portal").status_code == 503
    body = order_event("order.paid", "ord_x", 1)
    assert deliver(client, body, signed(body)).status_code == 503
    assert polar_server.requests == []


# ---------------------------------------------------------------------------- checkout & portal
def test_checkout_creates_a_polar_checkout_and_redirects(app, client, auth, fake_polar):
    auth.register()
    uid = user_id(app)
    resp = auth.post("/billing/checkout", {"pack": "prod_25"})
    assert resp.status_code == 303
    [call] = fake_polar.calls("/v1/checkouts/")
    assert resp.headers["Location"].startswith("https://sandbox.polar.sh/checkout/polar_c_")
    assert call["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert call["headers"]["polar-version"] == "2026-10"
    sent = call["json"]
    assert sent["products"] == ["prod_25"]
    assert sent["external_customer_id"] == str(uid)
    assert sent["metadata"] == {"user_id": str(uid), "pack": "prod_25", "credits": 25}
    assert sent["success_url"].endswith("/billing?checkout=success")
    assert sent["return_url"].endswith("/billing")
    # nothing is credited until Polar says the order is paid
    assert balance(app, uid) == 100
    html = client.get("/billing?checkout=success").get_data(as_text=True)
    assert "Thank you!" in html and page_balance(html) == 100
    # HTMX asks for a client-side redirect instead of following a cross-site 303
    resp = auth.post("/billing/checkout", {"pack": "prod_10"}, headers={"HX-Request": "true"})
    assert resp.status_code == 204 and resp.headers["HX-Redirect"].startswith("https://sandbox.polar.sh/checkout/")


def test_checkout_with_a_bad_pack_is_refused_and_creates_nothing(app, client, auth, fake_polar):
    auth.register()
    cases = (("prod_unknown", "not on sale"), ("", "Choose a credit pack"), (None, "Choose a credit pack"))
    for pack, message in cases:
        resp = auth.post("/billing/checkout", {} if pack is None else {"pack": pack})
        assert resp.status_code == 422
        assert message in resp.get_data(as_text=True)
    assert fake_polar.requests == []
    assert counts(app) == (1, 0)  # the welcome grant only


def test_checkout_without_csrf_token_is_refused(app, client, auth, fake_polar):
    auth.register()
    resp = client.post("/billing/checkout", data={"pack": "prod_25"})
    assert resp.status_code == 400
    assert fake_polar.requests == []


def test_checkout_when_polar_fails_shows_a_message(app, client, auth, fake_polar):
    auth.register()
    fake_polar.fail_next = 500
    resp = auth.post("/billing/checkout", {"pack": "prod_25"})
    assert resp.status_code == 502
    assert "could not start a checkout" in resp.get_data(as_text=True)
    assert len(fake_polar.calls("/v1/checkouts/")) == 1


def test_customer_portal_redirects_to_a_polar_customer_session(app, client, auth, fake_polar):
    auth.register()
    uid = user_id(app)
    assert "Receipts and billing details" not in client.get("/billing").get_data(as_text=True)
    resp = client.get("/billing/portal")  # no Polar customer yet
    assert resp.status_code == 404
    assert "first purchase" in resp.get_data(as_text=True)

    auth.post("/billing/checkout", {"pack": "prod_10"})  # Polar now knows the customer
    resp = client.get("/billing/portal")
    assert resp.status_code == 303
    assert resp.headers["Location"].startswith("https://sandbox.polar.sh/tunesmith-test/portal?customer_session_token=")
    call = fake_polar.calls("/v1/customer-sessions/")[-1]
    assert call["json"]["external_customer_id"] == str(uid)
    assert call["json"]["return_url"].endswith("/billing")


# ---------------------------------------------------------------------------- webhooks
def test_order_paid_grants_once(app, client, auth):
    auth.register()
    uid = user_id(app)
    body = order_event("order.paid", "ord_1", uid)
    headers = signed(body)
    resp = deliver(client, body, headers)
    assert resp.status_code == 200 and resp.get_json()["status"] == "granted"
    again = deliver(client, body, headers)  # Polar redelivers the same message
    assert again.status_code == 200 and again.get_json()["status"] == "duplicate"
    other = deliver(client, body, signed(body))  # another message about the same order
    assert other.status_code == 200 and other.get_json()["status"] == "already_granted"
    assert balance(app, uid) == 125
    with connected(app):
        [entry] = CreditEntry.select().where(CreditEntry.kind == "purchase")
        assert (entry.ref, entry.delta, entry.balance_after) == ("order:ord_1", 25, 125)
        assert User.get_by_id(uid).has_purchased
        assert WebhookEvent.get_by_id(headers["webhook-id"]).outcome.startswith("granted")
    html = client.get("/billing").get_data(as_text=True)
    assert page_balance(html) == 125 and rows(html)[0] == (25, 125)


def test_five_concurrent_deliveries_grant_once(app, auth, client):
    """Real HTTP, real threads: the same signed order.paid arrives five times at once."""
    auth.register()
    uid = user_id(app)
    body = order_event("order.paid", "ord_race", uid, product="prod_50")
    same = signed(body)
    others = [signed(body) for _ in range(5)]  # and five different messages for one order
    with live_server(app) as base:
        for batch, expected in (([same] * 5, ["duplicate"] * 4 + ["granted"]), (others, ["already_granted"] * 5)):
            barrier = threading.Barrier(5)
            results = []

            def post(headers):
                barrier.wait()
                r = requests.post(f"{base}/billing/webhook", data=body.encode(), headers=headers, timeout=30)
                results.append((r.status_code, r.json()["status"]))

            threads = [threading.Thread(target=post, args=(h,)) for h in batch]
            [t.start() for t in threads]
            [t.join(30) for t in threads]
            assert len(results) == 5 and all(code == 200 for code, _ in results), results
            assert sorted(s for _, s in results) == expected
            assert balance(app, uid) == 150
    with connected(app):
        assert CreditEntry.select().where(CreditEntry.ref == "order:ord_race").count() == 1
        assert WebhookEvent.select().count() == 6


def _tampered(body):
    return body.replace('"prod_25"', '"prod_50"'), signed(body)


def _wrong_secret(body):
    return body, signed(body, secret="whsec_" + base64.b64encode(b"someone-else-entirely-32-bytes!!").decode())


def _stale(body):
    return body, signed(body, at=datetime.now(timezone.utc) - timedelta(minutes=10))


def _future(body):
    return body, signed(body, at=datetime.now(timezone.utc) + timedelta(minutes=10))


def _unsigned(body):
    return body, {"content-type": "application/json"}


def _no_signature(body):
    headers = signed(body)
    del headers["webhook-signature"]
    return body, headers


def _garbage_signature(body):
    headers = signed(body)
    headers["webhook-signature"] = "v1,bm90LWEtc2lnbmF0dXJl"
    return body, headers


def _other_id(body):
    headers = signed(body)
    headers["webhook-id"] = "msg_replayed_under_another_id"
    return body, headers


FORGERIES = [_tampered, _wrong_secret, _stale, _future, _unsigned, _no_signature, _garbage_signature, _other_id]


def test_bad_signatures_are_refused_and_change_nothing(app, client, auth):
    auth.register()
    uid = user_id(app)
    before = counts(app)
    for forge in FORGERIES:
        body, headers = forge(order_event("order.paid", "ord_forged", uid))
        resp = deliver(client, body, headers)
        assert resp.status_code == 403, forge.__name__
        assert resp.get_json()["error"]["code"] == "bad_signature"
        assert balance(app, uid) == 100 and counts(app) == before, forge.__name__
    assert page_balance(client.get("/billing").get_data(as_text=True)) == 100


def test_unreadable_bodies_are_refused(app, client):
    resp = client.post("/billing/webhook", data=b"\xff\xfe not text", headers=signed("ignored"))
    assert resp.status_code == 403
    resp = deliver(client, "not json at all", signed("not json at all"))  # signed, but not an event
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "bad_payload"
    assert counts(app) == (0, 0)


def test_legacy_polar_secrets_still_verify(app, client, auth):
    """Secrets made before Polar switched to Standard Webhooks key derivation sign with the
    secret's own bytes; the SDK accepts both."""
    app.extensions["tunesmith_config"].POLAR_WEBHOOK_SECRET = "polar_whs_legacy_secret_value"
    auth.register()
    uid = user_id(app)
    body = order_event("order.paid", "ord_legacy", uid, product="prod_10")
    assert deliver(client, body, signed(body, secret="polar_whs_legacy_secret_value", legacy=True)).status_code == 200
    assert balance(app, uid) == 110
    assert deliver(client, body, signed(body)).status_code == 403  # the old whsec_ secret no longer works


def test_signed_unhandled_types_are_accepted_without_change(app, client):
    for body in (json.dumps({"type": "order.something_new", "timestamp": "2026-10-01T00:00:00Z", "data": {"id": "x"}}),
                 json.dumps(event_json("checkout.created", {"id": "co_1"}))):
        resp = deliver(client, body, signed(body))
        assert resp.status_code == 202 and resp.get_json()["status"] == "ignored"
    assert counts(app) == (0, 0)


def test_unknown_user_or_product_is_recorded_and_answered_2xx(app, client, auth, caplog):
    auth.register()
    uid = user_id(app)
    caplog.set_level(logging.INFO, logger="tunesmith.billing")
    cases = [(order_event("order.paid", "ord_nouser", 987654), "unknown_user"),
             (order_event("order.paid", "ord_noprod", uid, product="prod_retired"), "unknown_product")]
    for body, code in cases:
        headers = signed(body)
        resp = deliver(client, body, headers)
        assert resp.status_code == 202 and resp.get_json()["status"] == code
        with connected(app):
            assert WebhookEvent.get_by_id(headers["webhook-id"]).outcome.startswith(code)
        assert deliver(client, body, headers).get_json()["status"] == "duplicate"
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR and "NEEDS ATTENTION" in r.getMessage()]
    assert len(loud) == 2 and "987654" in loud[0].getMessage() and "prod_retired" in loud[1].getMessage()
    assert balance(app, uid) == 100


def test_a_payload_newer_than_the_sdk_still_grants(app, client, auth):
    """The SDK's typed loading fails (a field it does not know yet); the verified raw JSON is used."""
    auth.register()
    uid = user_id(app)
    event = json.loads(order_event("order.paid", "ord_new", uid))
    event["data"]["billing_reason"] = "a_reason_from_the_future"
    del event["data"]["refundable_amount"]
    body = json.dumps(event)
    resp = deliver(client, body, signed(body))
    assert resp.status_code == 200 and resp.get_json()["status"] == "granted"
    assert balance(app, uid) == 125


def test_refund_takes_the_credits_back_once(app, client, auth):
    auth.register()
    uid = user_id(app)
    paid = order_event("order.paid", "ord_r", uid)
    deliver(client, paid, signed(paid))
    refund = order_event("order.refunded", "ord_r", uid, status="refunded", refunded_amount=1000)
    headers = signed(refund)
    resp = deliver(client, refund, headers)
    assert resp.status_code == 200 and resp.get_json()["status"] == "refunded"
    assert deliver(client, refund, headers).get_json()["status"] == "duplicate"
    assert deliver(client, refund, signed(refund)).get_json()["status"] == "already_refunded"
    assert balance(app, uid) == 100
    html = client.get("/billing").get_data(as_text=True)
    assert rows(html)[:2] == [(-25, 100), (25, 125)]
    assert "Purchase refunded" in html and "−25" in html


def test_refund_after_the_credits_were_spent_stops_at_zero(app, client, auth):
    auth.register()
    uid = user_id(app)
    paid = order_event("order.paid", "ord_spent", uid)
    deliver(client, paid, signed(paid))
    with connected(app), models.write_transaction():
        models.apply_credits(uid, -115, "reserve", "gen:test:reserve", "Songs")
    refund = order_event("order.refunded", "ord_spent", uid, status="refunded", refunded_amount=1000)
    resp = deliver(client, refund, signed(refund))
    assert resp.status_code == 200 and resp.get_json()["status"] == "refunded_partially"
    assert balance(app, uid) == 0
    with connected(app):
        entry = CreditEntry.get(CreditEntry.ref == "order:ord_spent:refund")
        assert entry.delta == -10 and "only 10 of 25" in entry.note
        assert min(e.balance_after for e in CreditEntry.select()) >= 0


def test_refund_arriving_before_payment_blocks_the_late_grant(app, client, auth):
    auth.register()
    uid = user_id(app)
    refund = order_event("order.refunded", "ord_early", uid, status="refunded", refunded_amount=1000)
    assert deliver(client, refund, signed(refund)).status_code == 200
    paid = order_event("order.paid", "ord_early", uid)
    resp = deliver(client, paid, signed(paid))
    assert resp.status_code == 200 and resp.get_json()["status"] == "already_refunded"
    assert balance(app, uid) == 100


def test_webhook_needs_no_csrf_but_browser_posts_do(app, client, auth):
    """The webhook is exempt from CSRF (it is signed instead); the page's forms carry the token."""
    auth.register()
    html = client.get("/billing").get_data(as_text=True)
    assert csrf_from(html)
    body = json.dumps(event_json("checkout.created", {"id": "co_2"}))
    assert deliver(client, body, signed(body)).status_code == 202
