"""Checkpoint profiles, task refusals, per-request language, the VAE decode plan and covers in
one call — on tiny random-weight checkpoints of the real classes (CPU, no hub).

The profiles are upstream ACE-Step 1.5's: turbo 8 steps without guidance, shift 3.0, tasks
text2music / repaint / cover; base 50 steps, guidance 7.0, shift 3.0 and every task; SFT as
base without extract (see docs/engines.md, "Checkpoint profiles")."""
from __future__ import annotations

import io
import os
from types import SimpleNamespace

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from jobs.engines.acestep import AceStepMusic, checkpoint_profile, decode_plan, parse_tiling  # noqa: E402
from jobs.engines.base import EngineError, MusicRequest  # noqa: E402
from tests.ml.tiny_models import (  # noqa: E402
    build_acestep,
    build_safety_checker,
    ensure_acestep_base,
    shared_models,
)

pytestmark = pytest.mark.ml


class Spy:
    """Wraps a pipeline: records each call's keyword arguments, then calls it; other attributes
    read through."""

    def __init__(self, wrapped):
        self.wrapped, self.calls = wrapped, []

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        return self.wrapped(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.wrapped, name)


def request(seed: int, duration: float = 1.0, **kw) -> MusicRequest:
    values = dict(tags="synthwave, female vocals", lyrics="[verse]\nCity lights\n[chorus]\nWe run",
                  duration=duration, seed=seed, bpm=110, key="A minor", time_signature="4/4")
    values.update(kw)
    return MusicRequest(**values)


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return shared_models()


@pytest.fixture(scope="module")
def turbo(tiny):
    """The shared tiny turbo checkpoint (with the audio tokenizer)."""
    return AceStepMusic(tiny.root / tiny.acestep, model_id="ACE-Step/acestep-v15-turbo-diffusers", device="cpu")


@pytest.fixture(scope="module")
def bare_turbo(tmp_path_factory):
    """A turbo checkpoint converted without the audio tokenizer (diffusers' converter may leave
    it out)."""
    path = build_acestep(tmp_path_factory.mktemp("bare") / "acestep-turbo", turbo=True)
    return AceStepMusic(path, model_id="ACE-Step/acestep-v15-turbo-bare", device="cpu")


@pytest.fixture(scope="module")
def base(tiny):
    return AceStepMusic(tiny.root / ensure_acestep_base(tiny), model_id="ACE-Step/acestep-v15-base-diffusers",
                        device="cpu")


# ------------------------------------------------------------------------------ profiles


def test_turbo_profile_is_read_from_the_checkpoint(turbo):
    p = turbo.profile
    assert (p["kind"], p["steps"], p["guidance"], p["shift"]) == ("turbo", 8, None, 3.0)
    assert p["kind_from"] == "transformer config model_version='turbo'"
    assert not p["uses_guidance"] and p["audio_tokenizer"]
    assert turbo.tasks == frozenset({"text2music", "repaint", "cover"})  # upstream's turbo tasks: no extract
    described = turbo.describe()
    assert described["kind"] == "turbo" and described["tasks"] == ["cover", "repaint", "text2music"]
    assert described["profile"]["steps"] == 8
    # a request's guidance is ignored on turbo weights (distilled in): variants still share one call
    assert turbo.guidance_for(request(1, guidance=7.5)) is None


def test_base_profile_and_its_variants_in_one_call(base, monkeypatch):
    p = base.profile
    assert (p["kind"], p["steps"], p["guidance"], p["shift"]) == ("base", 50, 7.0, 3.0)
    assert base.tasks == frozenset({"text2music", "repaint", "cover", "extract"}) and p["audio_tokenizer"]
    assert base.steps_for(request(1)) == 50 and base.guidance_for(request(1)) == 7.0
    spy = Spy(base.pipe)
    monkeypatch.setattr(base, "pipe", spy)
    before = base.calls
    # guidance None: the checkpoint's default (4 steps instead of 50 only to spare CPU time)
    out = base.render([request(1, steps=4), request(2, steps=4)])
    assert base.calls - before == 1 and len(spy.calls) == 1
    (call,) = spy.calls
    assert (call["num_inference_steps"], call["guidance_scale"], call["shift"]) == (4, 7.0, 3.0)
    assert len(call["generator"]) == 2 and len(call["prompt"]) == 2
    assert [(o.seed, o.steps, o.guidance) for o in out] == [(1, 4, 7.0), (2, 4, 7.0)]
    assert all(o.samples.shape == (48000, 2) for o in out)
    assert not np.allclose(out[0].samples, out[1].samples)


def test_settings_override_the_profile(tiny):
    music = AceStepMusic(tiny.root / tiny.acestep, device="cpu", steps=4, shift=2.0, guidance=5.0)
    assert (music.default_steps, music.shift, music.default_guidance) == (4, 2.0, None)  # no guidance on turbo
    assert music.profile["overrides"] == {"steps": 4, "shift": 2.0}


def test_sft_checkpoint(tmp_path):
    sft = AceStepMusic(build_acestep(tmp_path / "sft", turbo=False, model_version="sft"), device="cpu")
    assert (sft.kind, sft.default_steps, sft.default_guidance, sft.shift) == ("sft", 50, 7.0, 3.0)
    assert sft.tasks == frozenset({"text2music", "repaint"})  # SFT: no extract (and no tokenizer here)
    with pytest.raises(EngineError, match="cannot extract stems"):
        sft.render([request(1, task="extract", source_audio=np.zeros((48000, 2), np.float32), track="drums")])


def _pipe(model_version=None, is_turbo=False):
    """What `checkpoint_profile` reads of a pipeline: the transformer and scheduler configs."""
    return SimpleNamespace(is_turbo=is_turbo, audio_tokenizer=None, audio_token_detokenizer=None,
                           transformer=SimpleNamespace(config={"model_version": model_version, "is_turbo": is_turbo}),
                           scheduler=SimpleNamespace(config={"shift": 1.0}))


def test_profiles_of_checkpoints_that_say_less():
    # upstream publishes turbo weights per shift (acestep-v15-turbo-shift1 / -shift3)
    assert checkpoint_profile(_pipe("turbo", True), ("ACE-Step/acestep-v15-turbo-shift1",))["shift"] == 1.0
    assert checkpoint_profile(_pipe(None, True), ("acestep-v15-turbo",))["shift"] == 3.0
    # the config wins over the name
    assert checkpoint_profile(_pipe("sft"), ("someone/acestep-turbo-sft",))["kind"] == "sft"
    # no model_version: is_turbo, then the name, then SFT (the smaller promise: no extract)
    assert checkpoint_profile(_pipe(None, False), ("ACE-Step/acestep-v15-base",))["kind"] == "base"
    unlabelled = checkpoint_profile(_pipe(None, False), ("my-finetune",))
    assert unlabelled["kind"] == "sft" and "extract" not in unlabelled["tasks"]
    assert "not stated" in unlabelled["kind_from"]


# ------------------------------------------------------------------------------ refusals


def test_extract_on_turbo_is_refused_with_a_clear_message(turbo, monkeypatch):
    spy = Spy(turbo.pipe)
    monkeypatch.setattr(turbo, "pipe", spy)
    src = np.zeros((48000, 2), np.float32)
    with pytest.raises(EngineError) as info:
        turbo.render([request(1, task="extract", source_audio=src, track="vocals")])
    message = str(info.value)
    assert "ACE-Step/acestep-v15-turbo-diffusers" in message and "turbo" in message
    assert "cannot extract stems" in message and "base checkpoints only" in message
    assert spy.calls == []  # refused before any pipeline call


def test_remix_without_an_audio_tokenizer_is_refused(bare_turbo, monkeypatch):
    assert bare_turbo.tasks == frozenset({"text2music", "repaint"}) and not bare_turbo.profile["audio_tokenizer"]
    spy = Spy(bare_turbo.pipe)
    monkeypatch.setattr(bare_turbo, "pipe", spy)
    src = np.zeros((48000, 2), np.float32)
    with pytest.raises(EngineError) as info:
        bare_turbo.render([request(1, task="cover", source_audio=src, strength=0.7)])
    assert "ACE-Step/acestep-v15-turbo-bare" in str(info.value)
    assert "cannot remix" in str(info.value) and "no audio tokenizer" in str(info.value)
    assert spy.calls == []  # no silent text2music-with-a-reference fallback


def test_remix_variants_share_one_call_and_keep_the_strength(base, monkeypatch):
    src = base.render([request(9, steps=2)])[0].samples
    spy = Spy(base.pipe)
    monkeypatch.setattr(base, "pipe", spy)
    out = base.render([request(1, steps=2, task="cover", source_audio=src, strength=0.7),
                       request(2, steps=2, task="cover", source_audio=src.copy(), strength=0.7)])
    (call,) = spy.calls
    assert call["task_type"] == "cover" and call["audio_cover_strength"] == 0.7
    assert "reference_audio" not in call and len(call["generator"]) == 2
    assert [o.samples.shape for o in out] == [src.shape, src.shape]


def test_the_engine_advertises_what_its_checkpoint_can_do(turbo, base, bare_turbo):
    from core.capabilities import can, engine_caps

    caps = engine_caps(SimpleNamespace(music=turbo, writer=None, cover=None))
    assert (caps["model"], caps["kind"], caps["tasks"]) == (
        "ACE-Step/acestep-v15-turbo-diffusers", "turbo", ["cover", "repaint", "text2music"])
    assert can(caps, "remix") and can(caps, "extend") and not can(caps, "stems")
    assert not can(engine_caps(SimpleNamespace(music=bare_turbo)), "remix")
    assert can(engine_caps(SimpleNamespace(music=base)), "stems")


# ------------------------------------------------------------------------------ language


def test_vocal_language_is_per_request(turbo, monkeypatch):
    spy = Spy(turbo.pipe)
    monkeypatch.setattr(turbo, "pipe", spy)
    turbo.render([request(1, steps=1, vocal_language="ja"), request(2, steps=1),
                  request(3, steps=1, vocal_language="FR", instrumental=True)])
    (call,) = spy.calls  # one call: the language is per item of the batch
    assert call["vocal_language"] == ["ja", "en", "unknown"]  # None: ACESTEP_LANGUAGE (en)
    with pytest.raises(EngineError, match="cannot sing in 'xx'"):
        turbo.render([request(4, vocal_language="xx")])


# ------------------------------------------------------------------------------ VAE decode


def test_decode_plan():
    common = dict(frame_bytes=1.0, fixed_bytes=10.0, tile_frames=512, tile_after_frames=6000)
    # short songs, or room for the whole batch: the exact, batched decode
    assert decode_plan("auto", 4, 400, free_bytes=0, **common)[:2] == (False, True)
    assert decode_plan("auto", 4, 1500, free_bytes=10 + 4 * 1500, **common)[:2] == (False, False)
    # one variant fits, the batch does not: variants one by one, no tiling
    assert decode_plan("auto", 4, 1500, free_bytes=10 + 2 * 1500, **common)[:2] == (False, True)
    # one variant does not fit: tiles; the batch of tiles fits or not
    assert decode_plan("auto", 2, 1500, free_bytes=10 + 1400, **common)[:2] == (True, False)
    assert decode_plan("auto", 4, 1500, free_bytes=10 + 600, **common)[:2] == (True, True)
    # past the threshold: tiled whatever the memory; unknown memory: no bound
    assert decode_plan("auto", 2, 6001, free_bytes=None, **common)[:2] == (True, False)
    assert decode_plan("auto", 2, 5000, free_bytes=None, **common)[:2] == (False, False)
    # forced modes
    assert decode_plan("on", 2, 1500, free_bytes=None, **common)[:2] == (True, False)
    assert decode_plan("off", 2, 9000, free_bytes=10 + 9000, **common)[:2] == (False, True)
    assert parse_tiling(True) == "on" and parse_tiling("false") == "off" and parse_tiling(None) == "auto"
    with pytest.raises(ValueError, match="ACESTEP_VAE_TILING"):
        parse_tiling("sometimes")


def test_settings_defaults_follow_the_checkpoint():
    from config import ConfigError, TestConfig

    settings = TestConfig()
    assert (settings.ACESTEP_VAE_TILING, settings.ACESTEP_SHIFT, settings.ACESTEP_STEPS) == ("auto", None, None)
    assert TestConfig(ACESTEP_VAE_TILING="true").ACESTEP_VAE_TILING == "on"  # the old boolean spelling
    assert TestConfig(COVER_SAFETY_CHECKER="off").COVER_SAFETY_CHECKER is None
    with pytest.raises(ConfigError, match="ACESTEP_VAE_TILING"):
        TestConfig(ACESTEP_VAE_TILING="sometimes")


def test_engine_tiles_only_when_the_decode_would_not_fit(turbo, monkeypatch):
    vae = turbo.pipe.vae
    monkeypatch.setattr(vae, "tile_latent_min_length", 16)
    monkeypatch.setattr(vae, "tile_latent_overlap", 2)
    tiled = []
    real_tiled = vae._tiled_decode
    monkeypatch.setattr(vae, "_tiled_decode", lambda z: tiled.append(z.shape) or real_tiled(z))
    frame_bytes, fixed = turbo.decode_costs()
    # plenty of memory: a 2 s song (50 latent frames) decodes whole, both variants at once
    monkeypatch.setattr(turbo, "_free_bytes", lambda: fixed + 10 * 50 * frame_bytes)
    turbo.render([request(1, duration=2.0, steps=1), request(2, duration=2.0, steps=1)])
    assert tiled == [] and not vae.use_tiling and not vae.use_slicing
    # room for one tile only: tiled, and the variants one after another
    monkeypatch.setattr(turbo, "_free_bytes", lambda: fixed + 1.5 * 16 * frame_bytes)
    out = turbo.render([request(1, duration=2.0, steps=1), request(2, duration=2.0, steps=1)])
    assert turbo.last_decode.tiling and turbo.last_decode.slicing
    assert [tuple(shape) for shape in tiled] == [(1, 8, 50)] * 2  # each variant alone, in tiles
    assert [o.samples.shape for o in out] == [(96000, 2), (96000, 2)]


# ------------------------------------------------------------------------------ covers


@pytest.fixture(scope="module")
def cover(tiny, tmp_path_factory):
    from jobs.engines.sdxl import SdxlCover

    checker = build_safety_checker(tmp_path_factory.mktemp("checker") / "safety", flag_everything=False)
    # 128 px instead of 512 only to spare CPU time (the fallback covers stay 512 px)
    return SdxlCover(tiny.root / tiny.cover, model_id=tiny.cover, device="cpu", steps=1, size=128,
                     safety_checker=checker)


def test_paint_many_paints_every_variant_in_one_call(cover, monkeypatch):
    from PIL import Image

    spy = Spy(cover.pipe)
    monkeypatch.setattr(cover, "pipe", spy)
    fallbacks = cover.fallbacks
    pngs = cover.paint_many("Neon Rain", "synthwave, dark", [1, 2, 3])
    (call,) = spy.calls
    assert call["num_images_per_prompt"] == 3 and len(call["generator"]) == 3
    images = [Image.open(io.BytesIO(png)) for png in pngs]
    assert [(im.format, im.size) for im in images] == [("PNG", (128, 128))] * 3
    assert len(set(pngs)) == 3 and cover.fallbacks == fallbacks  # painted, seeded apart
    assert cover.paint("Neon Rain", "synthwave, dark", 2) == cover.paint_many("Neon Rain", "synthwave, dark", [2])[0]
    assert cover.filtered and cover.describe()["filtered"]


def test_a_flagged_cover_is_replaced_by_the_offline_painters(cover, tmp_path):
    from jobs.engines.offline_cover import OfflineCover

    offline = OfflineCover()
    title, tags, seeds = "Neon Rain", "synthwave, dark", [4, 5]
    kept = cover.paint_many(title, tags, seeds)
    assert all(png != offline.paint(title, tags, s) for png, s in zip(kept, seeds))
    checker, extractor = cover.safety_checker, cover.feature_extractor
    cover._load_safety_checker(build_safety_checker(tmp_path / "flagging", flag_everything=True))
    try:
        flagged = cover.flagged
        replaced = cover.paint_many(title, tags, seeds)
    finally:
        cover.safety_checker, cover.feature_extractor = checker, extractor
    assert replaced == [offline.paint(title, tags, s) for s in seeds]
    assert cover.flagged == flagged + 2


def test_covers_are_not_filtered_without_a_checker(tiny, tmp_path):
    from jobs.engines.sdxl import SdxlCover

    unfiltered = SdxlCover(tiny.root / tiny.cover, device="cpu", size=64, safety_checker=tmp_path / "absent")
    assert not unfiltered.filtered and unfiltered.describe()["safety_checker"] is None
