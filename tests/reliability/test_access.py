"""Access: every route of the app (enumerated from `app.url_map`, so a new route is covered or
this test says it does not know it) tried as another signed-in person and as a visitor.

- a private song: every route that names it answers 404 (a visitor may be sent to log in);
- a published song: the owner-only routes still answer 404 to others;
- pages behind login send visitors to log in; the RQ dashboard is 403 to non-admins;
- the API answers 401 without a valid token (a session cookie is not a token) and 404 for
  someone else's song; afterwards nothing of the owner's changed;
- signed storage URLs expire and cannot be re-pointed at another object.
"""
from __future__ import annotations

import hashlib
import hmac
import time
from datetime import datetime, timezone
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from werkzeug.routing import AnyConverter

from models import ApiToken, CreditEntry, Generation, Like, Playlist, Song, Style, User
from tests import song_factory
from tests.conftest import AuthActions, csrf_from
from tests.helpers import connected
from tests.reliability import harness

pytestmark = [pytest.mark.reliability, pytest.mark.parametrize("backend", ["sqlite"])]

# Routes anyone may use on a *published* song; every other route naming a song is owner-only.
VISIBLE_SONG_ROUTES = {"songs.page", "songs.status", "songs.audio", "songs.cover", "songs.like", "songs.report"}
# Routes of a person's public profile: anyone may open them; following needs an account.
PROFILE_ROUTES = {"profiles.profile", "profiles.avatar", "profiles.follow"}
# GET routes without arguments that visitors may open.
PUBLIC_PAGES = {"main.index", "auth.login", "auth.register", "auth.forgot", "ops.healthz", "ops.readyz", "ops.metrics",
                "api.openapi_document", "rq_dashboard.favicon"}
SKIP = {"static", "rq_dashboard.static", "billing.webhook"}  # static files; the signed webhook


@pytest.fixture
def app_overrides():
    return {"SIGNED_URL_TTL": 2}


@pytest.fixture
def world(app):
    """Alice owns a private song, a published one and a queued one, and an API token; Bob is
    another person with his own token; a visitor has no account."""
    from app.api import tokens

    alice_client, bob_client, visitor = app.test_client(), app.test_client(), app.test_client()
    AuthActions(alice_client).register("alice@example.com", "correct horse")
    AuthActions(bob_client).register("bob@example.com", "correct horse")
    with connected(app):
        alice = User.get(User.email == "alice@example.com")
        bob = User.get(User.email == "bob@example.com")
        private = song_factory.song(alice, "Private", published=False, app=app)
        public = song_factory.song(alice, "Public", published=True, app=app)
        queued = song_factory.song(alice, "Queued", published=False, status="queued")
        from models import PlaylistEntry

        User.update(handle="alice").where(User.id == alice.id).execute()
        playlist = Playlist.create(user=alice, title="Alice's private list", public=False)
        PlaylistEntry.create(playlist=playlist, song=public.id, position=0)
        a_token, a_raw = tokens.issue(alice, "alice's")
        _, b_raw = tokens.issue(bob, "bob's")
        from models import WebhookEndpoint

        hook = WebhookEndpoint.create(user=alice, url="https://hooks.example.com/in", events=["song.processed"],
                                      secret="whsec_" + "A" * 32)
        from models import Style

        style = Style.create(user=alice, name="Alice's private style", status="ready", public=False,
                             adapter_key=f"users/{alice.id}/styles/x/adapter.json", adapter_hash="0" * 64)
    return dict(style=style.id, app=app, alice=alice, bob=bob, alice_client=alice_client, bob_client=bob_client, visitor=visitor,
                private=private.id, public=public.id, playlist=playlist.id, queued=queued.id, a_token=a_token.id, a_raw=a_raw, hook=hook.id,
                b_raw=b_raw, gen=private.generation_id)


def snapshot(app) -> dict:
    with connected(app):
        return {
            "songs": sorted((s.id, s.title, s.published, s.status, s.like_count, s.listen_count)
                            for s in Song.select()),
            "generations": Generation.select().count(), "likes": Like.select().count(),
            "ledger": sorted((e.user_id, e.ref, e.delta) for e in CreditEntry.select()),
            "tokens": sorted((t.id, t.name, t.revoked_at is None) for t in ApiToken.select()),
            "playlists": sorted((p.id, p.title, p.public, tuple(e.song_id for e in p.entries)) for p in
                                Playlist.select()),
            "styles": sorted((s.id, s.name, s.public, s.status) for s in Style.select()),
        }


def fill(rule, song_id: str, w: dict) -> str | None:
    """A concrete URL for `rule`, or None when the rule does not name a song/token/job."""
    values = {}
    for arg in rule.arguments:
        conv = rule._converters.get(arg)
        if arg == "song_id":
            values[arg] = song_id
        elif arg == "token_id":
            values[arg] = w["a_token"]
        elif arg == "endpoint_id":
            values[arg] = w["hook"]
        elif arg == "user_id":
            values[arg] = w["alice"].id
        elif arg == "generation_id":
            values[arg] = w["gen"]
        elif isinstance(conv, AnyConverter):
            values[arg] = sorted(conv.items)[0]
        elif arg in {"job_id"}:
            values[arg] = w["gen"]
        elif arg in {"queue_name", "registry_name", "order", "filename", "name"}:
            values[arg] = {"registry_name": "queued", "order": "asc", "filename": "x.css",
                           "name": "vocals"}.get(arg, "default")
        elif arg in {"instance_number", "per_page", "page"}:
            values[arg] = 0 if arg == "instance_number" else 1
        elif arg == "token":
            values[arg] = "x"
        elif arg == "playlist_id":
            values[arg] = w["playlist"]
        elif arg == "style_id":
            values[arg] = w["style"]
        elif arg == "handle":
            values[arg] = "alice"
        else:
            pytest.fail(f"test_access does not know how to fill <{arg}> of {rule.rule}: teach it, and "
                        f"decide who may use this route")
    with w["app"].test_request_context():
        from flask import url_for

        return url_for(rule.endpoint, **values)


def call(client, method: str, url: str, csrf: str | None, headers=None):
    if method == "GET":
        return client.get(url, headers=headers or {})
    return client.open(url, method=method, data={"csrf_token": csrf} if csrf else {}, headers=headers or {})


def denied(resp, visitor: bool) -> bool:
    if resp.status_code == 404:
        return True
    if visitor and resp.status_code in (302, 303) and "/auth/login" in resp.headers.get("Location", ""):
        return True
    return visitor and resp.status_code == 401


def test_every_route_as_another_person_and_as_a_visitor(world):
    app = world["app"]
    before = snapshot(app)
    bob, visitor = world["bob_client"], world["visitor"]
    bob_csrf = csrf_from(bob.get("/create").get_data(as_text=True))
    visitor_csrf = csrf_from(visitor.get("/auth/login").get_data(as_text=True))
    tried, problems = 0, []
    rules = [r for r in app.url_map.iter_rules() if r.endpoint not in SKIP]
    for rule in rules:
        methods = sorted(rule.methods & {"GET", "POST", "PUT", "PATCH", "DELETE"})
        api = rule.rule.startswith("/api/")
        if rule.endpoint.startswith("admin"):  # the admin pages: not for Bob, visitors log in
            url = fill(rule, world["private"], world)
            for method in methods:
                resp, vresp = call(bob, method, url, bob_csrf), call(visitor, method, url, visitor_csrf)
                tried += 2
                if resp.status_code not in (403, 404):
                    problems.append(f"bob (not admin) {method} {url}: {resp.status_code}")
                if not denied(vresp, True) and vresp.status_code != 403:
                    problems.append(f"visitor {method} {url}: {vresp.status_code}")
        elif "playlist_id" in rule.arguments or "style_id" in rule.arguments:  # Alice's private playlist
            # and style: 404 to anyone else
            url = fill(rule, world["private"], world)
            for method in methods:
                for who, client, csrf, is_visitor in (("bob", bob, bob_csrf, False),
                                                      ("visitor", visitor, visitor_csrf, True)):
                    resp = call(client, method, url, csrf)
                    tried += 1
                    if not denied(resp, is_visitor):
                        problems.append(f"{who} {method} {url}: {resp.status_code}")
        elif rule.endpoint in PROFILE_ROUTES:  # public by nature; a visitor cannot follow
            url = fill(rule, world["private"], world)
            for method in methods:
                vresp = call(visitor, method, url, visitor_csrf)
                tried += 1
                if method != "GET" and not denied(vresp, True):
                    problems.append(f"visitor {method} {url}: {vresp.status_code}")
        elif "song_id" in rule.arguments:
            cases = [(world["private"], True), (world["queued"], True),
                     (world["public"], rule.endpoint not in VISIBLE_SONG_ROUTES)]
            for song_id, must_deny in cases:
                if not must_deny:
                    continue
                url = fill(rule, song_id, world)
                for method in methods:
                    for who, client, csrf, is_visitor in (("bob", bob, bob_csrf, False),
                                                          ("visitor", visitor, visitor_csrf, True)):
                        headers = {"Authorization": f"Bearer {world['b_raw']}"} if api and who == "bob" else None
                        resp = call(client, method, url, csrf, headers)
                        tried += 1
                        if not denied(resp, is_visitor and (api or True)):
                            problems.append(f"{who} {method} {url}: {resp.status_code}")
        elif rule.endpoint in ("auth.reset", "auth.verify"):  # public by nature: the token is the credential
            resp = visitor.get(fill(rule, world["private"], world))
            tried += 1
            if resp.status_code not in (200, 400, 404, 410) or "correct horse" in resp.get_data(as_text=True):
                problems.append(f"visitor GET {rule.rule} with a bogus token: {resp.status_code}")
        elif "token_id" in rule.arguments or "endpoint_id" in rule.arguments:
            url = fill(rule, world["private"], world)
            for method in methods:
                for who, client, csrf, is_visitor in (("bob", bob, bob_csrf, False),
                                                      ("visitor", visitor, visitor_csrf, True)):
                    resp = call(client, method, url, csrf)
                    tried += 1
                    if not denied(resp, is_visitor):
                        problems.append(f"{who} {method} {url}: {resp.status_code}")
        elif rule.endpoint.startswith("rq_dashboard."):
            url = fill(rule, world["private"], world)
            for method in methods:
                resp = call(bob, method, url, bob_csrf)
                vresp = call(visitor, method, url, visitor_csrf)
                tried += 2
                if rule.endpoint != "rq_dashboard.favicon":
                    if resp.status_code != 403:
                        problems.append(f"bob (not admin) {method} {url}: {resp.status_code}")
                    if not denied(vresp, True):
                        problems.append(f"visitor {method} {url}: {vresp.status_code}")
        elif api and rule.endpoint != "api.openapi_document":
            for method in methods:
                for label, client, headers in (("no token", visitor, {}), ("session cookie", bob, {}),
                                               ("wrong token", visitor, {"Authorization": "Bearer ts_" + "x" * 43}),
                                               ("not bearer", visitor, {"Authorization": world["b_raw"]})):
                    resp = client.open(rule.rule, method=method, headers=headers, json={"description": "x"})
                    tried += 1
                    if resp.status_code != 401 or "error" not in (resp.get_json(silent=True) or {}):
                        problems.append(f"API {label} {method} {rule.rule}: {resp.status_code}")
        elif not rule.arguments and "GET" in methods and rule.endpoint not in PUBLIC_PAGES:
            resp = visitor.get(rule.rule)
            tried += 1
            if not denied(resp, True):
                problems.append(f"visitor GET {rule.rule}: {resp.status_code} (not a public page?)")
    assert not problems, f"{len(problems)} of {tried} tries were let through:\n" + "\n".join(problems)
    assert tried > 60
    assert snapshot(app) == before, "someone else changed the owner's data"
    harness.record("security", check="access: every route as another person and as a visitor",
                   outcome=f"{tried} requests over {len(rules)} routes: private songs 404, owner-only routes 404 "
                           f"on published songs, login pages redirect, RQ dashboard 403, API 401 without a token; "
                           f"nothing of the owner's changed")


def test_api_is_scoped_to_the_tokens_owner(world):
    client = world["app"].test_client()
    bob = {"Authorization": f"Bearer {world['b_raw']}"}
    alice = {"Authorization": f"Bearer {world['a_raw']}"}
    for song in (world["private"], world["public"], world["queued"]):
        assert client.get(f"/api/v1/songs/{song}", headers=bob).status_code == 404
        assert client.get(f"/api/v1/songs/{song}", headers=alice).status_code == 200
    listing = client.get("/api/v1/songs", query_string={"generation_id": world["gen"]}, headers=bob).get_json()
    assert listing["songs"] == [] and listing["next_cursor"] is None
    assert len(client.get("/api/v1/songs", headers=alice).get_json()["songs"]) == 3
    # a revoked token is refused at once
    resp = world["alice_client"].post(f"/settings/tokens/{world['a_token']}/revoke", data={
        "csrf_token": csrf_from(world["alice_client"].get("/settings/tokens").get_data(as_text=True))})
    assert resp.status_code in (200, 303)
    assert client.get("/api/v1/songs", headers=alice).status_code == 401


def test_local_signed_urls_expire_and_cannot_be_repointed(world):
    alice, bob = world["alice_client"], world["bob_client"]
    first = alice.get(f"/songs/{world['private']}/download")
    other = alice.get(f"/songs/{world['public']}/cover")
    assert first.status_code == other.status_code == 302
    url, other_url = first.headers["Location"], other.headers["Location"]
    assert url.startswith("/files/")
    assert bob.get(url).status_code == 200  # a bearer link, short-lived by design
    token, other_token = url.rsplit("/", 1)[1], other_url.rsplit("/", 1)[1]
    payload, stamp, sig = token.split(".")
    o_payload, o_stamp, o_sig = other_token.split(".")
    tampered = {
        "other object, this signature": f"{o_payload}.{stamp}.{sig}",
        "this object, other signature": f"{payload}.{o_stamp}.{o_sig}",
        "later timestamp": f"{payload}.{_stamp(time.time() + 3600)}.{sig}",
        "flipped signature": f"{payload}.{stamp}.{sig[:-2]}{'AA' if sig[-2:] != 'AA' else 'BB'}",
        "path traversal": "../../secret_key",
    }
    for what, bad in tampered.items():
        assert bob.get(f"/files/{quote(bad, safe='')}").status_code in (403, 404), what
    time.sleep(3.1)  # SIGNED_URL_TTL is 2 s here
    assert bob.get(url).status_code == 403
    assert alice.get(url).status_code == 403  # expired for its owner too: ask the app for a fresh one
    assert alice.get(alice.get(f"/songs/{world['private']}/download").headers["Location"]).status_code == 200
    harness.record("security", check="signed storage URLs",
                   outcome=f"local links 403 after SIGNED_URL_TTL and for {len(tampered)} kinds of tampering "
                           f"(another object's payload, another signature, later timestamp, flipped signature, "
                           f"traversal); S3 links: SigV4 over the object path, X-Amz-Expires = TTL")


def test_s3_presigned_urls_are_short_lived_and_bound_to_their_object(app, s3_url):
    """moto does not check signatures, so this checks the URL itself the way S3/MinIO does:
    SigV4 over the object's path with a short X-Amz-Expires. A signature recomputed for another
    key does not match, and the validity window is SIGNED_URL_TTL."""
    from core.storage import from_url

    store = from_url(s3_url, "k")
    store.put("users/1/songs/a/master.wav", b"a", "audio/wav")
    url = store.url("users/1/songs/a/master.wav", 120, "A song.wav")
    parts = urlsplit(url)
    q = dict(parse_qsl(parts.query))
    assert q["X-Amz-Expires"] == "120" and q["X-Amz-SignedHeaders"] == "host"
    secret = "testsecret"
    assert _sigv4_valid(url, secret)
    forged = url.replace("/songs/a/master.wav", "/songs/b/master.wav")
    assert not _sigv4_valid(forged, secret)
    assert not _sigv4_valid(url.replace("X-Amz-Expires=120", "X-Amz-Expires=999999"), secret)
    signed_at = datetime.strptime(q["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    assert abs((datetime.now(timezone.utc) - signed_at).total_seconds()) < 60


def _stamp(when: float) -> str:
    from itsdangerous.encoding import base64_encode, int_to_bytes

    return base64_encode(int_to_bytes(int(when))).decode()


def _sigv4_valid(url: str, secret: str) -> bool:
    """Verify an S3 presigned GET URL (AWS Signature V4, query-string auth, UNSIGNED-PAYLOAD)."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    given = dict(pairs).get("X-Amz-Signature", "")
    canonical_qs = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                            for k, v in sorted(pairs) if k != "X-Amz-Signature")
    canonical = "\n".join(["GET", parts.path, canonical_qs, f"host:{parts.netloc}", "", "host", "UNSIGNED-PAYLOAD"])
    q = dict(pairs)
    scope = q["X-Amz-Credential"].split("/", 1)[1]
    date, region, service = scope.split("/")[:3]
    to_sign = "\n".join(["AWS4-HMAC-SHA256", q["X-Amz-Date"], scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), given)
