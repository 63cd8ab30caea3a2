"""The real music engine: ACE-Step 1.5 through diffusers' `AceStepPipeline`.

One pipeline is loaded once per worker (bf16 on CUDA, float32 on CPU) from a local folder
(`local_files_only`), and every request's variants are rendered in ONE batched pipeline call:
a list of prompts and lyrics and one seeded generator per variant. Variants that cannot share
a call (a different duration, tempo, key, step count or guidance) are split into the fewest
calls possible; a normal request (same spec, different seeds) is always one call.

Defaults come from the checkpoint: a turbo (guidance-distilled) model runs 8 steps without
classifier-free guidance; a base/SFT model runs 50 steps with guidance 7.0. Progress is
reported per denoising step through the pipeline's ``callback_on_step_end``.
"""
from __future__ import annotations

import logging
import math
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from jobs.audio import fit, stereo

from .base import EngineError, MusicRequest, Progress, RenderedAudio

log = logging.getLogger(__name__)

INSTRUMENTAL_LYRICS = "[Instrumental]"
"""What ACE-Step 1.5 takes as the lyrics of a song without vocals."""

TURBO_STEPS = 8
BASE_STEPS = 50
BASE_GUIDANCE = 7.0
DEFAULT_SHIFT = 3.0
DECODE_SHARE = 0.05
"""Share of the progress bar kept for the VAE decode after the last denoising step."""


def time_signature_for_model(value: str | None) -> str | None:
    """ACE-Step's metadata spells a time signature by its numerator: "4/4" -> "4", "6/8" -> "6"."""
    if not value:
        return None
    m = re.match(r"\s*(\d{1,2})(?:\s*/\s*\d{1,2})?\s*$", str(value))
    return m.group(1) if m else None


class AceStepMusic:
    """MusicEngine on ACE-Step 1.5 (diffusers `AceStepPipeline`).

    Args:
        path: the pipeline folder (a diffusers layout with ``model_index.json``).
        pipeline: an `AceStepPipeline` already built and placed on `device` (benchmarks build
            the real architecture with random weights this way); `path` is then not read.
        model_id: the name stored on songs (e.g. ``ACE-Step/acestep-v15-xl-turbo-diffusers``).
        device: ``"cuda"``, ``"cuda:1"`` or ``"cpu"``.
        offload: keep the pipeline in CPU memory and move each model to the GPU only while it
            runs (diffusers model CPU offload): less VRAM, slower.
        steps / shift / guidance: override the checkpoint defaults (None keeps them).
        vocal_language: language code passed with lyrics.
        vae_tiling: decode long songs in overlapping time tiles (bounded VRAM at any length).
    """

    offline = False

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        pipeline: Any = None,
        model_id: str | None = None,
        device: str = "cuda",
        offload: bool = False,
        steps: int | None = None,
        shift: float | None = None,
        guidance: float | None = None,
        vocal_language: str = "en",
        vae_tiling: bool = True,
    ) -> None:
        import torch
        from diffusers import AceStepPipeline

        if path is None and pipeline is None:
            raise ValueError("AceStepMusic needs a model folder or a pipeline")
        self.path = Path(path) if path is not None else None
        self.model_id = model_id or (self.path.name if self.path else "ace-step")
        self.name = self.model_id
        self.device = torch.device(device)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.offload = bool(offload and self.device.type == "cuda")
        started = time.monotonic()
        if pipeline is None:
            pipeline = AceStepPipeline.from_pretrained(str(self.path), dtype=self.dtype, local_files_only=True)
            if self.offload:
                pipeline.enable_model_cpu_offload(device=self.device)
            else:
                pipeline.to(self.device)
        else:
            self.dtype = pipeline.transformer.dtype
        pipeline.set_progress_bar_config(disable=True)
        # Decode variants one at a time (exact), and long songs in overlapping time tiles:
        # the VAE decoder at 48 kHz is the largest activation of a render.
        vae = getattr(pipeline, "vae", None)
        if vae is not None:
            if hasattr(vae, "enable_slicing"):
                vae.enable_slicing()
            if vae_tiling and hasattr(vae, "enable_tiling"):
                vae.enable_tiling()
        self.vae_tiling = bool(vae_tiling)
        self.pipe = pipe = pipeline
        self.sample_rate = int(pipe.sample_rate)
        self.latents_per_second = float(pipe.latents_per_second)
        self.is_turbo = bool(pipe.is_turbo or "turbo" in self.model_id.lower())
        self.default_steps = int(steps) if steps else (TURBO_STEPS if self.is_turbo else BASE_STEPS)
        self.default_guidance = None if self.is_turbo else float(guidance or BASE_GUIDANCE)
        self.shift = float(shift or DEFAULT_SHIFT)
        self.vocal_language = vocal_language or "en"
        self.load_seconds = time.monotonic() - started
        self.calls = 0  # pipeline calls made (one per render for a normal request)
        log.info(
            "music engine %s loaded on %s (%s, %s) in %.1f s: %d steps, guidance %s, shift %.1f",
            self.model_id, self.device, str(self.dtype).replace("torch.", ""),
            "turbo" if self.is_turbo else "base/sft", self.load_seconds,
            self.default_steps, self.default_guidance, self.shift,
        )

    # ------------------------------------------------------------------ settings per request

    def steps_for(self, request: MusicRequest) -> int:
        """Denoising steps a request will run."""
        return int(request.steps) if request.steps else self.default_steps

    def guidance_for(self, request: MusicRequest) -> float | None:
        """Guidance a request will run with (None: no classifier-free guidance)."""
        if self.is_turbo:
            return None
        g = request.guidance if request.guidance is not None else self.default_guidance
        return float(g) if g is not None and g > 1.0 else None

    def frames_for(self, duration: float) -> int:
        """Audio frames returned for a duration (the latent grid rounds up; we trim to this)."""
        return int(round(duration * self.sample_rate))

    def describe(self) -> dict[str, Any]:
        """Facts for logs and the UI."""
        return {
            "model": self.model_id,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "turbo": self.is_turbo,
            "steps": self.default_steps,
            "guidance": self.default_guidance,
            "shift": self.shift,
            "sample_rate": self.sample_rate,
            "offload": self.offload,
            "vae_tiling": self.vae_tiling,
        }

    # ------------------------------------------------------------------ rendering

    def _prompt(self, request: MusicRequest) -> str:
        tags = (request.tags or "").strip()
        if request.instrumental and "instrumental" not in tags.lower():
            tags = f"{tags}, instrumental" if tags else "instrumental"
        return tags or "music"

    def _lyrics(self, request: MusicRequest) -> str:
        lyrics = (request.lyrics or "").strip()
        if request.instrumental or not lyrics:
            return INSTRUMENTAL_LYRICS
        return lyrics

    def _group_key(self, request: MusicRequest) -> tuple:
        return (
            round(float(request.duration), 3),
            self.steps_for(request),
            self.guidance_for(request),
            int(request.bpm) if request.bpm else None,
            (request.key or "").strip() or None,
            time_signature_for_model(request.time_signature),
        )

    def render(self, requests: list[MusicRequest], progress: Progress | None = None) -> list[RenderedAudio]:
        """Render every request in one batched pipeline call (per compatible group).

        Returns float32 ``(frames, 2)`` audio in [-1, 1] at the model's sample rate, exactly
        ``round(duration * sample_rate)`` frames long, with the seed, steps and guidance used.
        """
        if not requests:
            return []
        for r in requests:
            if not r.duration or r.duration <= 0 or not math.isfinite(r.duration):
                raise EngineError(f"duration must be a positive number of seconds, got {r.duration!r}")
        if any(r.task != "text2music" for r in requests):
            return self._render_tasks(requests, progress)
        groups: "OrderedDict[tuple, list[int]]" = OrderedDict()
        for i, r in enumerate(requests):
            groups.setdefault(self._group_key(r), []).append(i)
        total_steps = sum(key[1] for key in groups) or 1
        results: list[RenderedAudio | None] = [None] * len(requests)
        done_steps = 0
        for key, indices in groups.items():
            batch = [requests[i] for i in indices]
            audios = self._call(batch, key, progress, done_steps, total_steps)
            for i, audio in zip(indices, audios, strict=True):
                results[i] = audio
            done_steps += key[1]
        if progress:
            progress(1.0)
        return [r for r in results if r is not None]

    def _call(
        self,
        batch: list[MusicRequest],
        key: tuple,
        progress: Progress | None,
        done_steps: int,
        total_steps: int,
    ) -> list[RenderedAudio]:
        import torch

        duration, steps, guidance, bpm, keyscale, timesig = key
        generators = [torch.Generator("cpu").manual_seed(int(r.seed) % (2**63)) for r in batch]

        def on_step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
            if progress:
                progress((done_steps + step + 1) / total_steps * (1.0 - DECODE_SHARE))
            return callback_kwargs

        started = time.monotonic()
        try:
            out = self.pipe(
                prompt=[self._prompt(r) for r in batch],
                lyrics=[self._lyrics(r) for r in batch],
                vocal_language=[
                    "unknown" if self._lyrics(r) == INSTRUMENTAL_LYRICS else self.vocal_language for r in batch
                ],
                audio_duration=float(duration),
                num_inference_steps=int(steps),
                guidance_scale=float(guidance) if guidance else 1.0,
                shift=self.shift,
                generator=generators,
                bpm=bpm,
                keyscale=keyscale,
                timesignature=timesig,
                callback_on_step_end=on_step_end,
                output_type="pt",
            )
        except Exception as exc:
            from . import is_cuda_oom

            if is_cuda_oom(exc) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise
        self.calls += 1
        audio = out.audios.detach().float().cpu()  # (batch, channels, frames)
        frames = self.frames_for(duration)
        if audio.shape[-1] > frames:
            audio = audio[..., :frames]
        if audio.shape[1] == 1:
            audio = audio.repeat(1, 2, 1)
        log.info(
            "rendered %d variant(s) of %.1f s in %.1f s (%d steps, guidance %s)",
            len(batch), duration, time.monotonic() - started, steps, guidance,
        )
        results = []
        for r, a in zip(batch, audio, strict=True):
            samples = np.ascontiguousarray(np.clip(a.numpy().T, -1.0, 1.0), dtype=np.float32)
            results.append(
                RenderedAudio(
                    samples=samples,
                    sample_rate=self.sample_rate,
                    seed=int(r.seed),
                    steps=int(steps),
                    guidance=guidance,
                )
            )
        return results

    # ------------------------------------------------------------------ studio tasks

    TASKS = ("text2music", "repaint", "cover", "extract")

    def _render_tasks(self, requests: list[MusicRequest], progress: Progress | None) -> list[RenderedAudio]:
        """Studio tasks (repaint, cover, extract): one pipeline call per request, each on its
        source audio (``(frames, channels)`` at the model's sample rate)."""
        results = []
        steps_all = sum(self.steps_for(r) for r in requests) or 1
        done = 0
        for r in requests:
            if r.task not in self.TASKS:
                raise EngineError(f"unknown task {r.task!r}")
            if r.task == "text2music":
                key = self._group_key(r)
                results.extend(self._call([r], key, progress, done, steps_all))
            else:
                results.append(self._call_task(r, progress, done, steps_all))
            done += self.steps_for(r)
        if progress:
            progress(1.0)
        return results

    def _call_task(self, r: MusicRequest, progress: Progress | None, done_steps: int,
                   total_steps: int) -> RenderedAudio:
        import torch

        if r.source_audio is None:
            raise EngineError(f"the {r.task} task needs source audio")
        src = stereo(r.source_audio)  # the Oobleck VAE is stereo
        frames = src.shape[0]
        steps = self.steps_for(r)
        guidance = self.guidance_for(r)

        def on_step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
            if progress:
                progress((done_steps + step + 1) / total_steps * (1.0 - DECODE_SHARE))
            return callback_kwargs

        src_tensor = torch.from_numpy(np.ascontiguousarray(src.T))
        kwargs: dict[str, Any] = dict(task_type=r.task, src_audio=src_tensor)
        if r.task == "cover" and getattr(self.pipe, "audio_tokenizer", None) is None:
            # A checkpoint without the audio tokenizer cannot take the source as cover
            # conditioning: render in the new style with the source as the timbre reference.
            kwargs = dict(task_type="text2music", reference_audio=src_tensor)
        elif r.task == "repaint":
            kwargs.update(repainting_start=float(r.repaint_start or 0.0),
                          repainting_end=float(r.repaint_end) if r.repaint_end is not None else -1.0)
        elif r.task == "cover":
            kwargs.update(audio_cover_strength=float(min(1.0, max(0.0, r.strength))))
        elif r.task == "extract":
            kwargs.update(track_name=r.track or "vocals")
        generator = torch.Generator("cpu").manual_seed(int(r.seed) % (2**63))
        started = time.monotonic()
        try:
            out = self.pipe(
                prompt=[self._prompt(r)],
                lyrics=[self._lyrics(r)],
                vocal_language=["unknown" if self._lyrics(r) == INSTRUMENTAL_LYRICS else self.vocal_language],
                audio_duration=frames / self.sample_rate,
                num_inference_steps=int(steps),
                guidance_scale=float(guidance) if guidance else 1.0,
                shift=self.shift,
                generator=[generator],
                bpm=int(r.bpm) if r.bpm else None,
                keyscale=(r.key or "").strip() or None,
                timesignature=time_signature_for_model(r.time_signature),
                callback_on_step_end=on_step_end,
                output_type="pt",
                **kwargs,
            )
        except Exception as exc:
            from . import is_cuda_oom

            if is_cuda_oom(exc) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise
        self.calls += 1
        audio = out.audios.detach().float().cpu()[0]  # (channels, frames)
        if audio.shape[0] == 1:
            audio = audio.repeat(2, 1)
        audio = audio[:2, :frames]
        samples = fit(np.clip(audio.numpy().T, -1.0, 1.0).astype(np.float32), frames)
        log.info("%s task on %.1f s of audio in %.1f s (%d steps)", r.task, frames / self.sample_rate,
                 time.monotonic() - started, steps)
        return RenderedAudio(samples=np.ascontiguousarray(samples), sample_rate=self.sample_rate,
                             seed=int(r.seed), steps=int(steps), guidance=guidance)
