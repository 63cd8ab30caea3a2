"""The real cover engine: SDXL-Turbo (diffusers `AutoPipelineForText2Image`).

Loaded once (fp16 on CUDA, float32 on CPU; the ``fp16`` weight files when the folder has them),
it paints a 512x512 cover in 1-4 steps without guidance, from the song's title and tags. A
blocked prompt, an image flagged NSFW, a blank (black or flat) image or any failure other than
a fatal CUDA error gives the offline painter's cover instead, so a song always gets one.
"""
from __future__ import annotations

import io
import logging
import re
import time
from pathlib import Path
from typing import Any

from core.weights import weights_variant

log = logging.getLogger(__name__)

DEFAULT_STEPS = 1  # SDXL-Turbo is distilled for single-step sampling; 2-4 add detail
DEFAULT_SIZE = 512  # the resolution SDXL-Turbo was trained at
MAX_TAGS_IN_PROMPT = 8

_BLOCKED_WORDS = re.compile(
    r"\b(nsfw|nude|nudity|naked|porn\w*|sexual|sex|explicit|hentai|gore|gory|erotic\w*|fetish\w*|"
    r"topless|genitals?|beheading|decapitat\w*)\b",
    re.I,
)


def cover_prompt(title: str, tags: str) -> str:
    """The text-to-image prompt for a song: the title's mood and the first few style tags."""
    tag_list = [t.strip() for t in (tags or "").split(",") if t.strip()]
    tag_list = [t for t in tag_list if not re.search(r"\d+\s*bpm|\b(major|minor)\b|^\d+/\d+$", t, re.I)]
    style = ", ".join(tag_list[:MAX_TAGS_IN_PROMPT])
    title = re.sub(r"\s+", " ", title or "").strip()
    parts = ["album cover art"]
    if title:
        parts.append(f'evoking "{title}"')
    if style:
        parts.append(style)
    parts.append("striking composition, rich colour, detailed illustration, no text")
    return ", ".join(parts)


def is_blank(image: Any, threshold: float = 2.0) -> bool:
    """True for an all-black or flat image (what a safety filter or fp16 overflow leaves)."""
    import numpy as np

    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    return bool(arr.std() < threshold or arr.max() < 8.0)


class SdxlCover:
    """CoverEngine on SDXL-Turbo.

    Args:
        path: the pipeline folder (diffusers layout).
        pipeline: an SDXL pipeline already built and placed on `device`, instead of a folder
            (benchmarks use the real architecture with random weights).
        model_id: the name reported for covers.
        device: ``"cuda"`` or ``"cpu"``.
        offload: keep the pipeline in CPU memory, moving each part to the GPU only while it
            paints (diffusers model CPU offload) — frees ~7 GB of VRAM for a second or so per cover.
        steps: denoising steps, clamped to 1-4 (default 1).
        size: image width and height in pixels (default 512).
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
        size: int | None = None,
    ) -> None:
        import torch
        from diffusers import AutoPipelineForText2Image

        if path is None and pipeline is None:
            raise ValueError("SdxlCover needs a model folder or a pipeline")
        self.path = Path(path) if path is not None else None
        self.model_id = model_id or (self.path.name if self.path else "sdxl")
        self.name = self.model_id
        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.offload = bool(offload and self.device.type == "cuda")
        started = time.monotonic()
        if pipeline is None:
            variant = weights_variant(self.path, "unet", "fp16")
            pipeline = AutoPipelineForText2Image.from_pretrained(
                str(self.path), dtype=self.dtype, variant=variant, local_files_only=True
            )
            if self.offload:
                pipeline.enable_model_cpu_offload(device=self.device)
            else:
                pipeline.to(self.device)
        else:
            self.dtype = pipeline.unet.dtype
        pipeline.set_progress_bar_config(disable=True)
        self.pipe = pipeline
        self.steps = max(1, min(4, int(steps or DEFAULT_STEPS)))
        self.size = int(size or DEFAULT_SIZE)
        self.size -= self.size % 8
        self.load_seconds = time.monotonic() - started
        self.fallbacks = 0
        self.last_seconds = 0.0
        self._offline = None
        log.info(
            "cover engine %s loaded on %s (%s%s) in %.1f s: %d step(s), %dx%d",
            self.model_id, self.device, str(self.dtype).replace("torch.", ""),
            ", offloaded" if self.offload else "", self.load_seconds, self.steps, self.size, self.size,
        )

    def _fallback(self, title: str, tags: str, seed: int, why: str) -> bytes:
        self.fallbacks += 1
        log.warning("cover %r: %s; the offline painter's cover is used", title, why)
        if self._offline is None:
            from .offline_cover import OfflineCover

            self._offline = OfflineCover()
        return self._offline.paint(title, tags, seed)

    def paint(self, title: str, tags: str, seed: int) -> bytes:
        """A PNG cover (size x size) for a song."""
        import torch

        from . import is_cuda_oom, is_fatal_cuda_error

        prompt = cover_prompt(title, tags)
        if _BLOCKED_WORDS.search(prompt):
            return self._fallback(title, tags, seed, "the prompt asks for unsafe content")
        started = time.monotonic()
        try:
            generator = torch.Generator("cpu").manual_seed(int(seed) % (2**63))
            out = self.pipe(
                prompt=prompt,
                num_inference_steps=self.steps,
                guidance_scale=0.0,
                width=self.size,
                height=self.size,
                generator=generator,
            )
        except Exception as exc:
            if is_fatal_cuda_error(exc):
                raise
            if is_cuda_oom(exc) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            return self._fallback(title, tags, seed, f"painting failed ({type(exc).__name__}: {exc})")
        self.last_seconds = time.monotonic() - started
        flagged = getattr(out, "nsfw_content_detected", None)
        if flagged and any(flagged):
            return self._fallback(title, tags, seed, "the image was flagged NSFW")
        image = out.images[0]
        if is_blank(image):
            return self._fallback(title, tags, seed, "the image came out blank")
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG", optimize=True)
        return buf.getvalue()

    def describe(self) -> dict[str, Any]:
        """Facts for logs and the UI."""
        return {
            "model": self.model_id,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "steps": self.steps,
            "size": self.size,
            "offload": self.offload,
        }
