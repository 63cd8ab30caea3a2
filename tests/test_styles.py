"""Styles end to end on the offline engines: training one from four of one's own songs (the job
runs on the worker's `train` queue), its card and page, the credits it reserves, captures and
returns, a song made with it (the style and its adapter's hash stored, the arrangement leaning
toward it), publishing for others to use but never to download, cancelling, a failing
training, deleting. Every refused request is checked against the database: nothing written,
nothing charged."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf

from core import styles as core_styles
from core.storage import get_storage
from models import CreditEntry, Generation, Song, Style, StyleSample, User
from tests import song_factory as make
from tests.conftest import AuthActions
from tests.helpers import connected, run_worker

pytestmark = pytest.mark.sqlite_only  # forms, pages and the job: the same on both databases

TAGS = "jazz, 96 bpm, D minor, upright bass, smooth"


def text(resp) -> str:
    return resp.get_data(as_text=True)


def person(app, email, name):
    """A browser signed in as a new person (100 welcome credits)."""
    a = AuthActions(app.test_client())
    a.register(email, name=name)
    return a


def own_songs(app, email, n, **kwargs):
    """`n` finished songs of `email`, with their audio in storage."""
    with connected(app):
        owner = User.get(User.email == email)
        return [make.song(owner, title=f"Tune {i}", tags=TAGS, published=False, app=app, **kwargs).id
                for i in range(n)]


def balance(app, email):
    with connected(app):
        return User.get(User.email == email).balance()


def counts(app):
    with connected(app):
        return (Style.select().count(), StyleSample.select().count(), CreditEntry.select().count(),
                Generation.select().count())


def train(auth, song_ids, name="Smoky jazz", **fields):
    return auth.post("/styles", {"name": name, "description": "Late-night trio", "song_ids": song_ids, **fields})


def style_row(app, style_id) -> Style | None:
    with connected(app):
        return Style.get_or_none(Style.id == style_id)


def trained_style(app, auth, email="alice@example.com"):
    ids = own_songs(app, email, 4)
    resp = train(auth, ids)
    assert resp.status_code == 303, text(resp)
    style_id = resp.headers["Location"].rsplit("/", 1)[-1]
    run_worker(app)
    assert style_row(app, style_id).status == "ready"
    return style_id


def drain(app, rounds: int = 4) -> None:
    """Run the worker until no song or style waits (a person's second generation is handed out
    when their first one finishes)."""
    for _ in range(rounds):
        run_worker(app)
        with connected(app):
            waiting = (Song.select().where(Song.status.in_(("queued", "processing"))).exists()
                       or Style.select().where(Style.status.in_(("queued", "training"))).exists())
        if not waiting:
            return


def wav(seconds: float, sr: int = 8000) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def submit_song(app, email, style_id=None, seed=7):
    """A song through the Create form's parser and core.songs.submit, with a fixed seed."""
    from app.create import service
    from core import songs

    with connected(app):
        cfg = app.extensions["tunesmith_config"]
        req = service.parse({"mode": "lyrics", "prompt": "rock, energetic, 140 bpm, E minor", "instrumental": "1",
                             "duration": "10", "variants": "1", "style_id": style_id or ""}, cfg)
        req.params = {"seed": seed}
        gen, _ = songs.submit(User.get(User.email == email), req, cfg)
        return Song.get(Song.generation == gen.id).id


# ---------------------------------------------------------------------------------- the whole flow
def test_train_use_and_delete_a_style(app):
    alice = person(app, "alice@example.com", "Alice")
    ids = own_songs(app, "alice@example.com", 4)
    resp = train(alice, ids)
    assert resp.status_code == 303, text(resp)
    style_id = resp.headers["Location"].rsplit("/", 1)[-1]
    assert balance(app, "alice@example.com") == 80  # reserved at once

    card = text(alice.client.get("/styles"))  # the card polls itself while it waits
    assert f'data-style-id="{style_id}" data-status="queued"' in card
    assert f'hx-get="/styles/{style_id}/status"' in card

    run_worker(app)  # the test worker serves the train queue too
    style = style_row(app, style_id)
    assert (style.status, style.progress, style.offline) == ("ready", 100, True)
    storage = get_storage(app.extensions["tunesmith_config"])
    adapter = storage.get(style.adapter_key)
    assert style.adapter_key.endswith("/adapter.json") and len(style.adapter_hash) == 64
    bias = json.loads(adapter)
    assert (bias["profile"], bias["bpm"], bias["key_name"]) == ("jazz", 96, "D minor")
    assert json.loads(storage.get(style.adapter_key.rsplit("/", 1)[0] + "/report.json"))["steps"] == 4
    assert balance(app, "alice@example.com") == 80  # captured: the 20 credits are spent
    with connected(app):
        kinds = {e.ref: (e.kind, e.delta) for e in CreditEntry.select()}
    assert kinds[f"style-reserve:{style_id}"] == ("reserve", -20)
    assert kinds[f"style-capture:{style_id}"] == ("capture", 0)
    assert f"style-release:{style_id}" not in kinds

    page = text(alice.client.get(f"/styles/{style_id}"))
    assert "data-offline-style" in page and "Offline style" in page
    assert "<polyline" in page and "data-loss-plot" in page
    assert '<dd data-steps>4</dd>' in page
    assert all(f"/songs/{i}" in page for i in ids)  # the songs it learned from
    assert style.adapter_key not in page

    # A song with the style, and the same song (same seed) without it.
    styled, plain = submit_song(app, "alice@example.com", style_id), submit_song(app, "alice@example.com")
    assert balance(app, "alice@example.com") == 78
    drain(app)
    with connected(app):
        a, b = Song.get_by_id(styled), Song.get_by_id(plain)
        gen_params = a.generation.params
    assert (a.status, b.status) == ("processed", "processed")
    assert (a.style_id, a.style_hash) == (style_id, style.adapter_hash)
    assert (b.style_id, b.style_hash) == (None, "")
    assert gen_params["style"] == {"id": style_id, "hash": style.adapter_hash, "weight": 1.0,
                                   "engine": "offline-arranger"}
    assert a.seed == b.seed == 7
    sa, _ = sf.read(io.BytesIO(storage.get(a.audio_key)), dtype="float32")
    sb, _ = sf.read(io.BytesIO(storage.get(b.audio_key)), dtype="float32")
    assert sa.shape == sb.shape and not np.allclose(sa, sb, atol=1e-3)

    # What the arranger plays: the style's genre and key, the tempo half way (weight 1.0).
    from dataclasses import replace

    from jobs import styles as job_styles
    from jobs.engines.base import MusicRequest
    from jobs.engines.offline_music import OfflineMusic

    req = MusicRequest(tags="rock, energetic, 140 bpm, E minor", lyrics="", duration=10, seed=7, instrumental=True)
    with connected(app):
        ref = job_styles.style_ref(gen_params["style"], app.extensions["tunesmith_config"], storage)
    arranged, bare = OfflineMusic().describe(replace(req, style=ref)), OfflineMusic().describe(req)
    assert (bare["profile"], bare["key"], bare["bpm"]) == ("rock", "E minor", 140)
    assert (arranged["profile"], arranged["key"], arranged["bpm"]) == ("jazz", "D minor", 118)

    song_page = text(alice.client.get(f"/songs/{styled}"))
    assert f'<a href="/styles/{style_id}">Smoky jazz</a>' in song_page
    assert f"/songs/{styled}" in text(alice.client.get(f"/styles/{style_id}"))  # "Songs made with it"

    resp = alice.post(f"/styles/{style_id}/delete")
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/styles")
    assert storage.list(core_styles.prefix(style.user_id, style_id)) == []
    assert style_row(app, style_id) is None
    assert alice.client.get(f"/styles/{style_id}").status_code == 404
    with connected(app):
        kept = Song.get_by_id(styled)
    assert (kept.style_id, kept.style_hash, kept.status) == (None, style.adapter_hash, "processed")
    song_page = text(alice.client.get(f"/songs/{styled}"))
    assert "a deleted style" in song_page and f"/styles/{style_id}" not in song_page
    assert alice.client.get(f"/songs/{styled}/audio").status_code == 302  # still plays


# ---------------------------------------------------------------------------------- refused input
@pytest.mark.both_backends
def test_bad_requests_write_nothing_and_take_nothing(app):
    alice = person(app, "alice@example.com", "Alice")
    bob = person(app, "bob@example.com", "Bob")
    mine = own_songs(app, "alice@example.com", 4)
    bobs = own_songs(app, "bob@example.com", 1)
    with connected(app):
        unfinished = make.song(User.get(User.email == "alice@example.com"), title="WIP", status="processing").id
    before = counts(app)

    cases = [
        (mine[:3], {}, 422, "at least 4"),
        (mine + [f"{i:032x}" for i in range(27)], {}, 422, "at most 30"),
        (mine[:3] + bobs, {}, 404, "not yours"),
        (mine[:3] + [unfinished], {}, 409, "not finished"),
        (mine, {"name": ""}, 422, "Give the style a name"),
        (mine, {"name": "x" * 61}, 422, "60 characters"),
    ]
    for ids, extra, status, words in cases:
        resp = train(alice, ids, **extra)
        assert resp.status_code == status, (ids, text(resp))
        assert words in text(resp)
    resp = alice.post("/styles", {"name": "Long", "song_ids": mine[:3],
                                  "audio": (io.BytesIO(wav(601, sr=1000)), "long.wav")},
                      content_type="multipart/form-data")
    assert resp.status_code == 422 and "the limit is 10 minutes" in text(resp)
    resp = alice.post("/styles", {"name": "Junk", "song_ids": mine[:3], "audio": (io.BytesIO(b"not audio"), "x.mp3")},
                      content_type="multipart/form-data")
    assert resp.status_code == 415
    with connected(app):
        User.update(credits=19).where(User.email == "alice@example.com").execute()  # below the 20 it costs
    resp = train(alice, mine)
    assert resp.status_code == 402 and "needs 20 credits" in text(resp)
    with connected(app):
        User.update(credits=100).where(User.email == "alice@example.com").execute()
    assert counts(app) == before
    assert get_storage(app.extensions["tunesmith_config"]).list("users/1/styles/") == []

    # A style someone else keeps private, and one that is not ready: refused at create.
    resp = train(bob, own_songs(app, "bob@example.com", 3) + bobs, name="Bob's")
    bob_style = resp.headers["Location"].rsplit("/", 1)[-1]
    run_worker(app)
    resp = train(alice, mine, name="Pending")
    pending = resp.headers["Location"].rsplit("/", 1)[-1]  # queued: nobody trains it yet
    before, credits = counts(app), balance(app, "alice@example.com")
    form = {"mode": "lyrics", "prompt": "pop", "lyrics": "la la", "duration": "10", "variants": "1"}
    resp = alice.post("/create", {**form, "style_id": bob_style})
    assert resp.status_code == 404 and "no such style" in text(resp)
    resp = alice.post("/create", {**form, "style_id": pending})
    assert resp.status_code == 409 and "not ready" in text(resp)
    resp = alice.post("/create", {**form, "style_id": bob_style, "style_weight": "3"})
    assert resp.status_code == 422 and "0.1 to 2" in text(resp)
    assert (counts(app), balance(app, "alice@example.com")) == (before, credits)


# ---------------------------------------------------------------------------------- cancel, failure
def test_cancel_while_queued_returns_the_credits(app):
    alice = person(app, "alice@example.com", "Alice")
    resp = train(alice, own_songs(app, "alice@example.com", 4))
    style_id = resp.headers["Location"].rsplit("/", 1)[-1]
    assert balance(app, "alice@example.com") == 80
    resp = alice.client.post(f"/styles/{style_id}/cancel", data={"view": "card"},
                             headers={"HX-Request": "true", "X-CSRFToken": alice.csrf("/styles")})
    assert resp.status_code == 200 and 'data-status="cancelled"' in text(resp)
    assert "hx-get" not in text(resp)  # a final card stops polling
    assert balance(app, "alice@example.com") == 100
    run_worker(app)  # nothing left to do
    assert style_row(app, style_id).status == "cancelled"
    with connected(app):
        assert CreditEntry.get(CreditEntry.ref == f"style-release:{style_id}").delta == 20
    assert alice.post(f"/styles/{style_id}/cancel").status_code == 303  # again: nothing happens
    assert balance(app, "alice@example.com") == 100


def test_cancel_while_training_stops_the_job(app, monkeypatch):
    from jobs import styles as job_styles
    from jobs.engines.base import Cancelled
    from jobs.engines.offline_music import OfflineMusic

    monkeypatch.setattr(job_styles, "STOP_EVERY", 0.0)  # see the cancel at the very next check

    alice = person(app, "alice@example.com", "Alice")
    resp = train(alice, own_songs(app, "alice@example.com", 4))
    style_id = resp.headers["Location"].rsplit("/", 1)[-1]
    seen = {}

    def train_style(self, samples, settings=None, progress=None, should_stop=None):
        progress(0.5, "training")
        seen["status"] = Style.get_by_id(style_id).status
        assert core_styles.cancel(app.extensions["tunesmith_config"], Style.get_by_id(style_id)) == "stopping"
        if should_stop():
            raise Cancelled()
        raise AssertionError("should_stop did not see the cancel")

    monkeypatch.setattr(OfflineMusic, "train_style", train_style)
    run_worker(app)
    assert seen["status"] == "training"
    style = style_row(app, style_id)
    assert (style.status, style.adapter_key) == ("cancelled", None)
    assert balance(app, "alice@example.com") == 100


def test_a_failing_training_returns_the_credits_and_says_why(app, monkeypatch):
    from jobs.engines.offline_music import OfflineMusic

    def broken(self, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(OfflineMusic, "train_style", broken)
    alice = person(app, "alice@example.com", "Alice")
    resp = train(alice, own_songs(app, "alice@example.com", 4))
    style_id = resp.headers["Location"].rsplit("/", 1)[-1]
    run_worker(app)
    style = style_row(app, style_id)
    assert style.status == "failed" and "RuntimeError" in style.error
    assert balance(app, "alice@example.com") == 100
    page = text(alice.client.get(f"/styles/{style_id}"))
    assert 'data-status="failed"' in page and "Something went wrong while training" in page
    assert "credits for this style were returned" in page


# ---------------------------------------------------------------------------------- publishing
@pytest.mark.both_backends
def test_published_styles_are_usable_by_others_never_downloadable(app):
    alice = person(app, "alice@example.com", "Alice")
    style_id = trained_style(app, alice)
    bob = person(app, "bob@example.com", "Bob")
    form = {"mode": "lyrics", "prompt": "pop", "lyrics": "[verse]\nla la", "duration": "10", "variants": "1"}

    assert bob.client.get(f"/styles/{style_id}").status_code == 404  # private
    resp = bob.post("/create", {**form, "style_id": style_id})
    assert resp.status_code == 404
    assert style_id not in text(bob.client.get("/create"))

    assert alice.post(f"/styles/{style_id}/publish").status_code == 303
    page = bob.client.get(f"/styles/{style_id}")
    assert page.status_code == 200 and "Smoky jazz" in text(page)
    assert f'<option value="{style_id}"' in text(bob.client.get("/create"))
    for action in ("publish", "unpublish", "delete", "cancel"):  # the owner's alone
        assert bob.post(f"/styles/{style_id}/{action}").status_code == 404
    resp = bob.post("/create", {**form, "style_id": style_id, "style_weight": "1.5"})
    assert resp.status_code == 303, text(resp)
    run_worker(app)
    with connected(app):
        song = Song.get(Song.user == User.get(User.email == "bob@example.com").id)
        style = Style.get_by_id(style_id)
        weight = song.generation.params["style"]["weight"]
    assert (song.status, song.style_id, song.style_hash, weight) == ("processed", style_id, style.adapter_hash, 1.5)
    assert balance(app, "bob@example.com") == 99
    song_page = text(bob.client.get(f"/songs/{song.id}"))
    assert f'<a href="/styles/{style_id}">Smoky jazz</a>' in song_page

    # No route hands the adapter out: not the pages, not a guess at a file route.
    for path in (f"/styles/{style_id}", f"/songs/{song.id}", "/styles"):
        body = text(bob.client.get(path))
        assert style.adapter_key not in body and "adapter.json" not in body
    for path in ("adapter", "download", "adapter.json", "files/adapter.json", "status"):
        assert bob.client.get(f"/styles/{style_id}/{path}").status_code == 404

    assert alice.post(f"/styles/{style_id}/unpublish").status_code == 303
    assert bob.client.get(f"/styles/{style_id}").status_code == 404
    assert "Smoky jazz" in text(bob.client.get(f"/songs/{song.id}"))  # the name only, no link
    assert f'href="/styles/{style_id}"' not in text(bob.client.get(f"/songs/{song.id}"))


# ---------------------------------------------------------------------------------- studio tools
def test_studio_tools_take_a_style_from_the_page_and_the_api(app):
    """Retake on the song page and extend over the API render in a style; the studio forms offer
    the person's styles (a styled song's own style chosen first); someone else's private style
    is a 404 that writes and charges nothing."""
    from tests.test_api import bearer, make_token

    alice = person(app, "alice@example.com", "Alice")
    style_id = trained_style(app, alice)
    bob = person(app, "bob@example.com", "Bob")
    bobs_style = trained_style(app, bob, "bob@example.com")
    with connected(app):
        owner = User.get(User.email == "alice@example.com")
        song_id = make.song(owner, title="Plain tune", tags="rock, 140 bpm, E minor", published=False,
                            app=app).id

    page = text(alice.client.get(f"/songs/{song_id}"))
    assert page.count(f'<option value="{style_id}" >') == 4  # retake, extend, repaint, remix; none chosen
    assert bobs_style not in page  # bob's style is private

    start = balance(app, "alice@example.com")
    resp = alice.post(f"/songs/{song_id}/retake", {"variants": "1", "seed": "5", "style_id": style_id,
                                                   "style_weight": "1.5"})
    assert resp.status_code == 303, text(resp)
    resp = alice.post(f"/songs/{song_id}/retake", {"variants": "1", "seed": "5"})  # the same retake, no style
    assert resp.status_code == 303, text(resp)
    drain(app)
    with connected(app):
        styled, plain = (Song.select().join(Generation).where(Generation.operation == "retake")
                         .order_by(Song.created_at, Song.id))
        styled_params = styled.generation.params
    assert (styled.status, plain.status) == ("processed", "processed")
    assert (styled.style_id, plain.style_id) == (style_id, None)
    assert styled_params["style"]["weight"] == 1.5
    storage = get_storage(app.extensions["tunesmith_config"])
    sa, _ = sf.read(io.BytesIO(storage.get(styled.audio_key)), dtype="float32")
    sb, _ = sf.read(io.BytesIO(storage.get(plain.audio_key)), dtype="float32")
    assert sa.shape == sb.shape and not np.allclose(sa, sb, atol=1e-3)  # the style changed the retake
    assert f'<option value="{style_id}" selected>' in text(alice.client.get(f"/songs/{styled.id}"))

    before = counts(app)
    resp = alice.post(f"/songs/{song_id}/retake", {"variants": "1", "style_id": bobs_style})
    assert resp.status_code == 404 and "not yours to use" in text(resp)
    resp = alice.post(f"/songs/{song_id}/remix", {"tags": "jazz", "style_id": style_id, "style_weight": "9"})
    assert resp.status_code == 422 and "style weight" in text(resp)
    assert counts(app) == before and balance(app, "alice@example.com") == start - 2

    key = make_token(alice)
    client = app.test_client()
    resp = client.post(f"/api/v1/songs/{song_id}/extend", json={"added": 10, "style_id": bobs_style},
                       headers=bearer(key))
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "style_not_found"
    assert counts(app) == before
    resp = client.post(f"/api/v1/songs/{song_id}/extend", json={"added": 10, "style_id": style_id,
                                                                "style_weight": 0.5}, headers=bearer(key))
    assert resp.status_code == 202, resp.get_json()
    drain(app)
    with connected(app):
        extended = Song.select().join(Generation).where(Generation.operation == "extend").get()
    assert (extended.status, extended.style_id, extended.generation.params["style"]["weight"]) == (
        "processed", style_id, 0.5)
    spec = client.get("/api/v1/openapi.json").get_json()["components"]["schemas"]
    assert {"style_id", "style_weight"} <= set(spec["StudioExtend"]["properties"])
    assert "style_id" not in spec["StudioStems"]["properties"]
