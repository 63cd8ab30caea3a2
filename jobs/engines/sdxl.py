"""The real cover engine: SDXL-Turbo (diffusers `AutoPipelineForText2Image`).

Loaded once (fp16 on CUDA, float32 on CPU; the ``fp16`` weight files when the folder has them),
it paints 512x512 covers in 1-4 steps without guidance, from the song's title and tags: all of a
song's variants in ONE pipeline call (`paint_many`, one seeded generator per image).

SDXL pipelines have no safety checker of their own (their output has no NSFW flag). When a
safety checker folder is given (diffusers' `StableDiffusionSafetyChecker`, the
``CompVis/stable-diffusion-safety-checker`` weights: CLIP ViT-L/14 image embeddings compared
with 17 concept embeddings), every painted image is checked in one batch and a flagged one is
replaced by the offline painter's cover; without one, covers are not filtered (the log and
`describe()` say so). A prompt with blocked words, a blank (black or flat) image or any failure
other than a fatal CUDA error also gives the offline painter's cover, so a song always gets one.
"""
from __future__ import annotations

import io
import logging
import re
import time
from pathlib import Path
from typing import Any

from core.weights import weights_variant

from .offline_cover import PNG_COMPRESS_LEVEL

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
        safety_checker: a `StableDiffusionSafetyChecker` folder (``config.json``, weights and
            ``preprocessor_config.json``); a folder that is not there leaves covers unfiltered
            (logged), None means no filter was asked for.
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
        safety_checker: str | Path | None = None,
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
        self.safety_checker = None
        self.feature_extractor = None
        self.safety_checker_path = Path(safety_checker) if safety_checker else None
        if self.safety_checker_path is not None:
            if (self.safety_checker_path / "config.json").exists():
                self._load_safety_checker(self.safety_checker_path)
            else:
                log.warning("cover safety checker not found in %s: covers are NOT filtered", self.safety_checker_path)
        self.load_seconds = time.monotonic() - started
        self.fallbacks = 0
        self.flagged = 0  # images the safety checker flagged (each replaced by the offline cover)
        self.calls = 0  # pipeline calls made (one per paint_many)
        self.last_seconds = 0.0
        self._offline = None
        log.info(
            "cover engine %s loaded on %s (%s%s) in %.1f s: %d step(s), %dx%d, %s",
            self.model_id, self.device, str(self.dtype).replace("torch.", ""),
            ", offloaded" if self.offload else "", self.load_seconds, self.steps, self.size, self.size,
            "safety checker on" if self.filtered else "covers not filtered",
        )

    @property
    def filtered(self) -> bool:
        """Whether painted images go through the safety checker."""
        return self.safety_checker is not None

    def _load_safety_checker(self, folder: Path) -> None:
        """Load diffusers' `StableDiffusionSafetyChecker` and its CLIP image processor (a folder
        that is there but does not load raises: a worker asked to filter covers does not quietly
        stop filtering)."""
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        # With offload the checker stays on the CPU (float32): about 0.3 B parameters.
        device = self.device if not self.offload else None
        dtype = self.dtype if device is not None else None
        checker = StableDiffusionSafetyChecker.from_pretrained(str(folder), local_files_only=True,
                                                               **({"dtype": dtype} if dtype is not None else {}))
        checker.eval()
        if device is not None:
            checker.to(device)
        self.safety_checker = checker
        self.feature_extractor = CLIPImageProcessor.from_pretrained(str(folder), local_files_only=True)

    def _flags(self, images: list) -> list[bool]:
        """Per image: flagged by the safety checker (all False without one)."""
        if self.safety_checker is None:
            return [False] * len(images)
        import numpy as np

        param = next(self.safety_checker.parameters())
        inputs = self.feature_extractor([im.convert("RGB") for im in images], return_tensors="pt")
        clip_input = inputs.pixel_values.to(device=param.device, dtype=param.dtype)
        _, flags = self.safety_checker(clip_input=clip_input, images=[np.asarray(im) for im in images])
        return [bool(f) for f in flags]

    def _fallback(self, title: str, tags: str, seed: int, why: str) -> bytes:
        self.fallbacks += 1
        log.warning("cover %r: %s; the offline painter's cover is used", title, why)
        if self._offline is None:
            from .offline_cover import OfflineCover

            self._offline = OfflineCover()
        return self._offline.paint(title, tags, seed)

    def paint(self, title: str, tags: str, seed: int) -> bytes:
        """A PNG cover (size x size) for a song."""
        return self.paint_many(title, tags, [seed])[0]

    def paint_many(self, title: str, tags: str, seeds: list[int]) -> list[bytes]:
        """One PNG cover per seed, painted in ONE pipeline call (one seeded generator per image)
        and checked in one safety-checker batch; image i is what ``paint(title, tags, seeds[i])``
        paints. An image that is flagged or blank is replaced by the offline painter's cover for
        its seed; a blocked prompt or a failed call gives the offline covers for all."""
        import torch

        from . import is_cuda_oom, is_fatal_cuda_error

        seeds = [int(s) for s in seeds]
        if not seeds:
            return []
        prompt = cover_prompt(title, tags)
        if _BLOCKED_WORDS.search(prompt):
            return [self._fallback(title, tags, s, "the prompt asks for unsafe content") for s in seeds]
        started = time.monotonic()
        try:
            generators = [torch.Generator("cpu").manual_seed(s % (2**63)) for s in seeds]
            out = self.pipe(
                prompt=prompt,
                num_images_per_prompt=len(seeds),
                num_inference_steps=self.steps,
                guidance_scale=0.0,
                width=self.size,
                height=self.size,
                generator=generators,
            )
            self.calls += 1
            images = list(out.images)
            flags = self._flags(images)
        except Exception as exc:
            if is_fatal_cuda_error(exc):
                raise
            if is_cuda_oom(exc) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            why = f"painting failed ({type(exc).__name__}: {exc})"
            return [self._fallback(title, tags, s, why) for s in seeds]
        self.last_seconds = time.monotonic() - started
        pngs = []
        for seed, image, flagged in zip(seeds, images, flags, strict=True):
            if flagged:
                self.flagged += 1
                pngs.append(self._fallback(title, tags, seed, "the safety checker flagged the image"))
            elif is_blank(image):
                pngs.append(self._fallback(title, tags, seed, "the image came out blank"))
            else:
                buf = io.BytesIO()
                image.convert("RGB").save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
                pngs.append(buf.getvalue())
        return pngs

    def describe(self) -> dict[str, Any]:
        """Facts for logs and the UI."""
        return {
            "model": self.model_id,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "steps": self.steps,
            "size": self.size,
            "offload": self.offload,
            "filtered": self.filtered,
            "safety_checker": str(self.safety_checker_path.name) if self.filtered else None,
        }
