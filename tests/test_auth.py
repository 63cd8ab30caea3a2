"""Accounts: register, log in, log out, CSRF, rate limits, sessions. Runs on SQLite and PostgreSQL."""
import re

import pytest

import models
from tests.conftest import csrf_from


def count_users(app):
    with app.app_context():
        models.db.connect(reuse_if_open=True)
        n = models.User.select().count()
        models.db.close()
        return n


def test_register_login_logout_shows_credits(client, auth, app):
    resp = auth.register("Alice@Example.COM", "correct horse", "Alice")
    assert resp.status_code == 303
    page = client.get("/").get_data(as_text=True)
    assert 'data-credits="100"' in page
    assert "Alice" in page
    with app.app_context():
        user = models.User.get(models.User.email == "alice@example.com")
        assert user.password_hash.startswith("scrypt:")
        assert user.balance() == 100 == user.ledger_balance()
        entries = list(models.CreditEntry.select().where(models.CreditEntry.user == user))
        assert [(e.kind, e.delta) for e in entries] == [("grant", 100)]
    assert auth.logout().status_code == 303
    page = client.get("/").get_data(as_text=True)
    assert "data-credits" not in page and "Log in" in page
    resp = auth.login("ALICE@example.com", "correct horse")
    assert resp.status_code == 303
    assert 'data-credits="100"' in client.get("/").get_data(as_text=True)


@pytest.mark.parametrize("email,password,message", [
    ("not-an-email", "correct horse", "valid email"),
    ("", "correct horse", "Enter your email"),
    ("bob@example.com", "short", "at least 8 characters"),
    ("bob@example.com", "", "Choose a password"),
])
def test_register_bad_input_rerenders_with_message_and_writes_nothing(client, auth, app, email, password, message):
    resp = auth.register(email, password)
    assert resp.status_code == 422
    assert message in resp.get_data(as_text=True)
    assert count_users(app) == 0


def test_duplicate_email_is_refused(client, auth, app):
    auth.register("dup@example.com")
    auth.logout()
    resp = auth.register("DUP@example.com", "another password")
    assert resp.status_code == 422
    assert "already exists" in resp.get_data(as_text=True)
    assert count_users(app) == 1


def test_wrong_password_is_refused(client, auth):
    auth.register()
    auth.logout()
    resp = auth.login("alice@example.com", "wrong password")
    assert resp.status_code == 401
    assert "do not match" in resp.get_data(as_text=True)
    assert "data-credits" not in client.get("/").get_data(as_text=True)


def test_post_without_csrf_token_is_refused_and_changes_nothing(client, app):
    resp = client.post("/auth/register", data={"email": "eve@example.com", "password": "correct horse"})
    assert resp.status_code == 400
    assert "security token" in resp.get_data(as_text=True)
    assert count_users(app) == 0


def test_logout_requires_csrf(client, auth):
    auth.register()
    resp = client.post("/auth/logout")
    assert resp.status_code == 400
    assert 'data-credits="100"' in client.get("/").get_data(as_text=True)


def test_login_next_redirect_is_local_only(client, auth):
    auth.register()
    auth.logout()
    token = auth.csrf()
    resp = client.post("/auth/login?next=https://evil.example/", data={
        "email": "alice@example.com", "password": "correct horse", "csrf_token": token})
    assert resp.status_code == 303
    assert resp.headers["Location"] == "/"


def test_session_cookie_flags(client, auth):
    resp = auth.register()
    cookie = resp.headers.get("Set-Cookie", "")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_logout_everywhere_ends_other_sessions(app, auth, client):
    auth.register()
    other = app.test_client()
    from tests.conftest import AuthActions

    AuthActions(other).login()
    assert 'data-credits="100"' in other.get("/").get_data(as_text=True)
    resp = auth.post("/auth/logout-everywhere")
    assert resp.status_code == 303
    assert "data-credits" not in other.get("/").get_data(as_text=True)


def test_password_change_ends_other_sessions(app, auth, client):
    from tests.conftest import AuthActions

    auth.register()
    other = app.test_client()
    AuthActions(other).login()
    bad = auth.post("/auth/password", data={"current": "wrong one!", "new": "brand new pass"})
    assert bad.status_code == 422 and "not your current password" in bad.get_data(as_text=True)
    resp = auth.post("/auth/password", data={"current": "correct horse", "new": "brand new pass"})
    assert resp.status_code == 303
    assert 'data-credits="100"' in client.get("/").get_data(as_text=True)  # this session continues
    assert "data-credits" not in other.get("/").get_data(as_text=True)  # the other one ended
    auth.logout()
    assert auth.login("alice@example.com", "correct horse").status_code == 401
    assert auth.login("alice@example.com", "brand new pass").status_code == 303


@pytest.fixture
def app_overrides(request):
    if "rate_limited" in request.keywords:
        return {"LOGIN_RATE_LIMIT": "100 per minute", "LOGIN_ACCOUNT_RATE_LIMIT": "3 per minute",
                "REGISTER_RATE_LIMIT": "2 per minute"}
    return {}


@pytest.mark.rate_limited
def test_login_is_rate_limited_per_account(client, auth, app):
    auth.register()
    auth.logout()
    codes = [auth.login("alice@example.com", "wrong password").status_code for _ in range(3)]
    assert codes == [401, 401, 401]
    resp = auth.login("alice@example.com", "correct horse")
    assert resp.status_code == 429
    assert "Too many attempts" in resp.get_data(as_text=True)
    # another account from the same address is not locked out by this one
    assert auth.login("someone@example.com", "whatever pw").status_code == 401


@pytest.mark.rate_limited
def test_register_is_rate_limited(client, auth, app):
    assert auth.register("a1@example.com").status_code == 303
    auth.logout()
    assert auth.register("a2@example.com").status_code == 303
    auth.logout()
    assert auth.register("a3@example.com").status_code == 429
    assert count_users(app) == 2


def test_error_pages(client):
    resp = client.get("/no/such/page")
    assert resp.status_code == 404
    assert "There is nothing here" in resp.get_data(as_text=True)
