"""ACE-Step's 5 Hz LM planner (`jobs.engines.planner`) on a tiny random-weight Qwen3 causal LM
with the planner's token layout (Qwen chat markers, ``<think>`` / ``</think>`` and the 64,000
``<|audio_code_N|>`` tokens), saved with `save_pretrained` and loaded through `Planner` (CPU, no
hub). Random weights decide nothing, so what is checked is what the constraints guarantee:
valid metadata, the given fields kept, codes in 0..63999, five per second — and that a render with
the planner hands the codes and metadata to the pipeline call."""
from __future__ import annotations

import os
import re

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from jobs.engines.acestep import AceStepMusic  # noqa: E402
from jobs.engines.base import MusicRequest  # noqa: E402
from jobs.engines.planner import (  # noqa: E402
    BPM_RANGE,
    KEYSCALES,
    LANGUAGES,
    MAX_AUDIO_CODE,
    TIME_SIGNATURES,
    Planner,
    cot_text,
)
from tests.ml.test_profiles import Spy  # noqa: E402  (one recording proxy for the pipeline)
from tests.ml.tiny_models import AUDIO_CODES, build_acestep, build_planner  # noqa: E402

pytestmark = pytest.mark.ml


def request(seed: int, duration: float = 1.0, **kw) -> MusicRequest:
    values = dict(tags="synthwave, female vocals", lyrics="[verse]\nCity lights\n[chorus]\nWe run",
                  duration=duration, seed=seed)
    values.update(kw)
    return MusicRequest(**values)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Token-by-token decoding of a toy model is many tiny ops: one CPU thread runs them fastest
    (two threads wait on each other, worse when another test run shares the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lm_path(tmp_path_factory):
    return build_planner(tmp_path_factory.mktemp("planner") / "acestep-5Hz-lm-tiny")


@pytest.fixture(scope="module")
def planner(lm_path):
    # a short caption only to spare CPU time (upstream allows 512 tokens)
    return Planner(lm_path, model_id="ACE-Step/acestep-5Hz-lm-tiny", device="cpu", caption_max_tokens=8)


def test_the_planner_loads_the_token_layout(planner):
    assert len(planner.code_of) == AUDIO_CODES
    assert sorted(planner.code_of.values()) == list(range(MAX_AUDIO_CODE + 1))
    assert planner.tokenizer.convert_tokens_to_ids("<think>") not in planner.code_of
    prompt = planner.cot_prompt("lofi", "[verse]\nhi")
    assert "# Instruction\nGenerate audio semantic tokens based on the given conditions:" in prompt
    assert "# Caption\nlofi\n\n# Lyric\n[verse]\nhi\n" in prompt
    assert "# Caption" not in planner.cot_prompt("lofi", "[verse]\nhi", negative=True)  # upstream's uncond prompt
    assert cot_text({"bpm": 120, "caption": "calm piano", "duration": 30, "keyscale": "C major",
                     "language": "en", "timesignature": "4"}) == (
        "<think>\nbpm: 120\ncaption: calm piano\nduration: 30\nkeyscale: C major\nlanguage: en\n"
        "timesignature: 4\n</think>")


def test_a_plan_has_valid_metadata_and_codes_in_range(planner):
    plan = planner.plan([request(1, duration=2.2), request(2, duration=2.2)])
    meta = plan.metadata
    assert BPM_RANGE[0] <= meta["bpm"] <= BPM_RANGE[1]
    assert meta["keyscale"] in KEYSCALES and meta["language"] in LANGUAGES
    assert meta["timesignature"] in TIME_SIGNATURES
    assert meta["duration"] == 2  # given (2.2 s) as whole seconds, as upstream injects it
    assert set(plan.generated) >= {"bpm", "keyscale", "language", "timesignature"}
    assert "duration" not in plan.generated
    assert [len(c) for c in plan.codes] == [11, 11]  # ceil(2.2 s * 5 codes per second)
    assert all(0 <= c <= MAX_AUDIO_CODE for row in plan.codes for c in row)
    assert plan.codes[0] != plan.codes[1]  # one seed per variant
    assert all(re.fullmatch(r"(<\|audio_code_\d+\|>){11}", s) for s in plan.audio_codes)
    assert plan.cot.startswith("<think>\nbpm: ") and plan.cot.endswith("</think>")


def test_given_fields_are_kept_and_all_given_skips_the_cot(planner):
    partial = planner.plan(request(3, bpm=96, key="F# minor"), language="ja")
    meta = partial.metadata
    assert (meta["bpm"], meta["keyscale"], meta["language"]) == (96, "F# minor", "ja")
    assert "bpm" not in partial.generated and "timesignature" in partial.generated
    full = planner.plan(request(4, bpm=120, key="A minor", time_signature="6/8"))
    assert full.generated == () and full.metadata["timesignature"] == "6"  # upstream has_all_metas
    assert [len(c) for c in full.codes] == [5]


def test_a_render_with_the_planner_passes_the_codes_to_the_pipeline(planner, tmp_path, monkeypatch):
    music = AceStepMusic(build_acestep(tmp_path / "acestep-turbo", audio_tokenizer=True), device="cpu",
                         model_id="ACE-Step/acestep-v15-turbo-diffusers", planner=planner)
    spy = Spy(music.pipe)
    monkeypatch.setattr(music, "pipe", spy)
    out = music.render([request(1, duration=1.0, steps=1), request(2, duration=1.0, steps=1)])
    (call,) = spy.calls  # the variants still share one call
    plan = music.last_plan
    assert call["audio_codes"] == plan.audio_codes and len(call["audio_codes"]) == 2
    assert (call["bpm"], call["keyscale"], call["timesignature"]) == (
        plan.metadata["bpm"], plan.metadata["keyscale"], plan.metadata["timesignature"])
    expected_language = plan.metadata["language"] if plan.metadata["language"] != "unknown" else "en"
    assert call["vocal_language"] == [expected_language] * 2
    assert call["prompt"] == [plan.metadata.get("caption") or "synthwave, female vocals"] * 2
    assert [o.samples.shape for o in out] == [(48000, 2), (48000, 2)]
    assert music.describe()["planner"]["model"] == "ACE-Step/acestep-5Hz-lm-tiny"


def test_the_setting(tmp_path):
    import subprocess
    import sys

    from config import TestConfig

    code = "import sys, jobs.engines.planner; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # importing it does not import torch
    from jobs.engines import build_planner as build

    assert TestConfig().ACESTEP_PLANNER is None  # off by default
    assert TestConfig(ACESTEP_PLANNER="acestep-5Hz-lm-1.7B").ACESTEP_PLANNER == "ACE-Step/acestep-5Hz-lm-1.7B"
    assert build(TestConfig(ACESTEP_PLANNER="off"), "cpu") is None
    with pytest.raises(FileNotFoundError, match="ACESTEP_PLANNER"):
        build(TestConfig(ACESTEP_PLANNER="ACE-Step/acestep-5Hz-lm-0.6B", MODEL_DIR=str(tmp_path)), "cpu")
