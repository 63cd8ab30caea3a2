"""The API a developer builds on: studio operations, library actions, the account, generations,
cursor pagination and the events stream, over the token-authenticated JSON API. Every new
endpoint: 401 without a token, 404 on another person's song, 4xx JSON for a bad body with
nothing written and no credit taken; the typed Python client (clients/python) drives it too."""
from __future__ import annotations

import datetime as dt
import io
import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf

import models
from models import CreditEntry, Generation, Song, User
from tests import song_factory
from tests.conftest import AuthActions
from tests.helpers import connected, live_server, run_worker
from tests.test_api import assert_error, balance, bearer, make_token

pytestmark = pytest.mark.sqlite_only  # the API layer over the same submit path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "clients" / "python"))
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"])
PASSWORD = "quiet lantern over the harbour 42"  # not on the common-password list
OPS = ("retake", "extend", "repaint", "remix", "stems")


@pytest.fixture
def token(auth):
    assert auth.register(password=PASSWORD).status_code == 303
    return make_token(auth)


def finished_song(app, email="alice@example.com", **fields) -> Song:
    """A processed song (rows and files, no worker run) owned by `email`."""
    with connected(app):
        owner = User.get(User.email == email)
        return song_factory.song(owner, "Neon Nights", published=False, app=app, **fields)


def wav(seconds: float, sr: int = 16000) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, format="WAV")
    return buf.getvalue()


def counts(app):
    with connected(app):
        return Generation.select().count(), Song.select().count(), CreditEntry.select().count()


# ------------------------------------------------------------------------------ studio
def test_studio_operations_validate_and_charge_like_the_pages(app, client, token):
    h = bearer(token)
    parent = finished_song(app)
    cases = [("retake", {"variants": 2, "seed": 7}, 2), ("extend", {"added": 10, "lyrics": "[outro]\nfade"}, 1),
             ("repaint", {"start": 2, "end": 6.5, "tags": "jazz, piano"}, 1), ("remix", {"tags": "lofi"}, 1),
             ("stems", None, 1)]
    spent = 0
    for op, body, cost in cases:
        resp = client.post(f"/api/v1/songs/{parent.id}/{op}", headers=h, **({"json": body} if body else {}))
        assert resp.status_code == 202, (op, resp.get_json())
        out = resp.get_json()
        spent += cost
        assert len(out["songs"]) == cost and {s["status"] for s in out["songs"]} == {"queued"}
        assert resp.headers["Location"].endswith(f"/api/v1/generations/{out['generation_id']}")
        gen = client.get(resp.headers["Location"], headers=h).get_json()
        assert gen["operation"] == op and gen["source_song_id"] == parent.id and gen["status"] == "queued"
        assert [s["id"] for s in gen["songs"]] == [s["id"] for s in out["songs"]]
        assert balance(app) == 100 - spent
    with connected(app):
        params = {g.operation: g.params for g in Generation.select().where(Generation.operation != "generate")}
    assert params["retake"] == {"seed": 7} and params["extend"]["added"] == 10
    assert params["repaint"] == {"start": 2, "end": 6.5, "tags": "jazz, piano"}
    assert params["remix"] == {"tags": "lofi", "strength": 0.5}

    # remix of an upload: multipart, the studio's upload checks
    resp = client.post(f"/api/v1/songs/{parent.id}/remix", headers=h, content_type="multipart/form-data",
                       data={"tags": "rock", "strength": "30", "audio": (io.BytesIO(wav(2.0)), "take.wav")})
    assert resp.status_code == 202, resp.get_json()
    gen = client.get(resp.headers["Location"], headers=h).get_json()
    assert gen["source_song_id"] is None and gen["params"]["upload_ext"] == "wav" and "upload_key" not in gen["params"]
    assert gen["songs"][0]["duration"] == pytest.approx(2.0, abs=0.01)
    assert balance(app) == 100 - spent - 1

    # a retried POST with the same Idempotency-Key makes nothing new
    hk = {**h, "Idempotency-Key": "retake-once"}
    first = client.post(f"/api/v1/songs/{parent.id}/retake", headers=hk, json={"seed": 11})
    again = client.post(f"/api/v1/songs/{parent.id}/retake", headers=hk, json={"seed": 11})
    assert first.status_code == again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert first.get_json() == again.get_json()
    assert_error(client.post(f"/api/v1/songs/{parent.id}/retake", headers=hk, json={"seed": 12}), 409,
                 "idempotency_key_reused")
    assert balance(app) == 100 - spent - 2


def bad_cases():  # (op, how, body, status, code, field); fresh upload objects for each run
    return [
        ("retake", "json", {"seed": "seven"}, 422, "invalid", "seed"),
        ("retake", "json", {"seed": -5}, 422, "invalid", "seed"),
        ("retake", "json", {"variants": 9}, 422, "invalid", "variants"),
        ("retake", "json", {"variants": 1.5}, 422, "invalid", "variants"),
        ("retake", "json", {"variants": True}, 422, "invalid", "variants"),
        ("retake", "json", {"colour": "red"}, 422, "unknown_field", "colour"),
        ("retake", "raw", "[1, 2]", 400, "invalid_body", None),
        ("retake", "raw", "{oops", 400, "invalid_json", None),
        ("retake", "text", "seed=1", 400, "invalid_body", None),
        ("retake", "multipart", {"seed": "1"}, 400, "invalid_body", None),
        ("extend", "json", {}, 422, "invalid", "added"),
        ("extend", "json", {"added": 5}, 422, "invalid", "added"),
        ("extend", "json", {"added": 10, "from": 99}, 422, "invalid", "from"),
        ("extend", "json", {"added": 10, "lyrics": ["la"]}, 422, "invalid", "lyrics"),
        ("extend", "json", {"added": 10, "lyrics": "x" * 5001}, 422, "invalid", "lyrics"),
        ("repaint", "json", {"start": 6, "end": 2}, 422, "invalid", "end"),
        ("repaint", "json", {"start": 2, "end": 60}, 422, "invalid", "end"),
        ("repaint", "json", {"start": 2}, 422, "invalid", "end"),
        ("repaint", "json", {"start": {"a": 1}, "end": 4}, 422, "invalid", "start"),
        ("remix", "json", {}, 422, "invalid", "tags"),
        ("remix", "json", {"tags": 5}, 422, "invalid", "tags"),
        ("remix", "json", {"tags": "jazz", "strength": 101}, 422, "invalid", "strength"),
        ("remix", "multipart", {"tags": "jazz", "audio": (io.BytesIO(b"not audio at all" * 64), "x.wav")}, 415,
         "invalid", "audio"),
        ("remix", "multipart", {"tags": "jazz", "audio": (io.BytesIO(wav(0.3)), "short.wav")}, 422, "invalid", "audio"),
        ("remix", "multipart", {"tags": "jazz", "audio": "text, not a file"}, 422, "invalid", "audio"),
        ("remix", "multipart", {"tags": "jazz", "extra": "1"}, 422, "unknown_field", "extra"),
        ("stems", "json", {"stems": 6}, 422, "unknown_field", "stems"),
    ]


def _post(client, path, how, body, headers):
    if how == "json":
        return client.post(path, json=body, headers=headers)
    if how == "multipart":
        return client.post(path, data=body, content_type="multipart/form-data", headers=headers)
    return client.post(path, data=body, headers=headers,
                       content_type="application/json" if how == "raw" else "text/plain")


def test_bad_studio_bodies_are_4xx_json_and_cost_nothing(app, client, token):
    parent = finished_song(app)
    before = counts(app)
    for op, how, body, status, code, field in bad_cases():
        resp = _post(client, f"/api/v1/songs/{parent.id}/{op}", how, body, bearer(token))
        assert_error(resp, status, code, field)
    assert counts(app) == before
    assert balance(app) == 100


def test_a_studio_operation_on_an_unfinished_song_is_409(app, client, token):
    with connected(app):
        queued = song_factory.song(User.get(), "Not yet", status="queued", published=False)
    for op in ("retake", "stems"):
        assert_error(client.post(f"/api/v1/songs/{queued.id}/{op}", headers=bearer(token)), 409, "not_finished")
    assert balance(app) == 100


# ------------------------------------------------------------------------------ auth and ownership
def new_endpoints(song_id, gen_id):
    for op in OPS:
        yield "post", f"/api/v1/songs/{song_id}/{op}", {}
    for action in ("publish", "unpublish", "cancel"):
        yield "post", f"/api/v1/songs/{song_id}/{action}", None
    yield "patch", f"/api/v1/songs/{song_id}", {"title": "Mine now"}
    yield "delete", f"/api/v1/songs/{song_id}", None
    yield "get", f"/api/v1/generations/{gen_id}", None
    yield "get", f"/api/v1/generations/{gen_id}/events", None


@sqlite_only
def test_every_new_endpoint_needs_a_token_and_hides_other_peoples_songs(app, client, token):
    song = finished_song(app)
    with connected(app):
        gen_id = Song.get_by_id(song.id).generation_id
    bob = AuthActions(app.test_client())
    assert bob.register("bob@example.com", password=PASSWORD).status_code == 303
    bob_h = bearer(make_token(bob))
    before = counts(app)
    for method, path, body in [*new_endpoints(song.id, gen_id), ("get", "/api/v1/me", None)]:
        for headers in ({}, bearer("ts_no-such-token-000000000000000000000000000")):
            resp = getattr(client, method)(path, json=body, headers=headers)
            assert_error(resp, 401)
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")

    for method, path, body in new_endpoints(song.id, gen_id):
        err = assert_error(getattr(bob.client, method)(path, json=body, headers=bob_h), 404, "not_found")
        assert "song" in err["message"] or "generation" in err["message"]
    assert counts(app) == before
    with connected(app):
        row = Song.get_by_id(song.id)
        assert (row.title, row.published, row.status) == ("Neon Nights", False, "processed")
    assert balance(app) == 100 and balance(app, "bob@example.com") == 100
    me = bob.client.get("/api/v1/me", headers=bob_h).get_json()
    assert me["email"] == "bob@example.com" and me["credits"] == 100


# ------------------------------------------------------------------------------ library actions
def test_library_actions_mirror_the_page(app, client, token):
    h = bearer(token)
    song = finished_song(app)
    resp = client.post(f"/api/v1/songs/{song.id}/publish", headers=h)
    assert resp.status_code == 200 and resp.get_json()["published"] is True
    assert f'data-song-id="{song.id}"' in app.test_client().get("/").get_data(as_text=True)  # in the feed
    resp = client.post(f"/api/v1/songs/{song.id}/unpublish", headers=h)
    assert resp.status_code == 200 and resp.get_json()["published"] is False
    assert app.test_client().get(f"/songs/{song.id}").status_code == 404  # private again

    resp = client.patch(f"/api/v1/songs/{song.id}", headers=h, json={"title": "  Neon   Rain  "})
    assert resp.status_code == 200 and resp.get_json()["title"] == "Neon Rain"
    for body, status, code, field in (({}, 422, "invalid", "title"), ({"title": ""}, 422, "invalid", "title"),
                                      ({"title": "x" * 500}, 422, "invalid", "title"),
                                      ({"title": 5}, 422, "invalid", "title"),
                                      ({"title": "ok", "published": True}, 422, "unknown_field", "published"),
                                      ("[1]", 400, "invalid_body", None), ("{x", 400, "invalid_json", None)):
        kw = {"json": body} if isinstance(body, dict) else {"data": body, "content_type": "application/json"}
        assert_error(client.patch(f"/api/v1/songs/{song.id}", headers=h, **kw), status, code, field)
    with connected(app):
        assert Song.get_by_id(song.id).title == "Neon Rain"

    # publish needs a finished song; cancel a queued one gives the credit back at once
    resp = client.post("/api/v1/generate_from_description", headers=h, json={"description": "x", "variants": 1})
    queued_id = resp.get_json()["songs"][0]["id"]
    assert balance(app) == 99
    assert_error(client.post(f"/api/v1/songs/{queued_id}/publish", headers=h), 409, "not_finished")
    resp = client.post(f"/api/v1/songs/{queued_id}/cancel", headers=h)
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["outcome"] == "cancelled" and body["song"]["status"] == "failed"
    assert balance(app) == 100
    again = client.post(f"/api/v1/songs/{queued_id}/cancel", headers=h).get_json()
    assert again["outcome"] == "finished" and balance(app) == 100

    # delete: 204, then gone; an unfinished song's credit comes back
    resp = client.post("/api/v1/generate_from_description", headers=h, json={"description": "y", "variants": 1})
    unfinished = resp.get_json()["songs"][0]["id"]
    assert balance(app) == 99
    for song_id in (song.id, unfinished):
        resp = client.delete(f"/api/v1/songs/{song_id}", headers=h)
        assert resp.status_code == 204 and resp.data == b""
        assert_error(client.get(f"/api/v1/songs/{song_id}", headers=h), 404, "not_found")
        assert_error(client.delete(f"/api/v1/songs/{song_id}", headers=h), 404, "not_found")
    assert balance(app) == 100
    me = client.get("/api/v1/me", headers=h).get_json()
    assert me["credits"] == 100 and me["email"] == "alice@example.com" and me["name"] == "Alice"


# ------------------------------------------------------------------------------ cursor pagination
@sqlite_only
def test_every_list_is_cursor_paginated(app, client, token):
    h = bearer(token)
    with connected(app):
        owner = User.get()
        base = dt.datetime(2030, 1, 1)
        rows = [song_factory.song(owner, f"s{i}", published=False, created_at=base + dt.timedelta(minutes=i))
                for i in range(5)]
        twin = song_factory.song(owner, "twin", published=False, created_at=base + dt.timedelta(minutes=2),
                                 status="queued")  # the same time as s2: the id breaks the tie
    expected = [rows[4].id, rows[3].id, *sorted([rows[2].id, twin.id]), rows[1].id, rows[0].id]
    seen, cursor, pages = [], None, 0
    while True:
        query = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        resp = client.get("/api/v1/songs", headers=h, query_string=query)
        assert resp.status_code == 200
        body = resp.get_json()
        assert set(body) == {"songs", "limit", "next_cursor"} and body["limit"] == 2
        seen += [s["id"] for s in body["songs"]]
        pages += 1
        cursor = body["next_cursor"]
        if pages == 1:  # a song made meanwhile (newest) does not shift the pages already read
            with connected(app):
                song_factory.song(owner, "late", published=False, created_at=base + dt.timedelta(hours=1))
        if cursor is None:
            break
    assert seen == expected and pages == 3
    queued = client.get("/api/v1/songs?status=queued", headers=h).get_json()
    assert [s["id"] for s in queued["songs"]] == [twin.id] and queued["next_cursor"] is None
    for query, field in (("cursor=not-a-cursor", "cursor"), ("cursor=" + "A" * 300, "cursor"),
                         ("cursor=WzEsMiwzXQ", "cursor"), ("limit=0", "limit"), ("limit=101", "limit"),
                         ("page=2", "page")):
        assert_error(client.get(f"/api/v1/songs?{query}", headers=h), 400, "invalid_parameter", field)


# ------------------------------------------------------------------------------ events, end to end
def read_events(url: str, headers: dict, out: list, timeout: float = 60.0) -> None:
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as resp:
        out.append(("status", resp.status_code, resp.headers.get("Content-Type", "")))
        event = {}
        for line in resp.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                event["event"] = line[7:]
            elif line.startswith("data: "):
                event["data"] = json.loads(line[6:])
            elif line == "" and event:
                out.append(event)
                event = {}


@pytest.mark.parametrize("app_overrides", [{"SSE_POLL_INTERVAL": 0.05}])
def test_events_stream_until_processed_and_the_client(app, client, token):
    """A studio retake submitted through the typed client, followed over real HTTP by its event
    stream while the worker runs in-process, until every song is processed."""
    from tunesmith_client import ApiError, Tunesmith

    parent = finished_song(app, duration=10.0)
    with live_server(app) as base:
        api = Tunesmith(base, token)
        assert api.me().credits == 100
        accepted = api.retake(parent.id, variants=1, seed=5)
        assert api.generation(accepted.generation_id).status == "queued"
        events: list = []
        reader = threading.Thread(target=read_events, args=(
            f"{base}/api/v1/generations/{accepted.generation_id}/events", bearer(token), events))
        reader.start()
        run_worker(app)
        reader.join(60)
        assert not reader.is_alive()
        assert events[0][:2] == ("status", 200) and events[0][2].startswith("text/event-stream")
        names = [e["event"] for e in events[1:]]
        assert names[-1] == "done" and set(names[:-1]) <= {"progress"}, names
        final = events[-1]["data"]
        assert final["finished"] and final["status"] == "finished" and final["progress"] == 100
        assert [s["status"] for s in final["songs"]] == ["processed"]
        # a stream opened on a finished generation ends at once with `done`
        again: list = []
        read_events(f"{base}/api/v1/generations/{accepted.generation_id}/events", bearer(token), again)
        assert [e["event"] for e in again[1:]] == ["done"]

        song = api.song(final["songs"][0]["id"])
        assert song.status == "processed" and song.audio_url and song.seed == 5
        assert requests.get(song.audio_url, timeout=10).status_code == 200
        page = api.songs(limit=1)
        assert len(page.songs) == 1 and page.next_cursor
        assert [s.id for s in api.iter_songs(limit=1)] == [song.id, parent.id]
        renamed = api.rename(song.id, "Client Made")
        assert renamed.title == "Client Made" and api.publish(song.id).published
        with pytest.raises(ApiError) as err:
            api.extend(song.id, added=1)
        assert err.value.status == 422 and err.value.field == "added"
        with pytest.raises(ApiError) as err:
            Tunesmith(base, "ts_wrong").me()
        assert err.value.status == 401
        api.delete(song.id)
        with pytest.raises(ApiError) as err:
            api.song(song.id)
        assert err.value.status == 404 and err.value.code == "not_found"
    assert balance(app) == 99


@sqlite_only
@pytest.mark.parametrize("app_overrides", [{"SSE_POLL_INTERVAL": 0.02, "SSE_MAX_SECONDS": 0.3,
                                            "SSE_KEEPALIVE_SECONDS": 0.1}])
def test_events_stream_is_bounded_in_time(app, client, token):
    resp = client.post("/api/v1/generate_from_description", headers=bearer(token), json={"description": "x"})
    gen_id = resp.get_json()["generation_id"]
    resp = client.get(f"/api/v1/generations/{gen_id}/events", headers=bearer(token))
    text = resp.get_data(as_text=True)
    assert resp.status_code == 200 and resp.headers["Cache-Control"] == "no-store"
    assert text.startswith("retry: ") and "event: progress" in text and ": keep-alive" in text
    assert text.rstrip().split("\n")[-2] == "event: timeout"
    with connected(app):
        models.Song.delete().where(models.Song.generation == gen_id).execute()
    text = client.get(f"/api/v1/generations/{gen_id}/events", headers=bearer(token)).get_data(as_text=True)
    assert "event: gone" in text


# ------------------------------------------------------------------------------ fuzzing
@sqlite_only
def test_fuzzing_every_operation_on_a_real_song_finds_no_server_errors(app, client, token):
    """tests/test_api.py fuzzes every operation with made-up ids (404s); here the ids are pinned to a
    real finished song and its generation, so the generated bodies reach the studio's validation,
    the library actions and the event stream. No 5xx, every status documented, every body valid."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                                   status_code_conformance)

    song = finished_song(app)
    with connected(app):
        gen_id = Song.get_by_id(song.id).generation_id
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    seen: dict[int, int] = {}
    pinned = {"song_id": song.id, "generation_id": gen_id}
    operations = [op.ok() for op in schema.get_all_operations()]
    operations = [op for op in operations if op.path_parameters and op.method.upper() != "DELETE"]
    assert len(operations) >= 12
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            @settings(max_examples=6, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                for name in case.path_parameters or {}:
                    case.path_parameters[name] = pinned[name]
                headers = bearer(token)
                resp = case.call(headers=headers)
                seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
                case.validate_response(resp, checks=checks, headers=headers)

            run()
    assert not any(status >= 500 for status in seen), seen
    assert {200, 202, 422} <= set(seen), seen
