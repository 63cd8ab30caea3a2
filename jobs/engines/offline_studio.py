"""Studio tasks on the offline arranger: repaint, cover (remix) and extract (stems).

`OfflineStudio` wraps an `OfflineMusic` and speaks the same task vocabulary as the real engine
(`MusicRequest.task`): the job splices, crossfades and checks durations the same way for both.

- text2music: the arranger as is (a retake is this with another seed).
- repaint: a fresh arrangement of the whole source length in the request's style and seed; the
  job keeps only the repainted section of it (and for an extend, the added tail).
- cover: a new arrangement in the request's style over the source's length that follows the
  source's loudness contour; `strength` (0..1) is how much of the source stays audible.
- extract: the arranger's own tracks when the song can be re-rendered exactly (its request is
  known and the re-render matches the stored audio), else an approximate spectral split
  (percussive / low / voice band / rest) whose four tracks still sum to the mix.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from core.catalogue import STEMS
from jobs.audio import fit, stereo

from .base import EngineError, MusicRequest, Progress, RenderedAudio
from .offline_music import OfflineMusic

__all__ = ["OfflineStudio", "spectral_split"]


def _mono(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=1) if x.ndim == 2 else x


def _envelope(x: np.ndarray, sr: int, window: float = 0.4) -> np.ndarray:
    """Smoothed RMS contour of `x` (frames,) per frame."""
    n = max(1, int(sr * window))
    power = _mono(x).astype(np.float64) ** 2
    c = np.concatenate([[0.0], np.cumsum(power)])
    half = n // 2
    idx = np.arange(len(power))
    lo = np.clip(idx - half, 0, len(power))
    hi = np.clip(idx + half + 1, 0, len(power))
    return np.sqrt((c[hi] - c[lo]) / np.maximum(1, hi - lo))


def spectral_split(mix: np.ndarray, sr: int) -> dict[str, np.ndarray]:
    """An approximate four-way split of any audio with soft spectral masks (numpy only).

    Percussive energy (smooth across frequency, short in time) goes to "drums"; of the rest,
    below 180 Hz is "bass", 250-3500 Hz is shared between "vocals" and "other", the remainder is
    "other". "other" is the mix minus the three, so the tracks sum to the mix exactly.
    """
    mix = stereo(mix)
    n_fft, hop = 2048, 512
    window = np.hanning(n_fft).astype(np.float32)
    frames = mix.shape[0]
    pad = np.pad(mix, ((n_fft, n_fft + hop), (0, 0)))
    count = 1 + (pad.shape[0] - n_fft) // hop
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    out = {name: np.zeros_like(pad) for name in ("drums", "bass", "vocals")}
    norm = np.zeros(pad.shape[0], dtype=np.float32)
    low = (freqs < 180).astype(np.float32)[:, None]
    voice = ((freqs >= 250) & (freqs <= 3500)).astype(np.float32)[:, None] * 0.5

    def box(a: np.ndarray, n: int, axis: int) -> np.ndarray:
        c = np.cumsum(a, axis=axis)
        c = np.concatenate([np.zeros_like(np.take(c, [0], axis=axis)), c], axis=axis)
        length = a.shape[axis]
        idx = np.arange(length)
        lo, hi = np.clip(idx - n // 2, 0, length), np.clip(idx + n // 2 + 1, 0, length)
        return (np.take(c, hi, axis=axis) - np.take(c, lo, axis=axis)) / (hi - lo).reshape(
            [-1 if i == axis else 1 for i in range(a.ndim)])

    for ch in range(2):
        idx = np.arange(n_fft)[None, :] + hop * np.arange(count)[:, None]
        spec = np.fft.rfft(pad[idx, ch] * window, axis=1).T  # (freq, time)
        mag = np.abs(spec)
        harm = box(mag, 17, axis=1)  # smooth in time: sustained partials survive
        perc = box(mag, 17, axis=0)  # smooth in frequency: broadband hits survive
        p_mask = perc ** 2 / (perc ** 2 + harm ** 2 + 1e-12)
        h_mask = 1.0 - p_mask
        masks = {"drums": p_mask, "bass": h_mask * low, "vocals": h_mask * voice}
        for name, mask in masks.items():
            frames_t = np.fft.irfft(spec * mask, n=n_fft, axis=0).T * window  # (time, n_fft)
            buf = out[name][:, ch]
            np.add.at(buf, idx, frames_t.astype(np.float32))
        if ch == 0:
            np.add.at(norm, idx, np.broadcast_to(window ** 2, idx.shape))
    norm = np.maximum(norm, 1e-6)[:, None]
    stems = {name: (buf / norm)[n_fft:n_fft + frames].astype(np.float32) for name, buf in out.items()}
    stems["other"] = (mix - stems["drums"] - stems["bass"] - stems["vocals"]).astype(np.float32)
    return {name: stems[name] for name in STEMS}


class OfflineStudio:
    """The offline arranger with the studio tasks (see the module docstring)."""

    offline = True
    last_extract = ""  # how the last extract was made: "arranger tracks" | "spectral split"

    def __init__(self, music: OfflineMusic):
        self.music = music
        self.name = music.name
        self.sample_rate = music.sample_rate

    def render(self, requests: list[MusicRequest], progress: Progress | None = None) -> list[RenderedAudio]:
        total = max(1, len(requests))
        out: list[RenderedAudio] = []
        for i, req in enumerate(requests):
            sub = (lambda f, i=i: progress((i + f) / total)) if progress else None
            out.append(self._one(req, sub))
        if progress:
            progress(1.0)
        return out

    def _plain(self, req: MusicRequest, **changes) -> MusicRequest:
        return replace(req, task="text2music", source_audio=None, repaint_start=None, repaint_end=None,
                       track=None, **changes)

    def _one(self, req: MusicRequest, progress: Progress | None) -> RenderedAudio:
        if req.task == "text2music":
            return self.music.render([req], progress)[0]
        if req.source_audio is None:
            raise EngineError(f"the {req.task} task needs source audio")
        src = stereo(req.source_audio)
        frames = src.shape[0]
        duration = frames / self.sample_rate
        if req.task == "repaint":
            new = self.music.render([self._plain(req, duration=duration)], progress)[0]
            new.samples = fit(new.samples, frames)
            return new
        if req.task == "cover":
            new = self.music.render([self._plain(req, duration=duration)], progress)[0]
            fresh = fit(new.samples, frames)
            strength = float(np.clip(req.strength, 0.0, 1.0))
            # follow the source's loudness contour as strongly as asked
            env_src, env_new = _envelope(src, self.sample_rate), _envelope(fresh, self.sample_rate)
            gain = np.clip(env_src / np.maximum(env_new, 1e-4), 0.0, 4.0)
            gain = (1.0 - strength) + strength * gain
            mixed = fresh * gain[:, None].astype(np.float32) + src * np.float32(0.5 * strength)
            peak = float(np.abs(mixed).max()) or 1.0
            mixed = mixed * np.float32(min(1.0, 0.89 / peak))
            new.samples = mixed.astype(np.float32)
            return new
        if req.task == "extract":
            stems = self.extract(src, None)
            track = req.track or "vocals"
            if track not in stems:
                raise EngineError(f"unknown track {track!r}")
            return RenderedAudio(samples=stems[track], sample_rate=self.sample_rate, seed=req.seed,
                                 steps=None, guidance=None, stems=stems)
        raise EngineError(f"the offline engine does not know the {req.task!r} task")

    def extract(self, source: np.ndarray, original: MusicRequest | None) -> dict[str, np.ndarray]:
        """The four tracks of `source`: the arranger's own when `original` re-renders to it,
        else the spectral split. Each (frames, 2) float32; together they sum to the source."""
        src = stereo(source)
        if original is not None:
            try:
                stems = self.music.render_stems(self._plain(original))
            except EngineError:
                stems = None
            if stems is not None:
                stems = {k: fit(stereo(v), src.shape[0]) for k, v in stems.items()}
                total = sum(stems.values())
                err = float(np.sqrt(np.mean((total - src) ** 2)))
                ref = float(np.sqrt(np.mean(src ** 2))) or 1.0
                if err / ref < 0.02:  # it is this song (the stored master is 16-bit)
                    self.last_extract = "arranger tracks"
                    return stems
        self.last_extract = "spectral split"
        return spectral_split(src, self.sample_rate)
