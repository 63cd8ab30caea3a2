"""A whole job on the tiny random-weight real models: submit -> worker -> processed.

The worker loads ACE-Step, Qwen2 and SDXL through the real engine code from MODEL_DIR (saved
here with save_pretrained, loaded with local_files_only and HF_HUB_OFFLINE=1), renders both
variants in one batched call, and files decodable audio and a PNG.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

pytestmark = pytest.mark.ml
torch = pytest.importorskip("torch")


@pytest.mark.parametrize("backend", ["postgres"])
def test_job_on_tiny_real_models_from_submit_to_processed(app, client, auth):
    from jobs import runtime
    from jobs.engines import LOAD_COUNTS
    from models import Song
    from tests.helpers import connected, run_worker

    runtime.set_engines(None)  # this worker loads the real engines from its settings
    try:
        auth.register()
        resp = auth.post("/create", data={"mode": "lyrics", "prompt": "lofi hip hop, mellow piano, 85 bpm",
                                          "lyrics": "[verse]\nhello world\n[chorus]\nsing along",
                                          "duration": "10", "variants": "2"})
        assert resp.status_code == 303
        before = dict(LOAD_COUNTS)
        run_worker(app)
        auth.post("/create", data={"mode": "description", "description": "a second song", "duration": "10",
                                   "variants": "1"})
        run_worker(app)
        loaded = {k: LOAD_COUNTS[k] - before.get(k, 0) for k in LOAD_COUNTS}
        assert {k: v for k, v in loaded.items() if v} == {"music": 1, "writer": 1, "cover": 1, "stems": 1}
        engines = runtime.engines()
        assert not engines.music.offline and not engines.writer.offline and not engines.cover.offline
    finally:
        runtime.set_engines(None)
    with connected(app):
        songs = list(Song.select().order_by(Song.created_at, Song.variant))
    assert [s.status for s in songs] == ["processed"] * 3, [s.error for s in songs]
    first_two = songs[:2]
    decoded = []
    for song in first_two:
        assert not song.offline and song.steps and song.engine
        resp = client.get(f"/songs/{song.id}/download")
        data = client.get(resp.headers["Location"]).data
        samples, sr = sf.read(io.BytesIO(data), dtype="float32")
        frame = 2048 / sr  # one latent frame of the Oobleck VAE, with margin
        assert abs(len(samples) / sr - 10) <= frame, len(samples) / sr
        decoded.append(samples)
        cover = client.get(client.get(f"/songs/{song.id}/cover").headers["Location"]).data
        assert cover[:8] == b"\x89PNG\r\n\x1a\n"
    n = min(len(decoded[0]), len(decoded[1]))
    assert not np.allclose(decoded[0][:n], decoded[1][:n])  # the variants differ
    assert first_two[0].seed != first_two[1].seed


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_spanish_description_is_sung_in_spanish(app, client, auth):
    """Language auto: the tiny writer (random weights) says nothing usable, so the song takes the
    language of the person's description: `es` reaches the pipeline call for both variants and is
    stored on the songs."""
    from jobs import runtime
    from models import Song
    from tests.helpers import connected, run_worker
    from tests.ml.test_profiles import Spy

    runtime.set_engines(None)
    runtime.configure(app.extensions["tunesmith_config"])
    try:
        music = runtime.engines().music
        spy = Spy(music.pipe)
        music.pipe = spy
        auth.register()
        assert auth.post("/create", data={"mode": "description", "duration": "10", "variants": "2",
                                          "description": "una canción alegre sobre el verano en la playa "
                                                         "con guitarras y palmas"}).status_code == 303
        run_worker(app)
    finally:
        runtime.set_engines(None)
    with connected(app):
        songs = list(Song.select().order_by(Song.variant))
    assert [(s.status, s.language) for s in songs] == [("processed", "es")] * 2, [s.error for s in songs]
    (call,) = spy.calls  # both variants in one call
    assert call["vocal_language"] == ["es", "es"]
