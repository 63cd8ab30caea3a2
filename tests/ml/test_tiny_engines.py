"""The real engines' loading and calling code on tiny random-weight models (CPU, no hub).

The tiny models are instances of the real classes (AceStepPipeline with a DiT, condition
encoder, Oobleck VAE and Qwen3 text encoder; Qwen2ForCausalLM; an SDXL pipeline), saved with
`save_pretrained` and loaded through `jobs.engines.load_engines` with HF_HUB_OFFLINE=1.
"""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.ml.tiny_models import ensure_acestep_base, shared_models  # noqa: E402
from jobs.engines import LOAD_COUNTS, is_cuda_oom, load_engines  # noqa: E402
from jobs.engines.acestep import INSTRUMENTAL_LYRICS, AceStepMusic  # noqa: E402
from jobs.engines.base import MusicRequest, SongSpec, WriteRequest  # noqa: E402
from jobs.engines.text import normalise_lyrics  # noqa: E402

pytestmark = pytest.mark.ml

LATENT_FRAME = 48000 // 25  # samples per latent frame of the 48 kHz / 25 Hz geometry


@pytest.fixture(scope="session")
def tiny():
    """The tiny models, built once per test process."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return shared_models()


@pytest.fixture(scope="session")
def engines(tiny):
    """All three real engines on the tiny models, loaded once like a worker loads them."""
    before = dict(LOAD_COUNTS)
    loaded = load_engines(tiny.settings())
    loaded.counted = {r: LOAD_COUNTS[r] - before.get(r, 0) for r in ("music", "writer", "cover")}
    return loaded


def request(seed: int, duration: float = 2.0, **kw) -> MusicRequest:
    values = dict(tags="synthwave, retro, female vocals", lyrics="[verse]\nCity lights\nNeon rain\n[chorus]\nWe run",
                  duration=duration, seed=seed, bpm=110, key="A minor", time_signature="4/4")
    values.update(kw)
    return MusicRequest(**values)


class Spy:
    """Stands in for a pipeline or a method: records each call's keyword arguments, then calls
    `replace` (if given) or the wrapped object; other attributes read through."""

    def __init__(self, wrapped, replace=None):
        self.wrapped, self.replace, self.calls = wrapped, replace, []

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        return (self.replace or self.wrapped)(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.wrapped, name)


# ------------------------------------------------------------------------------ loading


def test_load_engines_real_on_tiny_models(engines, tiny):
    assert engines.offline_roles == []
    assert engines.music.model_id == tiny.acestep and engines.music.name == tiny.acestep
    assert engines.writer.name == tiny.writer and engines.cover.name == tiny.cover
    assert engines.counted == {"music": 1, "writer": 1, "cover": 1}
    assert all(r.startswith("ENGINE=real") for r in engines.reasons.values())
    line = engines.describe()
    assert f"music={tiny.acestep} (real" in line and "writer=" in line and "cover=" in line
    # float32 on the CPU, turbo defaults read from the checkpoint
    assert engines.music.dtype == torch.float32 and engines.music.is_turbo
    assert engines.music.default_steps == 8 and engines.music.default_guidance is None
    assert engines.music.sample_rate == 48000


def test_auto_mode_uses_offline_without_cuda(tiny):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: auto would pick the real engines")
    loaded = load_engines(tiny.settings(ENGINE="auto"))
    assert loaded.offline_roles == ["music", "writer", "cover"]
    assert all("no CUDA" in r for r in loaded.reasons.values())


# ------------------------------------------------------------------------------ music


def test_two_variants_render_in_one_batched_call(engines, monkeypatch):
    music = engines.music
    spy = Spy(music.pipe)
    monkeypatch.setattr(music, "pipe", spy)
    progress: list[float] = []
    out = music.render([request(1), request(2)], progress=progress.append)
    assert len(spy.calls) == 1
    assert len(out) == 2
    for audio in out:
        assert audio.samples.dtype == np.float32 and audio.samples.ndim == 2 and audio.samples.shape[1] == 2
        assert abs(audio.samples.shape[0] - 2.0 * 48000) <= LATENT_FRAME
        assert audio.sample_rate == 48000 and audio.steps == 8 and audio.guidance is None
        assert np.isfinite(audio.samples).all() and np.abs(audio.samples).max() <= 1.0
        assert np.abs(audio.samples).max() > 0.01  # not silence
    assert [a.seed for a in out] == [1, 2]
    assert not np.allclose(out[0].samples, out[1].samples)  # variants differ by seed
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(progress) >= 8


def test_rendering_is_reproducible_by_seed_and_honours_duration(engines):
    music = engines.music
    a = music.render([request(7, duration=1.3)])[0]
    b = music.render([request(7, duration=1.3)])[0]
    assert a.samples.shape[0] == round(1.3 * 48000)
    np.testing.assert_allclose(a.samples, b.samples, atol=1e-5)


def test_pipeline_receives_batched_prompts_generators_and_metadata(engines, monkeypatch):
    music = engines.music
    spy = Spy(music.pipe)
    monkeypatch.setattr(music, "pipe", spy)
    music.render([request(3), request(4, instrumental=True, lyrics="[verse]\nignored words")])
    (captured,) = spy.calls
    assert captured["prompt"] == ["synthwave, retro, female vocals", "synthwave, retro, female vocals, instrumental"]
    assert captured["lyrics"][0].startswith("[verse]") and captured["lyrics"][1] == INSTRUMENTAL_LYRICS
    assert captured["vocal_language"] == ["en", "unknown"]
    assert len(captured["generator"]) == 2
    assert captured["audio_duration"] == 2.0 and captured["num_inference_steps"] == 8
    assert captured["guidance_scale"] == 1.0 and captured["shift"] == 3.0
    assert (captured["bpm"], captured["keyscale"], captured["timesignature"]) == (110, "A minor", "4")
    assert captured["callback_on_step_end"] is not None


def test_long_songs_decode_in_time_tiles(engines, monkeypatch):
    music = engines.music
    vae = music.pipe.vae
    assert music.vae_tiling == "auto"  # the default: tiles only when needed (tests/ml/test_profiles.py)
    monkeypatch.setattr(music, "vae_tiling", "on")  # ACESTEP_VAE_TILING=on
    # shrink the tile so a short song takes the tiled path
    monkeypatch.setattr(vae, "tile_latent_min_length", 32)
    monkeypatch.setattr(vae, "tile_latent_overlap", 4)
    windows = []
    forward = vae.decoder.forward
    monkeypatch.setattr(vae.decoder, "forward", lambda z: windows.append(z.shape[-1]) or forward(z))
    out = music.render([request(9, duration=3.0)])[0]
    assert vae.use_tiling and windows == [28, 32, 31, 7]  # 75 latent frames in overlapping windows
    assert out.samples.shape == (3 * 48000, 2) and np.isfinite(out.samples).all()


def test_variants_that_cannot_share_a_call_are_grouped(engines):
    music = engines.music
    before = music.calls
    out = music.render([request(1, duration=1.0), request(2, duration=1.5), request(3, duration=1.0)])
    assert music.calls - before == 2  # one call per duration
    assert [o.samples.shape[0] for o in out] == [48000, 72000, 48000]
    assert [o.seed for o in out] == [1, 2, 3]


def test_base_checkpoint_runs_guidance_and_batches_its_variants(tiny):
    music = AceStepMusic(tiny.root / ensure_acestep_base(tiny), model_id="tiny/acestep-base", device="cpu", steps=3)
    assert not music.is_turbo and music.default_guidance == 7.0 and music.default_steps == 3
    out = music.render([request(1), request(2)])  # guidance None: the checkpoint's default, one call
    assert [o.guidance for o in out] == [7.0, 7.0] and [o.steps for o in out] == [3, 3] and music.calls == 1
    # a per-request guidance is an advanced choice: variants that differ in it cannot share a call
    out = music.render([request(3, guidance=5.0), request(4, guidance=9.0)])
    assert [o.guidance for o in out] == [5.0, 9.0] and music.calls == 3


def test_out_of_memory_propagates_for_the_job_to_fail_cleanly(engines, monkeypatch):
    music = engines.music

    def boom(**kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")

    monkeypatch.setattr(music, "pipe", Spy(music.pipe, boom))
    with pytest.raises(RuntimeError) as info:
        music.render([request(1)])
    assert is_cuda_oom(info.value)


# ------------------------------------------------------------------------------ writer


def test_writer_call_uses_mask_sampling_and_budget(engines, monkeypatch):
    writer = engines.writer
    spy = Spy(writer.model.generate)
    monkeypatch.setattr(writer.model, "generate", spy)
    spec = writer.write(WriteRequest(mode="description", description="a dreamy synthwave song about rain"))
    assert isinstance(spec, SongSpec)
    assert spy.calls, "the model was not called"
    call = spy.calls[0]
    assert "attention_mask" in call and call["attention_mask"].shape == call["input_ids"].shape
    assert call["max_new_tokens"] == writer.max_new_tokens
    assert call["do_sample"] is True and 0 < call["temperature"] <= 1 and 0 < call["top_p"] <= 1
    assert call["pad_token_id"] is not None


def test_random_writer_retries_once_then_falls_back(engines):
    writer = engines.writer
    fallbacks = writer.fallbacks
    spec = writer.write(WriteRequest(mode="description", description="a dreamy synthwave song about rain"))
    assert writer.last.attempts == 2  # random weights never write valid JSON
    assert writer.fallbacks == fallbacks + 1 and "title" in writer.last.fallback_fields
    assert spec.title and spec.tags and spec.lyrics and 1 <= len(spec.categories) <= 3
    assert spec.lyrics == normalise_lyrics(spec.lyrics)


def test_writer_keeps_what_the_person_wrote(engines):
    writer = engines.writer
    lyrics = "Verse 1:\nI wrote these words\nmyself tonight\nChorus:\nsing it loud"
    spec = writer.write(WriteRequest(mode="lyrics", prompt="Lo-fi, Piano, 72 BPM, D minor", lyrics=lyrics))
    assert spec.lyrics == normalise_lyrics(lyrics)
    assert spec.tags.startswith("lo-fi, piano") and spec.tags.endswith("72 bpm, d minor")
    assert (spec.bpm, spec.key) == (72, "D minor")
    instrumental = writer.write(WriteRequest(mode="description", description="ambient drones", instrumental=True))
    assert instrumental.lyrics == ""


def test_writer_retry_and_partial_answers(engines, monkeypatch):
    writer = engines.writer
    answers = iter([
        "Sorry, here it is: {'title': 'Glass City', 'tags': 'synthpop, bright'",  # cut off, few fields
        '```json\n{"bpm": "128 bpm", "key": "E minor", "time_signature": "4/4", "categories": ["synth pop", "80s"],'
        ' "lyrics": "[Verse]\\nGlass towers glow\\nin the morning\\n[Chorus]\\nShine on"}\n```',
    ])
    prompts: list = []

    def fake_generate(messages, *, temperature=None):
        prompts.append(messages)
        return next(answers)

    monkeypatch.setattr(writer, "generate", fake_generate)
    fallbacks = writer.fallbacks
    spec = writer.write(WriteRequest(mode="description", description="an 80s synth-pop song about a glass city"))
    assert len(prompts) == 2 and "could not be used" in prompts[1][-1]["content"]
    assert spec == SongSpec(
        title="Glass City",
        tags="synthpop, bright, 128 bpm, e minor",
        lyrics="[verse]\nGlass towers glow\nin the morning\n\n[chorus]\nShine on",
        categories=["Synth-Pop", "80s"],
        bpm=128,
        key="E minor",
        time_signature="4/4",
    )
    assert writer.fallbacks == fallbacks and writer.last.fallback_fields == []


def test_writer_falls_back_only_for_missing_fields(engines, monkeypatch):
    writer = engines.writer
    monkeypatch.setattr(writer, "generate", lambda messages, temperature=None: '{"title": "Only A Title"}')
    spec = writer.write(WriteRequest(mode="description", description="a country song about trucks"))
    assert spec.title == "Only A Title"
    assert set(writer.last.fallback_fields) == {"tags", "bpm", "key", "time_signature", "lyrics", "categories"}
    assert spec.tags and spec.lyrics and spec.categories


# ------------------------------------------------------------------------------ cover


def test_cover_is_a_512_png(engines):
    from PIL import Image

    cover = engines.cover
    fallbacks = cover.fallbacks
    png = cover.paint("Neon Rain", "synthwave, 110 bpm, A minor, female vocals", 5)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (512, 512)
    assert cover.fallbacks == fallbacks  # painted by the model, not the fallback
    again = cover.paint("Neon Rain", "synthwave, 110 bpm, A minor, female vocals", 5)
    assert again == png  # seeded


def test_cover_falls_back_on_blank_unsafe_or_failing(engines, monkeypatch):
    from PIL import Image

    cover = engines.cover
    real = cover.pipe

    def black(**kwargs):
        out = real(**kwargs)
        out.images = [Image.new("RGB", (512, 512))]
        return out

    start = cover.fallbacks
    monkeypatch.setattr(cover, "pipe", Spy(real, black))
    assert Image.open(io.BytesIO(cover.paint("Dark", "ambient", 1))).format == "PNG"
    assert cover.fallbacks == start + 1

    def broken(**kwargs):
        raise ValueError("scheduler exploded")

    monkeypatch.setattr(cover, "pipe", Spy(real, broken))
    assert cover.paint("Broken", "rock", 2).startswith(b"\x89PNG")
    assert cover.fallbacks == start + 2
    assert cover.paint("Naked Truth", "nsfw, rock", 3).startswith(b"\x89PNG")
    assert cover.fallbacks == start + 3

    def fatal(**kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(cover, "pipe", Spy(real, fatal))
    with pytest.raises(RuntimeError, match="illegal memory access"):
        cover.paint("Fatal", "rock", 4)
