"""Accounts as people expect them: mail (a real SMTP server on loopback, or .eml files), password
recovery, address confirmation and change, deletion, export, admin people pages, two-factor,
common passwords, security headers. Runs on SQLite and PostgreSQL."""
from __future__ import annotations

import io
import json
import logging
import re
import time
import zipfile
from pathlib import Path

import pytest

import models
from tests.conftest import AuthActions, csrf_from
from tests.helpers import connected, run_worker, submit
from tests.smtp_server import SmtpServer, link_in, parts

pytestmark = pytest.mark.sqlite_only  # mail, tokens and forms: the same on both databases (deletion and export run on both)

PASSWORD = "correct horse"
NEW_PASSWORD = "violet anchor 93 drift"


@pytest.fixture(scope="session")
def smtp():
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def app_overrides(request, smtp):
    smtp.clear()
    overrides = {"SMTP_URL": smtp.url, "MAIL_FROM": "Tunesmith <noreply@tunesmith.test>"}
    marker = request.node.get_closest_marker("settings")
    if marker:
        overrides.update(marker.kwargs)
    if "s3_url" in request.fixturenames:
        overrides["STORAGE_URL"] = request.getfixturevalue("s3_url")
    return overrides


def user_row(app, email):
    with connected(app):
        return models.User.get_or_none(models.User.email == email)


def forgot(client, email):
    token = csrf_from(client.get("/auth/forgot").get_data(as_text=True))
    return client.post("/auth/forgot", data={"email": email, "csrf_token": token})


def normalised(html: str) -> str:
    """The page without what differs between any two responses (CSRF tokens)."""
    return re.sub(r'(csrf[-_]token"?[^>]*?(value|content)="|"X-CSRFToken": ")[^"]+', r"\1-", html)


# ---------------------------------------------------------------------------------- mail
def test_mail_has_text_and_html_parts_and_eml_fallback(tmp_path, caplog):
    from config import TestConfig
    from core import mail

    cfg = TestConfig(VAR_DIR=tmp_path / "var", SMTP_URL=None)
    msg = mail.compose(cfg, "bob@example.com", "Hello", ["First <line> & more"], link=("Open", "https://x.test/a?b=1"))
    with caplog.at_level(logging.WARNING, logger="tunesmith.mail"):
        where = mail.send(cfg, msg)
    files = list((tmp_path / "var" / "mail").glob("*.eml"))
    assert [str(f) for f in files] == [where]
    assert "SMTP_URL is not set" in caplog.text and where in caplog.text
    import email
    import email.policy

    saved = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    text, html = parts(saved)
    assert saved["To"] == "bob@example.com" and saved["Subject"] == "Hello"
    assert "First <line> & more" in text and "https://x.test/a?b=1" in text
    assert "First &lt;line&gt; &amp; more" in html and 'href="https://x.test/a?b=1"' in html


def test_smtp_url_parsing():
    from core.mail import parse_smtp_url

    t = parse_smtp_url("smtp://us%40er:p%3Ass@mail.example.com:2525?starttls=1")
    assert (t.host, t.port, t.username, t.password, t.starttls, t.tls) == ("mail.example.com", 2525, "us@er",
                                                                           "p:ss", True, False)
    assert parse_smtp_url("smtps://mail.example.com").port == 465
    assert parse_smtp_url("smtp://mail.example.com?starttls=1").port == 587
    with pytest.raises(ValueError):
        parse_smtp_url("http://mail.example.com")


@pytest.mark.settings(SMTP_URL=None)
def test_forgot_without_smtp_writes_an_eml_file(client, auth, app):
    auth.register()
    auth.logout()
    resp = forgot(client, "alice@example.com")
    assert resp.status_code == 200
    folder = Path(app.extensions["tunesmith_config"].VAR_DIR) / "mail"
    deadline = time.monotonic() + 10
    while not list(folder.glob("*.eml")) and time.monotonic() < deadline:
        time.sleep(0.05)
    (eml,) = folder.glob("*.eml")
    body = eml.read_text()
    assert "To: alice@example.com" in body and "/auth/reset/" in body


# ---------------------------------------------------------------------------------- recovery
def test_reset_round_trip_works_once_and_ends_other_sessions(client, auth, app, smtp):
    auth.register()
    other = app.test_client()
    AuthActions(other).login()
    assert 'data-credits="100"' in other.get("/").get_data(as_text=True)
    auth.logout()

    resp = forgot(client, "ALICE@example.com ")
    assert resp.status_code == 200
    assert "we have sent it a link" in resp.get_data(as_text=True)
    msg = smtp.wait_for("alice@example.com")
    text, html = parts(msg)
    assert msg["Subject"] == "Reset your Tunesmith password" and msg["From"] == "Tunesmith <noreply@tunesmith.test>"
    assert "works once" in text and "/auth/reset/" in html
    link = link_in(msg, "/auth/reset/")

    page = client.get(link)
    assert page.status_code == 200 and "Choose a new password" in page.get_data(as_text=True)
    token = csrf_from(page.get_data(as_text=True))
    weak = client.post(link, data={"password": "password123", "csrf_token": token})
    assert weak.status_code == 422 and "most common" in weak.get_data(as_text=True)
    done = client.post(link, data={"password": NEW_PASSWORD, "csrf_token": token})
    assert done.status_code == 303
    assert 'data-credits="100"' in client.get("/").get_data(as_text=True)  # signed in here
    assert "data-credits" not in other.get("/").get_data(as_text=True)  # the other session ended

    again = client.get(link)
    assert again.status_code == 410 and "does not work" in again.get_data(as_text=True)
    auth.logout()
    assert auth.login("alice@example.com", PASSWORD).status_code == 401
    assert auth.login("alice@example.com", NEW_PASSWORD).status_code == 303
    assert user_row(app, "alice@example.com").email_verified_at is not None  # the link proved the address


def test_reset_link_expires_and_a_forged_one_is_refused(client, auth, app, smtp):
    auth.register()
    auth.logout()
    forgot(client, "alice@example.com")
    link = link_in(smtp.wait_for("alice@example.com"), "/auth/reset/")
    with connected(app):
        models.MailToken.update(expires_at=models.utcnow() - models.dt.timedelta(seconds=1)).execute()
    resp = client.get(link)
    assert resp.status_code == 410 and "expired" in resp.get_data(as_text=True)
    token = csrf_from(client.get("/auth/forgot").get_data(as_text=True))
    post = client.post(link, data={"password": NEW_PASSWORD, "csrf_token": token})
    assert post.status_code == 410
    assert client.get(link[:-3] + "abc").status_code == 410
    assert auth.login("alice@example.com", PASSWORD).status_code == 303  # nothing changed


def test_a_newer_reset_link_replaces_the_older(client, auth, app, smtp):
    auth.register()
    auth.logout()
    forgot(client, "alice@example.com")
    first = link_in(smtp.wait_for("alice@example.com"), "/auth/reset/")
    forgot(client, "alice@example.com")
    second = link_in(smtp.wait_for("alice@example.com", count=2), "/auth/reset/")
    assert client.get(first).status_code == 410
    assert client.get(second).status_code == 200


def test_forgot_answers_the_same_for_known_and_unknown_addresses(client, auth, app, smtp):
    auth.register()
    auth.logout()
    known = forgot(client, "alice@example.com")
    unknown = forgot(client, "nobody@example.com")
    assert known.status_code == unknown.status_code == 200
    assert normalised(known.get_data(as_text=True)) == normalised(unknown.get_data(as_text=True))
    smtp.wait_for("alice@example.com")
    time.sleep(0.2)
    assert smtp.to("nobody@example.com") == []
    bad = forgot(client, "not an address")
    assert bad.status_code == 422 and "valid email" in bad.get_data(as_text=True)


@pytest.mark.settings(FORGOT_ACCOUNT_RATE_LIMIT="2 per minute", FORGOT_RATE_LIMIT="4 per minute")
def test_forgot_is_rate_limited_per_address_and_per_client(client, auth, app, smtp):
    auth.register()
    auth.logout()
    codes = [forgot(client, "alice@example.com").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    unknown = [forgot(client, "ghost@example.com").status_code for _ in range(3)]
    assert unknown[-1] == 429  # unknown addresses are limited the same way: nothing to tell apart
    last = forgot(client, "third@example.com")
    assert last.status_code == 429 and "Too many attempts" in last.get_data(as_text=True)
    assert len(smtp.to("alice@example.com")) <= 2


# ---------------------------------------------------------------------------------- deletion
def _make_song(app, user, text="delete me"):
    gen = submit(user, 1, variants=1, duration=10, text=text, app=app)[0]
    run_worker(app)
    with connected(app):
        return models.Song.get(models.Song.generation == gen.id)


@pytest.mark.both_backends
def test_delete_account_removes_files_rows_and_keeps_the_books(client, auth, app, s3_url):
    from core.storage import get_storage

    auth.register()
    alice = user_row(app, "alice@example.com")
    song = _make_song(app, alice)
    bob_client = app.test_client()
    bob_auth = AuthActions(bob_client)
    bob_auth.register("bob@example.com")
    bob = user_row(app, "bob@example.com")
    bob_song = _make_song(app, bob, "bob's song")
    with connected(app):
        models.Song.get_by_id(song.id).publish()
        models.Song.get_by_id(bob_song.id).publish()
        models.Song.get_by_id(song.id).set_like(bob, True)
        models.Song.get_by_id(bob_song.id).set_like(alice, True)
        models.Song.get_by_id(bob_song.id).count_listen(f"u:{alice.id}")
    auth.post("/settings/tokens", data={"name": "script"})
    auth.post("/settings/profile", data={"name": "Alice", "handle": "alice_sings", "bio": "I sing about rivers"})
    bob_auth.post("/u/alice_sings/follow", data={"follow": "1"})
    assert "I sing about rivers" in bob_client.get("/u/alice_sings").get_data(as_text=True)
    storage = get_storage(app.extensions["tunesmith_config"])
    assert storage.kind == "s3"
    prefix = f"users/{alice.id}/"
    assert len(storage.list(prefix)) >= 2  # audio and cover in the S3 endpoint

    wrong = auth.post("/settings/account/delete", data={"password": "not my password"})
    assert wrong.status_code == 403 and "nothing was deleted" in wrong.get_data(as_text=True)
    assert user_row(app, "alice@example.com") is not None and storage.list(prefix)

    resp = auth.post("/settings/account/delete", data={"password": PASSWORD})
    assert resp.status_code == 303
    page = client.get("/").get_data(as_text=True)
    assert "Your account and your songs are deleted" in page and "data-credits" not in page
    assert storage.list(prefix) == []
    assert storage.list(f"users/{bob.id}/")  # bob's files stay
    with connected(app):
        uid = alice.id
        assert models.Song.select().where(models.Song.user == uid).count() == 0
        assert models.Generation.select().where(models.Generation.user == uid).count() == 0
        assert models.Like.select().where(models.Like.user == uid).count() == 0
        assert models.ApiToken.select().where(models.ApiToken.user == uid).count() == 0
        assert models.Listen.select().where(models.Listen.listener == f"u:{uid}").count() == 0
        assert models.Song.get_by_id(bob_song.id).like_count == 0
        tomb = models.User.get_by_id(uid)
        assert tomb.email == f"deleted-{uid}@deleted.invalid" and tomb.name == "" and tomb.deleted_at
        assert tomb.handle is None and tomb.bio == "" and tomb.avatar_key is None  # the profile goes too
        assert models.Follow.select().where((models.Follow.followee == uid) | (models.Follow.follower == uid)).count() == 0
        ledger = list(models.CreditEntry.select().where(models.CreditEntry.user == uid))
        assert {e.kind for e in ledger} >= {"grant", "reserve", "capture"}
        assert not any("delete me" in e.note for e in ledger)  # notes quoting the person are cleared
        assert sum(e.delta for e in ledger) == tomb.credits
    assert auth.login("alice@example.com", PASSWORD).status_code == 401
    assert bob_client.get("/u/alice_sings").status_code == 404
    assert bob_client.get(f"/songs/{bob_song.id}").status_code == 200
    assert bob_client.get(f"/songs/{song.id}").status_code == 404


def test_delete_account_needs_its_form_token(client, auth, app):
    auth.register()
    resp = client.post("/settings/account/delete", data={"password": PASSWORD})
    assert resp.status_code == 400
    assert user_row(app, "alice@example.com").deleted_at is None


# ---------------------------------------------------------------------------------- export
@pytest.mark.both_backends
def test_export_zip_holds_the_account_and_the_songs_files(client, auth, app, smtp):
    from core.storage import get_storage

    auth.register()
    alice = user_row(app, "alice@example.com")
    song = _make_song(app, alice, "export me")
    auth.post("/settings/profile", data={"name": "Alice", "handle": "alice_sings", "bio": "rivers"})
    made = auth.post("/playlists", data={"title": "Road trip", "description": "", "public": "y"})
    playlist_id = made.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
    auth.post(f"/playlists/{playlist_id}/add", data={"song_id": song.id})
    resp = auth.post("/settings/account/export")
    assert resp.status_code == 303
    page = client.get("/settings/account").get_data(as_text=True)
    assert 'data-export-status="queued"' in page and "being prepared" in page
    run_worker(app)
    page = client.get("/settings/account").get_data(as_text=True)
    assert 'data-export-status="ready"' in page
    link = re.search(r'href="([^"]+)"[^>]*data-export-link', page).group(1)
    msg = smtp.wait_for("alice@example.com")
    assert msg["Subject"] == "Your Tunesmith data export is ready"
    mail_link = link_in(msg, "/settings/account/export/")

    visitor = app.test_client()
    assert visitor.get(link).status_code == 302 and "/auth/login" in visitor.get(link).headers["Location"]
    files = client.get(link)
    assert files.status_code == 302
    assert client.get(mail_link).status_code == 302  # the mailed link downloads it too
    blob = client.get(files.headers["Location"]).get_data()
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        names = set(zf.namelist())
        data = json.loads(zf.read("account.json"))
        storage = get_storage(app.extensions["tunesmith_config"])
        with connected(app):
            row = models.Song.get_by_id(song.id)
        for role, key in (("audio", row.audio_key), ("cover", row.cover_key)):
            path = f"songs/{song.id}/{role}.{key.rsplit('.', 1)[-1]}"
            assert path in names
            assert zf.read(path) == storage.get(key)
    assert data["account"]["email"] == "alice@example.com"
    assert data["account"]["handle"] == "alice_sings" and data["account"]["bio"] == "rivers"
    assert [(p["title"], p["song_ids"]) for p in data["playlists"]] == [("Road trip", [song.id])]
    assert [s["id"] for s in data["songs"]] == [song.id]
    assert data["songs"][0]["files"]["audio"] in names
    assert "export me" in data["generations"][0]["description"]
    assert [e["kind"] for e in data["credit_ledger"]][:2] == ["grant", "reserve"]
    assert "README.txt" in names
    assert client.get(link[:-4] + "abcd").status_code == 404


# ---------------------------------------------------------------------------------- confirmation
CREATE = {"mode": "description", "description": "a song about the sea", "duration": "10", "variants": "1"}


@pytest.mark.settings(REQUIRE_EMAIL_VERIFICATION=True)
def test_unconfirmed_account_browses_but_cannot_create_until_it_confirms(client, auth, app, smtp):
    assert auth.register().status_code == 303
    first = link_in(smtp.wait_for("alice@example.com"), "/auth/verify/")
    home = client.get("/").get_data(as_text=True)
    assert "data-unverified" in home and "Confirm your address" in home
    assert client.get("/library").status_code == 200  # browsing works
    refused = auth.post("/create", data=CREATE)
    assert refused.status_code == 403 and "Confirm your email address first" in refused.get_data(as_text=True)
    with connected(app):
        assert models.Generation.select().count() == 0 and models.User.get().credits == 100

    resend = auth.post("/auth/verify/resend", data={"next": "/library"})
    assert resend.status_code == 303 and resend.headers["Location"].endswith("/library")
    second = link_in(smtp.wait_for("alice@example.com", count=2), "/auth/verify/")
    assert client.get(first).status_code == 410  # only the newest link counts
    ok = client.get(second)
    assert ok.status_code == 303
    page = client.get("/settings/account").get_data(as_text=True)
    assert "your address is confirmed" in page and 'data-verified="true"' in page
    assert "data-unverified" not in client.get("/").get_data(as_text=True)
    assert client.get(second).status_code == 410  # single use
    assert auth.post("/create", data=CREATE).status_code == 303


def test_verification_off_by_default_lets_new_accounts_create(client, auth, smtp):
    auth.register()
    assert "data-unverified" not in client.get("/").get_data(as_text=True)
    assert auth.post("/create", data=CREATE).status_code == 303
    time.sleep(0.1)
    assert smtp.to("alice@example.com") == []  # no confirmation mail when it is off


# ---------------------------------------------------------------------------------- account page
def test_change_of_address_is_confirmed_at_the_new_address(client, auth, app, smtp):
    auth.register()
    AuthActions(app.test_client()).register("taken@example.com")
    wrong = auth.post("/settings/account", data={"action": "email", "email": "new@example.com", "password": "nope nope"})
    assert wrong.status_code == 422 and "not your current password" in wrong.get_data(as_text=True)
    taken = auth.post("/settings/account", data={"action": "email", "email": "Taken@example.com", "password": PASSWORD})
    assert taken.status_code == 409 and "Another account uses that address" in taken.get_data(as_text=True)
    bad = auth.post("/settings/account", data={"action": "email", "email": "nonsense", "password": PASSWORD})
    assert bad.status_code == 422 and "valid email" in bad.get_data(as_text=True)
    assert smtp.to("new@example.com") == []

    resp = auth.post("/settings/account", data={"action": "email", "email": " New@Example.com", "password": PASSWORD})
    assert resp.status_code == 303
    msg = smtp.wait_for("new@example.com")
    assert "Confirm your new email address" in msg["Subject"]
    page = client.get("/settings/account").get_data(as_text=True)
    assert '<strong data-account-email>alice@example.com</strong>' in page  # unchanged until confirmed
    assert client.get(link_in(msg, "/auth/verify/")).status_code == 303
    page = client.get("/settings/account").get_data(as_text=True)
    assert '<strong data-account-email>new@example.com</strong>' in page and "Your address is now" in page
    auth.logout()
    assert auth.login("alice@example.com", PASSWORD).status_code == 401
    assert auth.login("new@example.com", PASSWORD).status_code == 303


def test_display_name(client, auth):
    auth.register()
    resp = auth.post("/settings/account", data={"action": "name", "name": "  Ada   Lovelace "})
    assert resp.status_code == 303
    assert 'class="who"' in (page := client.get("/").get_data(as_text=True)) and ">Ada Lovelace</a>" in page
    long = auth.post("/settings/account", data={"action": "name", "name": "x" * 81})
    assert long.status_code == 422 and "under 80 characters" in long.get_data(as_text=True)
    assert ">Ada Lovelace</a>" in client.get("/").get_data(as_text=True)


# ---------------------------------------------------------------------------------- passwords
@pytest.mark.parametrize("password,message", [
    ("password123", "most common"), ("qwertyuiop", "most common"), ("aaaaaaaaaa", "repeats"),
    ("abababababab", "repeats"), ("alice@example.com", "email address"),
])
def test_weak_passwords_are_refused_with_a_reason(client, auth, app, password, message):
    resp = auth.register("alice@example.com", password)
    assert resp.status_code == 422 and message in resp.get_data(as_text=True)
    assert user_row(app, "alice@example.com") is None


def test_strength_estimate():
    from app.auth.passwords import strength

    assert strength("password123") == 0
    assert strength("sunset12") < strength("violet anchor 93 drift") == 4


# ---------------------------------------------------------------------------------- two-factor
def _enable_totp(client, auth):
    import pyotp

    auth.post("/settings/account/2fa/start")
    page = client.get("/settings/account").get_data(as_text=True)
    secret = re.search(r"data-totp-secret>([A-Z2-7]+)<", page).group(1)
    bad = auth.post("/settings/account/2fa/confirm", data={"code": "000000"})
    assert bad.status_code == 422 and "not right" in bad.get_data(as_text=True)
    ok = auth.post("/settings/account/2fa/confirm", data={"code": pyotp.TOTP(secret).now()})
    assert ok.status_code == 303
    assert 'data-two-factor="on"' in client.get("/settings/account").get_data(as_text=True)
    return secret


def test_two_factor_sign_in(client, auth, app):
    import pyotp

    auth.register()
    secret = _enable_totp(client, auth)
    auth.logout()
    step = auth.login()
    assert step.status_code == 303 and step.headers["Location"].endswith("/auth/2fa")
    assert "data-credits" not in client.get("/").get_data(as_text=True)  # not signed in yet
    token = csrf_from(client.get("/auth/2fa").get_data(as_text=True))
    wrong = client.post("/auth/2fa", data={"code": "123456", "csrf_token": token})
    assert wrong.status_code == 401 and "not right" in wrong.get_data(as_text=True)
    done = client.post("/auth/2fa", data={"code": pyotp.TOTP(secret).now(), "csrf_token": token})
    assert done.status_code == 303
    assert 'data-credits="100"' in client.get("/").get_data(as_text=True)
    fresh = app.test_client()
    assert fresh.get("/auth/2fa").status_code == 303  # nothing pending: back to the login form


@pytest.mark.settings(ADMIN_REQUIRE_2FA=True)
def test_admins_must_set_up_two_factor_when_required(client, auth, app):
    auth.register()
    with connected(app):
        models.User.update(is_admin=True).execute()
    resp = client.get("/admin/users")
    assert resp.status_code == 303 and "/settings/account#two-factor" in resp.headers["Location"]
    assert client.get("/admin/rq/").status_code == 303
    _enable_totp(client, auth)
    assert client.get("/admin/users").status_code == 200


# ---------------------------------------------------------------------------------- admin people
def test_admin_people_search_grant_promote_suspend(client, auth, app):
    auth.register("boss@example.com")
    bob_client = app.test_client()
    AuthActions(bob_client).register("bob@example.com", name="Bob Builder")
    bob_auth = AuthActions(bob_client)
    bob_auth.post("/settings/tokens", data={"name": "bot"})
    assert client.get("/admin/users").status_code == 403  # not an admin yet
    assert app.test_client().get("/admin/users").status_code == 302  # visitors log in first
    with connected(app):
        models.User.update(is_admin=True).where(models.User.email == "boss@example.com").execute()
        bob = models.User.get(models.User.email == "bob@example.com")

    found = client.get("/admin/users?q=builder").get_data(as_text=True)
    assert 'data-results="1"' in found and "bob@example.com" in found
    assert 'data-results="0"' in client.get("/admin/users?q=nobody").get_data(as_text=True)
    assert client.get("/admin/users/999999").status_code == 404

    bad = auth.post(f"/admin/users/{bob.id}/grant", data={"credits": "lots"})
    assert bad.status_code == 422 and "whole number" in bad.get_data(as_text=True)
    too_much = auth.post(f"/admin/users/{bob.id}/grant", data={"credits": "-500"})
    assert too_much.status_code == 422 and "you have 100" in too_much.get_data(as_text=True).lower()
    ok = auth.post(f"/admin/users/{bob.id}/grant", data={"credits": "25", "note": "Contest prize"})
    assert ok.status_code == 303
    page = client.get(f"/admin/users/{bob.id}").get_data(as_text=True)
    assert 'data-user-balance="125"' in page and "Contest prize" in page and 'data-ledger-kind="admin"' in page
    assert 'data-credits="125"' in bob_client.get("/").get_data(as_text=True)
    with connected(app):
        assert models.User.get_by_id(bob.id).ledger_balance() == 125

    assert auth.post(f"/admin/users/{bob.id}/admin", data={"is_admin": "1"}).status_code == 303
    assert 'data-admin' in client.get(f"/admin/users/{bob.id}").get_data(as_text=True)
    assert auth.post(f"/admin/users/{bob.id}/admin", data={"is_admin": "0"}).status_code == 303

    assert auth.post(f"/admin/users/{bob.id}/suspend", data={"suspended": "1"}).status_code == 303
    assert "data-credits" not in bob_client.get("/").get_data(as_text=True)  # signed out everywhere
    refused = bob_auth.login("bob@example.com", PASSWORD)
    assert refused.status_code == 403 and "suspended" in refused.get_data(as_text=True)
    with connected(app):
        assert models.ApiToken.select().where(models.ApiToken.user == bob.id,
                                              models.ApiToken.revoked_at.is_null()).count() == 0
    with connected(app):
        me = models.User.get(models.User.email == "boss@example.com")
    self_suspend = auth.post(f"/admin/users/{me.id}/suspend", data={"suspended": "1"})
    assert self_suspend.status_code == 409
    assert auth.post(f"/admin/users/{bob.id}/suspend", data={"suspended": "0"}).status_code == 303
    assert bob_auth.login("bob@example.com", PASSWORD).status_code == 303
    assert client.post(f"/admin/users/{bob.id}/grant", data={"credits": "5"}).status_code == 400  # CSRF


# ---------------------------------------------------------------------------------- headers
def test_security_headers(client):
    resp = client.get("/auth/login")
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "'unsafe-eval'" not in csp and "frame-ancestors 'none'" in csp
    assert "object-src 'none'" in csp and "camera=()" in resp.headers["Permissions-Policy"]
    assert "Strict-Transport-Security" not in resp.headers  # plain HTTP: no HSTS
    secure = client.get("/auth/login", base_url="https://localhost")
    assert secure.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    assert '{"allowEval": false' in resp.get_data(as_text=True)  # htmx is told not to eval


def test_storage_origin_is_allowed_for_media(app, s3_url):
    resp = app.test_client().get("/")
    host = s3_url.split("@", 1)[1].split("/", 1)[0]
    assert f"media-src 'self' data: blob: http://{host}" in resp.headers["Content-Security-Policy"]
