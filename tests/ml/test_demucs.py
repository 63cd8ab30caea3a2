"""Stems with Demucs on tiny random-weight HTDemucs models saved as Demucs local repositories.

The engine is built by `load_engines` and loads through Demucs's own loader; the stems sum back
to the mix; each stem's WAV decodes; a stems job through the worker on a six-source model gives
a stems song whose six stem files are in storage and listed and served on its page; and the
weights layer tells a complete Demucs folder from an incomplete one and fetches with checksums.
"""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytestmark = pytest.mark.ml
torch = pytest.importorskip("torch")
pytest.importorskip("demucs")

ROOT = Path(__file__).resolve().parents[2]
SIX = ("drums", "bass", "other", "vocals", "guitar", "piano")


def rms(x) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if np.size(x) else 0.0


def music(seconds: float, sr: int = 48000, seed: int = 0) -> np.ndarray:
    """A stereo test mix: a bass line, a chord, hi-hat noise bursts; peak below 1."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    bass = 0.3 * np.sin(2 * np.pi * 55 * t)
    chord = sum(0.1 * np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0))
    hats = rng.normal(0, 0.1, t.size) * (np.mod(t, 0.25) < 0.03)
    left, right = bass + chord + hats, bass + 0.8 * chord + hats
    return np.stack([left, right], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.ml.tiny_models import build_demucs

    root = tmp_path_factory.mktemp("demucs-models")
    build_demucs(root / "tiny" / "htdemucs")
    build_demucs(root / "tiny" / "htdemucs_6s", sources=SIX)
    return root


def stems_settings(model_dir, **values):
    from config import TestConfig

    base = dict(ENGINE="offline", ENGINE_STEMS="real", MODEL_DIR=str(model_dir), STEMS_MODEL="tiny/htdemucs",
                ENGINE_DEVICE="cpu")
    base.update(values)
    return TestConfig(**base)


# ------------------------------------------------------------------------------ the engine


def test_importing_the_stems_engine_does_not_import_torch_or_demucs():
    code = ("import sys, jobs.engines.demucs_stems\n"
            "heavy = [m for m in ('torch', 'demucs', 'julius') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr


def test_demucs_stems_sum_back_to_the_mix_and_decode(model_dir):
    from jobs.audio import encode_wav
    from jobs.engines import load_engines

    engines = load_engines(stems_settings(model_dir))
    engine = engines.stems
    assert engine is not None and not engine.offline and engines.offline_roles == ["music", "writer", "cover"]
    assert "ENGINE_STEMS=real" in engines.reasons["stems"] and "stems=tiny/htdemucs (real" in engines.describe()
    assert engine.samplerate == 44100 and engine.stems == ("vocals", "drums", "bass", "other")

    sr = 48000
    mix = music(2.0, sr)
    seen: list[float] = []
    stems = engine.separate(mix, sr, progress=seen.append)
    assert list(stems) == ["vocals", "drums", "bass", "other"]
    for name, track in stems.items():
        assert track.shape == mix.shape and track.dtype == np.float32, name
    total = sum(stems.values())
    assert rms(total - mix) < 1e-3  # level-matched: the stems add up to the song
    # the model ran: its stems are neither silent nor copies of the mix
    for name in ("vocals", "drums", "bass"):
        assert rms(stems[name]) > 1e-4 and rms(stems[name] - mix) > 1e-3, name
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)

    decoded = {}
    for name, track in stems.items():
        audio, rate = sf.read(io.BytesIO(encode_wav(track, sr)), dtype="float32", always_2d=True)
        assert rate == sr and audio.shape == mix.shape, name
        decoded[name] = audio
    assert rms(sum(decoded.values()) - mix) < 1e-3  # still after 16-bit WAV


def test_fit_levels_scales_peak_normalised_tracks_back_to_the_mix():
    from jobs.studio import _fit_levels

    t = np.arange(48000) / 48000
    parts = {"vocals": 0.2 * np.sin(2 * np.pi * 440 * t), "drums": 0.05 * np.sign(np.sin(2 * np.pi * 2 * t)),
             "bass": 0.3 * np.sin(2 * np.pi * 55 * t)}
    parts = {k: np.stack([v, v], axis=1).astype(np.float32) for k, v in parts.items()}
    rest = (0.01 * np.random.default_rng(1).normal(size=(48000, 2))).astype(np.float32)
    mix = sum(parts.values()) + rest
    peaked = {k: v / np.abs(v).max() for k, v in parts.items()}  # what a peak-normalising engine returns
    fitted = _fit_levels(mix, peaked)
    assert list(fitted) == ["vocals", "drums", "bass", "other"]
    for name, part in parts.items():
        assert rms(fitted[name] - part) < 0.01 * rms(part) + 1e-3, name
    assert rms(sum(fitted.values()) - mix) < 1e-6


# ------------------------------------------------------------------------------ selection and weights


def _write(path: Path, data: bytes | str = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_demucs_folder_present_or_missing_and_engine_selection(tmp_path, model_dir):
    from core.weights import ModelMissingError, describe_models, missing_files, models_present
    from jobs.engines import load_engines

    folder = tmp_path / "demucs" / "htdemucs"
    assert missing_files(folder, "demucs") == ["the whole folder"]
    folder.mkdir(parents=True)
    assert missing_files(folder, "demucs") == ["htdemucs.yaml"]
    _write(folder / "htdemucs.yaml", "models: ['955717e8']\n")  # as Demucs writes its bags
    assert missing_files(folder, "demucs") == ["955717e8-*.th"]
    _write(folder / "955717e8-8726e21a.th.part")  # an interrupted download does not count
    assert missing_files(folder, "demucs") == ["955717e8-*.th"]
    _write(folder / "955717e8-8726e21a.th")
    assert missing_files(folder, "demucs") == []

    s = stems_settings(tmp_path, ENGINE_STEMS="auto", STEMS_MODEL="demucs/htdemucs")
    assert models_present(s, "stems")[0]
    assert not models_present(stems_settings(tmp_path, STEMS_MODEL="demucs/htdemucs_6s"), "stems")[0]
    rows = {r["role"]: r for r in describe_models(stems_settings(tmp_path, STEMS_MODEL="demucs/htdemucs_6s"))}
    assert rows["stems"]["model"] == "demucs/htdemucs_6s" and rows["stems"]["missing"] == ["the whole folder"]

    # real and missing: an error naming the model and the way out
    with pytest.raises(ModelMissingError) as info:
        load_engines(stems_settings(tmp_path, STEMS_MODEL="demucs/htdemucs_6s"))
    assert "stems" in str(info.value) and "flask models fetch" in str(info.value)
    assert "ENGINE_STEMS=offline" in str(info.value)
    # offline: no separator (the job splits offline); auto without CUDA or weights: the same, and why
    assert load_engines(stems_settings(model_dir, ENGINE_STEMS="offline")).stems is None
    auto = load_engines(stems_settings(tmp_path, ENGINE_STEMS=None, ENGINE="auto", STEMS_MODEL="demucs/htdemucs_6s"))
    assert auto.stems is None and auto.reasons["stems"].startswith("auto: ")
    assert auto.as_dict()["roles"]["stems"]["offline"] is True
    from config import ConfigError, TestConfig

    for bad in (dict(ENGINE_STEMS="gpu"), dict(STEMS_OVERLAP=1.0), dict(STEMS_SHIFTS=-1)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            TestConfig(**bad)


def test_fetch_downloads_demucs_packages_with_their_checksum(tmp_path, monkeypatch):
    from config import TestConfig
    from core import weights

    # Our list is Demucs's own (demucs/remote/files.txt under its download root).
    from demucs.pretrained import REMOTE_ROOT, ROOT_URL, _parse_remote_files

    urls = _parse_remote_files(REMOTE_ROOT / "files.txt")
    assert ROOT_URL == weights.DEFAULT_STEMS_WEIGHTS_URL
    assert {sig: ROOT_URL + rel for sig, rel in weights.DEMUCS_FILES.items()} == {s: urls[s] for s in weights.DEMUCS_FILES}
    for bag in weights.DEMUCS_BAGS.values():
        assert all(sig in weights.DEMUCS_FILES for sig in bag["models"])

    # A mirror on disk (file:// URL) serving one package named with its sha256 prefix.
    data = b"demucs package bytes" * 100
    name = f"abcd1234-{hashlib.sha256(data).hexdigest()[:8]}.th"
    mirror = tmp_path / "mirror"
    _write(mirror / "hybrid_transformer" / name, data)
    monkeypatch.setitem(weights.DEMUCS_FILES, "abcd1234", f"hybrid_transformer/{name}")
    monkeypatch.setitem(weights.DEMUCS_BAGS, "mini", {"models": ["abcd1234"]})
    settings = TestConfig(MODEL_DIR=str(tmp_path / "models"), STEMS_MODEL="demucs/mini",
                          STEMS_WEIGHTS_URL=mirror.as_uri() + "/")
    said: list[str] = []
    done = weights.fetch_models(settings.MODEL_DIR, ["stems"], settings=settings, echo=said.append)
    folder = tmp_path / "models" / "demucs" / "mini"
    assert done == {"stems": folder}
    assert (folder / name).read_bytes() == data
    assert json.loads((folder / "mini.yaml").read_text()) == {"models": ["abcd1234"]}
    assert weights.models_present(settings, "stems")[0] and any("ready" in line for line in said)
    weights.fetch_models(settings.MODEL_DIR, ["stems"], settings=settings, echo=said.append)
    assert "already in" in said[-1]

    # A corrupted download is refused and leaves nothing that looks complete.
    _write(mirror / "hybrid_transformer" / name, data[:-1] + b"!")
    other = TestConfig(MODEL_DIR=str(tmp_path / "other"), STEMS_MODEL="demucs/mini",
                       STEMS_WEIGHTS_URL=mirror.as_uri() + "/")
    with pytest.raises(weights.ModelMissingError, match="checksum mismatch"):
        weights.fetch_models(other.MODEL_DIR, ["stems"], settings=other, echo=said.append)
    assert sorted(p.name for p in (tmp_path / "other" / "demucs" / "mini").iterdir()) == []
    assert not weights.models_present(other, "stems")[0]
    # a name Demucs has no packages for
    with pytest.raises(weights.ModelMissingError, match="no pretrained model 'nope'"):
        weights.fetch_models(other.MODEL_DIR, ["stems"], models={"stems": "demucs/nope"}, settings=other)


# ------------------------------------------------------------------------------ the whole job


@pytest.fixture
def app_overrides(model_dir):
    """The worker: offline music, writer and cover; the six-source tiny Demucs for stems."""
    return dict(ENGINE="offline", ENGINE_STEMS="real", MODEL_DIR=str(model_dir), STEMS_MODEL="tiny/htdemucs_6s",
                ENGINE_DEVICE="cpu", MIN_DURATION=2)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_stems_job_on_six_source_demucs_lists_and_serves_every_stem(app, client, auth):
    from core import catalogue
    from core.storage import get_storage
    from jobs import runtime
    from models import Generation, Song
    from tests.helpers import connected, run_worker

    runtime.set_engines(None)  # this worker loads its engines from these settings
    try:
        auth.register()
        assert auth.post("/create", data={"mode": "lyrics", "prompt": "funk, 110 bpm, E minor, guitar, piano",
                                          "lyrics": "[verse]\nhello\n[chorus]\nagain", "duration": "3",
                                          "variants": "1"}).status_code == 303
        run_worker(app)
        with connected(app):
            parent = Song.get()
        assert parent.status == "processed", parent.error
        assert auth.post(f"/songs/{parent.id}/stems").status_code == 303
        run_worker(app)
        assert runtime.engines().stems is not None
    finally:
        runtime.set_engines(None)

    with connected(app):
        stems_song = Song.select().join(Generation).where(Generation.operation == "stems").get()
        params = stems_song.generation.params
    assert stems_song.status == "processed", stems_song.error
    names = ["vocals", "drums", "bass", "other", "guitar", "piano"]
    assert params["method"] == "demucs" and params["stems"] == names and params["stems_model"] == "tiny/htdemucs_6s"
    assert params["stem_format"] in ("pcm16", "float32")

    # the files are in storage, under the run's attempt
    storage = get_storage(app.extensions["tunesmith_config"])
    for name in names:
        assert storage.get(catalogue.stem_key(stems_song.user_id, stems_song.id, name, stems_song.attempt))

    # both pages list every stem, each downloads and decodes at the song's length; they add up to it
    resp = client.get(f"/songs/{parent.id}/download")
    src, sr = sf.read(io.BytesIO(client.get(resp.headers["Location"]).data), dtype="float32", always_2d=True)
    for page_id in (parent.id, stems_song.id):
        page = client.get(f"/songs/{page_id}").get_data(as_text=True)
        assert "data-stems" in page
        for name in names:
            assert f'data-stem="{name}"' in page and f"/songs/{page_id}/stems/{name}" in page, name
    tracks = {}
    for name in names:
        resp = client.get(f"/songs/{parent.id}/stems/{name}")
        assert resp.status_code == 302, name
        audio, rate = sf.read(io.BytesIO(client.get(resp.headers["Location"]).data), dtype="float32", always_2d=True)
        assert rate == sr and len(audio) == len(src), name
        tracks[name] = audio
    assert rms(sum(tracks.values()) - src) < 2e-3
    assert client.get(f"/songs/{parent.id}/stems/kazoo").status_code == 404
    resp = client.get(f"/songs/{parent.id}/stems.zip")
    assert resp.status_code == 200
    entries = sorted(zipfile.ZipFile(io.BytesIO(resp.data)).namelist())
    assert len(entries) == 6 and all(any(e.endswith(f" - {n}.wav") for e in entries) for n in names)


def test_stems_that_would_clip_are_stored_as_float_and_still_add_up():
    from jobs.studio import encode_stem, stem_format

    t = np.arange(4800) / 48000
    loud = np.stack([1.4 * np.sin(2 * np.pi * 100 * t)] * 2, axis=1).astype(np.float32)
    quiet = {"vocals": 0.5 * loud / 1.4, "other": 0.2 * loud / 1.4}
    assert stem_format(quiet) == "pcm16"
    assert sf.info(io.BytesIO(encode_stem(quiet["vocals"], 48000, "pcm16"))).subtype == "PCM_16"
    tracks = {"bass": loud, "other": -0.9 * loud}  # parts of a mix that peaks at 0.14
    fmt = stem_format(tracks)
    wavs = {k: encode_stem(v, 48000, fmt) for k, v in tracks.items()}
    assert fmt == "float32" and all(sf.info(io.BytesIO(w)).subtype == "FLOAT" for w in wavs.values())
    decoded = {k: sf.read(io.BytesIO(w), dtype="float32", always_2d=True)[0] for k, w in wavs.items()}
    assert float(np.abs(decoded["bass"]).max()) > 1.3  # not clipped
    assert rms(sum(decoded.values()) - sum(tracks.values())) < 1e-6
