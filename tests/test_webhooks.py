"""Outbound webhooks: endpoints set up on /settings/webhooks, events written with the song's
status (the outbox), delivered by the worker side to a real HTTP server in the test and verified
with the independent `standardwebhooks` library; retries with exponential back-off (the delays
recorded, not slept), disabling after the failure limit, private targets refused by default,
redirects not followed."""
from __future__ import annotations

import datetime as dt
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks.webhooks import Webhook

from core import webhooks
from models import User, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from tests.conftest import AuthActions
from tests.helpers import connected, run_worker
from tests.test_api import bearer, make_token

pytestmark = pytest.mark.sqlite_only  # delivery, signing and back-off do not depend on the database

PASSWORD = "quiet lantern over the harbour 42"
SECRET_RE = re.compile(r"data-secret>(whsec_[A-Za-z0-9+/=]+)<")
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"])


class Receiver:
    """A real HTTP server on loopback that records every request and answers from `answers`
    (status, headers) in turn, then `default`."""

    def __init__(self, default=200):
        self.requests: list[dict] = []
        self.answers: list[tuple[int, dict]] = []
        self.default = default
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers.items()), "body": body})
                status, headers = receiver.answers.pop(0) if receiver.answers else (receiver.default, {})
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_GET = do_POST

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def cfg(app):
    return app.extensions["tunesmith_config"]


def add_endpoint(auth, url, events=("song.processed", "song.failed", "generation.finished")):
    resp = auth.post("/settings/webhooks", {"url": url, "events": list(events)})
    assert resp.status_code == 201, resp.get_data(as_text=True)[:2000]
    html = resp.get_data(as_text=True)
    return SECRET_RE.search(html).group(1), int(re.search(r'data-new-endpoint-id="(\d+)"', html).group(1))


def deliver(app, now=None) -> int:
    with connected(app):
        return webhooks.deliver_due(cfg(app), now=now)


def verified(secret, request) -> dict:
    """The event as the standardwebhooks library reads it (it raises on a bad signature)."""
    headers = {k.lower(): v for k, v in request["headers"].items()}
    return Webhook(secret).verify(request["body"], headers)


# ------------------------------------------------------------------------------ must show
def test_song_events_reach_a_real_server_signed_per_standard_webhooks(app, client, auth):
    assert auth.register(password=PASSWORD).status_code == 303
    token = make_token(auth)
    with Receiver() as hook:
        secret, endpoint_id = add_endpoint(auth, hook.url + "/hooks/tunesmith?src=test")
        assert secret not in auth.client.get("/settings/webhooks").get_data(as_text=True)  # shown once

        resp = client.post("/api/v1/generate_from_description", headers=bearer(token),
                           json={"description": "a short synth tune", "duration": 10, "variants": 2})
        gen_id = resp.get_json()["generation_id"]
        song_ids = [s["id"] for s in resp.get_json()["songs"]]
        assert deliver(app) == 0 and hook.requests == []  # nothing happened yet
        run_worker(app)
        assert deliver(app) == 3
        events = [verified(secret, r) for r in hook.requests]
        assert {r["path"] for r in hook.requests} == {"/hooks/tunesmith?src=test"}
        assert [e["type"] for e in events] == ["song.processed", "song.processed", "generation.finished"]
        assert sorted(e["data"]["song_id"] for e in events[:2]) == sorted(song_ids)
        assert all(e["data"]["status"] == "processed" and e["data"]["generation_id"] == gen_id for e in events[:2])
        done = events[2]["data"]
        assert done["generation_id"] == gen_id and done["processed"] == 2 and done["failed"] == 0
        ids = [r["headers"]["webhook-id"] for r in hook.requests]
        assert len(set(ids)) == 3 and all(i.startswith("msg_") for i in ids)
        assert deliver(app) == 0  # each event once

        # a tampered body or another secret does not verify
        from standardwebhooks.webhooks import WebhookVerificationError

        bad = dict(hook.requests[0], body=hook.requests[0]["body"].replace(b"processed", b"failed"))
        with pytest.raises(WebhookVerificationError):
            verified(secret, bad)
        with pytest.raises(WebhookVerificationError):
            verified(webhooks.new_secret(), hook.requests[0])

        # cancelled before a worker took it: song.failed, then generation.finished
        resp = client.post("/api/v1/generate_from_description", headers=bearer(token),
                           json={"description": "never mind", "variants": 1})
        queued = resp.get_json()["songs"][0]["id"]
        assert client.post(f"/api/v1/songs/{queued}/cancel", headers=bearer(token)).get_json()["outcome"] == "cancelled"
        assert deliver(app) == 2
        failed, finished = (verified(secret, r) for r in hook.requests[3:])
        assert failed["type"] == "song.failed" and failed["data"]["song_id"] == queued
        assert "Cancelled" in failed["data"]["error"]
        assert finished["type"] == "generation.finished" and finished["data"]["failed"] == 1

        # "send a test event", and the delivery log with the status codes
        assert auth.post(f"/settings/webhooks/{endpoint_id}/test").status_code == 303
        assert deliver(app) == 1
        test_event = verified(secret, hook.requests[-1])
        assert test_event["type"] == "webhook.test"
        page = auth.client.get("/settings/webhooks").get_data(as_text=True)
        assert page.count('data-delivery-status="delivered"') == 6 and page.count('data-attempt-status="200"') == 6
        assert hook.requests[-1]["headers"]["webhook-id"] in page


@sqlite_only
@pytest.mark.parametrize("app_overrides", [{"WEBHOOK_DISABLE_AFTER": 1000}])
def test_retries_back_off_exponentially_over_about_a_day(app, client, auth):
    assert auth.register(password=PASSWORD).status_code == 303
    with Receiver(default=500) as hook:
        secret, endpoint_id = add_endpoint(auth, hook.url)
        assert auth.post(f"/settings/webhooks/{endpoint_id}/test").status_code == 303
        now = dt.datetime(2031, 5, 1, 12, 0, 0)
        delays = []
        config = cfg(app)
        for n in range(1, config.WEBHOOK_MAX_ATTEMPTS + 1):
            assert deliver(app, now) == 1, n
            with connected(app):
                d = WebhookDelivery.get()
            assert d.attempts == n and d.last_status_code == 500
            if d.next_attempt_at is None:
                break
            delays.append((d.next_attempt_at - now).total_seconds())
            assert deliver(app, d.next_attempt_at - dt.timedelta(seconds=1)) == 0  # not before its time
            now = d.next_attempt_at
        assert delays == [60, 180, 540, 1620, 4860, 14580, 21600, 21600, 21600] == webhooks.schedule(config)
        assert 20 * 3600 < sum(delays) < 30 * 3600  # about a day
        assert d.status == "failed" and d.attempts == 10
        assert deliver(app, now + dt.timedelta(days=7)) == 0  # given up
        assert len(hook.requests) == 10
        assert len({r["headers"]["webhook-id"] for r in hook.requests}) == 1  # the same message each time
        for r in hook.requests:
            verified(secret, r)  # each attempt signed afresh
        with connected(app):
            log = list(WebhookAttempt.select().order_by(WebhookAttempt.number))
        assert [a.status_code for a in log] == [500] * 10
        assert [a.retry_in for a in log] == delays + [None]
        page = auth.client.get("/settings/webhooks").get_data(as_text=True)
        assert 'data-delivery-status="failed"' in page and page.count('data-attempt-status="500"') == 10


@sqlite_only
@pytest.mark.parametrize("app_overrides", [{"WEBHOOK_DISABLE_AFTER": 3, "WEBHOOK_DISABLE_SECONDS": 3600}])
def test_an_endpoint_is_disabled_after_the_failure_limit(app, client, auth):
    assert auth.register(password=PASSWORD).status_code == 303
    with Receiver(default=503) as hook:
        secret, endpoint_id = add_endpoint(auth, hook.url)
        for _ in range(4):
            assert auth.post(f"/settings/webhooks/{endpoint_id}/test").status_code == 303
        t0 = dt.datetime(2031, 5, 1, 12, 0, 0)
        assert deliver(app, t0) == 4  # four failures within a minute: not disabled yet (a brief outage)
        with connected(app):
            ep = WebhookEndpoint.get_by_id(endpoint_id)
            assert ep.disabled_at is None and ep.consecutive_failures == 4
        later = t0 + dt.timedelta(hours=2)
        assert deliver(app, later) == 1  # failing for over an hour, past the limit: disabled
        with connected(app):
            ep = WebhookEndpoint.get_by_id(endpoint_id)
            assert ep.disabled_at is not None and "5 failed deliveries" in ep.disabled_reason
            statuses = sorted(d.status for d in WebhookDelivery.select())
        assert statuses == ["failed"] * 4  # the rest were given up
        sent = len(hook.requests)
        assert deliver(app, later + dt.timedelta(days=2)) == 0 and len(hook.requests) == sent
        page = auth.client.get("/settings/webhooks").get_data(as_text=True)
        assert f'data-endpoint-id="{endpoint_id}" data-endpoint-status="disabled"' in page
        assert "5 failed deliveries in a row" in page
        assert auth.post(f"/settings/webhooks/{endpoint_id}/test").status_code == 409  # enable first

        # a disabled endpoint gets no new events; enabled again, it does
        with connected(app):
            from tests import song_factory

            song = song_factory.song(User.get(), "Queued", status="queued", published=False)
        from core.songs import fail_songs

        with connected(app):
            fail_songs([song], "broken")
            assert WebhookDelivery.select().count() == 4
        assert auth.post(f"/settings/webhooks/{endpoint_id}/enable").status_code == 303
        hook.default = 204
        assert auth.post(f"/settings/webhooks/{endpoint_id}/test").status_code == 303
        assert deliver(app) == 1
        assert verified(secret, hook.requests[-1])["type"] == "webhook.test"
        with connected(app):
            ep = WebhookEndpoint.get_by_id(endpoint_id)
            assert ep.disabled_at is None and ep.consecutive_failures == 0 and ep.last_success_at


@sqlite_only
@pytest.mark.parametrize("app_overrides", [{"ALLOW_PRIVATE_WEBHOOKS": False}])
def test_private_targets_are_refused_by_default(app, client, auth):
    assert auth.register(password=PASSWORD).status_code == 303
    with Receiver() as hook:
        for url in (hook.url, "http://localhost:8080/x", "http://10.1.2.3/hook", "http://192.168.0.10/",
                    "http://172.16.5.5/", "http://169.254.169.254/latest/meta-data", "http://[::1]/",
                    "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/", "http://100.64.0.1/", "http://[fe80::1]/"):
            resp = auth.post("/settings/webhooks", {"url": url, "events": ["song.processed"]})
            assert resp.status_code == 422, url
            assert "will not send events there" in resp.get_data(as_text=True)
        for url, text in (("ftp://example.com/x", "http:// or https://"), ("http://u:p@example.com/", "credentials"),
                          ("not a url", "without spaces"), ("", "Enter the URL")):
            resp = auth.post("/settings/webhooks", {"url": url, "events": ["song.processed"]})
            assert resp.status_code == 422 and text in resp.get_data(as_text=True), url
        resp = auth.post("/settings/webhooks", {"url": hook.url, "events": ["song.exploded"]})
        assert resp.status_code == 422 and "at least one event" in resp.get_data(as_text=True)
        with connected(app):
            assert WebhookEndpoint.select().count() == 0
            # an endpoint whose name resolves to a private address later (DNS rebinding) is refused
            # at delivery time, and nothing reaches it
            ep = WebhookEndpoint.create(user=User.get(), url=hook.url, events=["song.processed"],
                                        secret=webhooks.new_secret())
            webhooks.send_test(ep)
        assert deliver(app) == 1 and hook.requests == []
        with connected(app):
            attempt = WebhookAttempt.get()
        assert attempt.status_code is None and attempt.error.startswith("refused:") and "loopback" in attempt.error


@sqlite_only
def test_redirects_are_not_followed_and_the_page_is_owner_only(app, client, auth):
    assert auth.register(password=PASSWORD).status_code == 303
    with Receiver() as hook:
        hook.answers.append((302, {"Location": hook.url + "/elsewhere"}))
        secret, endpoint_id = add_endpoint(auth, hook.url + "/first")
        assert auth.post(f"/settings/webhooks/{endpoint_id}/test").status_code == 303
        assert deliver(app) == 1
        assert [r["path"] for r in hook.requests] == ["/first"]  # the redirect's target was not asked
        with connected(app):
            d = WebhookDelivery.get()
        assert d.status == "pending" and d.last_status_code == 302 and "not followed" in d.last_error

    # CSRF on every browser POST; signed-out people are sent to log in; others get 404
    no_csrf = client.post("/settings/webhooks", data={"url": "http://x.test/", "events": "song.processed"})
    assert no_csrf.status_code == 400
    bob = AuthActions(app.test_client())
    assert bob.register("bob@example.com", password=PASSWORD).status_code == 303
    for action in ("test", "disable", "enable", "delete"):
        assert bob.post(f"/settings/webhooks/{endpoint_id}/{action}").status_code == 404
    assert bob.post("/settings/webhooks/nope/test").status_code == 404
    assert f'data-endpoint-id="{endpoint_id}"' not in bob.client.get("/settings/webhooks").get_data(as_text=True)
    anon = app.test_client()
    assert anon.get("/settings/webhooks").status_code in (302, 303)
    with connected(app):
        assert WebhookEndpoint.get_by_id(endpoint_id).disabled_at is None
    assert auth.post(f"/settings/webhooks/{endpoint_id}/delete").status_code == 303
    with connected(app):
        assert WebhookEndpoint.select().count() == 0 and WebhookDelivery.select().count() == 0
    assert json.loads(d.payload)["type"] == "webhook.test"


@sqlite_only
@pytest.mark.parametrize("app_overrides", [{"WEBHOOK_POLL_INTERVAL": 0.05}])
def test_the_worker_loop_sends_what_is_due_until_stopped(app, client, auth):
    """`run_loop` is what the GPU worker runs in its `webhooks` thread beside the jobs."""
    import time

    assert auth.register(password=PASSWORD).status_code == 303
    with Receiver() as hook:
        secret, endpoint_id = add_endpoint(auth, hook.url)
        stop = threading.Event()
        loop = threading.Thread(target=webhooks.run_loop, args=(cfg(app), stop), daemon=True)
        loop.start()
        try:
            assert auth.post(f"/settings/webhooks/{endpoint_id}/test").status_code == 303
            deadline = time.monotonic() + 10
            while not hook.requests and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            loop.join(5)
        assert not loop.is_alive()
        assert [verified(secret, r)["type"] for r in hook.requests] == ["webhook.test"]
