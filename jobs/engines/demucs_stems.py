"""Stems with Demucs (Hybrid Transformer Demucs, `htdemucs`; `htdemucs_6s` for six sources).

The model is loaded once per worker (`jobs.engines.load_engines`) from a Demucs local
repository under MODEL_DIR (``demucs/<name>/<name>.yaml`` and its ``.th`` packages, see
`core.weights`), with Demucs's own loader (`demucs.pretrained.get_model(name, repo=folder)`,
which checks each package's checksum), and kept on the worker's device.

`separate` does what Demucs's own `demucs.api.Separator.separate_tensor` does: the mix is
resampled to the model's rate (julius, as `demucs.audio.convert_audio`), normalised by the mean
and standard deviation of its mono sum, split into overlapping segments with the random-shift
trick (`demucs.apply.apply_model` with `split`, `overlap` and `shifts`), and de-normalised. The
sources are then resampled back to the song's rate and trimmed to its length.

Level matching: Demucs's estimates are at the mix's level but do not add up to it exactly (the
separation error, and anything above the model's Nyquist frequency lost by resampling). Every
named source (vocals, drums, bass, and guitar and piano on the six-source model) is kept as
Demucs estimated it, and "other" is the mix minus all of them, so the stems always sum back to
the mix (to float precision) and the residual lands in the one stem that means "the rest".
No stem is normalised: each is at the level it has in the song.

Importing this module does not import torch or demucs; the constructor does.
"""
from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from typing import Any

import numpy as np

from core.catalogue import STEMS
from jobs.audio import fit, stereo

from .base import EngineError, Progress

log = logging.getLogger(__name__)

__all__ = ["DemucsStems", "stem_order"]

RESIDUAL = "other"


def stem_order(sources: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The stems a model's sources give, in the catalogue's order (vocals, drums, bass, other),
    then any further sources (guitar, piano) in the model's order; "other" is always there."""
    names = list(STEMS) + [s for s in sources if s not in STEMS]
    return tuple(n for n in names if n in sources or n == RESIDUAL)


class DemucsStems:
    """A Demucs model resident on one device; `separate(mix, rate)` gives level-matched stems."""

    offline = False

    def __init__(self, path: Path | str, *, model_id: str | None = None, device: str = "cpu",
                 shifts: int = 1, overlap: float = 0.25, split: bool = True, seed: int = 0):
        from demucs.pretrained import get_model

        path = Path(path)
        self.bag = path.name  # the folder is named after the model (htdemucs, htdemucs_6s, ...)
        self.name = model_id or f"demucs/{self.bag}"
        self.device = str(device)
        self.shifts = int(shifts)
        self.overlap = float(overlap)
        self.split = bool(split)
        self.seed = int(seed)
        model = get_model(self.bag, repo=path)  # checks each package against its checksum
        model.eval()
        model.to(self.device)  # resident: apply_model keeps an on-device model where it is
        self.model = model
        self.sources: list[str] = list(model.sources)
        self.samplerate = int(model.samplerate)
        self.audio_channels = int(model.audio_channels)
        self.stems = stem_order(self.sources)
        self.parameters = sum(p.numel() for p in model.parameters())
        log.info("demucs %s: %d sources (%s) at %d Hz, %.1fM parameters on %s", self.bag, len(self.sources),
                 ", ".join(self.sources), self.samplerate, self.parameters / 1e6, self.device)

    # ------------------------------------------------------------------------------------
    def _chunks(self, frames: int) -> int:
        """How many model calls `apply_model` makes for `frames` samples (for progress)."""
        models = len(getattr(self.model, "models", [self.model]))
        passes = max(1, self.shifts)
        if not self.split:
            return models * passes
        segment = float(getattr(self.model, "max_allowed_segment", None) or getattr(self.model, "segment", 0) or 0)
        if not math.isfinite(segment) or segment <= 0:
            return models * passes
        seg_len = int(self.samplerate * segment)
        stride = max(1, int((1 - self.overlap) * seg_len))
        length = frames + (int(0.25 * self.samplerate) if self.shifts else 0)  # the mean shift
        return models * passes * max(1, math.ceil(length / stride))

    def separate(self, mix: np.ndarray, sample_rate: int, progress: Progress | None = None,
                 seed: int | None = None) -> dict[str, np.ndarray]:
        """The stems of `mix` (float32 (frames, channels) at `sample_rate`), each float32
        (frames, 2) at `sample_rate`, keyed by `self.stems`; together they sum to the mix."""
        import julius
        import torch
        from demucs.apply import apply_model

        src = stereo(np.asarray(mix, dtype=np.float32))
        frames = src.shape[0]
        if frames == 0:
            raise EngineError("there is no audio to split")
        wav = torch.from_numpy(np.ascontiguousarray(src.T))  # (2, frames), on the CPU
        if self.audio_channels == 1:
            wav = wav.mean(0, keepdim=True)
        if sample_rate != self.samplerate:
            wav = julius.resample_frac(wav, int(sample_rate), self.samplerate)

        total = self._chunks(wav.shape[-1])
        done = {"n": 0}

        def callback(info: dict[str, Any]) -> None:
            if progress is not None and info.get("state") == "end":
                done["n"] += 1
                progress(min(0.99, done["n"] / total))

        # As demucs.api.Separator.separate_tensor: normalise by the mono mix's mean and std.
        ref = wav.mean(0)
        mean, std = ref.mean(), ref.std() + 1e-8
        state = random.getstate()
        random.seed(self.seed if seed is None else seed)  # the shifts' offsets: a retry gives the same stems
        try:
            with torch.no_grad():
                out = apply_model(self.model, ((wav - mean) / std)[None], shifts=self.shifts, split=self.split,
                                  overlap=self.overlap, device=self.device, callback=callback,
                                  callback_arg={"audio_length": wav.shape[-1]})
        except Exception as exc:
            from . import is_cuda_oom

            if is_cuda_oom(exc):  # the job fails cleanly; free the cache for the next one
                torch.cuda.empty_cache()
            raise
        finally:
            random.setstate(state)
        out = (out * std + mean)[0]  # (sources, channels, frames at the model's rate)
        if sample_rate != self.samplerate:
            out = julius.resample_frac(out, self.samplerate, int(sample_rate))
        estimates = out.to("cpu", torch.float32).numpy()

        stems: dict[str, np.ndarray] = {}
        for name, track in zip(self.sources, estimates):
            track = fit(np.ascontiguousarray(track.T), frames)  # (frames, channels)
            stems[name] = stereo(track).astype(np.float32)
        residual = src.astype(np.float64)
        for name in self.stems:
            if name != RESIDUAL:
                residual -= stems[name]
        stems[RESIDUAL] = residual.astype(np.float32)  # the rest, and the separation error
        if progress is not None:
            progress(1.0)
        return {name: stems[name] for name in self.stems}
