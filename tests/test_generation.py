"""Generation end to end: Create form -> credits -> RQ -> in-process GPU worker (offline engines)
-> S3 endpoint over HTTP -> library cards and signed audio. Runs on SQLite and PostgreSQL."""
from __future__ import annotations

import io
import re
import threading

import numpy as np
import pytest
import requests
import soundfile as sf
from PIL import Image

import models
from jobs import runtime
from models import CreditEntry, Generation, Song, User
from tests.conftest import AuthActions, csrf_from
from tests.helpers import connected, live_server, run_worker


@pytest.fixture
def app_overrides(s3_url):
    return {"STORAGE_URL": s3_url}


def balance(app, email="alice@example.com"):
    with connected(app):
        return User.get(User.email == email).balance()


def songs_of(app):
    with connected(app):
        return list(Song.select().order_by(Song.created_at, Song.variant))


def create(auth, **fields):
    data = {"mode": "description", "duration": "12", "variants": "2"}
    data.update(fields)
    return auth.post("/create", data=data)


def fetch_via_app(client, path):
    """Follow the app's redirect to the signed URL like a browser does (real HTTP to S3)."""
    resp = client.get(path)
    assert resp.status_code == 302, resp.status_code
    url = resp.headers["Location"]
    if url.startswith("/"):
        got = client.get(url)
        return got.status_code, got.data, got.headers
    got = requests.get(url, timeout=10)
    return got.status_code, got.content, got.headers


@pytest.mark.parametrize("fields", [
    {"mode": "description", "description": "a dreamy synthwave song about neon city nights, 120bpm, A minor"},
    {"mode": "lyrics", "prompt": "acoustic folk, 90 bpm, G major, male vocals",
     "lyrics": "[verse]\nThe river knows my name\n[chorus]\nCarry me home"},
    {"mode": "described_lyrics", "prompt": "rock, energetic, 140 bpm", "described_lyrics": "two friends meeting after years"},
    {"mode": "lyrics", "prompt": "ambient, calm, piano", "lyrics": "", "instrumental": "1"},
], ids=["description", "lyrics", "described_lyrics", "lyrics-instrumental"])
def test_each_mode_makes_playable_songs(app, client, auth, fields):
    auth.register()
    resp = create(auth, **fields)
    assert resp.status_code == 303 and resp.headers["Location"] == "/library"
    assert balance(app) == 98
    page = client.get("/library").get_data(as_text=True)
    assert page.count('data-status="queued"') == 2

    run_worker(app)

    songs = songs_of(app)
    assert [s.status for s in songs] == ["processed", "processed"], [s.error for s in songs]
    assert balance(app) == 98
    page = client.get("/library").get_data(as_text=True)
    assert page.count('data-status="processed"') == 2 and 'hx-trigger="load' not in page
    decoded = []
    for song in songs:
        assert song.title and song.tags and song.seed is not None and song.engine
        assert song.offline and "offline" in page
        assert song.peaks and 0 < max(song.peaks) <= 1
        if fields.get("instrumental"):
            assert song.lyrics == ""
        else:
            assert "[chorus]" in song.lyrics
        status, data, headers = fetch_via_app(client, f"/songs/{song.id}/audio")
        assert status == 200
        samples, sr = sf.read(io.BytesIO(data), dtype="float32")
        assert abs(len(samples) / sr - 12) <= 0.5
        assert np.sqrt(np.mean(samples ** 2)) > 0.01  # not silent
        assert np.abs(samples).max() < 1.0  # no clipping
        decoded.append(samples)
        status, data, _ = fetch_via_app(client, f"/songs/{song.id}/download")
        assert status == 200 and data[:4] == b"RIFF"
        wav, sr = sf.read(io.BytesIO(data))
        assert abs(len(wav) / sr - 12) <= 0.5
        status, data, _ = fetch_via_app(client, f"/songs/{song.id}/cover")
        img = Image.open(io.BytesIO(data))
        assert img.format == "PNG" and img.size == (512, 512)
    n = min(len(decoded[0]), len(decoded[1]))
    assert not np.allclose(decoded[0][:n], decoded[1][:n])  # variants differ
    with connected(app):
        kinds = sorted((e.kind, e.delta) for e in CreditEntry.select())
        assert kinds == [("capture", 0), ("capture", 0), ("grant", 100), ("reserve", -2)]


@pytest.mark.parametrize("fields,field,message", [
    ({"description": ""}, "description", "Describe the song"),
    ({"description": "x" * 1001}, "description", "limit is 1,000"),
    ({"mode": "lyrics", "prompt": "", "lyrics": "la la"}, "prompt", "style tags"),
    ({"mode": "lyrics", "prompt": "pop", "lyrics": ""}, "lyrics", "Write your lyrics"),
    ({"mode": "lyrics", "prompt": "pop", "lyrics": "y" * 5001}, "lyrics", "limit is 5,000"),
    ({"mode": "lyrics", "prompt": "p" * 301, "lyrics": "la"}, "prompt", "limit is 300"),
    ({"mode": "described_lyrics", "prompt": "pop", "described_lyrics": ""}, "described_lyrics", "what the lyrics"),
    ({"description": "ok", "duration": "9"}, "duration", "from 10 to 240"),
    ({"description": "ok", "duration": "241"}, "duration", "from 10 to 240"),
    ({"description": "ok", "duration": "abc"}, "duration", "whole number"),
    ({"description": "ok", "variants": "0"}, "variants", "from 1 to 4"),
    ({"description": "ok", "variants": "5"}, "variants", "from 1 to 4"),
    ({"mode": "karaoke", "description": "ok"}, "mode", "Choose one of"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_input_rerenders_with_message_and_writes_nothing(app, client, auth, fields, field, message):
    auth.register()
    resp = create(auth, **fields)
    assert resp.status_code == 422
    html = resp.get_data(as_text=True)
    assert re.search(rf'id="{field}-error"[^>]*>[^<]*{re.escape(message)}', html, re.I), html[:3000]
    # HTMX gets the fragment alone, with the same message
    resp = auth.post("/create", data={"mode": "description", "duration": "12", **fields}, headers={"HX-Request": "true"})
    assert resp.status_code == 422 and "<html" not in resp.get_data(as_text=True)
    with connected(app):
        assert Generation.select().count() == 0 and Song.select().count() == 0
    assert balance(app) == 100


def test_instrumental_custom_mode_needs_no_lyrics(app, client, auth):
    """The original's custom + instrumental path always failed; here it makes songs."""
    auth.register()
    assert create(auth, mode="described_lyrics", prompt="lofi, chill", instrumental="1").status_code == 303
    run_worker(app)
    assert [s.status for s in songs_of(app)] == ["processed"] * 2
    assert all(s.lyrics == "" and s.instrumental for s in songs_of(app))


def test_not_enough_credits_creates_nothing(app, client, auth):
    auth.register()
    with connected(app):
        user = User.get()
        with models.write_transaction():
            models.apply_credits(user, -99, "admin", "test:drain")
    resp = create(auth, description="a song", variants="2")
    assert resp.status_code == 402
    assert "needs 2 credits; you have 1" in resp.get_data(as_text=True)
    with connected(app):
        assert Generation.select().count() == 0
    assert balance(app) == 1


def test_same_idempotency_key_creates_nothing_new(app, client, auth):
    auth.register()
    for _ in range(3):
        assert create(auth, description="one song please", idempotency_key="key-123").status_code == 303
    with connected(app):
        assert Generation.select().count() == 1 and Song.select().count() == 2
    assert balance(app) == 98


def test_ten_concurrent_submits_with_credits_for_three(app):
    """Real HTTP, real threads: exactly three generations' worth reserved, never below zero."""
    with connected(app):
        user = User.register("busy@example.com", "password123", credits=6)
    with live_server(app) as base:
        sessions = []
        for _ in range(10):
            s = requests.Session()
            page = s.get(f"{base}/auth/login").text
            s.post(f"{base}/auth/login", data={"email": "busy@example.com", "password": "password123",
                                              "csrf_token": csrf_from(page)}, allow_redirects=False)
            sessions.append((s, csrf_from(s.get(f"{base}/create").text)))
        barrier = threading.Barrier(10)
        codes = []

        def submit(s, token):
            barrier.wait()
            r = s.post(f"{base}/create", data={"mode": "description", "description": "race", "duration": "10",
                                               "variants": "2", "csrf_token": token}, allow_redirects=False)
            codes.append(r.status_code)

        threads = [threading.Thread(target=submit, args=pair) for pair in sessions]
        [t.start() for t in threads]
        [t.join(30) for t in threads]
    assert sorted(codes) == [303] * 3 + [402] * 7
    with connected(app):
        assert Generation.select().count() == 3 and Song.select().count() == 6
        assert User.get_by_id(user.id).balance() == 0 == User.get_by_id(user.id).ledger_balance()
        assert min(e.balance_after for e in CreditEntry.select()) >= 0


class BrokenMusic:
    """Wraps the real offline engine and fails like a crashing model would."""

    def __init__(self, inner):
        self.inner, self.name, self.offline, self.sample_rate = inner, inner.name, True, inner.sample_rate

    def render(self, requests, progress=None):
        from jobs.engines.base import EngineError

        raise EngineError("the model produced no audio")


def test_engine_failure_fails_songs_and_releases_credits(app, client, auth):
    auth.register()
    create(auth, description="doomed song")
    engines = runtime.engines()
    original = engines.music
    engines.music = BrokenMusic(original)
    try:
        run_worker(app)
    finally:
        engines.music = original
    songs = songs_of(app)
    assert [s.status for s in songs] == ["failed", "failed"]
    assert all("produced no audio" in s.error for s in songs)
    assert balance(app) == 100
    page = client.get("/library").get_data(as_text=True)
    assert "produced no audio" in page and "credit for this song was returned" in page
    with connected(app):
        assert sorted(e.kind for e in CreditEntry.select()) == ["grant", "release", "release", "reserve"]


def test_transient_storage_error_is_retried(app, client, auth, monkeypatch):
    from urllib3.exceptions import ProtocolError

    from core import storage as storage_mod

    auth.register()
    create(auth, description="a resilient song", variants="1")
    store = storage_mod.get_storage(app.extensions["tunesmith_config"])
    real_put = store.client.put_object
    failures = {"left": 2}

    def flaky_put(*args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))
        return real_put(*args, **kwargs)

    monkeypatch.setattr(store.client, "put_object", flaky_put)
    monkeypatch.setattr(storage_mod.time, "sleep", lambda s: None)
    run_worker(app)
    assert failures["left"] == 0
    assert [s.status for s in songs_of(app)] == ["processed"]
    assert balance(app) == 99


def test_engines_are_loaded_once_for_many_jobs(app, client, auth):
    from jobs.engines import LOAD_COUNTS

    runtime.set_engines(None)
    before_runtime, before_roles = runtime.load_count, dict(LOAD_COUNTS)
    auth.register()
    for i in range(3):
        create(auth, description=f"song number {i}", variants="1")
    run_worker(app)
    run_worker(app)  # a second burst in the same process loads nothing either
    assert [s.status for s in songs_of(app)] == ["processed"] * 3
    assert runtime.load_count - before_runtime == 1
    assert {k: LOAD_COUNTS[k] - before_roles.get(k, 0) for k in LOAD_COUNTS} == {"music": 1, "writer": 1, "cover": 1,
                                                                           "stems": 1}


def test_status_card_polls_until_final(app, client, auth):
    auth.register()
    create(auth, description="watch me", variants="1")
    song = songs_of(app)[0]
    card = client.get(f"/songs/{song.id}/status", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert 'data-status="queued"' in card and "hx-trigger" in card and "<html" not in card
    run_worker(app)
    card = client.get(f"/songs/{song.id}/status", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert 'data-status="processed"' in card and 'hx-trigger="load' not in card
    # another person cannot see a private song's status
    other = app.test_client()
    AuthActions(other).register("bob@example.com")
    assert other.get(f"/songs/{song.id}/status").status_code == 404
    assert app.test_client().get(f"/songs/{song.id}/audio").status_code == 404


def test_reconciler_requeues_orphans_retries_dead_runs_and_gives_up_after_the_last(app, client, auth, redis_conn):
    import datetime as dt

    from core.queue import get_queue
    from core.reconcile import reconcile

    cfg = app.extensions["tunesmith_config"]
    auth.register()
    create(auth, description="orphaned by a Redis restart", variants="1")
    create(auth, description="its worker died mid-job", variants="1")
    create(auth, description="its worker died on every attempt", variants="1")
    with connected(app):
        by_text = {s.generation.description: s for s in songs_of(app)}
    orphan, dead, doomed = (by_text["orphaned by a Redis restart"], by_text["its worker died mid-job"],
                            by_text["its worker died on every attempt"])
    get_queue(cfg).empty()  # Redis lost the jobs
    for s in (orphan, dead, doomed):
        redis_conn.delete(f"rq:job:{s.generation_id}")
    old = models.utcnow() - dt.timedelta(hours=2)
    with connected(app):
        Generation.update(created_at=old).execute()
        Song.update(status="processing", stage="composing", started_at=old, heartbeat_at=old, attempt=1,
                    seed=1234).where(Song.id == dead.id).execute()
        Song.update(status="processing", stage="composing", started_at=old, heartbeat_at=old,
                    attempt=cfg.JOB_ATTEMPTS).where(Song.id == doomed.id).execute()
        report = reconcile(cfg)
        assert report.requeued == [orphan.generation_id]
        assert report.retried == [dead.id] and report.failed == [doomed.id]
        again = reconcile(cfg)
        assert again.failed == [] and again.retried == [] and again.requeued == []  # nothing twice
    page = client.get("/library").get_data(as_text=True)
    assert f"attempt 2 of {cfg.JOB_ATTEMPTS}" in page  # the card says what happens
    run_worker(app)
    by_id = {s.id: s for s in songs_of(app)}
    assert by_id[orphan.id].status == "processed"
    assert by_id[dead.id].status == "processed" and by_id[dead.id].attempt == 2
    assert by_id[dead.id].seed == 1234  # the retried variant is the same song
    assert by_id[doomed.id].status == "failed" and "credit was returned" in by_id[doomed.id].error
    assert balance(app) == 98


def test_a_job_popped_by_a_worker_that_froze_is_enqueued_again(app, auth, redis_conn):
    """Redis hands a pushed job to the first worker blocked on the queue; one frozen while it
    waited (SIGSTOP, a stalled VM) keeps it unread. The job still says `queued`, but it is in no
    queue: after WORKER_DEATH_SECONDS the reconciler enqueues it again and the song is made."""
    import datetime as dt

    from core.queue import get_queue
    from core.reconcile import reconcile
    from rq.job import Job as RQJob

    cfg = app.extensions["tunesmith_config"]
    auth.register()
    create(auth, description="taken by a worker that froze in its dequeue", variants="1")
    (song,) = songs_of(app)
    queue = get_queue(cfg)
    assert queue.job_ids == [song.generation_id]
    redis_conn.lpop(queue.key)  # the frozen worker's dequeue: gone from the queue, never started
    old = models.utcnow() - dt.timedelta(hours=1)
    with connected(app):
        Generation.update(created_at=old).execute()
        assert reconcile(cfg).requeued == []  # just popped: a live worker would be starting it now
        job = RQJob.fetch(song.generation_id, connection=redis_conn)
        job.enqueued_at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=cfg.WORKER_DEATH_SECONDS + 1)
        job.save()
        assert reconcile(cfg).requeued == [song.generation_id]
        assert reconcile(cfg).requeued == []  # once
    assert queue.job_ids == [song.generation_id]
    run_worker(app)
    (done,) = songs_of(app)
    assert done.status == "processed"
    assert balance(app) == 99


def test_a_replaced_run_cannot_write_over_its_retry(app, auth):
    """Run 1 of a generation is presumed dead and replaced by run 2, which finishes the song; when
    run 1 wakes up, every write it tries is refused and it removes only its own files."""
    import datetime as dt

    from core import catalogue, songs
    from core.reconcile import reconcile
    from core.storage import get_storage
    from jobs import generate
    from jobs.pipeline import Superseded

    cfg = app.extensions["tunesmith_config"]
    auth.register()
    create(auth, description="a song whose first worker froze", variants="1")
    (song,) = songs_of(app)
    runtime.configure(cfg)
    with connected(app):
        gen = Generation.get_by_id(song.generation_id)
        stale = generate._claim(gen)  # run 1 takes the song ... and freezes
        assert stale.attempt == 1
        old = models.utcnow() - dt.timedelta(seconds=cfg.WORKER_DEATH_SECONDS + 5)
        Song.update(heartbeat_at=old).where(Song.id == song.id).execute()
        assert reconcile(cfg, grace=0).retried == [song.id]
    run_worker(app)  # run 2
    store = get_storage(cfg)
    with connected(app):
        done = Song.get_by_id(song.id)
        assert done.status == "processed" and done.attempt == 2
        assert done.audio_key.startswith(catalogue.song_prefix(done.user_id, done.id) + "attempt-2/")
        files = store.list(catalogue.song_prefix(done.user_id, done.id))
        with pytest.raises(Superseded):  # run 1 wakes up: its next step stops it
            stale.stage("composing")
        assert not songs.finish_song(stale.songs[0], title="late", attempt=1, audio_key="x")
        assert songs.fail_songs(stale.songs, "late failure", attempt=1) == 0
        after = Song.get_by_id(song.id)
        assert (after.status, after.title, after.audio_key) == ("processed", done.title, done.audio_key)
        assert store.list(catalogue.song_prefix(done.user_id, done.id)) == files
        kinds = [e.kind for e in CreditEntry.select().where(CreditEntry.ref == songs.settle_ref(song.id))]
        assert kinds == ["capture"]
    assert balance(app) == 99


def test_cli_generate_waits_and_prints_files(app, auth, tmp_path):
    """`flask songs generate ... --wait` goes through the queue while the worker serves it."""
    auth.register()
    with connected(app):
        User.update(is_admin=True).execute()
    runner = app.test_cli_runner()
    # the worker's signal handlers need the main thread: run the CLI in the thread instead
    result = {}

    def cli():
        result["r"] = runner.invoke(args=["songs", "generate", "cinematic synthwave, 120bpm, minor",
                                          "--duration", "10", "--variants", "1", "--wait", "--timeout", "120"])

    c = threading.Thread(target=cli)
    c.start()
    while c.is_alive():
        run_worker(app)
        c.join(0.3)
    r = result["r"]
    assert r.exit_code == 0, r.output
    assert "processed" in r.output and "master.wav" in r.output and "cover.png" in r.output


@pytest.mark.sqlite_only
@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "inline"])
def test_the_next_job_starts_while_the_last_ones_files_upload(app, monkeypatch, overlap):
    """With WORKER_OVERLAP (the default) a worker hands a rendered job's encode and upload to
    the background and takes the next job at once: the second song starts before the first is
    finished, and both end processed, each charged once. Inline, the next starts after."""
    import time as time_mod

    from core import storage as storage_mod
    from tests.helpers import make_user, submit

    cfg = app.extensions["tunesmith_config"]
    monkeypatch.setattr(cfg, "WORKER_OVERLAP", overlap)
    store = storage_mod.get_storage(cfg)
    real_put = store.put

    def slow_put(key, data, ctype):  # a slow link to the object store
        time_mod.sleep(0.4)
        return real_put(key, data, ctype)

    monkeypatch.setattr(store, "put", slow_put)
    with connected(app):
        first = make_user("first@example.com", 10)
        second = make_user("second@example.com", 10)
        submit(first, 1, variants=1, duration=10, cfg=cfg)
        submit(second, 1, variants=1, duration=10, cfg=cfg)
    run_worker(app)
    with connected(app):
        a = Song.get(Song.user == first.id)
        b = Song.get(Song.user == second.id)
        assert (a.status, b.status) == ("processed", "processed"), (a.error, b.error)
        assert first.balance() == 9 and second.balance() == 9
        first_song, next_song = sorted([a, b], key=lambda s: s.started_at)
        if overlap:
            assert next_song.started_at < first_song.finished_at
        else:
            assert next_song.started_at >= first_song.finished_at
    assert runtime.finisher() is None  # the worker left no background finisher behind


@pytest.mark.sqlite_only
def test_the_song_is_sung_in_the_language_of_the_persons_words(app, client, auth):
    """Auto: a Spanish description makes a song marked Spanish (shown on its page and in the
    API); a chosen language wins; an instrumental has none; a language not on the list is a
    422 that writes nothing."""
    auth.register()
    assert create(auth, description="una canción alegre sobre el verano en la playa con guitarras",
                  variants="1").status_code in (200, 303)
    assert create(auth, description="a calm song about rain", variants="1", language="fr").status_code in (200, 303)
    assert create(auth, description="una canción sin voz sobre el mar", variants="1",
                  instrumental="1").status_code in (200, 303)
    before = balance(app)
    resp = create(auth, description="a song", variants="1", language="klingon")
    assert resp.status_code == 422 and "Choose a language" in resp.get_data(as_text=True)
    assert balance(app) == before and len(songs_of(app)) == 3
    run_worker(app)
    spanish, french, instrumental = songs_of(app)
    assert [s.status for s in (spanish, french, instrumental)] == ["processed"] * 3
    assert (spanish.language, french.language, instrumental.language) == ("es", "fr", "unknown")
    page = client.get(f"/songs/{spanish.id}").get_data(as_text=True)
    assert 'data-language="es"' in page and "Spanish" in page
    assert "data-language" not in client.get(f"/songs/{instrumental.id}").get_data(as_text=True)
