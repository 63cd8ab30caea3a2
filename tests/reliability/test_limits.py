"""Brute force and body size, against gunicorn with two worker processes sharing Redis:

- login is limited per account (whatever the address) and per address (whatever the account);
  concurrent attempts spread over both workers still get exactly the limit, not limit x workers,
  and a correct password is refused too once the account is locked;
- a request body over MAX_CONTENT_LENGTH gets 413 (forms, uploads, the API, the webhook), both
  in-process and over real HTTP where the client announces a 30 MB body.
"""
from __future__ import annotations

import http.client
import threading
import uuid

import pytest
import requests

from tests.conftest import AuthActions, csrf_from
from tests.helpers import connected, free_port, make_user
from tests.reliability import harness
from tests.reliability.harness import process_env

pytestmark = pytest.mark.reliability

ACCOUNT_LIMIT, ADDRESS_LIMIT = 3, 6


def _attempt(base: str, email: str, password: str, address: str) -> tuple[int, str]:
    s = requests.Session()
    headers = {"X-Forwarded-For": address, "Connection": "close"}
    token = csrf_from(s.get(base + "/auth/login", headers=headers, timeout=30).text)
    r = s.post(base + "/auth/login", data={"email": email, "password": password, "csrf_token": token},
               headers=headers, allow_redirects=False, timeout=30)
    return r.status_code, r.headers.get("X-Served-By", "")


def _burst(base: str, attempts: list[tuple[str, str, str]]) -> list[tuple[int, str]]:
    out: list = [None] * len(attempts)
    barrier = threading.Barrier(len(attempts))

    def go(i, args):
        barrier.wait()
        out[i] = _attempt(base, *args)

    threads = [threading.Thread(target=go, args=(i, a)) for i, a in enumerate(attempts)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    return out


def test_login_is_rate_limited_per_account_and_per_address_across_gunicorn_workers(app_factory, tmp_path):
    app = app_factory("postgres", LOGIN_ACCOUNT_RATE_LIMIT=f"{ACCOUNT_LIMIT} per minute",
                      LOGIN_RATE_LIMIT=f"{ADDRESS_LIMIT} per minute")
    cfg = app.extensions["tunesmith_config"]
    with connected(app):
        make_user("victim@example.com", 10)
    # The counters live in a private redis-server: every test session's app fixture calls
    # limiter.reset(), which deletes all "LIMITS:*" keys of the shared test Redis mid-count.
    counters = harness.RedisServer(tmp_path / "limits-redis").start()
    env = process_env(cfg, tmp_path, TRUSTED_PROXIES=1,  # X-Forwarded-For names the address
                      RATELIMIT_STORAGE_URI=counters.url)
    port = free_port()
    web = harness.spawn_gunicorn(env, tmp_path / "logs", port, workers=2, threads=8)
    base = f"http://127.0.0.1:{port}"
    try:
        # per account: 10 addresses at once against one account
        guesses = _burst(base, [("victim@example.com", f"guess-{i}", f"10.1.0.{i}") for i in range(10)])
        codes = sorted(c for c, _ in guesses)
        assert codes == [401] * ACCOUNT_LIMIT + [429] * (10 - ACCOUNT_LIMIT), codes
        status, _ = _attempt(base, "victim@example.com", "password123", "10.1.0.99")
        assert status == 429, "the right password must not get through a locked account"
        # per address: one address at once against 10 accounts
        sprays = _burst(base, [(f"nobody{i}@example.com", "hunter22", "10.2.0.1") for i in range(10)])
        codes = sorted(c for c, _ in sprays)
        assert codes == [401] * ADDRESS_LIMIT + [429] * (10 - ADDRESS_LIMIT), codes
        # another address and account is not affected
        assert _attempt(base, "someone@example.com", "hunter22", "10.3.0.1")[0] == 401
        pids = {pid for _, pid in guesses + sprays}
        assert len(pids) == 2, f"both gunicorn workers should have answered: {pids}"
        # the page says what happened
        s = requests.Session()
        headers = {"X-Forwarded-For": "10.2.0.1"}
        token = csrf_from(s.get(base + "/auth/login", headers=headers, timeout=30).text)
        r = s.post(base + "/auth/login", data={"email": "x@example.com", "password": "y", "csrf_token": token},
                   headers=headers, timeout=30)
        assert r.status_code == 429 and "Too many attempts" in r.text
    finally:
        web.stop()
    harness.record("security", check="login brute force (2 gunicorn workers)",
                   outcome=f"per account: {ACCOUNT_LIMIT} of 10 concurrent guesses from 10 addresses got an "
                           f"answer, the rest 429 (the right password too); per address: {ADDRESS_LIMIT} of 10; "
                           f"served by {len(pids)} workers")


def test_bodies_over_max_content_length_get_413(app_factory):
    app = app_factory("sqlite", MAX_CONTENT_LENGTH=1024 * 1024)
    client = app.test_client()
    auth = AuthActions(client)
    auth.register()
    token = csrf_from(client.get("/create").get_data(as_text=True))
    big = "x" * (1024 * 1024 + 10)
    cases = {
        "login form": lambda c: c.post("/auth/login", data={"email": "a@b.cd", "password": big, "csrf_token": token}),
        "create form": lambda c: c.post("/create", data={"description": big, "csrf_token": token}),
        "rename (HTMX)": lambda c: c.post("/songs/x/rename", data={"title": big, "csrf_token": token},
                                          headers={"HX-Request": "true"}),
        "upload": lambda c: c.post("/create", data={"csrf_token": token, "file": (__import__("io").BytesIO(
            big.encode()), "song.wav")}, content_type="multipart/form-data"),
        "API": lambda c: c.post("/api/v1/generate_from_description", data=big, content_type="application/json",
                                headers={"Authorization": "Bearer " + _token(app)}),
        "API (over its own 256 KiB)": lambda c: c.post(
            "/api/v1/generate_from_description", data='{"description": "' + "y" * 300_000 + '"}',
            content_type="application/json", headers={"Authorization": "Bearer " + _token(app)}),
        "webhook": lambda c: c.post("/billing/webhook", data=big, content_type="application/json"),
    }
    for what, send in cases.items():
        resp = send(client)
        assert resp.status_code == 413, (what, resp.status_code)
        body = resp.get_data(as_text=True)
        assert "too large" in body.lower() or "is over" in body, (what, body[:300])  # says why
    harness.record("security", check="bodies over MAX_CONTENT_LENGTH",
                   outcome=f"413 with a message for {', '.join(cases)}; over HTTP (gunicorn) a 30 MB announced "
                           f"body is refused after 4 KB")


def _token(app) -> str:
    from app.api import tokens
    from models import User

    with connected(app):
        return tokens.issue(User.get(), f"t-{uuid.uuid4().hex[:6]}")[1]


def test_a_30_mb_body_is_refused_over_http_without_being_read(app_factory, tmp_path):
    """gunicorn + the default MAX_CONTENT_LENGTH (25 MiB): the app answers 413 from the announced
    Content-Length after a few bytes, without waiting for (or storing) the rest. (Without a valid
    token the API answers 401 first, also without reading the body.)"""
    app = app_factory("sqlite")
    cfg = app.extensions["tunesmith_config"]
    with connected(app):
        make_user("big@example.com", 10)
    bearer = _token(app)  # with a valid token: the API checks who is asking before reading a body
    port = free_port()
    web = harness.spawn_gunicorn(process_env(cfg, tmp_path), tmp_path / "logs", port, workers=1, threads=2)
    try:
        for path, ctype in (("/auth/login", "application/x-www-form-urlencoded"),
                            ("/create", "multipart/form-data; boundary=x"),
                            ("/api/v1/generate_from_description", "application/json"),
                            ("/billing/webhook", "application/json")):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            conn.putrequest("POST", path)
            conn.putheader("Content-Type", ctype)
            conn.putheader("Content-Length", str(30 * 1024 * 1024))
            conn.putheader("Authorization", f"Bearer {bearer}")
            conn.endheaders()
            conn.send(b"x" * 4096)
            resp = conn.getresponse()
            assert resp.status == 413, (path, resp.status, resp.read()[:300])
            conn.close()
    finally:
        web.stop()
