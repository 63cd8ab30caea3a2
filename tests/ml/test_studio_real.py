"""The studio tools on the tiny random-weight real models: ACE-Step's repaint and cover
tasks (and a seeded retake) run through the real engine code inside the job, stems through the
tiny Demucs, and the results keep the studio's guarantees on decoded audio: extend = parent +
added, repaint = the parent's length and unchanged outside the section, stems = four tracks that
add up to the song; credits captured once."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

pytestmark = pytest.mark.ml
torch = pytest.importorskip("torch")


def _decoded(client, path):
    resp = client.get(path)
    assert resp.status_code == 302, (path, resp.status_code)
    samples, sr = sf.read(io.BytesIO(client.get(resp.headers["Location"]).data), dtype="float32", always_2d=True)
    return samples, sr


def _rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


@pytest.mark.parametrize("backend", ["sqlite"])
def test_studio_tools_on_tiny_real_models(app, client, auth):
    from jobs import runtime
    from models import Generation, Song, User
    from tests.helpers import connected, run_worker

    runtime.set_engines(None)  # this worker loads the real engines from its settings
    try:
        auth.register()
        assert auth.post("/create", data={"mode": "lyrics", "prompt": "lofi hip hop, mellow piano, 85 bpm",
                                          "lyrics": "[verse]\nhello world\n[chorus]\nsing along",
                                          "duration": "10", "variants": "1"}).status_code == 303
        run_worker(app)
        with connected(app):
            parent = Song.get()
        assert parent.status == "processed" and not parent.offline, parent.error
        pid = parent.id
        for op, data in (("retake", {"seed": "7"}), ("extend", {"added": "10"}), ("repaint", {"start": "3", "end": "6"}),
                         ("remix", {"tags": "jazz, upright bass", "strength": "70"}), ("stems", {})):
            assert auth.post(f"/songs/{pid}/{op}", data=data).status_code == 303, op
        run_worker(app)
        assert not runtime.engines().music.offline
    finally:
        runtime.set_engines(None)

    with connected(app):
        made = {s.generation.operation: s for s in Song.select(Song, Generation).join(Generation)
                .where(Song.parent == pid)}
        assert User.get().balance() == 100 - 1 - 5
    assert {op: s.status for op, s in made.items()} == dict.fromkeys(
        ("retake", "extend", "repaint", "remix", "stems"), "processed"), {op: s.error for op, s in made.items()}
    src, sr = _decoded(client, f"/songs/{pid}/download")
    frame = 2048 / sr  # one latent frame, with margin

    audio, _ = _decoded(client, f"/songs/{made['retake'].id}/download")
    assert abs(len(audio) - len(src)) / sr <= frame and made["retake"].seed == 7 and not made["retake"].offline

    audio, _ = _decoded(client, f"/songs/{made['extend'].id}/download")
    assert abs(len(audio) / sr - (len(src) / sr + 10)) <= frame
    keep = len(src) - int(0.06 * sr)
    assert _rms(audio[:keep] - src[:keep]) < 1e-3  # the parent, then the added part

    audio, _ = _decoded(client, f"/songs/{made['repaint'].id}/download")
    assert len(audio) == len(src)
    a, b = int(2.9 * sr), int(6.1 * sr)
    assert _rms(np.concatenate([audio[:a] - src[:a], audio[b:] - src[b:]])) < 1e-3
    assert _rms(audio[int(3.2 * sr):int(5.8 * sr)] - src[int(3.2 * sr):int(5.8 * sr)]) > 1e-3

    audio, _ = _decoded(client, f"/songs/{made['remix'].id}/download")
    assert len(audio) == len(src) and made["remix"].tags == "jazz, upright bass"

    tracks = []
    for name in ("vocals", "drums", "bass", "other"):
        audio, rate = _decoded(client, f"/songs/{pid}/stems/{name}")
        assert rate == sr and len(audio) == len(src)
        tracks.append(audio)
    assert _rms(sum(tracks) - src) < 2e-3  # level-matched
    with connected(app):
        assert Generation.get_by_id(made["stems"].generation_id).params["method"] == "demucs"
