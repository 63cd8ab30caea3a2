"""bench/gpu.py cannot rot: its --tiny run works on the CPU, its real-size builder builds and
runs (on shrunken configs), and its real-size configs have the published parameter counts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))

import gpu as bench  # noqa: E402  (bench/gpu.py)
from tests.ml.tiny_models import shared_models  # noqa: E402

pytestmark = pytest.mark.ml


def test_bench_tiny_runs_and_prints_every_figure(tmp_path):
    tiny = shared_models()
    out_json = tmp_path / "bench.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--model-dir", str(tiny.root),
         "--batches", "1,2", "--steps", "8:0,2:7", "--duration", "1", "--repeats", "1", "--json", str(out_json)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    assert "music    8 steps no CFG   batch 1" in text and "music    2 steps CFG 7.0  batch 2" in text
    assert "tokens/s" in text and "cover  1 step(s) 512x512" in text and "cover  4 step(s)" in text
    assert "whole pass" in text and "bench done" in text
    figures = json.loads(out_json.read_text())
    assert figures["tiny"] is True and len(figures["music"]) == 4
    assert all(row["frames"] == 48000 for row in figures["music"])
    assert figures["whole_pass"]["frames"] == [48000, 48000]
    assert figures["writer"]["new_tokens"] == 8
    # studio tasks on the tiny turbo checkpoint (it has the audio tokenizer: cover works; extract is
    # base-only and must be reported as refused with the engine's message, not timed)
    for task, frames in (("repaint", 48000), ("cover", 48000), ("extend", 72000)):
        assert f"studio {task:<8}: " in text
        row = figures["studio"][task]
        assert row["seconds"] > 0 and row["frames"] == frames, (task, row)
    assert figures["studio"]["cover"]["strength"] == 0.5
    assert figures["studio"]["extend"]["section_s"] == [1.0, 1.5]
    assert "studio extract : refused: " in text and "base checkpoints only" in figures["studio"]["extract"]["refused"]
    # Demucs stems: timed, and the stems sum back to the mix
    stems = figures["stems"]
    assert "stems  " in text and "x realtime; stems sum to the mix: RMS difference" in text
    assert stems["stems"] == ["vocals", "drums", "bass", "other"] and stems["duration_s"] == 1.0
    assert stems["seconds"] > 0 and stems["x_realtime"] > 0 and stems["sum_rms_error"] < 1e-5
    # the 5 Hz LM planner: metadata (the LM chose bpm, key, time signature) and 5 codes per second
    planner = figures["planner"]
    assert "planner acestep-5Hz-lm-tiny" in text and "tokens/s" in text.split("planner acestep-5Hz-lm-tiny")[1]
    assert planner["codes_per_variant"] == 5 and planner["codes"] == 10 and planner["variants"] == 2
    assert {"bpm", "keyscale", "timesignature"} <= set(planner["generated"]) and planner["cot_tokens"] > 0
    assert planner["tokens_per_second"] > 0 and planner["codes_tokens_per_second"] > 0


def test_bench_tiny_skips_the_new_sections_on_request(tmp_path):
    tiny = shared_models()
    out_json = tmp_path / "bench.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--model-dir", str(tiny.root),
         "--batches", "1", "--steps", "2:0", "--duration", "1", "--repeats", "1", "--style-steps", "0",
         "--writer-lookup", "0", "--no-studio", "--no-stems", "--no-planner", "--json", str(out_json)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(out_json.read_text())
    assert not {"studio", "stems", "planner"} & set(figures)
    assert "studio " not in proc.stdout and "stems  " not in proc.stdout and "planner " not in proc.stdout


def test_bench_refuses_real_size_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA is here")
    assert bench.main(["--steps", "8:0"]) == 2


def test_real_size_builder_runs_on_shrunken_configs(monkeypatch):
    """The code that builds the real-size engines on a GPU, run at toy sizes on the CPU."""
    monkeypatch.setitem(bench.ACESTEP_DIT, "xl", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                                      encoder_hidden_size=32))
    monkeypatch.setattr(bench, "ACESTEP_COMMON", dict(in_channels=24, audio_acoustic_hidden_dim=8, patch_size=2,
                                                      rope_theta=10000.0, sliding_window=16))
    monkeypatch.setattr(bench, "ACESTEP_CONDITION", dict(hidden_size=32, intermediate_size=64, text_hidden_dim=32,
                                                         timbre_hidden_dim=8, num_lyric_encoder_hidden_layers=1,
                                                         num_timbre_encoder_hidden_layers=1, num_attention_heads=4,
                                                         num_key_value_heads=2, head_dim=8, sliding_window=16))
    monkeypatch.setattr(bench, "QWEN3_EMBEDDING_06B", dict(vocab_size=600, hidden_size=32, intermediate_size=64,
                                                           num_hidden_layers=1, num_attention_heads=4,
                                                           num_key_value_heads=2, head_dim=8,
                                                           max_position_embeddings=4096))
    monkeypatch.setattr(bench, "OOBLECK_48K", dict(encoder_hidden_size=4, downsampling_ratios=[2, 4, 4, 6, 10],
                                                   channel_multiples=[1, 1, 1, 1, 1], decoder_channels=4,
                                                   decoder_input_channels=8, audio_channels=2, sampling_rate=48000))
    monkeypatch.setattr(bench, "QWEN2_7B_INSTRUCT", dict(vocab_size=600, hidden_size=32, intermediate_size=64,
                                                         num_hidden_layers=1, num_attention_heads=4,
                                                         num_key_value_heads=2, max_position_embeddings=4096))
    monkeypatch.setattr(bench, "SDXL_UNET", dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                                 attention_head_dim=(2, 4), use_linear_projection=True,
                                                 addition_embed_type="text_time", addition_time_embed_dim=8,
                                                 transformer_layers_per_block=(1, 1),
                                                 projection_class_embeddings_input_dim=80, cross_attention_dim=64,
                                                 norm_num_groups=8))
    clip = dict(vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                max_position_embeddings=77, hidden_act="gelu", projection_dim=32)
    monkeypatch.setattr(bench, "CLIP_L", clip)
    monkeypatch.setattr(bench, "CLIP_BIGG", clip)
    monkeypatch.setattr(bench, "SDXL_VAE", dict(block_out_channels=[8, 8, 16, 16], in_channels=3, out_channels=3,
                                                down_block_types=["DownEncoderBlock2D"] * 4,
                                                up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=1,
                                                latent_channels=4, norm_num_groups=8, sample_size=64))
    engines = bench.build_real_size("cpu", "xl")
    engines["cover"].size = 64
    clock = bench.Clock("cpu")
    rows = bench.bench_music(engines, clock, 1.0, [1], [(2, None), (2, 7.0)])
    assert [r["frames"] for r in rows] == [48000, 48000]
    row = bench.whole_pass(engines, clock, 1.0, 4)
    assert row["frames"] == [48000, 48000] and row["total"] > 0


def _params(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e9


def test_real_size_configs_match_the_published_model_sizes():
    from diffusers import AutoencoderKL, AutoencoderOobleck, UNet2DConditionModel
    from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel
    from diffusers.pipelines.ace_step import AceStepConditionEncoder
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3Model,
    )

    with torch.device("meta"):
        xl = _params(AceStepTransformer1DModel(**bench.ACESTEP_DIT["xl"], **bench.ACESTEP_COMMON))
        small = _params(AceStepTransformer1DModel(**bench.ACESTEP_DIT["2b"], **bench.ACESTEP_COMMON))
        condition = _params(AceStepConditionEncoder(**bench.ACESTEP_CONDITION))
        text = _params(Qwen3Model(Qwen3Config(**bench.QWEN3_EMBEDDING_06B)))
        vae = _params(AutoencoderOobleck(**bench.OOBLECK_48K))
        writer = _params(Qwen2ForCausalLM(Qwen2Config(**bench.QWEN2_7B_INSTRUCT)))
        unet = _params(UNet2DConditionModel(**bench.SDXL_UNET))
        clip_l = _params(CLIPTextModel(CLIPTextConfig(**bench.CLIP_L)))
        clip_g = _params(CLIPTextModelWithProjection(CLIPTextConfig(**bench.CLIP_BIGG)))
        kl = _params(AutoencoderKL(**bench.SDXL_VAE))
    assert 4.6 < xl + condition < 4.9  # "~4.7B" XL DiT (9.5 GB in bf16)
    assert 2.0 < small + condition < 2.3  # the "2B" turbo
    assert 0.59 < text < 0.60  # Qwen3-Embedding-0.6B
    assert 0.16 < vae < 0.18  # the 48 kHz Oobleck VAE (337 MB in 16-bit)
    assert 7.5 < writer < 7.7  # Qwen2-7B-Instruct: 7.6B
    assert 2.56 < unet < 2.58 and 0.12 < clip_l < 0.13 and 0.69 < clip_g < 0.70 and 0.08 < kl < 0.09  # SDXL
