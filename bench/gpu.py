"""GPU benchmark of the real engines, with real-size architectures and random weights.

    python bench/gpu.py                 # on a CUDA machine: real-size models, random weights
    python bench/gpu.py --tiny          # the same code on tiny models on the CPU (CI)
    python bench/gpu.py --json out.json # also write the figures as JSON
    python bench/gpu.py --writer-url http://127.0.0.1:8000/v1   # and a served writer (vLLM, ...)

Random weights compute exactly what the real weights compute (same shapes, same kernels), so
no download is needed: the models are built from their published configs directly on the GPU
and wrapped in the same engine classes the worker uses. It prints:

- music: seconds per call and seconds per minute of audio for turbo 8 steps (no CFG) and
  27 / 50 / 60 steps with classifier-free guidance, at batch 1, 2 and 4;
- writer: prefill time and tokens per second in this process with a dynamic and a static KV
  cache, each without and with prompt-lookup decoding, side by side; with ``--writer-url``, the
  served writer's tokens per second too; and how many damaged answers need the writer's retry;
- cover: seconds per 512x512 image at 1 and 4 steps;
- peak VRAM with all three resident, and after a whole engine pass;
- one whole engine pass: writer (a full song's worth of tokens), 2 variants of a 60 s song,
  a cover per variant;
- styles (LoRA): training seconds per step and per minute of training audio, and a style's cost
  per generation (median render without and with an adapter active, and the adapter load);
- studio (``--no-studio`` skips): seconds per call of repaint (the middle half of a rendered
  song), cover/remix (``--cover-strength``, with ACE-Step's audio tokenizer unless
  ``--no-audio-tokenizer``) and extend (a repaint over a buffer half as long again, as
  `jobs.studio` builds it), and extract; a task the checkpoint cannot do is printed as
  "refused: <the engine's message>" (extract on turbo), never timed;
- stems (``--no-stems``): Demucs (htdemucs, 42M parameters) splitting ``--duration`` seconds of
  stereo: seconds, x-realtime, and the RMS by which the stems miss summing back to the mix;
- planner (``--no-planner``): the 5 Hz LM (Qwen3 at the 1.7B planner's sizes) planning a song
  of ``--duration`` seconds with 2 variants: metadata (CoT) tokens/s, audio codes tokens/s
  (5 per second per variant) and the whole plan's tokens/s.

Every figure is a median over ``--repeats``.

With ``--tiny`` the tiny models are built (or reused with ``--model-dir``) and loaded through
``jobs.engines.load_engines`` exactly as the worker loads real ones (the tiny HTDemucs as the
stems engine, and the tests' tiny 5 Hz LM through `Planner`); durations are shortened.
The figures of a ``--tiny`` run mean nothing; it exists so this script cannot rot.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

GiB = 1024**3

# ------------------------------------------------------------------------------------------
# Real-size configurations (from the published config.json files of each checkpoint)
# ------------------------------------------------------------------------------------------

ACESTEP_DIT = {
    # ACE-Step/acestep-v15-xl-turbo-diffusers: ~4.2B DiT (+0.6B condition encoder)
    "xl": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, encoder_hidden_size=2048),
    # the 2B turbo (acestep-v15-turbo): ~1.6B DiT (+0.6B condition encoder)
    "2b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=24, num_attention_heads=16,
               num_key_value_heads=8, head_dim=128),
}
ACESTEP_COMMON = dict(in_channels=192, audio_acoustic_hidden_dim=64, patch_size=2, rope_theta=1000000.0,
                      sliding_window=128)
ACESTEP_CONDITION = dict(hidden_size=2048, intermediate_size=6144, text_hidden_dim=1024, timbre_hidden_dim=64,
                         num_lyric_encoder_hidden_layers=8, num_timbre_encoder_hidden_layers=4,
                         num_attention_heads=16, num_key_value_heads=8, head_dim=128, rope_theta=1000000.0,
                         sliding_window=128)
ACESTEP_AUDIO_TOKENIZER = dict(hidden_size=2048, intermediate_size=6144, audio_acoustic_hidden_dim=64,
                               pool_window_size=5, num_attention_pooler_hidden_layers=2, num_attention_heads=16,
                               num_key_value_heads=8, head_dim=128, fsq_dim=2048, fsq_input_levels=[8, 8, 8, 5, 5, 5])
"""The audio tokenizer (and, without the fsq_* keys, the detokenizer) the cover task needs:
diffusers' ACE-Step 1.5 defaults, ~0.1B parameters each."""
QWEN3_EMBEDDING_06B = dict(vocab_size=151669, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                           num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                           max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=True)
OOBLECK_48K = dict(encoder_hidden_size=128, downsampling_ratios=[2, 4, 4, 6, 10], channel_multiples=[1, 2, 4, 8, 16],
                   decoder_channels=128, decoder_input_channels=64, audio_channels=2, sampling_rate=48000)
QWEN2_7B_INSTRUCT = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                         rope_theta=1000000.0, tie_word_embeddings=False, rms_norm_eps=1e-6)
SDXL_UNET = dict(sample_size=64, in_channels=4, out_channels=4,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
                 attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
CLIP_BIGG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                 num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
SDXL_VAE = dict(block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3,
                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                layers_per_block=2, latent_channels=4, sample_size=1024, scaling_factor=0.13025, force_upcast=True)

QWEN3_5HZ_LM_17B = dict(vocab_size=151669 + 64000 + 3, hidden_size=2048, intermediate_size=6144,
                        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                        max_position_embeddings=40960, rope_theta=1000000.0, tie_word_embeddings=True)
"""ACE-Step's 5 Hz LM 1.7B: Qwen3-1.7B's sizes, its vocabulary grown by the 64,000 audio codes
and the planner's few added tokens (the exact row count of the published checkpoint may differ
by padding; only the output projection's cost depends on it)."""
HTDEMUCS = dict(sources=["drums", "bass", "other", "vocals"], audio_channels=2, samplerate=44100, segment=7.8,
                channels=48, depth=4, dconv_mode=3, t_layers=5, bottom_channels=512)
"""Hybrid Transformer Demucs (htdemucs) as Demucs trains it (its `mmi` grid: depth 4, dconv mode 3,
5 transformer layers, a 512-channel bottom), 7.8 s segments: 42.0M parameters."""

LYRICS = "\n\n".join(
    [
        "[verse]\nCity lights are calling me tonight\nEvery shadow dancing in the light\n"
        "I can hear the engines hum below\nThere is nowhere else I need to go",
        "[pre-chorus]\nHold on, hold on\nThe night is young and so are we",
        "[chorus]\nWe run, we run, into the neon rain\nNothing left to lose and all to gain\n"
        "We run, we run, until the morning light\nTwo hearts racing through the night",
        "[verse]\nStatic on the radio again\nWhispers of a song we used to know\n"
        "Every mile is brighter than the last\nWe are leaving all the dark behind",
        "[bridge]\nAnd if the sky should fall\nWe will dance through it all",
        "[chorus]\nWe run, we run, into the neon rain\nNothing left to lose and all to gain",
        "[outro]\nInto the neon rain",
    ]
)
DESCRIPTION = "an upbeat synthwave song about driving through Tokyo at night"
TAGS = "synthwave, retro, dreamy, analog synths, gated drums, female vocals, 110 bpm, A minor"
WRITER_ANSWER = json.dumps(
    {
        "title": "Neon Rain",
        "tags": TAGS,
        "bpm": 110,
        "key": "A minor",
        "time_signature": "4/4",
        "lyrics": LYRICS,
        "categories": ["Synthwave", "Electronic"],
    }
)


# ------------------------------------------------------------------------------------------
# Building engines
# ------------------------------------------------------------------------------------------


def build_real_size(device: str, acestep: str = "xl", audio_tokenizer: bool = False) -> dict[str, Any]:
    """The three engines at real size with random weights, built on `device` (no download);
    `audio_tokenizer`: with ACE-Step's audio tokenizer and detokenizer (what the cover task
    needs), at diffusers' default (published) sizes."""
    import torch
    from diffusers import (
        AceStepPipeline,
        AutoencoderKL,
        AutoencoderOobleck,
        EulerAncestralDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
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

    from jobs.engines.acestep import AceStepMusic
    from jobs.engines.qwen import QwenWriter
    from jobs.engines.sdxl import SdxlCover
    from tests.ml.tiny_models import clip_tokenizer, train_tokenizer

    tokenizer = train_tokenizer()
    engines: dict[str, Any] = {}
    seconds: dict[str, float] = {}

    def make(dtype: torch.dtype, fn: Callable[[], Any]) -> Any:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device), torch.no_grad():
                return fn()
        finally:
            torch.set_default_dtype(previous)

    torch.manual_seed(0)
    started = time.monotonic()
    bf16 = torch.bfloat16
    transformer = make(bf16, lambda: AceStepTransformer1DModel(**ACESTEP_DIT[acestep], **ACESTEP_COMMON, is_turbo=True,
                                                               model_version="turbo"))
    condition = make(bf16, lambda: AceStepConditionEncoder(**ACESTEP_CONDITION))
    text_config = Qwen3Config(**QWEN3_EMBEDDING_06B, pad_token_id=tokenizer.pad_token_id)
    text_encoder = make(bf16, lambda: Qwen3Model(text_config))
    vae = make(bf16, lambda: AutoencoderOobleck(**OOBLECK_48K))
    extra: dict[str, Any] = {}
    if audio_tokenizer:
        from diffusers.pipelines.ace_step.modeling_ace_step import AceStepAudioTokenDetokenizer, AceStepAudioTokenizer

        detok = {k: v for k, v in ACESTEP_AUDIO_TOKENIZER.items() if not k.startswith("fsq_")}
        extra = dict(audio_tokenizer=make(bf16, lambda: AceStepAudioTokenizer(**ACESTEP_AUDIO_TOKENIZER)),
                     audio_token_detokenizer=make(bf16, lambda: AceStepAudioTokenDetokenizer(**detok)))
    pipe = AceStepPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                           condition_encoder=condition,
                           scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0), **extra)
    engines["music"] = AceStepMusic(pipeline=pipe, model_id=f"ace-step-1.5-{acestep}-turbo (random weights)",
                                    device=device)
    seconds["music"] = time.monotonic() - started

    started = time.monotonic()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    lm = make(bf16, lambda: Qwen2ForCausalLM(Qwen2Config(**QWEN2_7B_INSTRUCT, eos_token_id=eos,
                                                         pad_token_id=tokenizer.pad_token_id)))
    engines["writer"] = QwenWriter(model=lm, tokenizer=tokenizer, model_id="qwen2-7b-instruct (random weights)",
                                   device=device)
    seconds["writer"] = time.monotonic() - started

    started = time.monotonic()
    fp16 = torch.float16
    unet = make(fp16, lambda: UNet2DConditionModel(**SDXL_UNET))
    te1 = make(fp16, lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L)))
    te2 = make(fp16, lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG)))
    kl = make(fp16, lambda: AutoencoderKL(**SDXL_VAE))
    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                timestep_spacing="trailing", steps_offset=1)
    sdxl = StableDiffusionXLPipeline(vae=kl, text_encoder=te1, text_encoder_2=te2, tokenizer=clip_tokenizer(),
                                     tokenizer_2=clip_tokenizer(), unet=unet, scheduler=scheduler,
                                     add_watermarker=False)
    engines["cover"] = SdxlCover(pipeline=sdxl, model_id="sdxl-turbo (random weights)", device=device)
    seconds["cover"] = time.monotonic() - started
    engines["build_seconds"] = seconds
    return engines


def build_tiny(model_dir: str | None) -> tuple[dict[str, Any], Any]:
    """The tiny models, loaded through `load_engines` exactly as a worker loads real ones."""
    from jobs.engines import load_engines
    from tests.ml.tiny_models import build_all

    holder = None
    if model_dir is None:
        holder = tempfile.TemporaryDirectory(prefix="tunesmith-tiny-")
        model_dir = holder.name
    tiny = build_all(model_dir)
    loaded = load_engines(tiny.settings(ENGINE_DEVICE="cpu"))
    engines = {"music": loaded.music, "writer": loaded.writer, "cover": loaded.cover, "stems": loaded.stems,
               "model_dir": model_dir, "build_seconds": dict(loaded.load_seconds)}
    return engines, holder


def build_real_stems(device: str, holder: str) -> Any:
    """The stems engine on the htdemucs architecture with random weights (Demucs's own
    `HTDemucs`, no download), saved as a Demucs local repository under `holder` and loaded
    through `DemucsStems` exactly as the worker loads the real one."""
    from fractions import Fraction

    import torch
    from demucs.htdemucs import HTDemucs
    from demucs.states import get_state, save_with_checksum

    from jobs.engines.demucs_stems import DemucsStems

    kwargs = dict(HTDEMUCS)
    kwargs["segment"] = Fraction(kwargs["segment"]).limit_denominator(100)
    torch.manual_seed(0)
    model = HTDemucs(**kwargs)
    args, kw = model._init_args_kwargs
    path = Path(holder) / "htdemucs"
    path.mkdir(parents=True, exist_ok=True)
    save_with_checksum({"klass": HTDemucs, "args": args, "kwargs": kw, "state": get_state(model, None, half=True)},
                       path / "random.th")
    (path / "htdemucs.yaml").write_text("models: ['random']\n")
    return DemucsStems(path, model_id="htdemucs (random weights)", device=device)


def build_planner(device: str, holder: str, tiny: bool, caption_tokens: int) -> Any:
    """The 5 Hz LM planner: tiny (the tests' `build_planner`, saved under `holder`, reused when
    there), or Qwen3 at the 1.7B planner's sizes with random weights on `device` (the tiny
    tokenizer's 64,000 audio-code tokens; the embedding has the real vocabulary's rows)."""
    from jobs.engines.planner import Planner
    from tests.ml.tiny_models import build_planner as build_tiny_planner
    from tests.ml.tiny_models import planner_tokenizer

    if tiny:
        path = Path(holder) / "tiny" / "acestep-5Hz-lm-tiny"
        if not (path / "config.json").exists():
            build_tiny_planner(path)
        return Planner(path, model_id="acestep-5Hz-lm-tiny", device=device, caption_max_tokens=caption_tokens)
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = planner_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = Qwen3Config(**QWEN3_5HZ_LM_17B, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device), torch.no_grad():
            torch.manual_seed(0)
            model = Qwen3ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return Planner(model=model, tokenizer=tokenizer, model_id="acestep-5Hz-lm-1.7B (random weights)", device=device,
                   caption_max_tokens=caption_tokens)


# ------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------


class Clock:
    """Wall time around GPU work (synchronised) and peak memory."""

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.cuda = device.startswith("cuda") and torch.cuda.is_available()
        self.max_peak = 0.0  # the highest peak seen across resets (GiB)

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def time(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        self.sync()
        started = time.perf_counter()
        result = fn()
        self.sync()
        return time.perf_counter() - started, result

    def memory(self) -> dict[str, float]:
        if not self.cuda:
            return {}
        t = self.torch.cuda
        peak = t.max_memory_allocated() / GiB
        self.max_peak = max(self.max_peak, peak)
        return {"allocated_gib": t.memory_allocated() / GiB, "reserved_gib": t.memory_reserved() / GiB,
                "peak_gib": peak, "total_gib": t.get_device_properties(0).total_memory / GiB}

    def reset_peak(self) -> None:
        if self.cuda:
            self.memory()
            self.torch.cuda.reset_peak_memory_stats()


def bench_music(engines: dict[str, Any], clock: Clock, duration: float, batches: list[int],
                step_plan: list[tuple[int, float | None]]) -> list[dict[str, Any]]:
    """Seconds per call and per minute of audio for each (steps, guidance) and batch size."""
    from jobs.engines.base import MusicRequest

    music = engines["music"]
    turbo = music.is_turbo
    rows = []

    def requests(n: int, steps: int, guidance: float | None) -> list[MusicRequest]:
        return [MusicRequest(tags=TAGS, lyrics=LYRICS, duration=duration, seed=100 + i, steps=steps,
                             guidance=guidance, bpm=110, key="A minor", time_signature="4/4") for i in range(n)]

    clock.time(lambda: music.render(requests(1, 2, None)))  # warm-up
    for steps, guidance in step_plan:
        # A CFG run needs a base/SFT checkpoint: same architecture, so flip the variant flag
        # (the engine's and the pipeline's, which otherwise ignores guidance on turbo weights).
        music.is_turbo = music.pipe.is_turbo = turbo if guidance is None else False
        try:
            for batch in batches:
                clock.reset_peak()
                secs, out = clock.time(lambda: music.render(requests(batch, steps, guidance)))
                audio_minutes = batch * duration / 60.0
                row = {"steps": steps, "guidance": guidance, "batch": batch, "duration_s": duration,
                       "seconds": round(secs, 3), "seconds_per_audio_minute": round(secs / audio_minutes, 3),
                       "frames": int(out[0].samples.shape[0]), **{k: round(v, 2) for k, v in clock.memory().items()
                                                                   if k == "peak_gib"}}
                rows.append(row)
                cfg = f"CFG {guidance}" if guidance else "no CFG"
                print(f"music  {steps:>3} steps {cfg:<8} batch {batch}: {secs:8.2f} s per call, "
                      f"{row['seconds_per_audio_minute']:7.2f} s per minute of audio"
                      + (f", peak {row['peak_gib']:.1f} GiB" if "peak_gib" in row else ""), flush=True)
        finally:
            music.is_turbo = music.pipe.is_turbo = turbo
    return rows


WRITER_MODES = (("dynamic", 0), ("static", 0), ("dynamic", None), ("static", None))
"""(cache, prompt-lookup tokens) of the in-process writer runs; None = the --writer-lookup value."""


def bench_writer(engines: dict[str, Any], clock: Clock, new_tokens: int, lookup: int = 3,
                 writer_url: str | None = None, served_model: str | None = None) -> dict[str, Any]:
    """Prefill seconds and decode tokens per second (a fixed number of sampled new tokens) of the
    in-process writer with a dynamic and a static KV cache, each without and with prompt-lookup
    decoding; and, with `writer_url`, of the served writer (one chat completion over HTTP).

    The top-level keys are the dynamic cache's figures (as before); `modes` has every run.
    Prompt lookup only pays where the answer repeats what is already there (a chorus): with
    random weights it proposes little that is accepted, so its figure here is a floor.
    """
    from jobs.engines.base import WriteRequest

    writer = engines["writer"]
    messages = writer.messages(WriteRequest(mode="description", description=DESCRIPTION))
    ids, mask = writer.encode(messages)
    saved = (writer.cache, writer.prompt_lookup, writer.compiled)
    cuda = writer.device.type == "cuda"

    def run(n: int) -> Any:
        return writer.generate_ids(ids, mask, max_new_tokens=n, min_new_tokens=n, temperature=0.7)

    modes: list[dict[str, Any]] = []
    try:
        for cache, plookup in WRITER_MODES:
            plookup = max(0, lookup) if plookup is None else plookup
            if any(m["cache"] == cache and m["prompt_lookup"] == plookup for m in modes):
                continue  # --writer-lookup 0: the lookup runs are the plain ones
            writer.cache, writer.prompt_lookup, writer.compiled = cache, plookup, cache == "static" and cuda
            warm, _ = clock.time(lambda: run(4))  # warm-up (compiles the decoding step: static on CUDA)
            prefill, _ = clock.time(lambda: run(1))
            total, out = clock.time(lambda: run(new_tokens))
            made = int(out.shape[1] - ids.shape[1])
            decode = max(total - prefill, 1e-9)
            label = f"{cache} cache" + (f" + prompt lookup {plookup}" if plookup else "")
            modes.append({"mode": label, "cache": cache, "prompt_lookup": plookup, "compiled": writer.compiled,
                          "prompt_tokens": int(ids.shape[1]), "new_tokens": made,
                          "warmup_seconds": round(warm, 3), "prefill_seconds": round(prefill, 3),
                          "seconds": round(total, 3), "tokens_per_second": round((made - 1) / decode, 1)})
    finally:
        writer.cache, writer.prompt_lookup, writer.compiled = saved
    width = max(len(m["mode"]) for m in modes)
    for m in modes:
        print(f"writer {m['mode']:<{width}}: {m['prompt_tokens']} prompt tokens, prefill {m['prefill_seconds']:.3f} s; "
              f"{m['new_tokens']} new tokens in {m['seconds']:.2f} s = {m['tokens_per_second']:.1f} tokens/s"
              + (" (compiled)" if m["compiled"] else ""), flush=True)
    row = {k: v for k, v in modes[0].items() if k not in ("mode", "cache", "prompt_lookup", "compiled", "warmup_seconds")}
    row["modes"] = modes
    if writer_url:
        row["served"] = bench_served_writer(writer_url, served_model or "", messages, new_tokens)
    side = [f"{m['mode']} {m['tokens_per_second']:.1f}" for m in modes]
    if row.get("served"):
        side.append(f"served {row['served']['tokens_per_second']:.1f}")
    print("writer tokens/s side by side: " + " | ".join(side), flush=True)
    row["answers"] = writer_answer_repairs()
    return row


def bench_served_writer(url: str, model: str, messages: list[dict[str, str]], new_tokens: int,
                        repeats: int = 3) -> dict[str, Any]:
    """Tokens per second of a served writer: completion tokens (as the server counts them) over
    the wall time of each chat completion, HTTP and prefill included (median of `repeats`)."""
    from jobs.engines.served_writer import ServedWriter

    served = ServedWriter(url, model=model, max_new_tokens=new_tokens, retries=0)
    try:
        served.generate(messages)  # warm-up
        rates, tokens, seconds = [], [], []
        for _ in range(repeats):
            served.last.new_tokens = 0
            started = time.perf_counter()
            served.generate(messages)
            elapsed = time.perf_counter() - started
            tokens.append(served.last.new_tokens)
            seconds.append(elapsed)
            rates.append(served.last.new_tokens / max(elapsed, 1e-9))
    finally:
        served.close()
    row = {"url": served.url, "model": model, "new_tokens": int(statistics.median(tokens)),
           "seconds": round(statistics.median(seconds), 3), "tokens_per_second": round(statistics.median(rates), 1)}
    print(f"writer served at {row['url']} ({model}): {row['new_tokens']} new tokens in {row['seconds']:.2f} s "
          f"= {row['tokens_per_second']:.1f} tokens/s (HTTP and prefill included)", flush=True)
    return row


def malformed_answers() -> dict[str, str]:
    """Damaged writer answers, the kinds a chat model writes (the same kinds the parser's tests
    use: tests/ml/test_engine_selection.py), made from one good answer."""
    good = json.loads(WRITER_ANSWER)
    text = json.dumps(good)
    near = dict(good, bpm="110 BPM", key="Am", time_signature=4, categories="synthwave, electronic")
    return {
        "chatter and a json fence": "Sure! Here is your song:\n```json\n" + json.dumps(good, indent=2) + "\n```\nEnjoy!",
        "a bare fence": "```\n" + text + "\n```",
        "chatter after, with braces": text + "\n\nI hope you like it. {not json}",
        "single quotes": "Here you go: " + text.replace('"', "'"),
        "a trailing comma": text[:-1] + ",}",
        "raw new lines in strings": text.replace("\\n", "\n"),
        "smart quotes": text.replace('"', "\u201c", 2),
        "wrapped in a list": "[" + text + "]",
        "Python literals": repr(dict(good, instrumental=False)),
        "unquoted keys": "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in good.items()) + "}",
        "near-miss values": json.dumps(near),
        "cut off in the lyrics": text[: text.index("[chorus]")],
        "cut off before the categories": text[: text.index('"categories"')],
        "a refusal": "I cannot help with that.",
        "empty": "",
        "an empty object": "{}",
        "only an opening brace": "{",
    }


def writer_answer_repairs() -> dict[str, Any]:
    """How many damaged answers the parser repairs in place (no retry) and how many need the
    writer's one retry (something missing or invalid after parsing)."""
    from jobs.engines.qwen import FIELDS, parse_answer, validate_answer

    retried = []
    corpus = malformed_answers()
    for name, text in corpus.items():
        _, problems = validate_answer(parse_answer(text), FIELDS)
        if problems:
            retried.append(name)
    n = len(corpus)
    row = {"answers": n, "repaired": n - len(retried), "retried": len(retried),
           "retry_rate": round(len(retried) / n, 3), "retried_kinds": retried}
    print(f"writer answers: {n} damaged answers, {row['repaired']} repaired in place, {row['retried']} need the retry "
          f"({100 * row['retry_rate']:.0f}%: {', '.join(retried)})", flush=True)
    return row


def bench_cover(engines: dict[str, Any], clock: Clock, repeats: int) -> list[dict[str, Any]]:
    """Seconds per cover at 1 and 4 steps (median of `repeats`)."""
    cover = engines["cover"]
    saved = cover.steps
    rows = []
    try:
        cover.steps = 1
        clock.time(lambda: cover.paint("Warm Up", TAGS, 0))
        for steps in (1, 4):
            cover.steps = steps
            times = [clock.time(lambda: cover.paint("Neon Rain", TAGS, i))[0] for i in range(repeats)]
            row = {"steps": steps, "size": cover.size, "seconds": round(statistics.median(times), 3)}
            rows.append(row)
            print(f"cover  {steps} step(s) {cover.size}x{cover.size}: {row['seconds']:.3f} s per image", flush=True)
    finally:
        cover.steps = saved
    return rows


def whole_pass(engines: dict[str, Any], clock: Clock, duration: float, writer_tokens: int) -> dict[str, Any]:
    """One generation's engine work: write (a full song's tokens), 2 variants, 2 covers."""
    from jobs.engines.base import MusicRequest, WriteRequest

    writer, music, cover = engines["writer"], engines["music"], engines["cover"]
    real_generate = writer.generate
    saved_tokens = writer.max_new_tokens

    def generate(messages: list[dict[str, str]], *, temperature: float | None = None) -> str:
        # Random weights never write valid JSON: spend the real compute of a full answer
        # (`writer_tokens` tokens), then hand back a valid one so the pass is one attempt.
        writer.max_new_tokens = writer_tokens
        real_generate(messages, temperature=temperature)
        return WRITER_ANSWER

    writer.generate = generate  # type: ignore[method-assign]
    timings: dict[str, float] = {}
    clock.reset_peak()
    try:
        started = time.perf_counter()
        t, spec = clock.time(lambda: writer.write(WriteRequest(mode="description", description=DESCRIPTION)))
        timings["write"] = t
        reqs = [MusicRequest(tags=spec.tags, lyrics=spec.lyrics, duration=duration, seed=7 + i, bpm=spec.bpm,
                             key=spec.key, time_signature=spec.time_signature) for i in range(2)]
        t, audios = clock.time(lambda: music.render(reqs))
        timings["render_2_variants"] = t
        t, _ = clock.time(lambda: [cover.paint(spec.title, spec.tags, r.seed) for r in reqs])
        timings["covers"] = t
        timings["total"] = time.perf_counter() - started
    finally:
        writer.generate = real_generate  # type: ignore[method-assign]
        writer.max_new_tokens = saved_tokens
    row = {k: round(v, 3) for k, v in timings.items()}
    row["writer_tokens"] = writer_tokens
    row["duration_s"] = duration
    row["frames"] = [int(a.samples.shape[0]) for a in audios]
    row.update({k: round(v, 2) for k, v in clock.memory().items()})
    print(f"whole pass ({duration:.0f} s song, lyrics, 2 variants, 2 covers): write {row['write']:.2f} s, "
          f"render {row['render_2_variants']:.2f} s, covers {row['covers']:.2f} s, total {row['total']:.2f} s"
          + (f"; peak {row['peak_gib']:.1f} GiB" if "peak_gib" in row else ""), flush=True)
    return row


def bench_styles(engines: dict[str, Any], clock: Clock, duration: float, train_steps: int, train_seconds: float,
                 repeats: int) -> dict[str, Any]:
    """Styles (LoRA): training seconds per step and per minute of training audio (two songs of
    `train_seconds`), and what a style costs a generation: the median render without and with
    an adapter active (`repeats` each), and the first render's adapter load."""
    import hashlib

    import numpy as np

    from jobs.engines.base import MusicRequest, StyleRef, TrainingSample

    music = engines["music"]
    if not getattr(music, "supports_styles", False):
        why = getattr(music, "styles_unavailable", None) or "the engine has no styles"
        print(f"styles skipped: {why}", flush=True)
        return {"skipped": why}
    sr = music.sample_rate
    t = np.arange(int(train_seconds * sr)) / sr
    songs = [np.stack([0.4 * np.sin(2 * np.pi * f * t)] * 2, axis=1).astype(np.float32) for f in (220.0, 330.0)]
    samples = [TrainingSample(audio=a, sample_rate=sr, caption=TAGS, lyrics=LYRICS, duration=train_seconds)
               for a in songs]
    settings = {"STYLE_TRAIN_STEPS": train_steps, "STYLE_LORA_RANK": 8, "STYLE_LORA_ALPHA": 16,
                "STYLE_LEARNING_RATE": 1e-4}
    clock.reset_peak()
    secs, style = clock.time(lambda: music.train_style(samples, settings))
    train_memory = clock.memory()
    holder = tempfile.TemporaryDirectory(prefix="tunesmith-bench-style-")
    try:
        digest = hashlib.sha256(style.adapter).hexdigest()
        path = Path(holder.name) / f"{digest}.safetensors"
        path.write_bytes(style.adapter)
        ref = StyleRef(id="bench", hash=digest, path=path, engine=music.name)

        def render(seed: int, with_style: bool) -> Any:
            return music.render([MusicRequest(tags=TAGS, lyrics=LYRICS, duration=duration, seed=seed, bpm=110,
                                              key="A minor", time_signature="4/4",
                                              style=ref if with_style else None)])

        render(0, False)  # warm-up after training
        first, _ = clock.time(lambda: render(0, True))  # includes loading the adapter
        plain = statistics.median(clock.time(lambda: render(i, False))[0] for i in range(repeats))
        styled = statistics.median(clock.time(lambda: render(i, True))[0] for i in range(repeats))
    finally:
        holder.cleanup()
    audio_minutes = sum(s.duration for s in samples) / 60.0
    row = {"train_steps": train_steps, "train_songs": len(samples), "train_song_s": train_seconds,
           "train_seconds": round(secs, 3), "seconds_per_step": round(secs / train_steps, 4),
           "train_seconds_per_audio_minute": round(secs / audio_minutes, 3),
           "adapter_bytes": len(style.adapter), "held_loss": style.report.get("held_loss"),
           "render_s": round(plain, 4), "render_with_style_s": round(styled, 4),
           "style_overhead_s": round(styled - plain, 4),
           "style_overhead_pct": round(100.0 * (styled - plain) / plain, 1) if plain else None,
           "first_styled_render_s": round(first, 4), "adapter_load_s": round(max(0.0, first - styled), 4),
           "duration_s": duration, **{k: round(v, 2) for k, v in train_memory.items() if k == "peak_gib"}}
    print(f"styles train {train_steps} steps on {len(samples)} x {train_seconds:.0f} s: {secs:.2f} s "
          f"({row['seconds_per_step']:.3f} s per step, {row['train_seconds_per_audio_minute']:.2f} s per minute "
          f"of audio, adapter {len(style.adapter) / 1024:.0f} KiB)"
          + (f", peak {row['peak_gib']:.1f} GiB" if "peak_gib" in row else ""), flush=True)
    print(f"styles render {duration:.0f} s: {plain:.3f} s without, {styled:.3f} s with a style "
          f"({row['style_overhead_pct']:+.1f}%), adapter load {row['adapter_load_s']:.3f} s", flush=True)
    return row


# ------------------------------------------------------------------------------------------
# Studio tasks, stems and the planner
# ------------------------------------------------------------------------------------------

STUDIO_TASKS = ("repaint", "cover", "extend", "extract")
"""The studio tasks timed on the music engine (`MusicRequest.task`): extend is a repaint over a
longer buffer, as `jobs.studio` builds it."""


def studio_requests(source: Any, sr: int, duration: float, strength: float) -> dict[str, Any]:
    """One request per studio task on `source` (a rendered song of `duration` seconds), built as
    `jobs.studio.run` builds them: repaint the middle half, a cover at `strength`, extend by half
    the song's length (the source up to its end, then a repaint of the added seconds), extract
    the vocals."""
    from jobs.audio import fit
    from jobs.engines.base import MusicRequest

    base = dict(tags=TAGS, lyrics=LYRICS, seed=11, bpm=110, key="A minor", time_signature="4/4")
    at = source.shape[0] / sr
    total = at + duration / 2
    return {
        "repaint": MusicRequest(duration=at, task="repaint", source_audio=source, repaint_start=duration / 4,
                                repaint_end=3 * duration / 4, **base),
        "cover": MusicRequest(duration=at, task="cover", source_audio=source, strength=strength, **base),
        "extend": MusicRequest(duration=total, task="repaint", source_audio=fit(source, int(round(total * sr))),
                               repaint_start=at, repaint_end=total, **base),
        "extract": MusicRequest(duration=at, task="extract", track="vocals", source_audio=source, **base),
    }


def bench_studio(engines: dict[str, Any], clock: Clock, duration: float, repeats: int,
                 strength: float = 0.5) -> dict[str, Any]:
    """Seconds per studio task (median of `repeats` renders) on a song of `duration` seconds
    rendered first. A task the loaded checkpoint cannot do is reported as refused with the
    engine's own message (EngineError), not timed."""
    from jobs.engines.base import EngineError, MusicRequest

    music = engines["music"]
    sr = int(music.sample_rate)
    (song,) = music.render([MusicRequest(tags=TAGS, lyrics=LYRICS, duration=duration, seed=3, bpm=110,
                                         key="A minor", time_signature="4/4")])
    requests = studio_requests(song.samples, sr, duration, strength)
    rows: dict[str, Any] = {"checkpoint": getattr(music, "model_id", music.name),
                            "kind": getattr(music, "kind", None), "tasks": sorted(getattr(music, "tasks", ()))}
    for name in STUDIO_TASKS:
        req = requests[name]
        try:
            clock.reset_peak()
            clock.time(lambda: music.render([req]))  # warm-up (and the refusal, if any)
            times, out = [], None
            for _ in range(repeats):
                secs, out = clock.time(lambda: music.render([req]))
                times.append(secs)
        except EngineError as exc:
            rows[name] = {"refused": str(exc)}
            print(f"studio {name:<8}: refused: {exc}", flush=True)
            continue
        secs = statistics.median(times)
        audio_s = req.source_audio.shape[0] / sr
        row = {"seconds": round(secs, 3), "audio_s": round(audio_s, 3),
               "seconds_per_audio_minute": round(secs / (audio_s / 60.0), 3), "frames": int(out[0].samples.shape[0]),
               **({"strength": strength} if name == "cover" else {}),
               **({"section_s": [round(req.repaint_start, 3), round(req.repaint_end, 3)]} if req.task == "repaint"
                  else {}),
               **{k: round(v, 2) for k, v in clock.memory().items() if k == "peak_gib"}}
        rows[name] = row
        if name == "repaint":
            what = f"repaint {req.repaint_start:.1f}-{req.repaint_end:.1f} s of {duration:.0f} s"
        elif name == "extend":
            what = f"extend {duration:.0f} s to {audio_s:.0f} s"
        elif name == "cover":
            what = f"cover at strength {strength} of {duration:.0f} s"
        else:
            what = f"extract {req.track} of {duration:.0f} s"
        print(f"studio {name:<8}: {secs:.3f} s per call ({what}), {row['seconds_per_audio_minute']:.2f} s per "
              f"minute of audio" + (f", peak {row['peak_gib']:.1f} GiB" if "peak_gib" in row else ""), flush=True)
    return rows


def test_mix(seconds: float, sr: int) -> Any:
    """A stereo mix to split: a bass line, a chord and hi-hat noise bursts (peak below 1)."""
    import numpy as np

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    bass = 0.3 * np.sin(2 * np.pi * 55 * t)
    chord = sum(0.1 * np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0))
    hats = rng.normal(0, 0.1, t.size) * (np.mod(t, 0.25) < 0.03)
    return np.stack([bass + chord + hats, bass + 0.8 * chord + hats], axis=1).astype(np.float32)


def bench_stems(stems: Any, clock: Clock, duration: float, repeats: int, sr: int = 48000) -> dict[str, Any]:
    """Seconds to split `duration` seconds of stereo audio at `sr` with the stems engine (median
    of `repeats`, after a warm-up), x-realtime, and how far the stems are from summing back to
    the mix (RMS of the difference)."""
    import numpy as np

    mix = test_mix(duration, sr)
    clock.time(lambda: stems.separate(mix[: max(1, min(mix.shape[0], sr))], sr))  # warm-up on a second
    clock.reset_peak()
    times, tracks = [], {}
    for _ in range(repeats):
        secs, tracks = clock.time(lambda: stems.separate(mix, sr))
        times.append(secs)
    secs = statistics.median(times)
    total = sum(t.astype(np.float64) for t in tracks.values())
    diff = float(np.sqrt(np.mean(np.square(total - mix))))
    mix_rms = float(np.sqrt(np.mean(np.square(mix, dtype=np.float64))))
    row = {"model": stems.name, "stems": list(tracks), "parameters_m": round(stems.parameters / 1e6, 2),
           "shifts": stems.shifts, "overlap": stems.overlap, "duration_s": duration, "seconds": round(secs, 3),
           "x_realtime": round(duration / secs, 2) if secs else None, "sum_rms_error": diff,
           "mix_rms": round(mix_rms, 4), **{k: round(v, 2) for k, v in clock.memory().items() if k == "peak_gib"}}
    print(f"stems  {stems.name} ({row['parameters_m']:.1f}M, {len(tracks)} stems): {duration:.0f} s of stereo in "
          f"{secs:.3f} s = {row['x_realtime']:.1f}x realtime; stems sum to the mix: RMS difference {diff:.2e} "
          f"(mix RMS {mix_rms:.3f})" + (f", peak {row['peak_gib']:.1f} GiB" if "peak_gib" in row else ""),
          flush=True)
    return row


def bench_planner(planner: Any, clock: Clock, duration: float, repeats: int, variants: int = 2) -> dict[str, Any]:
    """Seconds and tokens per second of the 5 Hz LM planner for a `duration`-second song with
    `variants` variants: phase 1 (the metadata CoT, bpm / key / time signature left to the LM)
    and phase 2 (5 audio codes per second per variant, batched). Median of `repeats` plans."""
    from jobs.engines.base import MusicRequest

    picks = {"rows": 0}
    real_pick = planner._pick

    def counting_pick(logits: Any, allowed: Any, generators: Any) -> Any:
        picks["rows"] += int(len(generators))  # one sampled token per row (variant)
        return real_pick(logits, allowed, generators)

    reqs = [MusicRequest(tags=TAGS, lyrics=LYRICS, duration=duration, seed=50 + i) for i in range(variants)]
    planner._pick = counting_pick  # type: ignore[method-assign]
    runs = []
    try:
        clock.time(lambda: planner.plan(reqs[:1]))  # warm-up
        for _ in range(repeats):
            picks["rows"] = 0
            secs, plan = clock.time(lambda: planner.plan(reqs))
            codes = sum(len(c) for c in plan.codes)
            runs.append({"seconds": secs, "cot_s": plan.seconds["cot"], "codes_s": plan.seconds["codes"],
                         "cot_tokens": picks["rows"] - codes, "codes": codes, "generated": list(plan.generated)})
    finally:
        planner._pick = real_pick  # type: ignore[method-assign]

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    cot_s, codes_s, total = med("cot_s"), med("codes_s"), med("seconds")
    cot_tokens, codes = int(med("cot_tokens")), int(med("codes"))
    row = {"model": planner.model_id, "variants": variants, "duration_s": duration, "seconds": round(total, 3),
           "cot_seconds": round(cot_s, 3), "cot_tokens": cot_tokens,
           "cot_tokens_per_second": round(cot_tokens / cot_s, 1) if cot_s else None,
           "codes_seconds": round(codes_s, 3), "codes": codes, "codes_per_variant": codes // variants,
           "codes_tokens_per_second": round(codes / codes_s, 1) if codes_s else None,
           "tokens_per_second": round((cot_tokens + codes) / total, 1) if total else None,
           "generated": runs[-1]["generated"], "caption_max_tokens": planner.caption_max_tokens,
           "parameters_m": round(sum(p.numel() for p in planner.model.parameters()) / 1e6, 1),
           **{k: round(v, 2) for k, v in clock.memory().items() if k == "peak_gib"}}
    print(f"planner {planner.model_id} ({row['parameters_m']:.0f}M): metadata {cot_tokens} tokens in {cot_s:.3f} s "
          f"= {row['cot_tokens_per_second']:.1f} tokens/s (LM chose {', '.join(row['generated']) or 'nothing'}); "
          f"codes {variants} x {codes // variants} in {codes_s:.3f} s = {row['codes_tokens_per_second']:.1f} tokens/s; "
          f"total {total:.3f} s = {row['tokens_per_second']:.1f} tokens/s"
          + (f", peak {row['peak_gib']:.1f} GiB" if "peak_gib" in row else ""), flush=True)
    return row


# ------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU (CI smoke run)")
    parser.add_argument("--model-dir", help="with --tiny: reuse (or build) the tiny models in this folder")
    parser.add_argument("--device", default=None, help="default: cuda (real size) or cpu (--tiny)")
    parser.add_argument("--acestep", choices=sorted(ACESTEP_DIT), default="xl", help="ACE-Step DiT size (real size)")
    parser.add_argument("--duration", type=float, default=None, help="seconds of audio per song (default 60; 2 tiny)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,2,4)")
    parser.add_argument("--steps", default=None,
                        help="comma-separated steps:guidance pairs, guidance 0 = none (default 8:0,27:7,50:7,60:7)")
    parser.add_argument("--writer-tokens", type=int, default=None, help="new tokens to time (default 256; 8 tiny)")
    parser.add_argument("--writer-lookup", type=int, default=3,
                        help="prompt-lookup tokens of the writer's lookup runs (0: skip them)")
    parser.add_argument("--writer-url", help="also time a served writer at this OpenAI-compatible URL "
                                             "(e.g. http://127.0.0.1:8000/v1)")
    parser.add_argument("--writer-served-model", default=None,
                        help="the model name the server knows (default WRITER_SERVED_MODEL or WRITER_MODEL)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="cover, style-render, studio, stems and planner repeats (median)")
    parser.add_argument("--style-steps", type=int, default=None,
                        help="style training steps to time (default 20; 2 tiny; 0: skip styles)")
    parser.add_argument("--style-seconds", type=float, default=None,
                        help="seconds of each of the two training songs (default 30; 2 tiny)")
    parser.add_argument("--no-studio", action="store_true", help="skip the studio tasks (repaint, cover, extend)")
    parser.add_argument("--cover-strength", type=float, default=0.5, help="the studio cover's strength (default 0.5)")
    parser.add_argument("--no-audio-tokenizer", action="store_true",
                        help="real size: build ACE-Step without its audio tokenizer (the cover task is then refused)")
    parser.add_argument("--no-stems", action="store_true", help="skip the Demucs stems")
    parser.add_argument("--no-planner", action="store_true", help="skip the 5 Hz LM planner")
    parser.add_argument("--planner-caption-tokens", type=int, default=None,
                        help="longest caption the planner writes (default 64; 8 tiny)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    device = args.device or ("cpu" if args.tiny else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here; run with --tiny for the CPU smoke run", file=sys.stderr)
        return 2
    duration = args.duration or (2.0 if args.tiny else 60.0)
    batches = [int(b) for b in (args.batches or "1,2,4").split(",") if b]
    plan_text = args.steps or "8:0,27:7,50:7,60:7"
    step_plan = [(int(s), (float(g) or None)) for s, g in (item.split(":") for item in plan_text.split(",") if item)]
    writer_tokens = args.writer_tokens or (8 if args.tiny else 256)

    clock = Clock(device)
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if clock.cuda else "cpu",
                               "tiny": args.tiny, "torch": torch.__version__}
    print(f"device: {results['device']}; torch {torch.__version__}; "
          f"{'tiny models' if args.tiny else 'real-size models, random weights (' + args.acestep + ' ACE-Step)'}",
          flush=True)
    holder = None
    if args.tiny:
        engines, holder = build_tiny(args.model_dir)
    else:
        engines = build_real_size(device, args.acestep, audio_tokenizer=not args.no_audio_tokenizer)
    try:
        results["build_seconds"] = {k: round(v, 2) for k, v in engines["build_seconds"].items()}
        results["resident"] = clock.memory()
        if results["resident"]:
            m = results["resident"]
            print(f"all three resident: {m['allocated_gib']:.1f} GiB allocated, {m['reserved_gib']:.1f} GiB reserved "
                  f"of {m['total_gib']:.1f} GiB", flush=True)
        results["music"] = bench_music(engines, clock, duration, batches, step_plan)
        served_model = args.writer_served_model or os.environ.get("WRITER_SERVED_MODEL") or \
            os.environ.get("WRITER_MODEL") or "Qwen/Qwen2-7B-Instruct"
        results["writer"] = bench_writer(engines, clock, writer_tokens, lookup=args.writer_lookup,
                                         writer_url=args.writer_url, served_model=served_model)
        results["cover"] = bench_cover(engines, clock, max(1, args.repeats))
        results["whole_pass"] = whole_pass(engines, clock, duration, 800 if not args.tiny else writer_tokens)
        style_steps = args.style_steps if args.style_steps is not None else (2 if args.tiny else 20)
        if style_steps > 0:
            results["styles"] = bench_styles(engines, clock, duration, style_steps,
                                             args.style_seconds or (2.0 if args.tiny else 30.0), max(1, args.repeats))
        repeats = max(1, args.repeats)
        if not args.no_studio:
            results["studio"] = bench_studio(engines, clock, duration, repeats, strength=args.cover_strength)
        if not args.no_stems or not args.no_planner:
            scratch = tempfile.TemporaryDirectory(prefix="tunesmith-bench-")
            try:
                if not args.no_stems:
                    stems = engines.get("stems") if args.tiny else build_real_stems(device, scratch.name)
                    if stems is None:
                        print("stems skipped: no stems engine loaded", flush=True)
                        results["stems"] = {"skipped": "no stems engine loaded"}
                    else:
                        results["stems"] = bench_stems(stems, clock, duration, repeats)
                    if not args.tiny:
                        del stems
                if not args.no_planner:
                    caption_tokens = args.planner_caption_tokens or (8 if args.tiny else 64)
                    planner = build_planner(device, engines["model_dir"] if args.tiny else scratch.name, args.tiny,
                                            caption_tokens)
                    results["planner"] = bench_planner(planner, clock, duration, repeats)
                    del planner
            finally:
                scratch.cleanup()
        results["peak"] = clock.memory()
        if results["peak"]:
            results["peak"]["peak_overall_gib"] = clock.max_peak
            print(f"peak VRAM with all three resident (whole run): {clock.max_peak:.1f} GiB", flush=True)
    finally:
        if holder is not None:
            holder.cleanup()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print("bench done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
