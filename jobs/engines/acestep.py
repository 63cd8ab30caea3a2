"""The real music engine: ACE-Step 1.5 through diffusers' `AceStepPipeline`.

One pipeline is loaded once per worker (bf16 on CUDA, float32 on CPU) from a local folder
(`local_files_only`). What the checkpoint is — turbo, base or SFT — is read from the checkpoint
itself (the transformer config's ``model_version`` / ``is_turbo``, which diffusers' converter
copies from the original ``config.json``, and the components listed in ``model_index.json``),
and gives its **profile**: default steps, timestep shift, guidance, and the tasks it can do, as
upstream ACE-Step 1.5 defines them (see `UPSTREAM_PROFILES`). ``ACESTEP_STEPS`` /
``ACESTEP_SHIFT`` / ``ACESTEP_GUIDANCE`` override the profile's values.

Every request's variants are rendered in ONE batched pipeline call on every checkpoint: a list
of prompts and lyrics and one seeded generator per variant. Variants that cannot share a call (a
different duration, tempo, key, step count, per-request guidance, task, source or style) are split
into the fewest calls possible; a normal request (same spec, different seeds) is always one call.
A request's style (a LoRA adapter, `MusicRequest.style`) is applied per call; see `acestep_lora`.

A task the checkpoint cannot do raises `EngineError` with a message naming the checkpoint (never
a silent fallback to another task). The VAE decode is tiled or sliced only when it has to be
(`decode_plan`). Progress is reported per denoising step through ``callback_on_step_end``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jobs.audio import fit, stereo

from .acestep_lora import StyleAdapters
from .base import EngineError, MusicRequest, Progress, RenderedAudio

log = logging.getLogger(__name__)

INSTRUMENTAL_LYRICS = "[Instrumental]"
"""What ACE-Step 1.5 takes as the lyrics of a song without vocals."""

DECODE_SHARE = 0.05
"""Share of the progress bar kept for the VAE decode after the last denoising step."""

ENGINE_TASKS = ("text2music", "repaint", "cover", "extract")
"""The ACE-Step tasks this engine drives (`MusicRequest.task`)."""

# Upstream ACE-Step 1.5 (github.com/ace-step/ACE-Step-1.5): `acestep/constants.py`
# TASK_TYPES_TURBO / TASK_TYPES_BASE, the README's model table (steps, CFG and tasks per DiT
# checkpoint: SFT has no extract/lego/complete), `gradio_ui/events/generation_handlers.py`
# `get_model_type_ui_settings` (turbo: 8 steps, no guidance, shift 3.0; base: shift 3.0,
# guidance shown) and docs/en/INFERENCE.md (guidance_scale 7.0 by default, 5-9 typical).
UPSTREAM_PROFILES: dict[str, dict[str, Any]] = {
    "turbo": {"steps": 8, "shift": 3.0, "guidance": None,
              "tasks": ("text2music", "repaint", "cover")},
    "base": {"steps": 50, "shift": 3.0, "guidance": 7.0,
             "tasks": ("text2music", "repaint", "cover", "extract", "lego", "complete")},
    "sft": {"steps": 50, "shift": 3.0, "guidance": 7.0,
            "tasks": ("text2music", "repaint", "cover")},
}
KINDS = tuple(UPSTREAM_PROFILES)

VOCAL_LANGUAGES = frozenset((
    "ar", "az", "bg", "bn", "ca", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fr", "he", "hi", "hr", "ht",
    "hu", "id", "is", "it", "ja", "ko", "la", "lt", "ms", "ne", "nl", "no", "pa", "pl", "pt", "ro", "ru", "sa",
    "sk", "sr", "sv", "sw", "ta", "te", "th", "tl", "tr", "uk", "ur", "vi", "yue", "zh", "unknown",
))
"""Upstream's VALID_LANGUAGES (acestep/constants.py); "unknown" is what it uses for no vocals."""

# ---------------------------------------------------------------------------------- VAE decode
TILING_MODES = ("auto", "on", "off")
DECODE_TENSORS = 4.5
"""Peak live activations of the Oobleck decoder, in tensors of its last stage's size
(``decoder_channels`` channels at the output sample rate). Measured: the 48 kHz geometry of
ACE-Step 1.5 (decoder_channels 128, hop 1920) peaks at 4.4 MB per latent frame per variant in
float32 — live tensor storage counted op by op while decoding — on top of a fixed cost equal to
the decoder's weights (weight norm recomputes them each call). That is 2.2 MB per latent frame in
bf16: a 60 s song (1,500 frames) needs about 3.3 GB per variant, a 240 s song about 13 GB."""
DECODE_MARGIN = 1.5
"""Head room on that estimate for the CUDA allocator's fragmentation and cuDNN workspaces."""
TILE_AFTER_SECONDS = 240.0
"""Past this length the decode is tiled whatever the free memory says. 240 s is the longest song
Tunesmith renders by default (MAX_DURATION); what is longer is an upload being remixed or split
(up to 10 minutes), where one variant's untiled decode is 13 GB and more: a wrong estimate there
would fail the person's job with an out-of-memory error, where tiling costs about a third more
decode time (overlapping windows) on a job that is long anyway."""


class DecodePlan(NamedTuple):
    tiling: bool
    slicing: bool
    reason: str


def decode_plan(mode: str, batch: int, latent_frames: int, *, frame_bytes: float, fixed_bytes: float = 0.0,
                free_bytes: float | None, tile_frames: int, tile_after_frames: int) -> DecodePlan:
    """Whether the VAE decode of `batch` variants of `latent_frames` frames is tiled and/or sliced.

    - ``auto``: tile when one variant's whole decode would not fit in `free_bytes`, or past
      `tile_after_frames` (and only when the song is longer than one tile, `tile_frames`);
    - ``on``: always tile; ``off``: never tile;
    - in every mode, slice (decode the variants one after another) only when the batch's decode
      would not fit at once. `free_bytes` None (unknown) means no memory bound.

    `frame_bytes` is the estimated peak per latent frame per variant (margin included),
    `fixed_bytes` the cost that does not grow with the length.
    """
    mode = parse_tiling(mode)

    def fits(variants: int, frames: int) -> bool:
        return free_bytes is None or fixed_bytes + variants * frames * frame_bytes <= free_bytes

    longer_than_a_tile = latent_frames > tile_frames
    if mode == "on":
        tiling, reason = longer_than_a_tile, "ACESTEP_VAE_TILING=on"
    elif mode == "off":
        tiling, reason = False, "ACESTEP_VAE_TILING=off"
    elif not longer_than_a_tile:
        tiling, reason = False, "shorter than one tile"
    elif latent_frames > tile_after_frames:
        tiling, reason = True, "longer than the tiling threshold"
    elif not fits(1, latent_frames):
        tiling, reason = True, "one variant's decode would not fit in free memory"
    else:
        tiling, reason = False, "fits in free memory"
    frames = min(latent_frames, tile_frames) if tiling else latent_frames
    slicing = batch > 1 and not fits(batch, frames)
    if slicing:
        reason += "; the batch would not fit at once: variants decode one by one"
    return DecodePlan(tiling, slicing, reason)


def parse_tiling(value: Any) -> str:
    """ACESTEP_VAE_TILING as auto | on | off (booleans and their spellings map to on/off)."""
    if value is None or value == "":
        return "auto"
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return "on"
    if text in ("0", "false", "no", "off"):
        return "off"
    if text == "auto":
        return "auto"
    raise ValueError(f"ACESTEP_VAE_TILING={value!r}: expected auto, on or off")


def time_signature_for_model(value: str | None) -> str | None:
    """ACE-Step's metadata spells a time signature by its numerator: "4/4" -> "4", "6/8" -> "6"."""
    if not value:
        return None
    m = re.match(r"\s*(\d{1,2})(?:\s*/\s*\d{1,2})?\s*$", str(value))
    return m.group(1) if m else None


# ---------------------------------------------------------------------------------- profile
def _config_value(config: Any, name: str) -> Any:
    if config is None:
        return None
    if isinstance(config, dict):
        return config.get(name)
    return getattr(config, name, None)


def checkpoint_profile(pipe: Any, names: tuple[str, ...] = ()) -> dict[str, Any]:
    """The upstream profile of a loaded `AceStepPipeline`, read from the checkpoint.

    Kind: the transformer config's ``model_version`` (``turbo`` / ``base`` / ``sft``), else its
    ``is_turbo`` flag (the pipeline's ``is_turbo``), else a hint in the checkpoint's name (`names`:
    model id and folder). A non-turbo checkpoint that says neither is taken as SFT: the smaller
    task set, so nothing is promised that the weights may not do. Shift: upstream's turbo
    checkpoints are published per shift (``acestep-v15-turbo-shift1`` / ``-shift3``), so a
    ``shiftN`` in the name wins over the kind's default. The cover task also needs the audio
    tokenizer and detokenizer components (``model_index.json``; diffusers' converter may leave
    them out).
    """
    transformer_config = getattr(getattr(pipe, "transformer", None), "config", None)
    version = str(_config_value(transformer_config, "model_version") or "").strip().lower()
    is_turbo = bool(getattr(pipe, "is_turbo", False) or _config_value(transformer_config, "is_turbo"))
    text = " ".join(n.lower() for n in names if n)
    if version in UPSTREAM_PROFILES:
        kind, kind_from = version, f"transformer config model_version={version!r}"
    elif is_turbo:
        kind, kind_from = "turbo", "transformer config is_turbo=true"
    elif "turbo" in text:
        kind, kind_from = "turbo", "the checkpoint's name"
    elif re.search(r"(?<![a-z])sft(?![a-z])", text):
        kind, kind_from = "sft", "the checkpoint's name"
    elif re.search(r"(?<![a-z])base(?![a-z])", text):
        kind, kind_from = "base", "the checkpoint's name"
    else:
        kind, kind_from = "sft", "not stated by the checkpoint: taken as SFT (no extract)"
    upstream = UPSTREAM_PROFILES[kind]
    shift, shift_from = float(upstream["shift"]), f"upstream {kind} default"
    m = re.search(r"shift[-_]?(\d+(?:\.\d+)?)", text)
    if m and kind == "turbo":
        shift, shift_from = float(m.group(1)), "the checkpoint's name"
    # Optional components: `model_index.json` lists them as [null, null] (or not at all) when absent.
    has_tokenizer = all(getattr(pipe, name, None) is not None
                        for name in ("audio_tokenizer", "audio_token_detokenizer"))
    checkpoint_tasks = tuple(upstream["tasks"])
    tasks = [t for t in checkpoint_tasks if t in ENGINE_TASKS and (t != "cover" or has_tokenizer)]
    scheduler_shift = _config_value(getattr(getattr(pipe, "scheduler", None), "config", None), "shift")
    return {
        "kind": kind,
        "kind_from": kind_from,
        "model_version": version or None,
        "steps": int(upstream["steps"]),
        "shift": shift,
        "shift_from": shift_from,
        "guidance": upstream["guidance"],
        "uses_guidance": kind != "turbo",
        "audio_tokenizer": has_tokenizer,
        "checkpoint_tasks": list(checkpoint_tasks),
        "tasks": sorted(tasks),
        "scheduler_shift": float(scheduler_shift) if scheduler_shift is not None else None,
    }


def _read_model_index(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError):
        return {}


class AceStepMusic(StyleAdapters):
    """MusicEngine on ACE-Step 1.5 (diffusers `AceStepPipeline`).

    Args:
        path: the pipeline folder (a diffusers layout with ``model_index.json``).
        pipeline: an `AceStepPipeline` already built and placed on `device` (benchmarks build
            the real architecture with random weights this way); `path` is then not read.
        model_id: the name stored on songs (e.g. ``ACE-Step/acestep-v15-xl-turbo-diffusers``).
        device: ``"cuda"``, ``"cuda:1"`` or ``"cpu"``.
        offload: keep the pipeline in CPU memory and move each model to the GPU only while it
            runs (diffusers model CPU offload): less VRAM, slower.
        steps / shift / guidance: override the checkpoint profile's values (None keeps them;
            guidance only matters on checkpoints that use it, i.e. not turbo).
        vocal_language: language code of lyrics when a request does not give one.
        vae_tiling: ``auto`` (default: tile / slice the VAE decode only when needed), ``on``
            (always tile songs longer than one tile) or ``off``; booleans mean on / off.
        planner: an optional `planner.Planner` (ACE-Step's 5 Hz LM, ``ACESTEP_PLANNER``): for
            text2music it fills the metadata a request leaves open, rewrites the caption and
            plans the audio codes that condition the DiT (see `_planned`).
        styles_resident: how many style adapters stay loaded in the DiT (least recently used
            out; ``STYLE_ADAPTERS_RESIDENT``). Styles: `train_style` and `MusicRequest.style`
            (jobs/engines/acestep_lora.py).
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
        vae_tiling: str | bool | None = "auto",
        planner: Any = None,
        styles_resident: int = 4,
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
        self.vae_tiling = parse_tiling(vae_tiling)
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
        self.pipe = pipe = pipeline
        self.sample_rate = int(pipe.sample_rate)
        self.latents_per_second = float(pipe.latents_per_second)

        names = (self.model_id, self.path.name if self.path else "")
        profile = checkpoint_profile(pipe, names)
        profile["model_index"] = sorted(k for k in _read_model_index(self.path) if not k.startswith("_"))
        overrides = {}
        if steps:
            overrides["steps"], profile["steps"] = int(steps), int(steps)
        if shift:
            overrides["shift"], profile["shift"], profile["shift_from"] = float(shift), float(shift), "ACESTEP_SHIFT"
        if guidance is not None and profile["uses_guidance"]:
            overrides["guidance"], profile["guidance"] = float(guidance), float(guidance)
        profile["overrides"] = overrides
        if profile["scheduler_shift"] not in (None, 1.0):
            log.warning("%s: the scheduler config has shift=%s; AceStepPipeline expects 1.0 (it applies the "
                        "shift itself), so the schedule is shifted twice", self.model_id, profile["scheduler_shift"])
        self.profile = profile
        self.kind = profile["kind"]
        self.tasks = frozenset(profile["tasks"])
        self.is_turbo = self.kind == "turbo"
        self.default_steps = int(profile["steps"])
        self.default_guidance = profile["guidance"] if profile["uses_guidance"] else None
        self.shift = float(profile["shift"])
        self.vocal_language = (vocal_language or "en").strip().lower()
        self.last_decode: DecodePlan | None = None
        self.load_seconds = time.monotonic() - started
        self.calls = 0  # pipeline calls made (one per render for a normal request)
        self.planner = planner
        self.last_plan: Any = None  # the planner's last `Plan` (for logs and tests)
        if planner is not None and not profile["audio_tokenizer"]:
            raise ValueError(f"{self.model_id}: the planner's audio codes need the checkpoint's audio tokenizer and "
                             f"detokenizer, which this conversion lacks (set ACESTEP_PLANNER=off or use a "
                             f"conversion that includes them)")
        self._init_styles(styles_resident)
        log.info(
            "music engine %s loaded on %s (%s) in %.1f s: %s checkpoint (%s), %d steps, guidance %s, shift %.1f "
            "(%s), tasks %s, VAE tiling %s",
            self.model_id, self.device, str(self.dtype).replace("torch.", ""), self.load_seconds, self.kind,
            profile["kind_from"], self.default_steps, self.default_guidance, self.shift, profile["shift_from"],
            ", ".join(sorted(self.tasks)), self.vae_tiling,
        )

    # ------------------------------------------------------------------ settings per request

    def steps_for(self, request: MusicRequest) -> int:
        """Denoising steps a request will run."""
        return int(request.steps) if request.steps else self.default_steps

    def guidance_for(self, request: MusicRequest) -> float | None:
        """Guidance a request will run with (None: no classifier-free guidance).

        ``request.guidance`` None is the checkpoint's default (so same-spec variants share one
        call); a number is an explicit (advanced) choice, honoured only on checkpoints that use
        guidance — turbo weights have it distilled in and run without."""
        if self.is_turbo:
            return None
        g = request.guidance if request.guidance is not None else self.default_guidance
        return float(g) if g is not None and g > 1.0 else None

    def language_for(self, request: MusicRequest) -> str:
        """The vocal language passed with a request's lyrics ("unknown" without vocals)."""
        if self._lyrics(request) == INSTRUMENTAL_LYRICS:
            return "unknown"
        language = (getattr(request, "vocal_language", None) or self.vocal_language or "en").strip().lower()
        if language not in VOCAL_LANGUAGES:
            raise EngineError(f"ACE-Step cannot sing in {language!r}; it knows these language codes: "
                              f"{', '.join(sorted(VOCAL_LANGUAGES - {'unknown'}))}")
        return language

    def frames_for(self, duration: float) -> int:
        """Audio frames returned for a duration (the latent grid rounds up; we trim to this)."""
        return int(round(duration * self.sample_rate))

    def describe(self) -> dict[str, Any]:
        """Facts for logs and the UI."""
        return {
            "model": self.model_id,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "kind": self.kind,
            "turbo": self.is_turbo,
            "steps": self.default_steps,
            "guidance": self.default_guidance,
            "shift": self.shift,
            "tasks": sorted(self.tasks),
            "profile": dict(self.profile),
            "sample_rate": self.sample_rate,
            "offload": self.offload,
            "vae_tiling": self.vae_tiling,
            "planner": self.planner.describe() if self.planner is not None else None,
            "styles": {"supported": self.supports_styles, "unavailable": self.styles_unavailable,
                       "resident": self.styles_resident, **self.style_stats},
        }

    # ------------------------------------------------------------------ checks

    def refusal(self, task: str) -> str | None:
        """Why this checkpoint cannot do `task` (None when it can)."""
        if task not in ENGINE_TASKS:
            return f"unknown task {task!r}"
        if task in self.tasks:
            return None
        can = ", ".join(sorted(self.tasks))
        if task == "cover" and "cover" in self.profile.get("checkpoint_tasks", ()):
            return (f"The loaded checkpoint ({self.model_id}) cannot remix (the cover task): it has no audio "
                    f"tokenizer/detokenizer, which cover conditioning needs. Use a conversion of the checkpoint "
                    f"that includes them. It can do: {can}.")
        if task == "extract":
            return (f"The loaded checkpoint ({self.model_id}, {self.kind}) cannot extract stems: ACE-Step 1.5 "
                    f"supports extract on base checkpoints only. It can do: {can}.")
        return f"The loaded checkpoint ({self.model_id}, {self.kind}) cannot do the {task} task. It can do: {can}."

    def _check(self, requests: list[MusicRequest]) -> None:
        for r in requests:
            why = self.refusal(r.task)
            if why:
                raise EngineError(why)
            if r.task != "text2music" and r.source_audio is None:
                raise EngineError(f"the {r.task} task needs source audio")
            if r.task == "text2music" and (not r.duration or r.duration <= 0 or not math.isfinite(r.duration)):
                raise EngineError(f"duration must be a positive number of seconds, got {r.duration!r}")
            self.language_for(r)
        self._check_styles(requests)

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

    def _group_key(self, r: MusicRequest) -> tuple:
        task = r.task or "text2music"
        key: tuple = (
            task,
            round(float(r.duration), 3) if task == "text2music" else None,
            self.steps_for(r),
            self.guidance_for(r),
            int(r.bpm) if r.bpm else None,
            (r.key or "").strip() or None,
            time_signature_for_model(r.time_signature),
            self.style_key(r),
        )
        if task == "repaint":
            key += (float(r.repaint_start or 0.0), float(r.repaint_end) if r.repaint_end is not None else -1.0)
        elif task == "cover":
            key += (round(float(min(1.0, max(0.0, r.strength))), 4),)
        elif task == "extract":
            key += (r.track or "vocals",)
        return key

    @staticmethod
    def _same_source(a: MusicRequest, b: MusicRequest) -> bool:
        x, y = a.source_audio, b.source_audio
        if x is None or y is None:
            return x is None and y is None
        return x is y or (x.shape == y.shape and np.array_equal(x, y))

    def groups(self, requests: list[MusicRequest]) -> list[list[int]]:
        """Indices of the requests that share a pipeline call, in order of first appearance."""
        groups: list[tuple[tuple, list[int]]] = []
        for i, r in enumerate(requests):
            key = self._group_key(r)
            for gkey, members in groups:
                if gkey == key and self._same_source(requests[members[0]], r):
                    members.append(i)
                    break
            else:
                groups.append((key, [i]))
        # Calls without a style first, then each style's calls together (fewest adapter switches).
        styles: list[Any] = [None]
        for key, _ in groups:
            if key[7] not in styles:
                styles.append(key[7])
        groups.sort(key=lambda g: styles.index(g[0][7]))
        return [members for _, members in groups]

    def render(self, requests: list[MusicRequest], progress: Progress | None = None) -> list[RenderedAudio]:
        """Render every request, each group of compatible ones in one batched pipeline call.

        Returns float32 ``(frames, 2)`` audio in [-1, 1] at the model's sample rate: exactly
        ``round(duration * sample_rate)`` frames for text2music, the source's length for a task,
        with the seed, steps and guidance used. Raises `EngineError` before any call when a
        request asks for a task this checkpoint cannot do.
        """
        if not requests:
            return []
        self._check(requests)
        groups = self.groups(requests)
        total_steps = sum(self.steps_for(requests[g[0]]) for g in groups) or 1
        results: list[RenderedAudio | None] = [None] * len(requests)
        done_steps = 0
        try:
            for indices in groups:
                batch = [requests[i] for i in indices]
                self._apply_style(batch[0])  # the group's adapter at its weight, or none
                audios = self._call(batch, progress, done_steps, total_steps)
                for i, audio in zip(indices, audios, strict=True):
                    results[i] = audio
                done_steps += self.steps_for(batch[0])
        finally:
            self._deactivate_styles()  # the next call (or job) starts on the base model
        if progress:
            progress(1.0)
        return [r for r in results if r is not None]

    # ------------------------------------------------------------------ VAE decode

    def _free_bytes(self) -> float | None:
        """Memory the decode can use: free device memory plus what this process's allocator
        holds unused (CUDA), or available RAM (CPU); None when unknown."""
        try:
            if self.device.type == "cuda":
                import torch

                free, _total = torch.cuda.mem_get_info(self.device)
                cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
                return float(free + max(0, cached))
            return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError, RuntimeError):
            return None

    def decode_costs(self) -> tuple[float, float]:
        """(bytes per latent frame per variant, fixed bytes) of this VAE's decode (estimates)."""
        vae = getattr(self.pipe, "vae", None)
        config = getattr(vae, "config", None)
        channels = int(_config_value(config, "decoder_channels") or 128)
        hop = int(math.prod(_config_value(config, "downsampling_ratios") or (1920,)))
        try:
            param = next(vae.decoder.parameters())
            itemsize = param.element_size()
            fixed = float(sum(p.numel() for p in vae.decoder.parameters()) * itemsize)
        except (AttributeError, StopIteration):
            itemsize, fixed = 2, 0.0
        return DECODE_TENSORS * DECODE_MARGIN * hop * channels * itemsize, fixed * DECODE_MARGIN

    def plan_decode(self, batch: int, latent_frames: int) -> DecodePlan:
        """Set the VAE's tiling and slicing for a call of `batch` variants of `latent_frames`."""
        vae = getattr(self.pipe, "vae", None)
        frame_bytes, fixed = self.decode_costs()
        plan = decode_plan(
            self.vae_tiling, batch, latent_frames, frame_bytes=frame_bytes, fixed_bytes=fixed,
            free_bytes=self._free_bytes(), tile_frames=int(getattr(vae, "tile_latent_min_length", 512)),
            tile_after_frames=int(TILE_AFTER_SECONDS * self.latents_per_second),
        )
        if vae is not None:
            vae.use_tiling = plan.tiling
            vae.use_slicing = plan.slicing
        self.last_decode = plan
        return plan

    # ------------------------------------------------------------------ the pipeline call

    def _call(self, batch: list[MusicRequest], progress: Progress | None, done_steps: int,
              total_steps: int) -> list[RenderedAudio]:
        import torch

        first = batch[0]
        task = first.task or "text2music"
        steps = self.steps_for(first)
        guidance = self.guidance_for(first)
        generators = [torch.Generator("cpu").manual_seed(int(r.seed) % (2**63)) for r in batch]
        kwargs: dict[str, Any] = {}
        if task == "text2music":
            duration = float(first.duration)
            frames = self.frames_for(duration)
        else:
            src = stereo(first.source_audio)  # the Oobleck VAE is stereo
            frames = src.shape[0]
            duration = frames / self.sample_rate
            kwargs.update(task_type=task, src_audio=torch.from_numpy(np.ascontiguousarray(src.T)))
            if task == "repaint":
                kwargs.update(repainting_start=float(first.repaint_start or 0.0),
                              repainting_end=float(first.repaint_end) if first.repaint_end is not None else -1.0)
            elif task == "cover":
                kwargs.update(audio_cover_strength=float(min(1.0, max(0.0, first.strength))))
            elif task == "extract":
                kwargs.update(track_name=first.track or "vocals")
        plan = self.plan_decode(len(batch), math.ceil(duration * self.latents_per_second))

        def on_step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
            if progress:
                progress((done_steps + step + 1) / total_steps * (1.0 - DECODE_SHARE))
            return callback_kwargs

        conditions: dict[str, Any] = dict(
            prompt=[self._prompt(r) for r in batch],
            lyrics=[self._lyrics(r) for r in batch],
            vocal_language=[self.language_for(r) for r in batch],
            bpm=int(first.bpm) if first.bpm else None,
            keyscale=(first.key or "").strip() or None,
            timesignature=time_signature_for_model(first.time_signature),
        )
        if self.planner is not None and task == "text2music":
            conditions.update(self._planned(batch, conditions))
        started = time.monotonic()
        try:
            out = self.pipe(
                audio_duration=duration,
                num_inference_steps=int(steps),
                guidance_scale=float(guidance) if guidance else 1.0,
                shift=self.shift,
                generator=generators,
                callback_on_step_end=on_step_end,
                output_type="pt",
                **conditions,
                **kwargs,
            )
        except Exception as exc:
            from . import is_cuda_oom

            if is_cuda_oom(exc) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise
        self.calls += 1
        audio = out.audios.detach().float().cpu()  # (batch, channels, frames)
        if audio.shape[1] == 1:
            audio = audio.repeat(1, 2, 1)
        audio = audio[:, :2, :frames]
        log.info(
            "%s: %d variant(s) of %.1f s in one call, %.1f s (%d steps, guidance %s, decode %s)",
            task, len(batch), duration, time.monotonic() - started, steps, guidance,
            ("tiled" if plan.tiling else "whole") + (", sliced" if plan.slicing else ""),
        )
        results = []
        for r, a in zip(batch, audio, strict=True):
            samples = fit(np.clip(a.numpy().T, -1.0, 1.0).astype(np.float32), frames)
            results.append(RenderedAudio(samples=np.ascontiguousarray(samples, dtype=np.float32),
                                         sample_rate=self.sample_rate, seed=int(r.seed), steps=int(steps),
                                         guidance=guidance))
        return results

    # ------------------------------------------------------------------ the planner (5 Hz LM)

    def _planned(self, batch: list[MusicRequest], conditions: dict[str, Any]) -> dict[str, Any]:
        """The pipeline arguments the planner sets for a text2music call, as upstream's
        `acestep/inference.py` `generate_music` hands the LM's output to the DiT: its audio codes
        (one string per variant: diffusers then conditions on them as upstream does, the cover
        path with the codes' latents), its caption (upstream's ``use_cot_caption``, on by
        default), and the bpm / key / time signature / language the request left open.

        Variants with the same caption and lyrics are planned together (the CoT once, the codes
        batched); the metadata of the first plan is the call's (the pipeline takes one bpm, key
        and time signature per call)."""
        members: dict[tuple[str, str, str], list[int]] = {}
        for i, r in enumerate(batch):
            key = (conditions["prompt"][i], conditions["lyrics"][i], conditions["vocal_language"][i])
            members.setdefault(key, []).append(i)
        prompts, languages, codes = list(conditions["prompt"]), list(conditions["vocal_language"]), [""] * len(batch)
        first_plan = None
        for key, idx in members.items():
            caption, lyrics, language = key
            given_language = bool(batch[idx[0]].vocal_language) or language == "unknown"
            plan = self.planner.plan([batch[i] for i in idx], caption=caption, lyrics=lyrics,
                                     language=language if given_language else None)
            first_plan = first_plan or plan
            for j, i in enumerate(idx):
                codes[i] = plan.audio_codes[j]
                prompts[i] = plan.get("caption") or caption
                planned_language = str(plan.get("language") or "").lower()
                if not given_language and planned_language in VOCAL_LANGUAGES - {"unknown"}:
                    languages[i] = planned_language
        update: dict[str, Any] = {"audio_codes": codes, "prompt": prompts, "vocal_language": languages}
        if conditions["bpm"] is None and first_plan.get("bpm"):
            update["bpm"] = int(first_plan.get("bpm"))
        if conditions["keyscale"] is None and first_plan.get("keyscale"):
            update["keyscale"] = str(first_plan.get("keyscale"))
        if conditions["timesignature"] is None and first_plan.get("timesignature"):
            update["timesignature"] = str(first_plan.get("timesignature"))
        self.last_plan = first_plan
        return update
