"""Styles on the real music engine: a LoRA trained on the tiny ACE-Step DiT and applied per
request in the resident pipeline (CPU, random weights, no hub).

What a person relies on: training lowers the loss; a style changes the song and a song without
a style is exactly what it was; styles never leak into each other or into later songs; the
engine after training renders exactly as before; another engine's style is refused."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from jobs.engines.acestep import AceStepMusic  # noqa: E402
from jobs.engines.acestep_lora import StyleError, adapter_bytes  # noqa: E402
from jobs.engines.base import Cancelled, EngineError, MusicRequest, StyleRef, TrainingSample  # noqa: E402
from tests.ml.tiny_models import shared_models  # noqa: E402

pytestmark = pytest.mark.ml

SR = 48000
SETTINGS = {"STYLE_LORA_RANK": 4, "STYLE_LORA_ALPHA": 8, "STYLE_TRAIN_STEPS": 8, "STYLE_LEARNING_RATE": 1e-2}


def request(seed: int, style: StyleRef | None = None, **kw) -> MusicRequest:
    values = dict(tags="synthwave, female vocals", lyrics="[verse]\nCity lights\n[chorus]\nWe run", duration=1.0,
                  seed=seed, bpm=110, key="A minor", time_signature="4/4", style=style)
    values.update(kw)
    return MusicRequest(**values)


def song(freq: float, seconds: float, seed: int) -> np.ndarray:
    """A stereo tone with a little noise: something the tiny VAE encodes to a steady pattern."""
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    mono = 0.5 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.shape)
    return np.stack([mono, np.roll(mono, 7)], axis=1).astype(np.float32)


def samples(freq: float) -> list[TrainingSample]:
    return [TrainingSample(audio=song(freq * (1 + 0.1 * i), 1.2 + 0.4 * i, i), sample_rate=SR,
                           caption="lofi, mellow piano", lyrics="" if i else "[verse]\nhello world",
                           duration=1.2 + 0.4 * i) for i in range(2)]


def save(tmp_path, data: bytes, style_id: str, engine: str) -> StyleRef:
    digest = hashlib.sha256(data).hexdigest()
    path = tmp_path / f"{digest}.safetensors"
    path.write_bytes(data)
    return StyleRef(id=style_id, hash=digest, weight=1.0, path=path, engine=engine)


def lora_layers(music: AceStepMusic) -> list[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [n for n, m in music.pipe.transformer.named_modules() if isinstance(m, BaseTunerLayer)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One engine on the tiny turbo checkpoint; what it rendered before training; a style
    trained on it (and a second one, the first with its B factors negated)."""
    from safetensors.torch import load

    torch.set_num_threads(min(2, torch.get_num_threads()))
    tiny = shared_models()
    music = AceStepMusic(tiny.root / tiny.acestep, model_id=tiny.acestep, device="cpu")
    grads = {n: p.requires_grad for n, p in music.pipe.transformer.named_parameters()}
    before = music.render([request(5)])[0].samples
    stages: list[str] = []
    style = music.train_style(samples(220.0), SETTINGS, progress=lambda f, stage: stages.append(stage))
    tmp = tmp_path_factory.mktemp("styles")
    ref_a = save(tmp, style.adapter, "style-a", music.name)
    other = {k.removeprefix("transformer."): (-v if ".lora_B." in k else v) for k, v in load(style.adapter).items()}
    ref_b = save(tmp, adapter_bytes(other, {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                                            "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}),
                 "style-b", music.name)
    return dict(music=music, before=before, style=style, a=ref_a, b=ref_b, grads=grads, stages=stages, tmp=tmp)


def test_training_lowers_the_loss_and_reports_it(trained):
    style, music = trained["style"], trained["music"]
    report = style.report
    held = report["held_loss"]
    print(f"\nstyle training: loss {report['loss'][0]} -> {report['loss'][-1]}; "
          f"held-out noise {held['before']:.5f} -> {held['after']:.5f}; {report['seconds']:.2f} s")
    assert held["after"] < held["before"]
    assert report["steps"] == 8 and report["samples"] == 2 and report["loss"][0][0] == 1
    assert [p[0] for p in report["loss"]] == list(range(1, 9))
    assert style.filename == "adapter.safetensors" and style.adapter[:8] != b"{"
    assert style.config["r"] == 4 and style.config["lora_alpha"] == 8
    assert style.config["target_modules"] == ["to_q", "to_k", "to_v", "to_out.0"]
    assert style.config["engine"] == music.name
    assert len(style.config["timesteps"]) == 8  # turbo: upstream's 8-step shift-3 schedule
    assert trained["stages"][0] == "encoding" and "training" in trained["stages"] and trained["stages"][-1] == "saving"


def test_training_leaves_the_engine_exactly_as_before(trained):
    music = trained["music"]
    assert lora_layers(music) == [] and not getattr(music.pipe.transformer, "peft_config", None)
    assert {n: p.requires_grad for n, p in music.pipe.transformer.named_parameters()} == trained["grads"]
    after = music.render([request(5)])[0].samples
    assert np.array_equal(after, trained["before"])


def test_style_changes_the_song_and_no_style_restores_it_exactly(trained):
    music, ref = trained["music"], trained["a"]
    styled = music.render([request(5, style=ref)])[0].samples
    assert not np.allclose(styled, trained["before"], atol=1e-4)
    assert music.active_style is None  # nothing stays active after the call
    plain = music.render([request(5)])[0].samples
    assert np.array_equal(plain, trained["before"])
    half = music.render([request(5, style=StyleRef(**{**ref.__dict__, "weight": 0.5}))])[0].samples
    assert not np.allclose(half, styled, atol=1e-5) and not np.allclose(half, plain, atol=1e-5)


def test_adapter_file_loads_into_a_fresh_pipeline_like_the_engine_applies_it(trained):
    """The file is what diffusers' `load_lora_weights` takes: a fresh pipeline with the adapter
    set active renders what the engine renders with the style."""
    from diffusers import AceStepPipeline

    music, ref = trained["music"], trained["a"]
    styled = music.render([request(6, style=ref)])[0].samples
    pipe = AceStepPipeline.from_pretrained(str(music.path), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(ref.path.parent), weight_name=ref.path.name, adapter_name="x")
    pipe.set_adapters(["x"], [1.0])
    fresh = AceStepMusic(pipeline=pipe, model_id=music.name, device="cpu")
    out = fresh._call([request(6)], None, 0, 8)[0].samples
    assert np.array_equal(out, styled)


def test_two_styles_back_to_back_do_not_leak_and_loads_are_counted(trained):
    music, a, b = trained["music"], trained["a"], trained["b"]
    alone_a = music.render([request(1, style=a)])[0].samples
    alone_b = music.render([request(2, style=b)])[0].samples
    loads, hits = music.style_stats["loads"], music.style_stats["hits"]
    mixed = music.render([request(2, style=b), request(3), request(1, style=a)])
    assert np.array_equal(mixed[0].samples, alone_b) and np.array_equal(mixed[2].samples, alone_a)
    assert np.array_equal(mixed[1].samples, music.render([request(3)])[0].samples)
    assert not np.allclose(alone_a, music.render([request(1)])[0].samples, atol=1e-4)
    assert music.style_stats["loads"] == loads and music.style_stats["hits"] == hits + 2  # resident: hits
    assert sorted(music._adapters.values()) == sorted([a.hash[:16], b.hash[:16]])
    # one resident adapter: each switch evicts the other and loads again, with the same result
    music.styles_resident = 1
    try:
        assert np.array_equal(music.render([request(2, style=b)])[0].samples, alone_b)
        assert np.array_equal(music.render([request(1, style=a)])[0].samples, alone_a)
        assert list(music._adapters.values()) == [a.hash[:16]]
        assert music.style_stats["loads"] == loads + 1 and music.style_stats["evictions"] >= 1
    finally:
        music.styles_resident = 4


def test_another_engines_style_is_refused(trained, tmp_path):
    music, a = trained["music"], trained["a"]
    foreign = StyleRef(id="s1", hash=a.hash, path=a.path, engine="offline-music")
    with pytest.raises(StyleError, match="trained on the offline-music engine") as info:
        music.render([request(1, style=foreign)])
    assert isinstance(info.value, ValueError) and isinstance(info.value, EngineError)
    offline = tmp_path / "adapter.json"
    offline.write_text('{"bias": [0.1, 0.2]}')
    with pytest.raises(StyleError, match="not a LoRA adapter of the ACE-Step engine"):
        music.render([request(1, style=StyleRef(id="s2", hash="0" * 64, path=offline))])
    from safetensors.torch import load

    wrong = {k.removeprefix("transformer.").replace("layers.0.", "layers.9."): v for k, v in load(a.path.read_bytes()).items()}
    ref = save(tmp_path, adapter_bytes(wrong, {"r": 4, "lora_alpha": 8, "target_modules": ["to_q"]}), "s3", "")
    with pytest.raises(StyleError, match="does not fit this checkpoint's DiT"):
        music.render([request(1, style=ref)])
    missing = StyleRef(id="s4", hash="1" * 64, path=tmp_path / "gone.safetensors", engine=music.name)
    with pytest.raises(StyleError, match="missing"):
        music.render([request(1, style=missing)])
    assert np.array_equal(music.render([request(5)])[0].samples, trained["before"])


def test_cancelled_training_stops_and_leaves_the_engine_as_it_was(trained):
    music = trained["music"]
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > 4  # after the two songs are encoded and two steps ran

    with pytest.raises(Cancelled):
        music.train_style(samples(330.0), SETTINGS, should_stop=should_stop)
    assert lora_layers(music) == []
    assert np.array_equal(music.render([request(5)])[0].samples, trained["before"])
