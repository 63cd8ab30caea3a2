"""CSRF: every state-changing browser route (every POST/PUT/PATCH/DELETE rule of `app.url_map`
except the signed Polar webhook and the token-authenticated API) refuses a request without a
valid token: missing, empty, forged, or taken from another person's session. Refused means
400 with a message and nothing changed.
"""
from __future__ import annotations

import pytest
from werkzeug.routing import AnyConverter

from models import ApiToken, CreditEntry, Generation, Like, Song, User
from tests import song_factory
from tests.conftest import AuthActions, csrf_from
from tests.helpers import connected
from tests.reliability import harness

pytestmark = [pytest.mark.reliability, pytest.mark.parametrize("backend", ["sqlite"])]

EXEMPT_PREFIXES = ("/api/",)
EXEMPT_ENDPOINTS = {"billing.webhook"}
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}


def _url(app, rule, song_id: str, token_id: int, job_id: str) -> str:
    values = {}
    for arg in rule.arguments:
        conv = rule._converters.get(arg)
        if arg == "song_id":
            values[arg] = song_id
        elif arg == "token_id":
            values[arg] = token_id
        elif arg in ("job_id", "generation_id"):
            values[arg] = job_id
        elif arg in ("user_id", "endpoint_id"):
            values[arg] = 1
        elif arg == "token":
            values[arg] = "x"
        elif arg in ("playlist_id", "style_id"):
            values[arg] = "0" * 32
        elif arg == "handle":
            values[arg] = "someone"
        elif isinstance(conv, AnyConverter):
            values[arg] = sorted(conv.items)[0]
        elif arg in {"queue_name", "registry_name", "name"}:
            values[arg] = {"registry_name": "queued", "name": "vocals"}.get(arg, "default")
        else:
            pytest.fail(f"test_csrf does not know how to fill <{arg}> of {rule.rule}")
    with app.test_request_context():
        from flask import url_for

        return url_for(rule.endpoint, **values)


def snapshot(app) -> dict:
    with connected(app):
        return {
            "songs": sorted((s.id, s.title, s.published, s.status, s.like_count) for s in Song.select()),
            "generations": Generation.select().count(), "likes": Like.select().count(),
            "ledger": CreditEntry.select().count(),
            "users": sorted((u.email, u.session_version) for u in User.select()),
            "tokens": sorted((t.id, t.name, t.revoked_at is None) for t in ApiToken.select()),
        }


def test_every_state_changing_route_refuses_a_request_without_a_valid_token(app, client, auth):
    auth.register("admin@example.com", "correct horse", name="Admin")
    with connected(app):
        admin = User.get(User.email == "admin@example.com")
        User.update(is_admin=True).where(User.id == admin.id).execute()
        song = song_factory.song(admin, "Mine", published=True, app=app)
        queued = song_factory.song(admin, "Waiting", published=False, status="queued")
        from app.api import tokens

        token, _ = tokens.issue(admin, "script")
    other = app.test_client()
    AuthActions(other).register("mallory@example.com", "correct horse")
    foreign = csrf_from(other.get("/create").get_data(as_text=True))  # valid, but for another session
    mine = csrf_from(client.get("/create").get_data(as_text=True))
    before = snapshot(app)

    rules = [r for r in app.url_map.iter_rules()
             if r.methods & STATE_CHANGING and r.endpoint not in EXEMPT_ENDPOINTS
             and not r.rule.startswith(EXEMPT_PREFIXES)]
    assert len(rules) >= 15, [r.rule for r in rules]
    problems, tried = [], 0
    for rule in rules:
        for song_id in ({song.id, queued.id} if "song_id" in rule.arguments else {song.id}):
            url = _url(app, rule, song_id, token.id, song.generation_id)
            for method in sorted(rule.methods & STATE_CHANGING):
                for label, data, headers in (
                        ("no token", {"title": "pwned", "name": "pwned", "pack": "x"}, {}),
                        ("empty token", {"csrf_token": "", "title": "pwned"}, {}),
                        ("forged token", {"csrf_token": mine[:-4] + "AAAA", "title": "pwned"}, {}),
                        ("another session's token", {"csrf_token": foreign, "title": "pwned"}, {}),
                        ("HTMX without its header", {"title": "pwned"}, {"HX-Request": "true"}),
                        ("another session's header", {"title": "pwned"},
                         {"HX-Request": "true", "X-CSRFToken": foreign}),
                ):
                    resp = client.open(url, method=method, data=data, headers=headers)
                    tried += 1
                    body = resp.get_data(as_text=True)
                    if resp.status_code != 400 or ("security token" not in body and "csrf" not in body.lower()):
                        problems.append(f"{label}: {method} {url} -> {resp.status_code}")
    assert not problems, f"{len(problems)} of {tried} requests were not refused:\n" + "\n".join(problems)
    assert snapshot(app) == before
    harness.record("security", check="CSRF on every state-changing browser route",
                   outcome=f"{len(rules)} routes (a finished and a queued song where a route names one) x 6 "
                           f"kinds of missing/empty/forged/foreign token = {tried} requests, all 400, nothing "
                           f"changed")
    # the same requests with the page's token go through (the refusals above were the token's doing)
    resp = client.post(f"/songs/{song.id}/rename", data={"csrf_token": mine, "title": "Renamed"})
    assert resp.status_code == 303
    resp = client.post(f"/songs/{song.id}/rename", data={"title": "Renamed again"},
                       headers={"HX-Request": "true", "X-CSRFToken": mine})
    assert resp.status_code == 200


def test_the_exempt_routes_need_their_own_credentials(app, client, auth):
    """The two exemptions are safe only because they authenticate otherwise: the webhook by its
    signature, the API by a bearer token (a browser's cookies alone get 401/403, never a write)."""
    auth.register()
    with connected(app):
        before = Generation.select().count()
    cfg = app.extensions["tunesmith_config"]
    cfg.POLAR_WEBHOOK_SECRET = cfg.POLAR_WEBHOOK_SECRET or "whsec_" + "QUFB" * 8
    resp = client.post("/billing/webhook", data=b'{"type": "order.paid", "data": {}}',
                       content_type="application/json")
    assert resp.status_code in (400, 403)
    for endpoint in ("generate_from_description", "generate_with_lyrics", "generate_from_described_lyrics"):
        resp = client.post(f"/api/v1/{endpoint}", json={"description": "x", "prompt": "y", "lyrics": "z"})
        assert resp.status_code == 401, endpoint
    with connected(app):
        assert Generation.select().count() == before
