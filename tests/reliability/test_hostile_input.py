"""Hostile input: hypothesis throws unicode, empty, huge, repeated and wrongly typed values,
negative and enormous numbers and injection strings at every form, query string and API body.
The answer is a success or a 4xx that carries a message a person (or client) can act on; never
a 5xx. Runs on SQLite and PostgreSQL (each rejects different things: NUL bytes, huge integers).

RELIABILITY_EXAMPLES (default 40) sets hypothesis' examples per form.
"""
from __future__ import annotations

import json
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import ApiToken, User
from tests import song_factory
from tests.conftest import csrf_from
from tests.helpers import connected
from tests.polar_fake import FakePolar
from tests.reliability import harness

pytestmark = pytest.mark.reliability

EXAMPLES = int(os.environ.get("RELIABILITY_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])

INJECTIONS = [
    "' OR '1'='1", "'; DROP TABLE song; --", "\" OR \"\"=\"", "1; SELECT pg_sleep(5)", "%", "_", "\\",
    "<script>alert(1)</script>", "\"><img src=x onerror=alert(1)>", "javascript:alert(1)",
    "{{7*7}}", "{% print 7*7 %}", "${7*7}", "#{7*7}", "%s%s%s%n", "../../../../etc/passwd", "/etc/passwd\x00.png",
    "\x00", "a\x00b", "\r\n\r\nX-Injected: 1", "\u202e\u2066evil", "\ufeff", "\u0000" * 10, "\U0001F600" * 300,
    "NaN", "nan", "Infinity", "-Infinity", "1e309", "-1", "0", "-0", "00", "1.5", "0x1F", "1_000", "+5", " 5 ",
    "9" * 40, "-" + "9" * 40, str(2**63), str(-2**63 - 1), str(2**31), "99999999999999999999999",
    "null", "None", "true", "false", "[]", "{}", "[1,2]", "\"\"", " ", "\t\n\r", "", "prod_10", "description",
    "lyrics", "described_lyrics", "on", "yes",
]


def _big(ch: str, n: int) -> str:
    return ch * n


TEXT = st.one_of(
    st.text(max_size=200),
    st.sampled_from(INJECTIONS),
    st.builds(_big, st.characters(exclude_categories=("Cs",)), st.integers(900, 40_000)),
)
NUMBER = st.one_of(st.integers(-10**30, 10**30).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
                   st.sampled_from(INJECTIONS), st.text(max_size=20))
# A form field: missing, one value, or the same name repeated.
FIELD = st.one_of(st.none(), TEXT, st.lists(TEXT, min_size=2, max_size=3))
NUM_FIELD = st.one_of(st.none(), NUMBER, st.lists(NUMBER, min_size=2, max_size=3))

MESSAGE = re.compile(r'role="alert"|class="error|class="form-message|error-page|class="flash', re.I)


CHECKED = {"requests": 0, "4xx": 0}


@pytest.fixture(scope="module", autouse=True)
def _count():
    yield
    harness.record("security", check="hostile input: hypothesis over every form, query string and API body",
                   outcome=f"{CHECKED['requests']} requests ({EXAMPLES} examples per property, SQLite and "
                           f"PostgreSQL): {CHECKED['4xx']} answered 4xx with a message, the rest succeeded, 0 5xx")


def check(resp, where: str) -> None:
    """Success or redirect, or a 4xx that says what is wrong; never a 5xx."""
    status = resp.status_code
    CHECKED["requests"] += 1
    CHECKED["4xx"] += 400 <= status < 500
    body = resp.get_data(as_text=True)
    assert status < 500, f"{where}: {status}\n{body[:1500]}"
    if 400 <= status < 500:
        if resp.is_json:
            err = (resp.get_json(silent=True) or {}).get("error") or {}
            assert err.get("message"), f"{where}: {status} without a message: {body[:500]}"
        elif status not in (401, 405) or "html" in (resp.mimetype or ""):
            assert MESSAGE.search(body) or (resp.headers.get("HX-Request") is None and len(body) > 0 and
                                            "<" not in body), f"{where}: {status} without a message:\n{body[:1500]}"


def form(fields: dict) -> dict:
    return {k: v for k, v in fields.items() if v is not None}


@pytest.fixture(scope="module")
def polar():
    with FakePolar("polar_oat_hostile", {"prod_10": ("10 credits", 500)}) as fake:
        yield fake


@pytest.fixture
def app_overrides(polar):
    return dict(POLAR_ACCESS_TOKEN="polar_oat_hostile", POLAR_WEBHOOK_SECRET="whsec_" + "A" * 32,
                POLAR_SERVER="sandbox", POLAR_API_URL=polar.url, POLAR_PRODUCTS={"prod_10": 10},
                SIGNED_URL_TTL=60)


@pytest.fixture
def owner(app, client, auth):
    """A signed-in person with a finished song, a queued song and an API token."""
    auth.register("owner@example.com", "correct horse")
    with connected(app):
        user = User.get(User.email == "owner@example.com")
        song = song_factory.song(user, "Owned", published=False, app=app)
        queued = song_factory.song(user, "Queued", published=False, status="queued")
        from app.api import tokens

        token, raw = tokens.issue(user, "hostile")
    return {"user": user, "song": song.id, "queued": queued.id, "token": raw, "token_id": token.id,
            "csrf": csrf_from(client.get("/create").get_data(as_text=True))}


def hx(flag: bool) -> dict:
    return {"HX-Request": "true"} if flag else {}


# ------------------------------------------------------------------------------ visitor forms
def test_register_and_login_forms(app):
    @SETTINGS
    @given(email=FIELD, password=FIELD, name=FIELD, htmx=st.booleans(), login=st.booleans())
    def run(email, password, name, htmx, login):
        client = app.test_client()
        path = "/auth/login" if login else "/auth/register"
        token = csrf_from(client.get(path).get_data(as_text=True))
        data = form({"email": email, "password": password, "name": name, "csrf_token": token})
        check(client.post(path, data=data, headers=hx(htmx)), f"POST {path} {data!r:.300}")

    run()


# ------------------------------------------------------------------------------ signed-in forms
def test_create_form(app, client, owner):
    @SETTINGS
    @given(mode=st.one_of(FIELD, st.sampled_from(["description", "lyrics", "described_lyrics"])),
           description=FIELD, prompt=FIELD, lyrics=FIELD, described_lyrics=FIELD, instrumental=FIELD,
           duration=NUM_FIELD, variants=NUM_FIELD, idempotency_key=FIELD, htmx=st.booleans())
    def run(htmx, **fields):
        data = form({**fields, "csrf_token": owner["csrf"]})
        check(client.post("/create", data=data, headers=hx(htmx)), f"POST /create {data!r:.300}")

    run()


def test_song_owner_forms(app, client, owner):
    @SETTINGS
    @given(action=st.sampled_from(["rename", "publish", "unpublish", "like", "cancel", "delete"]),
           which=st.sampled_from(["song", "queued"]), title=FIELD, view=FIELD, liked=FIELD, next_=FIELD,
           htmx=st.booleans())
    def run(action, which, title, view, liked, next_, htmx):
        if action == "delete" and title is not None:
            return  # keep the songs around for the other examples
        data = form({"title": title, "view": view, "liked": liked, "next": next_, "csrf_token": owner["csrf"]})
        resp = client.post(f"/songs/{owner[which]}/{action}", data=data, headers=hx(htmx))
        check(resp, f"POST /songs/<{which}>/{action} {data!r:.300}")

    run()


def test_billing_and_settings_forms(app, client, owner):
    @SETTINGS
    @given(kind=st.sampled_from(["checkout", "token", "rename-token", "revoke-token", "password"]),
           value=FIELD, other=FIELD, htmx=st.booleans())
    def run(kind, value, other, htmx):
        path, data = {
            "checkout": ("/billing/checkout", {"pack": value}),
            "token": ("/settings/tokens", {"name": value}),
            "rename-token": (f"/settings/tokens/{owner['token_id']}/rename", {"name": value}),
            "revoke-token": (f"/settings/tokens/{value if isinstance(value, str) and value else 'x'}/revoke", {}),
            "password": ("/auth/password", {"current": value, "new": other}),
        }[kind]
        if kind == "revoke-token" and len(path) > 2000:
            return
        data = form({**data, "csrf_token": owner["csrf"]})
        check(client.post(path, data=data, headers=hx(htmx)), f"POST {path[:200]} {data!r:.300}")

    run()
    with connected(app):  # the hostile examples may have made tokens; keep the table sane
        assert ApiToken.select().where(ApiToken.revoked_at.is_null()).count() <= 25


def test_query_strings(app, client, owner):
    @SETTINGS
    @given(path=st.sampled_from(["/", "/library", "/billing", "/api/v1/songs"]), q=FIELD, page=NUM_FIELD,
           status=FIELD, category=FIELD, per_page=NUM_FIELD, generation_id=FIELD, htmx=st.booleans(),
           target=st.sampled_from([None, "feed-body", "feed-more", "library-list"]))
    def run(path, q, page, status, category, per_page, generation_id, htmx, target):
        params = form({"q": q, "page": page, "status": status, "category": category, "per_page": per_page,
                       "generation_id": generation_id})
        headers = hx(htmx)
        if target:
            headers["HX-Target"] = target
        if path.startswith("/api/"):
            headers["Authorization"] = f"Bearer {owner['token']}"
        check(client.get(path, query_string=params, headers=headers), f"GET {path} {params!r:.300}")

    run()


def test_raw_bodies(app, client, owner):
    """Bytes that are not valid UTF-8 or not valid form encoding, with a valid token."""
    @SETTINGS
    @given(path=st.sampled_from(["/create", f"/songs/{owner['song']}/rename", "/settings/tokens",
                                 "/billing/checkout", "/auth/password"]),
           junk=st.binary(max_size=2000),
           ctype=st.sampled_from(["application/x-www-form-urlencoded", "multipart/form-data",
                                  "multipart/form-data; boundary=x", "text/plain", "application/json", ""]))
    def run(path, junk, ctype):
        body = f"csrf_token={owner['csrf']}&".encode() + junk
        check(client.post(path, data=body, content_type=ctype or None), f"POST {path} raw {body[:200]!r}")

    run()


# ------------------------------------------------------------------------------ API bodies
JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**40, 10**40), st.floats(allow_nan=False), TEXT),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10)
API_FIELDS = ["description", "prompt", "lyrics", "duration", "instrumental", "variants"]


def test_api_bodies(app, client, owner):
    @SETTINGS
    @given(endpoint=st.sampled_from(["generate_from_description", "generate_with_lyrics",
                                     "generate_from_described_lyrics"]),
           body=st.one_of(
               st.dictionaries(st.sampled_from(API_FIELDS + ["extra", ""]), JSON_VALUE, max_size=6),
               st.fixed_dictionaries({"description": TEXT, "prompt": TEXT, "lyrics": TEXT},
                                     optional={"duration": JSON_VALUE, "instrumental": JSON_VALUE,
                                               "variants": JSON_VALUE}),
               JSON_VALUE),
           raw=st.one_of(st.none(), st.binary(max_size=300), st.sampled_from([b"", b"{", b"[" * 5000 + b"]" * 5000,
                                                                             b'{"a":' * 3000, b"\xff\xfe{}"])),
           ctype=st.sampled_from(["application/json", "application/merge-patch+json", "text/plain", None]),
           key=st.one_of(st.none(), TEXT))
    def run(endpoint, body, raw, ctype, key):
        headers = {"Authorization": f"Bearer {owner['token']}"}
        if key is not None and "\n" not in key and "\r" not in key:  # a client cannot send those
            try:
                key.encode("latin-1")
                headers["Idempotency-Key"] = key
            except UnicodeEncodeError:
                pass
        data = raw if raw is not None else json.dumps(body)
        resp = client.post(f"/api/v1/{endpoint}", data=data, content_type=ctype, headers=headers)
        check(resp, f"POST /api/v1/{endpoint} {str(data)[:300]}")
        assert resp.is_json

    run()


def test_api_auth_headers(app, client, owner):
    @SETTINGS
    @given(value=st.one_of(TEXT, st.builds(lambda t: "Bearer " + t, TEXT), st.just("Bearer " + "ts_" + "A" * 5000)))
    def run(value):
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            return
        if "\n" in value or "\r" in value:
            return
        resp = client.get("/api/v1/songs", headers={"Authorization": value})
        check(resp, f"GET /api/v1/songs Authorization: {value[:200]!r}")
        assert resp.status_code in (200, 401)

    run()


# ------------------------------------------------------------------------------ known nasty values
NASTY = ["a\x00b", "-" + "9" * 40, str(2**63), "1e309", "NaN", "-1", "", "x" * 70_000, "\U0001F600" * 500,
         "' OR 1=1 --"]


def test_known_nasty_values_in_every_field(app, client, owner):
    """Every field, query parameter and path segment, each with the values that break naive code
    (NUL, 40-digit and 64-bit numbers, 70k characters, ...). Collects every failure, then fails."""
    from urllib.parse import quote

    csrf = owner["csrf"]
    s, q, t = owner["song"], owner["queued"], owner["token_id"]
    posts = {
        "/auth/register": ["email", "password", "name"], "/auth/login": ["email", "password"],
        "/create": ["mode", "description", "prompt", "lyrics", "described_lyrics", "instrumental", "duration",
                    "variants", "idempotency_key"],
        f"/songs/{s}/rename": ["title", "view"], f"/songs/{s}/publish": ["view"], f"/songs/{s}/unpublish": ["view"],
        f"/songs/{s}/like": ["liked", "next", "view"], f"/songs/{q}/cancel": ["view"],
        "/billing/checkout": ["pack"], "/settings/tokens": ["name"], f"/settings/tokens/{t}/rename": ["name"],
        "/auth/password": ["current", "new"],
    }
    gets = {"/": ["q", "category", "page"], "/library": ["q", "status", "page"], "/billing": ["page"],
            "/api/v1/songs": ["page", "per_page", "status", "generation_id"]}
    segments = ["/songs/{}", "/songs/{}/status", "/songs/{}/audio", "/songs/{}/cover", "/songs/{}/download",
                "/api/v1/songs/{}", "/files/{}", "/settings/tokens/{}/revoke", "/songs/{}/rename"]
    api = {"generate_from_description": {"description": "a song"},
           "generate_with_lyrics": {"prompt": "pop", "lyrics": "la la"},
           "generate_from_described_lyrics": {"description": "love", "prompt": "pop"}}
    bearer = {"Authorization": f"Bearer {owner['token']}"}
    failures = []
    probes = {"n": 0}

    def probe(resp, where):
        probes["n"] += 1
        try:
            check(resp, where)
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0][:300])

    for value in NASTY:
        for path, fields in posts.items():
            for name in fields:
                fresh = app.test_client() if path.startswith("/auth/register") or path == "/auth/login" else client
                token = csrf if fresh is client else csrf_from(fresh.get(path).get_data(as_text=True))
                probe(fresh.post(path, data={name: value, "csrf_token": token}), f"POST {path} {name}={value[:20]!r}")
        for path, fields in gets.items():
            for name in fields:
                probe(client.get(path, query_string={name: value}, headers=bearer if "/api/" in path else {}),
                      f"GET {path}?{name}={value[:20]!r}")
        for pattern in segments:
            path = pattern.format(quote(value, safe="") or "%20")
            method = client.post if pattern.endswith(("revoke", "rename")) else client.get
            kw = {"data": {"csrf_token": csrf}} if method == client.post else {}
            probe(method(path, headers=bearer if "/api/" in path else {}, **kw), f"{path[:60]}")
        for endpoint, base in api.items():
            for name in ["description", "prompt", "lyrics", "duration", "variants", "instrumental"]:
                for v in dict.fromkeys([value, _number(value)]):
                    body = dict(base, **{name: v})
                    probe(client.post(f"/api/v1/{endpoint}", json=body, headers=bearer),
                          f"POST /api/v1/{endpoint} {name}={str(v)[:20]!r}")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(sorted(set(failures))[:60])
    harness.record("security", check=f"hostile input: known nasty values ({app.backend})",
                   outcome=f"{probes['n']} requests, every field, query parameter, path segment and API "
                           f"field x {len(NASTY)} values: no 5xx, every 4xx with a message")


def _number(value: str):
    try:
        return int(value)
    except ValueError:
        try:
            return float(value) if value.lower() not in ("nan",) else value
        except ValueError:
            return value
