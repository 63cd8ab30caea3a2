"""Styles on the real music engine: LoRA adapters on ACE-Step 1.5's DiT, trained and applied in
the resident `AceStepPipeline` (peft, through diffusers' `AceStepLoraLoaderMixin`).

Training follows upstream ACE-Step 1.5's own LoRA trainer (github.com/ace-step/ACE-Step-1.5):

- what is trained: a peft LoRA on the DiT's attention projections, self- and cross-attention
  (`acestep/training/configs.py` `LoRAConfig`: q_proj / k_proj / v_proj / o_proj, r 8, alpha 16,
  dropout 0.1, bias none; diffusers names them to_q / to_k / to_v / to_out.0, see its
  `_convert_non_diffusers_ace_step_lora_to_diffusers`);
- the data: each song's audio through the pipeline's own Oobleck VAE (`latent_dist.sample()`,
  as `acestep/training/dataset_builder_modules/preprocess_vae.py` `vae_encode`), its caption and
  lyrics encoded the way the pipeline conditions a text2music call (`encode_prompt`, then the
  condition encoder; upstream's `preprocess_text.py` / `preprocess_lyrics.py` /
  `preprocess_encoder.py`), and the text2music context: the silence latent with an all-ones
  chunk mask (`preprocess_context.py` `build_context_latents`);
- the loss: flow matching (`acestep/training/trainer.py` `PreprocessedLoRAModule.training_step`):
  noise x1, data x0, ``x_t = t * x1 + (1 - t) * x0``, the DiT predicts the flow ``x1 - x0``
  (``timestep_r = t``), MSE; t drawn uniformly from the checkpoint's own discrete inference
  schedule (upstream: `sample_discrete_timestep` over TURBO_SHIFT3_TIMESTEPS, which is exactly
  the 8-step, shift-3 schedule a turbo checkpoint runs; a base/SFT checkpoint gets its own);
- the optimiser: AdamW on the LoRA parameters only (weight decay 0.01), gradients clipped to
  norm 1.0, a linear warm-up from 0.1x then cosine decay to 0.01x (`LoRATrainer._train_basic`,
  `TrainingConfig`); bf16 autocast on CUDA, float32 on the CPU.

One sample per optimiser step (upstream's batch size 1; no gradient accumulation here, so a step
is one song crop). Songs longer than `MAX_SAMPLE_SECONDS` are cropped at a random offset.

After training the LoRA layers are removed from the resident DiT (peft layers unwrapped, the
parameters' ``requires_grad`` and the module's train/eval mode restored), so the engine renders
exactly as before. Applying a style loads its adapter file with `load_lora_weights` under the
name ``hash[:16]``, keeps the last `styles_resident` adapters loaded (least recently used out)
and activates one per pipeline call with `set_adapters`; a call without a style runs with the
LoRA layers disabled, which is the base model bit for bit.
"""
from __future__ import annotations

import json
import logging
import math
import re
import tempfile
import time
from collections import OrderedDict
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jobs.audio import resample, stereo

from .base import Cancelled, EngineError, MusicRequest, StyleRef, TrainedStyle, TrainingSample

log = logging.getLogger(__name__)

TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
"""The DiT's attention projections (upstream's q_proj / k_proj / v_proj / o_proj)."""
LORA_DROPOUT = 0.1  # upstream LoRAConfig.dropout (training only; the saved adapter runs without)
WEIGHT_DECAY = 0.01  # upstream TrainingConfig.weight_decay
MAX_GRAD_NORM = 1.0  # upstream TrainingConfig.max_grad_norm
WARMUP_STEPS = 100  # upstream TrainingConfig.warmup_steps, capped at a tenth of the run as upstream does
MAX_SAMPLE_SECONDS = 30.0
"""Longest crop of one song that training sees (upstream preprocesses up to 240 s; 30 s bounds
the memory and time of a step on a 4B DiT while keeping whole phrases)."""
TRAIN_SEED = 0
EVAL_TIMESTEPS = 4  # timesteps of the fixed held-noise loss measured before and after training
EVAL_SAMPLES = 8
TRAIN_ADAPTER = "tunesmith_training"
ADAPTER_FILENAME = "adapter.safetensors"
_KEY = re.compile(r"^transformer\.(.+)\.lora_([AB])\.weight$")


class StyleError(EngineError, ValueError):
    """A style this engine cannot apply or train (another engine's adapter, a damaged file)."""


def lora_unavailable(pipe: Any) -> str | None:
    """Why LoRA adapters cannot be trained or loaded on this pipeline (None when they can)."""
    try:
        import peft  # noqa: F401
        from diffusers.utils import USE_PEFT_BACKEND
    except ImportError:
        return "styles need the peft library (the gpu extra), which is not installed on this worker"
    if not USE_PEFT_BACKEND:
        return "styles need diffusers' peft backend (peft and transformers versions it supports)"
    transformer = getattr(pipe, "transformer", None)
    for name in ("load_lora_weights", "set_adapters", "delete_adapters"):
        if not callable(getattr(pipe, name, None)):
            return f"this pipeline ({type(pipe).__name__}) cannot load LoRA adapters"
    if transformer is None or not callable(getattr(transformer, "add_adapter", None)):
        return "this checkpoint's DiT cannot take LoRA adapters"
    if not any(name.endswith(f".{t}") for name, _ in transformer.named_modules() for t in TARGET_MODULES):
        return "this checkpoint's DiT has no attention projections named as ACE-Step 1.5's"
    return None


def _setting(settings: Any, name: str, default: Any) -> Any:
    if settings is None:
        return default
    value = settings.get(name) if isinstance(settings, dict) else getattr(settings, name, None)
    return default if value is None else value


class StyleAdapters:
    """The styles half of `AceStepMusic` (a mixin: it uses the engine's `pipe`, `name`,
    `sample_rate`, `default_steps`, `shift` and `vocal_language`)."""

    supports_styles = True

    def _init_styles(self, resident: int = 4) -> None:
        why = lora_unavailable(self.pipe)
        self.styles_unavailable: str | None = why
        if why:
            self.supports_styles = False
            log.info("%s: styles off: %s", self.name, why)
        self.styles_resident = max(1, int(resident or 1))
        self._adapters: OrderedDict[str, str] = OrderedDict()  # style hash -> adapter name, LRU first
        self._adapter_ok: set[str] = set()  # hashes whose file was checked against this DiT
        self._lora_enabled = False
        self.active_style: tuple[str, float] | None = None  # (adapter name, weight) of the last call
        self.style_stats = {"loads": 0, "hits": 0, "evictions": 0, "trained": 0}

    # ------------------------------------------------------------------ checks

    def _dit_linears(self) -> dict[str, Any]:
        """The DiT's Linear modules by name (the base layer where peft wrapped one)."""
        import torch

        found: dict[str, Any] = {}
        for name, module in self.pipe.transformer.named_modules():
            if name.endswith(".base_layer"):
                continue
            base = getattr(module, "base_layer", module)
            if isinstance(base, torch.nn.Linear):
                found[name] = base
        return found

    def style_refusal(self, ref: StyleRef) -> str | None:
        """Why this engine cannot render with `ref` (None when it can). Reads the adapter file's
        header: every key must be a LoRA factor of a Linear of this DiT with matching shapes."""
        if not self.supports_styles:
            return f"This worker cannot apply styles: {self.styles_unavailable}."
        if ref.engine and ref.engine != self.name:
            return (f"The style {ref.id} was trained on the {ref.engine} engine; this worker runs {self.name}. "
                    f"Train the style again on this engine to use it here.")
        if ref.hash in self._adapter_ok:
            return None
        path = Path(ref.path) if ref.path else None
        if path is None or not path.is_file():
            return f"The adapter file of style {ref.id} is missing on this worker."
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception:  # noqa: BLE001 - any unreadable file is the same refusal
            return (f"The adapter of style {ref.id} is not a LoRA adapter of the ACE-Step engine "
                    f"(not a safetensors file); it was made by another engine.")
        linears = self._dit_linears()
        if not shapes:
            return f"The adapter of style {ref.id} is empty."
        for key, shape in shapes.items():
            m = _KEY.match(key)
            module = linears.get(m.group(1)) if m else None
            if module is None:
                return (f"The adapter of style {ref.id} does not fit this checkpoint's DiT ({self.name}): "
                        f"{key!r} names no attention projection of it.")
            ok = (len(shape) == 2 and (shape[1] == module.in_features if m.group(2) == "A"
                                       else shape[0] == module.out_features))
            if not ok:
                return (f"The adapter of style {ref.id} does not fit this checkpoint's DiT ({self.name}): "
                        f"{key} has shape {list(shape)}, the layer is {module.out_features}x{module.in_features}.")
        self._adapter_ok.add(ref.hash)
        return None

    def _check_styles(self, requests: list[MusicRequest]) -> None:
        for r in requests:
            ref = getattr(r, "style", None)
            if ref is not None:
                why = self.style_refusal(ref)
                if why:
                    raise StyleError(why)

    @staticmethod
    def style_key(request: MusicRequest) -> tuple[str, float] | None:
        """What separates pipeline calls by style: the adapter and its weight (0..2)."""
        ref = getattr(request, "style", None)
        if ref is None:
            return None
        return ref.hash, round(min(2.0, max(0.0, float(ref.weight))), 4)

    # ------------------------------------------------------------------ applying

    def _ensure_adapter(self, ref: StyleRef) -> str:
        """The adapter name of `ref`, loading it when it is not resident (LRU)."""
        name = ref.hash[:16]
        if ref.hash in self._adapters:
            self._adapters.move_to_end(ref.hash)
            self.style_stats["hits"] += 1
            self._evict(self.styles_resident)
            return name
        self._evict(self.styles_resident - 1)  # room first: never more than the limit in memory
        path = Path(ref.path)
        started = time.monotonic()
        try:
            self.pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name,
                                        local_files_only=True)
        except Exception as exc:
            self._adapter_ok.discard(ref.hash)
            if name in getattr(self.pipe.transformer, "peft_config", {}):
                self.pipe.delete_adapters(name)
            raise StyleError(f"The adapter of style {ref.id} could not be loaded into {self.name}: {exc}") from exc
        self._adapters[ref.hash] = name
        self.style_stats["loads"] += 1
        log.info("style %s: adapter %s loaded in %.2f s (%d resident)", ref.id, name,
                 time.monotonic() - started, len(self._adapters))
        return name

    def _evict(self, keep: int) -> None:
        """Delete the least recently used adapters until at most `keep` stay resident."""
        while len(self._adapters) > max(0, keep):
            _old_hash, old_name = self._adapters.popitem(last=False)
            self.pipe.delete_adapters(old_name)
            self.style_stats["evictions"] += 1

    def _apply_style(self, request: MusicRequest) -> None:
        """Make the next pipeline call run with `request`'s style (or with no adapter)."""
        ref = getattr(request, "style", None)
        if ref is None:
            self._deactivate_styles()
            return
        name = self._ensure_adapter(ref)
        weight = self.style_key(request)[1]
        self._lora_enabled = True
        self.pipe.transformer.enable_lora()
        self.pipe.set_adapters([name], [weight])
        self.active_style = (name, weight)

    def _deactivate_styles(self) -> None:
        """No adapter active: the LoRA layers pass the base layers' output through unchanged."""
        if self._adapters:
            self.pipe.transformer.disable_lora()
        self._lora_enabled = False
        self.active_style = None

    def _unload_styles(self) -> None:
        """Remove every LoRA layer from the DiT (the resident adapters load again on next use)."""
        transformer = self.pipe.transformer
        if getattr(transformer, "_hf_peft_config_loaded", False) or getattr(transformer, "peft_config", None):
            transformer.unload_lora()
        self._adapters.clear()
        self._lora_enabled = False
        self.active_style = None

    # ------------------------------------------------------------------ training

    def _sample_language(self, lyrics: str) -> str:
        return "unknown" if lyrics == "[Instrumental]" else (self.vocal_language or "en")

    def _encode_sample(self, sample: TrainingSample, rng: np.random.Generator, generator: Any,
                       device: Any, dtype: Any, max_seconds: float) -> dict[str, Any]:
        """One song as the DiT sees it in training: target latents, condition and context."""
        import torch

        pipe = self.pipe
        audio = stereo(np.asarray(sample.audio, dtype=np.float32))
        if int(sample.sample_rate) != self.sample_rate:
            audio = resample(audio, int(sample.sample_rate), self.sample_rate)
        hop = max(1, int(round(self.sample_rate / float(pipe.latents_per_second))))
        limit = max(hop, int(max_seconds * self.sample_rate) // hop * hop)
        frames = audio.shape[0] // hop * hop
        if frames < hop:
            raise ValueError(f"a training song is too short ({audio.shape[0] / self.sample_rate:.2f} s)")
        if frames > limit:
            start = int(rng.integers(0, (audio.shape[0] - limit) // hop + 1)) * hop
            audio, frames = audio[start:start + limit], limit
        else:
            audio = audio[:frames]
        seconds = frames / self.sample_rate
        wave = torch.from_numpy(np.ascontiguousarray(audio.T))[None].to(device=device, dtype=pipe.vae.dtype)
        caption = (sample.caption or "").strip() or "music"
        lyrics = (sample.lyrics or "").strip() or "[Instrumental]"
        with torch.no_grad():
            x0 = pipe.vae.encode(wave).latent_dist.sample(generator=generator).transpose(1, 2).to(dtype)
            length = x0.shape[1]
            text, text_mask, lyric, lyric_mask = pipe.encode_prompt(
                prompt=[caption], lyrics=[lyrics], device=device, vocal_language=[self._sample_language(lyrics)],
                audio_duration=seconds, instruction=pipe._get_task_instruction(task_type="text2music"),
            )
            timbre_frames = math.ceil(30 * pipe.latents_per_second)
            silence = pipe.condition_encoder.silence_latent
            refer = silence[:, :timbre_frames, :].to(device=device, dtype=dtype).contiguous()
            condition, _ = pipe.condition_encoder(
                text_hidden_states=text, text_attention_mask=text_mask, lyric_hidden_states=lyric,
                lyric_attention_mask=lyric_mask, refer_audio_acoustic_hidden_states_packed=refer,
                refer_audio_order_mask=torch.arange(1, device=device, dtype=torch.long),
            )
            src, _ = pipe.prepare_src_latents(device=device, dtype=dtype, batch_size=1, latent_length=length)
            mask = pipe._build_chunk_mask(task_type="text2music", latent_length=length, batch_size=1, device=device,
                                          dtype=dtype, acoustic_dim=x0.shape[-1])
            context = torch.cat([src, mask], dim=-1)
        return {"x0": x0, "condition": condition, "context": context, "seconds": seconds}

    def _flow_loss(self, item: dict[str, Any], t: Any, noise: Any) -> Any:
        """Upstream's flow-matching loss for one sample at timestep `t` (a 1-element tensor)."""
        import torch.nn.functional as F

        x0 = item["x0"]
        t_ = t.to(x0.dtype).view(-1, 1, 1)
        xt = t_ * noise + (1.0 - t_) * x0
        ts = t.to(x0.dtype).view(-1)
        pred = self.pipe.transformer(hidden_states=xt, timestep=ts, timestep_r=ts,
                                     encoder_hidden_states=item["condition"], context_latents=item["context"],
                                     return_dict=False)[0]
        return F.mse_loss(pred.float(), (noise - x0).float())

    def _held_loss(self, held: list[tuple[dict[str, Any], Any, Any]], autocast: Callable[[], Any]) -> float:
        """Mean loss over fixed (sample, timestep, noise) triples, without dropout."""
        import torch

        transformer = self.pipe.transformer
        mode = transformer.training
        transformer.eval()
        try:
            with torch.no_grad(), autocast():
                losses = [float(self._flow_loss(item, t, noise)) for item, t, noise in held]
        finally:
            transformer.train(mode)
        return float(np.mean(losses)) if losses else float("nan")

    def train_style(self, samples: list[TrainingSample], settings: Any = None,
                    progress: Callable[[float, str], None] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> TrainedStyle:
        """Train a LoRA adapter on `samples` (see the module docstring for the recipe).

        Settings read: STYLE_LORA_RANK, STYLE_LORA_ALPHA, STYLE_TRAIN_STEPS, STYLE_LEARNING_RATE.
        `progress(fraction, stage)` is called while encoding ("encoding"), every step
        ("training") and at the end ("saving"); `should_stop()` True between two steps or songs
        raises `Cancelled`. The resident DiT is left exactly as it was, whatever happens."""
        import torch
        from peft import LoraConfig
        from peft.utils import get_peft_model_state_dict

        if not self.supports_styles:
            raise StyleError(f"This worker cannot train styles: {self.styles_unavailable}.")
        if not samples:
            raise ValueError("a style needs at least one song to learn from")
        rank = int(_setting(settings, "STYLE_LORA_RANK", 8))
        alpha = float(_setting(settings, "STYLE_LORA_ALPHA", 16))
        steps = int(_setting(settings, "STYLE_TRAIN_STEPS", 200))
        lr = float(_setting(settings, "STYLE_LEARNING_RATE", 1e-4))
        max_seconds = float(_setting(settings, "STYLE_MAX_SAMPLE_SECONDS", MAX_SAMPLE_SECONDS))
        if rank < 1 or steps < 1 or not lr > 0:
            raise ValueError(f"bad LoRA settings: rank {rank}, steps {steps}, learning rate {lr}")
        stop = should_stop or (lambda: False)

        def report(fraction: float, stage: str) -> None:
            if progress:
                progress(min(1.0, max(0.0, fraction)), stage)

        pipe = self.pipe
        transformer = pipe.transformer
        device = pipe._execution_device
        dtype = transformer.dtype
        cuda = torch.device(device).type == "cuda"

        def autocast() -> Any:  # upstream trains bf16-mixed on CUDA, float32 elsewhere
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16) if cuda else nullcontext()

        started = time.monotonic()
        rng = np.random.default_rng(TRAIN_SEED)
        generator = torch.Generator("cpu").manual_seed(TRAIN_SEED)
        report(0.0, "encoding")
        items = []
        for i, sample in enumerate(samples):
            if stop():
                raise Cancelled()
            items.append(self._encode_sample(sample, rng, generator, device, dtype, max_seconds))
            report(0.1 * (i + 1) / len(samples), "encoding")
        schedule = pipe._get_timestep_schedule(num_inference_steps=int(self.default_steps), shift=float(self.shift),
                                               device=device, dtype=torch.float32)

        def noise_like(x: Any) -> Any:
            return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(device=device, dtype=x.dtype)

        picks = np.linspace(0, len(schedule) - 1, min(EVAL_TIMESTEPS, len(schedule))).round().astype(int)
        held = [(item, schedule[int(j)].view(1), noise_like(item["x0"]))
                for item in items[:EVAL_SAMPLES] for j in picks]

        self._unload_styles()  # the resident adapters load again on their next use
        grads = {n: p.requires_grad for n, p in transformer.named_parameters()}
        mode = transformer.training
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=LORA_DROPOUT, target_modules=list(TARGET_MODULES),
                            bias="none", init_lora_weights=True)
        losses: list[list[float]] = []
        every = max(1, steps // 100)
        try:
            transformer.add_adapter(config, adapter_name=TRAIN_ADAPTER)
            for p in transformer.parameters():
                p.requires_grad_(False)
            params = [p for n, p in transformer.named_parameters() if f".{TRAIN_ADAPTER}." in n or
                      n.endswith(f".{TRAIN_ADAPTER}.weight")]
            for p in params:
                p.requires_grad_(True)
            trainable = sum(p.numel() for p in params)
            optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY)
            warmup = min(WARMUP_STEPS, max(1, steps // 10))
            scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [
                torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, end_factor=1.0, total_iters=warmup),
                torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps - warmup), eta_min=lr * 0.01),
            ], milestones=[warmup])
            held_before = self._held_loss(held, autocast)
            transformer.train()
            order: list[int] = []
            for step in range(1, steps + 1):
                if stop():
                    raise Cancelled()
                if not order:
                    order = list(rng.permutation(len(items)))
                item = items[order.pop()]
                t = schedule[int(rng.integers(0, len(schedule)))].view(1)
                with autocast():
                    loss = self._flow_loss(item, t, noise_like(item["x0"]))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
                optimizer.step()
                scheduler.step()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise EngineError(f"style training diverged at step {step} (loss {value})")
                if step == 1 or step % every == 0 or step == steps:
                    losses.append([step, round(value, 6)])
                report(0.1 + 0.85 * step / steps, "training")
            held_after = self._held_loss(held, autocast)
            report(0.96, "saving")
            state = get_peft_model_state_dict(transformer, adapter_name=TRAIN_ADAPTER)
            layers = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
        finally:
            transformer.unload_lora()  # back to plain Linear layers: the DiT as it was
            for n, p in transformer.named_parameters():
                p.requires_grad_(grads.get(n, p.requires_grad))
            transformer.train(mode)
        adapter_config = {"r": rank, "lora_alpha": alpha, "lora_dropout": 0.0, "target_modules": list(TARGET_MODULES),
                          "bias": "none"}
        data = adapter_bytes(layers, adapter_config)
        seconds = time.monotonic() - started
        self.style_stats["trained"] += 1
        audio_seconds = float(sum(float(s.duration or 0.0) for s in samples))
        log.info("style trained on %d song(s) in %.1f s: %d steps, loss %.4f -> %.4f (held-out noise %.4f -> %.4f)",
                 len(samples), seconds, steps, losses[0][1], losses[-1][1], held_before, held_after)
        report(1.0, "saving")
        return TrainedStyle(
            adapter=data,
            filename=ADAPTER_FILENAME,
            config={
                "method": "lora", "r": rank, "lora_alpha": alpha, "lora_dropout": LORA_DROPOUT,
                "target_modules": list(TARGET_MODULES), "engine": self.name, "base_model": self.name,
                "kind": getattr(self, "kind", None), "steps": steps, "learning_rate": lr,
                "weight_decay": WEIGHT_DECAY, "max_grad_norm": MAX_GRAD_NORM, "warmup_steps": warmup,
                "timesteps": [round(float(t), 6) for t in schedule], "max_sample_seconds": max_seconds,
                "trainable_params": int(trainable), "seed": TRAIN_SEED,
            },
            report={
                "loss": losses, "steps": steps, "seconds": round(seconds, 3), "samples": len(samples),
                "audio_seconds": round(audio_seconds, 3),
                "trained_seconds": round(float(sum(item["seconds"] for item in items)), 3),
                "held_loss": {"before": round(held_before, 6), "after": round(held_after, 6)},
            },
        )


def adapter_bytes(layers: dict[str, Any], config: dict[str, Any]) -> bytes:
    """The adapter file as diffusers writes it (`save_lora_weights`: ``transformer.``-prefixed
    peft keys and the LoRA config in the safetensors header), as bytes."""
    from diffusers.loaders import AceStepLoraLoaderMixin

    with tempfile.TemporaryDirectory(prefix="tunesmith-style-") as tmp:
        AceStepLoraLoaderMixin.save_lora_weights(tmp, transformer_lora_layers=layers,
                                     transformer_lora_adapter_metadata=json.loads(json.dumps(config)),
                                     weight_name=ADAPTER_FILENAME)
        return (Path(tmp) / ADAPTER_FILENAME).read_bytes()
