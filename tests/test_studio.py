"""Studio tools end to end on the offline engines: retake, extend, repaint, remix (song and
upload) and stems, through the song page's forms, the queue, the in-process worker and the
app's signed URLs. Durations and "unchanged outside the section" are measured on decoded audio;
credits are charged once per song and released on failure; bad requests cost nothing."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import soundfile as sf

from jobs.engines.base import EngineError
from models import CreditEntry, Generation, Song, User
from tests.conftest import AuthActions
from tests.helpers import connected, run_worker

SR_TOL = 0.01  # seconds


def balance(app, email="alice@example.com"):
    with connected(app):
        return User.get(User.email == email).balance()


def get(app, song_id) -> Song:
    with connected(app):
        return Song.get_by_id(song_id)


def decoded(client, song_id, path="download"):
    resp = client.get(f"/songs/{song_id}/{path}")
    assert resp.status_code == 302, resp.status_code
    data = client.get(resp.headers["Location"]).data
    samples, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples, sr


def make_song(app, auth, seconds=12, **fields) -> Song:
    data = {"mode": "lyrics", "prompt": "synthwave, 120 bpm, A minor, female vocals",
            "lyrics": "[verse]\nNeon lights are calling\n[chorus]\nDrive into the night",
            "duration": str(seconds), "variants": "1"}
    data.update(fields)
    assert auth.post("/create", data=data).status_code == 303
    run_worker(app)
    with connected(app):
        song = Song.select().order_by(Song.created_at.desc()).first()
    assert song.status == "processed", song.error
    return song


def finished_song_row(app, seconds=12.0) -> Song:
    """A finished song as rows only (enough for the studio's validation, no audio)."""
    with connected(app):
        user = User.get(User.email == "alice@example.com")
        gen = Generation.create(user=user, mode="lyrics", prompt="pop", lyrics="la", duration=int(seconds), variants=1)
        return Song.create(generation=gen, user=user, status="processed", title="Rows", tags="pop",
                           duration=seconds, seed=1, audio_key="nowhere/master.wav")


def children(app, parent_id, op):
    with connected(app):
        return list(Song.select().join(Generation).where((Song.parent == parent_id) & (Generation.operation == op))
                    .order_by(Song.variant))


def rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def test_retake_extend_repaint_end_to_end(app, client, auth):
    auth.register()
    parent = make_song(app, auth)
    assert balance(app) == 99
    src, sr = decoded(client, parent.id)

    assert auth.post(f"/songs/{parent.id}/retake", data={"variants": "2"}).status_code == 303
    assert auth.post(f"/songs/{parent.id}/extend", data={"added": "10"}).status_code == 303
    resp = auth.post(f"/songs/{parent.id}/repaint", data={"start": "4", "end": "8", "tags": "jazz, piano"})
    assert resp.status_code == 303 and resp.headers["Location"].startswith("/songs/")
    assert balance(app) == 99 - 4  # reserved at submit, one per song
    run_worker(app)
    assert balance(app) == 95  # captured, not charged again

    retakes = children(app, parent.id, "retake")
    assert [s.status for s in retakes] == ["processed", "processed"], [s.error for s in retakes]
    seeds = {s.seed for s in retakes}
    assert len(seeds) == 2 and parent.seed not in seeds
    for s in retakes:
        audio, rate = decoded(client, s.id)
        assert abs(len(audio) / rate - len(src) / sr) <= SR_TOL
        assert s.tags == parent.tags and s.title == parent.title
        assert not np.allclose(audio[:len(src)], src[:len(audio)], atol=1e-3)

    [ext] = children(app, parent.id, "extend")
    assert ext.status == "processed", ext.error
    audio, rate = decoded(client, ext.id)
    assert abs(len(audio) / rate - (len(src) / sr + 10)) <= SR_TOL  # parent + added
    keep = len(src) - int(0.06 * sr)  # up to the crossfade before the seam: the parent itself
    assert rms(audio[:keep] - src[:keep]) < 1e-3
    assert rms(audio[len(src) + sr:]) > 0.01  # the added part is music, not silence
    assert abs(ext.duration - (parent.duration + 10)) <= SR_TOL and "(extended)" in ext.title

    [rep] = children(app, parent.id, "repaint")
    assert rep.status == "processed", rep.error
    audio, rate = decoded(client, rep.id)
    assert len(audio) == len(src)  # same duration as the parent
    a, b = int(3.9 * sr), int(8.1 * sr)
    outside = np.concatenate([audio[:a] - src[:a], audio[b:] - src[b:]])
    assert rms(outside) < 1e-3, rms(outside)  # unchanged outside the section
    assert rms(audio[int(4.2 * sr):int(7.8 * sr)] - src[int(4.2 * sr):int(7.8 * sr)]) > 0.01  # repainted inside
    with connected(app):
        gen = Generation.get_by_id(rep.generation_id)
        assert gen.source_song_id == parent.id and gen.params["start"] == 4 and gen.params["tags"] == "jazz, piano"
        kinds = sorted((e.kind, e.delta) for e in CreditEntry.select().where(CreditEntry.kind != "grant"))
    assert kinds == [("capture", 0)] * 5 + [("reserve", -2), ("reserve", -1), ("reserve", -1), ("reserve", -1)]

    # lineage on both pages
    page = client.get(f"/songs/{parent.id}").get_data(as_text=True)
    for s in retakes + [ext, rep]:
        assert f'data-child-id="{s.id}"' in page
    page = client.get(f"/songs/{rep.id}").get_data(as_text=True)
    assert f'data-parent-id="{parent.id}"' in page and 'data-operation="repaint"' in page and "jazz, piano" in page


def test_stems_are_the_arrangers_tracks_and_zip(app, client, auth):
    auth.register()
    parent = make_song(app, auth)
    assert client.get(f"/songs/{parent.id}/stems.zip").status_code == 404  # none yet
    assert auth.post(f"/songs/{parent.id}/stems").status_code == 303
    assert balance(app) == 98
    run_worker(app)
    assert balance(app) == 98
    [stems_song] = children(app, parent.id, "stems")
    assert stems_song.status == "processed", stems_song.error
    src, sr = decoded(client, parent.id)
    tracks = {}
    for name in ("vocals", "drums", "bass", "other"):
        audio, rate = decoded(client, parent.id, f"stems/{name}")
        assert rate == sr and len(audio) == len(src)
        tracks[name] = audio
    assert rms(tracks["drums"]) > 0.005 and rms(tracks["bass"]) > 0.005
    assert rms(sum(tracks.values()) - src) < 2e-3  # the tracks add up to the song
    with connected(app):
        assert Generation.get_by_id(stems_song.generation_id).params["method"] == "arranger tracks"
    resp = client.get(f"/songs/{parent.id}/stems.zip")
    assert resp.status_code == 200 and resp.mimetype == "application/zip"
    zf = zipfile.ZipFile(io.BytesIO(resp.data))
    names = sorted(zf.namelist())
    assert len(names) == 4 and all(n.endswith(".wav") for n in names)
    for n in names:
        audio, rate = sf.read(io.BytesIO(zf.read(n)), always_2d=True)
        assert len(audio) == len(src)
    page = client.get(f"/songs/{parent.id}").get_data(as_text=True)
    assert "data-stems" in page and f"/songs/{parent.id}/stems.zip" in page
    # someone else gets 404 for the files
    other = AuthActions(app.test_client())
    other.register(email="bob@example.com")
    assert other.client.get(f"/songs/{parent.id}/stems/drums").status_code == 404
    assert other.client.get(f"/songs/{parent.id}/stems.zip").status_code == 404


def _wav_bytes(seconds: float, sr: int = 22050, fmt: str = "WAV") -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.stack([x, x], 1), sr, format=fmt)
    return buf.getvalue()


def test_remix_of_a_song_and_of_an_upload(app, client, auth):
    auth.register()
    parent = make_song(app, auth)
    src, sr = decoded(client, parent.id)
    assert auth.post(f"/songs/{parent.id}/remix", data={"tags": "jazz, upright bass", "strength": "60"}).status_code == 303
    resp = auth.post(f"/songs/{parent.id}/remix", data={"tags": "rock, 140 bpm", "strength": "30",
                                                         "audio": (io.BytesIO(_wav_bytes(7.5, fmt="FLAC")), "take.flac")},
                     content_type="multipart/form-data")
    assert resp.status_code == 303
    run_worker(app)
    assert balance(app) == 97
    [remix] = children(app, parent.id, "remix")
    assert remix.status == "processed" and remix.tags == "jazz, upright bass"
    audio, rate = decoded(client, remix.id)
    assert len(audio) == len(src) and rms(audio) > 0.01
    with connected(app):
        up = Song.select().join(Generation).where((Generation.operation == "remix") & Song.parent.is_null()).get()
    assert up.status == "processed", up.error
    audio, rate = decoded(client, up.id)
    assert abs(len(audio) / rate - 7.5) <= SR_TOL and up.title == "take (remix)"


@pytest.mark.parametrize("op,data,status,message", [
    ("repaint", {"start": "8", "end": "4"}, 422, "end after it starts"),
    ("repaint", {"start": "4", "end": "40"}, 422, "after the song ends"),
    ("repaint", {"start": "30", "end": "40"}, 422, "after the song ends"),
    ("repaint", {"start": "-1", "end": "4"}, 422, "from 0"),
    ("repaint", {"start": "x", "end": "4"}, 422, "must be a number"),
    ("repaint", {"start": "4"}, 422, "Enter the section"),
    ("extend", {"added": "5"}, 422, "from 10 to 120"),
    ("extend", {"added": "121"}, 422, "from 10 to 120"),
    ("extend", {"added": "20", "from": "99"}, 422, "continue from"),
    ("retake", {"variants": "9"}, 422, "from 1 to 4"),
    ("remix", {"tags": ""}, 422, "new style"),
    ("remix", {"tags": "jazz", "audio": (b"RIFF not really a wav file" * 100, "fake.wav")}, 415,
     "not audio"),
    ("remix", {"tags": "jazz", "audio": (b"\0" * (20 * 1024 * 1024 + 10), "big.wav")}, 413, "20 MB"),
    ("remix", {"tags": "jazz", "audio": (_wav_bytes(601, sr=8000), "long.wav")}, 422, "10 minutes"),
    ("retake", {"idempotency_key": "k" * 101}, 422, "idempotency key is 101 characters"),
], ids=["end-before-start", "end-outside", "section-outside", "negative", "not-number", "missing-end",
        "extend-short", "extend-long", "extend-from-outside", "too-many-variants", "remix-no-style",
        "upload-not-audio", "upload-oversize", "upload-too-long", "key-too-long"])
def test_bad_requests_get_4xx_and_cost_nothing(app, client, auth, op, data, status, message):
    auth.register()
    parent = finished_song_row(app)
    before = balance(app)
    with connected(app):
        gens = Generation.select().count()
    kwargs = {"content_type": "multipart/form-data"} if "audio" in data else {}

    def form():
        return {k: (io.BytesIO(v[0]), v[1]) if k == "audio" else v for k, v in data.items()}

    resp = auth.post(f"/songs/{parent.id}/{op}", data=form(), **kwargs)
    assert resp.status_code == status
    assert message in resp.get_data(as_text=True)
    resp = auth.post(f"/songs/{parent.id}/{op}", data=form(), headers={"HX-Request": "true"}, **kwargs)
    assert resp.status_code == status and "HX-Redirect" not in resp.headers
    assert message in resp.get_data(as_text=True) and "<html" not in resp.get_data(as_text=True)
    assert balance(app) == before
    with connected(app):
        assert Generation.select().count() == gens


def test_a_studio_form_sent_twice_makes_one_generation(app, client, auth):
    """The studio forms carry an idempotency key: a double submit (or a resend after a timeout)
    makes and charges one retake, and both answers lead to the same new song."""
    auth.register()
    parent = finished_song_row(app)
    before = balance(app)
    data = {"variants": "2", "idempotency_key": "retake-once-3f2a"}
    first = auth.post(f"/songs/{parent.id}/retake", data=data)
    second = auth.post(f"/songs/{parent.id}/retake", data=data)
    assert first.status_code == second.status_code == 303
    assert first.headers["Location"] == second.headers["Location"]
    assert len(children(app, parent.id, "retake")) == 2
    assert balance(app) == before - 2


def test_owner_only_unfinished_and_credits(app, client, auth):
    auth.register()
    parent = make_song(app, auth)
    other = AuthActions(app.test_client())
    other.register(email="bob@example.com")
    with connected(app):
        Song.update(published=True).where(Song.id == parent.id).execute()
    for op in ("retake", "extend", "repaint", "remix", "stems"):
        assert other.post(f"/songs/{parent.id}/{op}", data={"added": "10"}).status_code == 404
    assert balance(app, "bob@example.com") == 100
    # not enough credits: 402, nothing written
    with connected(app):
        User.update(credits=1).where(User.email == "alice@example.com").execute()
    resp = auth.post(f"/songs/{parent.id}/retake", data={"variants": "2"})
    assert resp.status_code == 402 and "credit" in resp.get_data(as_text=True)
    # an unfinished song cannot be used
    resp = auth.post(f"/songs/{parent.id}/retake", data={"variants": "1"}, headers={"HX-Request": "true"})
    assert resp.status_code == 200 and resp.headers["HX-Redirect"].startswith("/songs/")
    child = resp.headers["HX-Redirect"].rsplit("/", 1)[-1]
    assert auth.post(f"/songs/{child}/extend", data={"added": "10"}).status_code == 409
    assert balance(app) == 0


def test_failure_releases_the_credits(app, client, auth, monkeypatch):
    import jobs.studio

    auth.register()
    parent = make_song(app, auth)

    class Broken:
        offline, name, sample_rate = True, "broken", 44100

        def render(self, requests, progress=None):
            raise EngineError("the engine broke")

    monkeypatch.setattr(jobs.studio, "studio_engine", lambda music: Broken())
    assert auth.post(f"/songs/{parent.id}/repaint", data={"start": "2", "end": "5", "variants": "2"}).status_code == 303
    assert balance(app) == 97
    run_worker(app)
    failed = children(app, parent.id, "repaint")
    assert [s.status for s in failed] == ["failed", "failed"] and "engine broke" in failed[0].error
    assert balance(app) == 99
    with connected(app):
        releases = [e.delta for e in CreditEntry.select().where(CreditEntry.kind == "release")]
    assert releases == [1, 1]
    run_worker(app)  # nothing to redo: released once
    assert balance(app) == 99


def test_spectral_split_and_splice_keep_their_promises():
    """The fallback split (any audio) sums to the mix; a splice leaves every frame outside the
    section as it was."""
    from jobs.engines.offline_studio import spectral_split
    from jobs.studio import join, splice

    rng = np.random.default_rng(0)
    sr = 22050
    t = np.arange(3 * sr) / sr
    mix = np.stack([0.3 * np.sin(2 * np.pi * 80 * t) + 0.1 * rng.standard_normal(t.size)] * 2, 1).astype(np.float32)
    stems = spectral_split(mix, sr)
    assert sorted(stems) == ["bass", "drums", "other", "vocals"]
    assert all(s.shape == mix.shape for s in stems.values())
    assert rms(sum(stems.values()) - mix) < 1e-5 and rms(stems["bass"]) > 0.05
    new = np.ones_like(mix)
    out = splice(mix, new, sr, 2 * sr, int(0.05 * sr))
    assert np.array_equal(out[:sr], mix[:sr]) and np.array_equal(out[2 * sr:], mix[2 * sr:])
    assert np.allclose(out[sr + int(0.05 * sr):2 * sr - int(0.05 * sr)], 1.0)
    longer = join(mix, np.ones((5 * sr, 2), np.float32), 3 * sr, 5 * sr, int(0.05 * sr))
    assert longer.shape == (5 * sr, 2) and np.array_equal(longer[:2 * sr], mix[:2 * sr])


def test_an_operation_no_live_worker_can_do_is_refused_at_submit(app, client, auth, redis_conn):
    """A fleet whose only worker holds a turbo checkpoint without a stems engine: stems and remix
    are refused at submit with a message naming the checkpoint, nothing written, no credit
    taken; a retake (text2music) is accepted. Once the worker is gone, nothing is refused."""
    from core import capabilities

    cfg = app.extensions["tunesmith_config"]
    auth.register()
    parent = finished_song_row(app)
    before = balance(app)
    capabilities.record(redis_conn, "turbo-only", {
        "model": "ACE-Step/acestep-v15-turbo", "kind": "turbo", "tasks": ["cover", "repaint", "text2music"],
        "offline": False, "stems": None, "stems_offline": None, "queues": [cfg.QUEUE_NAME]}, ttl=60)
    try:
        resp = auth.post(f"/songs/{parent.id}/stems")
        assert resp.status_code == 422
        assert "acestep-v15-turbo" in resp.get_data(as_text=True) and "cannot separate stems" in resp.get_data(as_text=True)
        assert balance(app) == before
        with connected(app):
            assert not children(app, parent.id, "stems")
        assert auth.post(f"/songs/{parent.id}/retake", data={"variants": "1"}).status_code == 303
        assert balance(app) == before - 1
    finally:
        capabilities.forget(redis_conn, "turbo-only")
    assert auth.post(f"/songs/{parent.id}/stems").status_code == 303
