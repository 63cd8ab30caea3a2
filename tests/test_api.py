"""The JSON API under /api/v1: token auth, the three generate endpoints, songs, errors, idempotency,
rate limits and the OpenAPI document (validated, and fuzzed with schemathesis for server errors).
Files go to an S3 endpoint over real HTTP. Runs on SQLite and PostgreSQL."""
from __future__ import annotations

import io
import re

import pytest
import requests
import soundfile as sf
from PIL import Image

import models
from models import CreditEntry, Generation, Song, User
from tests.conftest import AuthActions
from tests.helpers import connected, run_worker

TOKEN_RE = re.compile(r"data-token>(ts_[A-Za-z0-9_\-]+)<")
# Backend-independent behaviour: one database is enough.
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"])


@pytest.fixture
def app_overrides(s3_url):
    return {"STORAGE_URL": s3_url}


def make_token(auth, name="script"):
    resp = auth.post("/settings/tokens", {"name": name})
    assert resp.status_code == 201
    return TOKEN_RE.search(resp.get_data(as_text=True)).group(1)


@pytest.fixture
def token(auth):
    assert auth.register().status_code == 303
    return make_token(auth)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def balance(app, email="alice@example.com"):
    with connected(app):
        return User.get(User.email == email).balance()


def assert_error(resp, status, code=None, field=None):
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True))
    assert resp.mimetype == "application/json"
    err = resp.get_json()["error"]
    assert err["message"]
    if code:
        assert err["code"] == code, err
    if field:
        assert err.get("field") == field, err
    return err


# ------------------------------------------------------------------------------ must show
def test_generate_poll_download_with_a_token(app, client, token):
    h = bearer(token)
    resp = client.post("/api/v1/generate_from_description", headers=h,
                       json={"description": "a dreamy synthwave song about neon nights", "duration": 10,
                             "language": "en"})
    assert resp.status_code == 202
    body = resp.get_json()
    assert set(body) == {"generation_id", "songs"}
    assert [s["status"] for s in body["songs"]] == ["queued", "queued"]
    assert resp.headers["Location"].endswith(f"generation_id={body['generation_id']}")
    assert balance(app) == 98

    song_id = body["songs"][0]["id"]
    polled = client.get(f"/api/v1/songs/{song_id}", headers=h).get_json()
    assert polled["status"] == "queued" and polled["audio_url"] is None and polled["download_url"] is None

    run_worker(app)

    listing = client.get(f"/api/v1/songs?generation_id={body['generation_id']}", headers=h).get_json()
    assert len(listing["songs"]) == 2 and {s["status"] for s in listing["songs"]} == {"processed"}
    song = client.get(f"/api/v1/songs/{song_id}", headers=h).get_json()
    assert song["status"] == "processed" and song["progress"] == 100 and song["stage"] == "done"
    assert song["title"] and song["tags"] and "[chorus]" in song["lyrics"]
    assert isinstance(song["seed"], int) and isinstance(song["categories"], list) and song["categories"]
    assert song["offline"] is True and song["urls_expire_in"] > 0 and song["language"] == "en"

    got = requests.get(song["download_url"], timeout=10)  # the presigned S3 URL, over real HTTP
    assert got.status_code == 200 and got.content[:4] == b"RIFF"
    samples, rate = sf.read(io.BytesIO(got.content))
    assert abs(len(samples) / rate - 10) <= 0.5
    assert "attachment" in got.headers.get("Content-Disposition", "")
    assert requests.get(song["audio_url"], timeout=10).status_code == 200
    cover = Image.open(io.BytesIO(requests.get(song["cover_url"], timeout=10).content))
    assert cover.format == "PNG"
    assert balance(app) == 98


def test_no_bad_or_revoked_token_is_401(app, client, auth):
    auth.register()
    token = make_token(auth)
    body = {"description": "a song"}
    for headers in ({}, {"Authorization": "Basic YWxpY2U6cHc="}, {"Authorization": "Bearer"},
                    bearer("ts_not-a-real-token-at-all-000000000000000"), bearer(token + "x")):
        resp = client.post("/api/v1/generate_from_description", json=body, headers=headers)
        assert_error(resp, 401)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert_error(client.get("/api/v1/songs", headers=headers), 401)
    # a browser session does not authenticate the API
    assert_error(client.get("/api/v1/songs"), 401)

    assert client.get("/api/v1/songs", headers=bearer(token)).status_code == 200
    with connected(app):
        token_id = models.ApiToken.get().id
    auth.post(f"/settings/tokens/{token_id}/revoke")
    err = assert_error(client.post("/api/v1/generate_from_description", json=body, headers=bearer(token)),
                       401, "invalid_token")
    assert "revoked" in err["message"]
    assert_error(client.get("/api/v1/songs", headers=bearer(token)), 401, "invalid_token")
    with connected(app):
        assert Generation.select().count() == 0
    assert balance(app) == 100


# ------------------------------------------------------------------------------ errors
D, L, DL = "generate_from_description", "generate_with_lyrics", "generate_from_described_lyrics"


INVALID = [
    (D, {}, "invalid", "description", "Describe the song"),
    (D, {"description": "x" * 1001}, "invalid", "description", "limit is 1,000"),
    (D, {"description": "ok", "duration": 9}, "invalid", "duration", "from 10 to 240"),
    (D, {"description": "ok", "duration": 241}, "invalid", "duration", "from 10 to 240"),
    (D, {"description": "ok", "variants": 5}, "invalid", "variants", "from 1 to 4"),
    (D, {"description": 5}, "invalid", "description", "must be text"),
    (D, {"description": "ok", "duration": "abc"}, "invalid", "duration", "whole number"),
    (D, {"description": "ok", "duration": 12.5}, "invalid", "duration", "whole number"),
    (D, {"description": "ok", "duration": True}, "invalid", "duration", "whole number"),
    (D, {"description": "ok", "duration": 1e400}, "invalid", "duration", "whole number"),
    (D, {"description": "ok", "instrumental": "yes"}, "invalid", "instrumental", "true or false"),
    (D, {"description": ["a"]}, "invalid", "description", "must be text"),
    (D, {"description": "ok", "mode": "lyrics"}, "unknown_field", "mode", "not a field"),
    (L, {"lyrics": "la la"}, "invalid", "prompt", "style tags"),
    (L, {"prompt": "pop"}, "invalid", "lyrics", "Write your lyrics"),
    (L, {"prompt": "pop", "lyrics": "y" * 5001}, "invalid", "lyrics", "limit is 5,000"),
    (DL, {"prompt": "pop"}, "invalid", "description", "what the lyrics"),
    (DL, {"prompt": "p" * 301, "description": "x"}, "invalid", "prompt", "limit is 300"),
]


def test_invalid_input_is_422_naming_the_field_like_the_form(app, client, token):
    for endpoint, body, code, field, text in INVALID:
        resp = client.post(f"/api/v1/{endpoint}", json=body, headers=bearer(token))
        err = assert_error(resp, 422, code, field)
        assert text.lower() in err["message"].lower(), (body, err)
    both = client.post(f"/api/v1/{D}", json={"duration": 5, "variants": 9}, headers=bearer(token))
    assert set(assert_error(both, 422)["fields"]) == {"description", "duration", "variants"}
    assert balance(app) == 100
    with connected(app):
        assert Generation.select().count() == 0


MALFORMED = [
    ("{not json", "application/json", "invalid_json"),
    ("[1, 2]", "application/json", "invalid_body"),
    ('"text"', "application/json", "invalid_body"),
    ("null", "application/json", "invalid_body"),
    ("", "application/json", "invalid_json"),
    ("[" * 100000 + "]" * 100000, "application/json", "invalid_json"),
    ('{"duration": 1' + "0" * 5000 + "}", "application/json", "invalid_json"),
    (b"\xff\xfe", "application/json", "invalid_json"),
    ("description=hi", "application/x-www-form-urlencoded", "invalid_body"),
    ("description=hi", "text/plain", "invalid_body"),
]


@sqlite_only
def test_malformed_bodies_are_400(app, client, token):
    for data, content_type, code in MALFORMED:
        resp = client.post(f"/api/v1/{D}", data=data, content_type=content_type, headers=bearer(token))
        assert_error(resp, 400, code)
    big = client.post(f"/api/v1/{D}", data=b" " * (300 * 1024), content_type="application/json",
                      headers=bearer(token))
    assert_error(big, 413, "too_large")


def test_lone_surrogates_and_nul_bytes_are_handled(app, client, token):
    raw = '{"description": "\\ud800 broken"}'
    resp = client.post(f"/api/v1/{D}", data=raw, content_type="application/json", headers=bearer(token))
    assert_error(resp, 422, "invalid", "description")
    resp = client.post(f"/api/v1/{D}", json={"description": "nul\x00byte", "duration": 10}, headers=bearer(token))
    assert resp.status_code == 202


def test_insufficient_credits_is_402_and_writes_nothing(app, client, token):
    with connected(app):
        with models.write_transaction():
            models.apply_credits(User.get().id, -99, "admin", "test:drain")
    resp = client.post(f"/api/v1/{D}", json={"description": "a song", "variants": 2}, headers=bearer(token))
    err = assert_error(resp, 402, "insufficient_credits", "variants")
    assert "you have 1" in err["message"]
    with connected(app):
        assert Generation.select().count() == 0
    assert client.post(f"/api/v1/{D}", json={"description": "a song", "variants": 1},
                       headers=bearer(token)).status_code == 202
    assert balance(app) == 0


def test_unknown_and_foreign_songs_are_404(app, client, token):
    resp = client.post(f"/api/v1/{D}", json={"description": "mine"}, headers=bearer(token))
    song_id = resp.get_json()["songs"][0]["id"]
    bob = AuthActions(app.test_client())
    bob.register("bob@example.com")
    bob_token = make_token(bob)
    assert_error(bob.client.get(f"/api/v1/songs/{song_id}", headers=bearer(bob_token)), 404, "not_found")
    assert bob.client.get("/api/v1/songs", headers=bearer(bob_token)).get_json()["songs"] == []
    assert_error(client.get("/api/v1/songs/" + "f" * 32, headers=bearer(token)), 404)
    assert_error(client.get("/api/v1/songs/" + "f" * 200, headers=bearer(token)), 404)
    assert_error(client.get("/api/v1/nothing-here", headers=bearer(token)), 404)
    assert_error(client.put(f"/api/v1/songs/{song_id}", headers=bearer(token)), 405)


# ------------------------------------------------------------------------------ idempotency
def test_idempotency_key_makes_a_retry_safe(app, client, token):
    h = {**bearer(token), "Idempotency-Key": "retry-me-123"}
    body = {"prompt": "acoustic folk", "lyrics": "[verse]\nThe river knows my name", "duration": 10}
    first = client.post(f"/api/v1/{L}", json=body, headers=h)
    again = client.post(f"/api/v1/{L}", json=body, headers=h)
    assert first.status_code == again.status_code == 202
    assert first.get_json()["generation_id"] == again.get_json()["generation_id"]
    assert [s["id"] for s in first.get_json()["songs"]] == [s["id"] for s in again.get_json()["songs"]]
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert balance(app) == 98
    with connected(app):
        assert Generation.select().count() == 1
        assert CreditEntry.select().where(CreditEntry.kind == "reserve").count() == 1

    other = client.post(f"/api/v1/{L}", json={**body, "lyrics": "different words"}, headers=h)
    assert_error(other, 409, "idempotency_key_reused", "Idempotency-Key")
    other = client.post(f"/api/v1/{D}", json={"description": "x"}, headers=h)
    assert_error(other, 409, "idempotency_key_reused")
    for bad in ("", "x" * 101, "has space"):
        assert_error(client.post(f"/api/v1/{L}", json=body, headers={**bearer(token), "Idempotency-Key": bad}),
                     400, "invalid_header", "Idempotency-Key")
    # without a key, each POST is a new generation
    assert client.post(f"/api/v1/{L}", json=body, headers=bearer(token)).get_json()["generation_id"] != \
        first.get_json()["generation_id"]
    assert balance(app) == 96


def test_each_endpoint_maps_to_its_mode(app, client, token):
    h = bearer(token)
    cases = [(D, {"description": "upbeat pop", "instrumental": True, "variants": 1}, "description"),
             (L, {"prompt": "ambient", "instrumental": True, "variants": 1}, "lyrics"),
             (DL, {"prompt": "rock", "description": "two friends meeting", "variants": 1, "duration": 30},
              "described_lyrics")]
    for endpoint, body, mode in cases:
        resp = client.post(f"/api/v1/{endpoint}", json=body, headers=h)
        assert resp.status_code == 202, resp.get_json()
        with connected(app):
            gen = Generation.get_by_id(resp.get_json()["generation_id"])
            assert gen.mode == mode and gen.variants == 1
    with connected(app):
        gen = Generation.get(Generation.mode == "described_lyrics")
        assert gen.described_lyrics == "two friends meeting" and gen.prompt == "rock" and gen.duration == 30


# ------------------------------------------------------------------------------ songs
def test_songs_are_paginated_newest_first(app, client, token):
    h = bearer(token)
    ids = []
    for i in range(3):
        resp = client.post(f"/api/v1/{D}", json={"description": f"song {i}", "variants": 1}, headers=h)
        ids.append(resp.get_json()["songs"][0]["id"])
    with connected(app):  # distinct creation times, newest last
        import datetime as dt

        for i, song_id in enumerate(ids):
            Song.update(created_at=dt.datetime(2030, 1, 1, 0, 0, i)).where(Song.id == song_id).execute()
    page1 = client.get("/api/v1/songs?limit=2", headers=h).get_json()
    assert [s["id"] for s in page1["songs"]] == [ids[2], ids[1]]
    assert page1["limit"] == 2 and page1["next_cursor"]
    page2 = client.get("/api/v1/songs", query_string={"limit": 2, "cursor": page1["next_cursor"]}, headers=h).get_json()
    assert [s["id"] for s in page2["songs"]] == [ids[0]] and page2["next_cursor"] is None
    assert client.get("/api/v1/songs?status=processed", headers=h).get_json()["songs"] == []
    assert len(client.get("/api/v1/songs?status=queued", headers=h).get_json()["songs"]) == 3
    for query, field in (("page=2", "page"), ("limit=abc", "limit"), ("limit=101", "limit"),
                         ("limit=-1", "limit"), ("status=done", "status"), ("limit=１", "limit"),
                         ("cursor=zzz", "cursor"), ("generation_id=" + "a" * 33, "generation_id")):
        assert_error(client.get(f"/api/v1/songs?{query}", headers=h), 400, "invalid_parameter", field)


# ------------------------------------------------------------------------------ rate limit
@sqlite_only
@pytest.mark.parametrize("app_overrides", [{"API_RATE_LIMIT": "3 per minute"}])
def test_rate_limit_is_per_token(app, auth):
    alice = auth
    alice.register("alice@example.com")
    t1, t2 = make_token(alice, "one"), make_token(alice, "two")
    for _ in range(3):
        assert alice.client.get("/api/v1/songs", headers=bearer(t1)).status_code == 200
    resp = alice.client.post(f"/api/v1/{D}", json={"description": "x"}, headers=bearer(t1))
    assert_error(resp, 429, "too_many_requests")
    assert resp.headers.get("Retry-After")
    assert alice.client.get("/api/v1/songs", headers=bearer(t2)).status_code == 200
    with connected(app):
        assert Generation.select().count() == 0


# ------------------------------------------------------------------------------ OpenAPI
@sqlite_only
def test_openapi_document_is_valid_and_matches_the_routes(app, client):
    from openapi_spec_validator import validate

    resp = client.get("/api/v1/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    doc = resp.get_json()
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    base = doc["servers"][0]["url"]
    documented = {(m.upper(), base + re.sub(r"\{(\w+)\}", r"<\1>", p)) for p, ops in doc["paths"].items()
                  for m in ops}
    routed = {(m, r.rule) for r in app.url_map.iter_rules() if r.endpoint.startswith("api.")
              for m in r.methods - {"HEAD", "OPTIONS"}}
    assert documented == routed
    cfg = app.extensions["tunesmith_config"]
    duration = doc["components"]["schemas"]["GenerateFromDescription"]["properties"]["duration"]
    assert (duration["minimum"], duration["maximum"]) == (cfg.MIN_DURATION, cfg.MAX_DURATION)
    assert all(p in doc["paths"] for p in ("/generate_from_description", "/generate_with_lyrics",
                                           "/generate_from_described_lyrics", "/songs", "/songs/{song_id}"))


def test_property_based_run_finds_no_server_errors(app, client, token):
    """schemathesis generates valid and invalid requests for every operation from the document;
    no answer may be a 5xx, every status must be documented and every body must match its schema."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                                   status_code_conformance)

    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    seen: dict[int, int] = {}
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 18
    for operation in operations:
        # Made-up ids in the path are 404s; tests/test_api_studio.py fuzzes those operations on a real song.
        examples = 3 if operation.path_parameters else 10
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                headers = bearer(token)
                resp = case.call(headers=headers)
                seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
                case.validate_response(resp, checks=checks, headers=headers)

            run()
    assert not any(status >= 500 for status in seen), seen
    assert 202 in seen and 422 in seen and 200 in seen, seen


