"""API tokens at /settings/tokens: made (shown once), named, renamed, revoked; only a SHA-256 hash
is stored. Runs on SQLite and PostgreSQL."""
from __future__ import annotations

import hashlib
import re

import pytest

import models
from models import ApiToken
from tests.conftest import AuthActions
from tests.helpers import connected

TOKEN_RE = re.compile(r"data-token>(ts_[A-Za-z0-9_\-]+)<")
# Backend-independent behaviour: one database is enough.
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"])


def make_token(auth, name="laptop script"):
    resp = auth.post("/settings/tokens", {"name": name})
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return TOKEN_RE.search(resp.get_data(as_text=True)).group(1)


def api(client, token, path="/api/v1/songs"):
    return client.get(path, headers={"Authorization": f"Bearer {token}"})


@sqlite_only
def test_visitors_are_sent_to_log_in(client):
    resp = client.get("/settings/tokens")
    assert resp.status_code == 302 and "/auth/login" in resp.headers["Location"]


def test_token_is_shown_once_and_only_its_hash_is_stored(app, client, auth):
    auth.register()
    assert "No tokens yet" in client.get("/settings/tokens").get_data(as_text=True)
    resp = auth.post("/settings/tokens", {"name": "  my   laptop "})
    assert resp.status_code == 201
    assert resp.headers["Cache-Control"] == "no-store"
    page = resp.get_data(as_text=True)
    token = TOKEN_RE.search(page).group(1)
    assert "shown only this once" in page and len(token) >= 40

    again = client.get("/settings/tokens").get_data(as_text=True)
    assert token not in again and token[:10] in again and "my laptop" in again
    assert 'data-token-status="active"' in again

    with connected(app):
        row = ApiToken.get()
        assert row.name == "my laptop"
        assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert row.prefix == token[:10] and row.last_used_at is None
        stored = [str(v) for v in row.__data__.values()]
        assert not any(token in v for v in stored)

    assert api(client, token).status_code == 200
    with connected(app):
        assert ApiToken.get().last_used_at is not None


@sqlite_only
def test_name_is_required_and_bounded(client, auth, app):
    auth.register()
    resp = auth.post("/settings/tokens", {"name": "   "})
    assert resp.status_code == 422 and "Give the token a name" in resp.get_data(as_text=True)
    resp = auth.post("/settings/tokens", {"name": "x" * 81})
    assert resp.status_code == 422 and "80 characters" in resp.get_data(as_text=True)
    with connected(app):
        assert ApiToken.select().count() == 0


@sqlite_only
def test_creating_needs_csrf(client, auth):
    auth.register()
    resp = client.post("/settings/tokens", data={"name": "no csrf"})
    assert resp.status_code == 400


def test_rename_and_revoke(app, client, auth):
    auth.register()
    token = make_token(auth, "old name")
    with connected(app):
        token_id = ApiToken.get().id
    resp = auth.post(f"/settings/tokens/{token_id}/rename", {"name": "new name"})
    assert resp.status_code == 303 and resp.headers["Location"] == "/settings/tokens"
    page = client.get("/settings/tokens").get_data(as_text=True)
    assert "new name" in page and "old name" not in page

    resp = auth.post(f"/settings/tokens/{token_id}/revoke")
    assert resp.status_code == 303
    page = client.get("/settings/tokens").get_data(as_text=True)
    assert 'data-token-status="revoked"' in page
    resp = api(client, token)
    assert resp.status_code == 401
    assert resp.get_json()["error"]["code"] == "invalid_token"
    # revoking twice keeps the first time
    with connected(app):
        first = ApiToken.get_by_id(token_id).revoked_at
    auth.post(f"/settings/tokens/{token_id}/revoke")
    with connected(app):
        assert ApiToken.get_by_id(token_id).revoked_at == first


@sqlite_only
def test_htmx_gets_the_panel_fragment(client, auth):
    auth.register()
    resp = auth.post("/settings/tokens", {"name": "htmx"}, headers={"HX-Request": "true"})
    assert resp.status_code == 201
    html = resp.get_data(as_text=True)
    assert html.lstrip().startswith('<section id="tokens-panel"') and "<html" not in html
    assert TOKEN_RE.search(html)
    resp = auth.post("/settings/tokens", {"name": ""}, headers={"HX-Request": "true"})
    assert resp.status_code == 422 and "<html" not in resp.get_data(as_text=True)


def test_someone_elses_token_cannot_be_touched(app, client, auth):
    auth.register("alice@example.com")
    token = make_token(auth)
    with connected(app):
        token_id = ApiToken.get().id
    bob = AuthActions(app.test_client())
    bob.register("bob@example.com")
    assert bob.post(f"/settings/tokens/{token_id}/revoke").status_code == 404
    assert bob.post(f"/settings/tokens/{token_id}/rename", {"name": "mine now"}).status_code == 404
    assert bob.post("/settings/tokens/not-a-number/revoke").status_code == 404
    assert "No tokens yet" in bob.client.get("/settings/tokens").get_data(as_text=True)
    assert api(client, token).status_code == 200


@sqlite_only
def test_active_tokens_are_capped(app, client, auth, monkeypatch):
    from app.api import tokens

    monkeypatch.setattr(tokens, "MAX_ACTIVE", 2)
    auth.register()
    make_token(auth, "one")
    make_token(auth, "two")
    resp = auth.post("/settings/tokens", {"name": "three"})
    assert resp.status_code == 409 and "revoke one" in resp.get_data(as_text=True)
    with connected(app):
        first = ApiToken.get(ApiToken.name == "one").id
    auth.post(f"/settings/tokens/{first}/revoke")
    make_token(auth, "three")


def test_deleting_the_user_deletes_the_tokens(app, client, auth):
    auth.register()
    token = make_token(auth)
    with connected(app):
        models.User.delete().execute()
        assert ApiToken.select().count() == 0
    assert api(client, token).status_code == 401
