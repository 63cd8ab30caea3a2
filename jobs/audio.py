"""Audio encoding for finished songs: the WAV master, a compressed stream copy, waveform peaks.

Engines hand over float32 samples shaped (frames, channels) within [-1, 1]; this module turns
them into bytes for storage and reads stored bytes back. It uses `soundfile` (libsndfile), whose
MP3 support (libsndfile >= 1.1) gives the stream copy; where a build lacks MP3 the stream copy
is Ogg Vorbis instead, and the caller stores whichever extension and MIME type come back.
"""
from __future__ import annotations

import io

import numpy as np
import soundfile as sf

__all__ = [
    "decode",
    "duration_of",
    "encode_stream",
    "encode_wav",
    "fit",
    "mp3_supported",
    "resample",
    "stereo",
    "waveform_peaks",
]

STREAM_MP3 = ("mp3", "audio/mpeg")
STREAM_OGG = ("ogg", "audio/ogg")


def _as_frames(samples: np.ndarray) -> np.ndarray:
    """float32 (frames, channels), finite and within [-1, 1]."""
    a = np.asarray(samples)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"samples must be (frames,) or (frames, channels), got shape {a.shape}")
    if a.shape[1] > a.shape[0] and a.shape[1] > 8:
        raise ValueError(f"samples look transposed: shape {a.shape} (expected frames first)")
    a = np.nan_to_num(a.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(a, -1.0, 1.0)


def stereo(x: np.ndarray) -> np.ndarray:
    """`x` as float32 (frames, 2): (frames,) and (frames, 1) are doubled, extra channels dropped.

    Returns a C-contiguous array (a new one unless `x` already is float32 stereo).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    if x.shape[1] == 1:
        x = np.repeat(x, 2, axis=1)
    return np.ascontiguousarray(x[:, :2])


def fit(x: np.ndarray, frames: int) -> np.ndarray:
    """(frames, channels) audio cut to `frames`, or padded with silence at the end to it.

    Keeps `x`'s dtype and channel count; a cut is a view of `x`.
    """
    if x.shape[0] >= frames:
        return x[:frames]
    return np.concatenate([x, np.zeros((frames - x.shape[0], x.shape[1]), dtype=x.dtype)])


def resample(x: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    """(frames, channels) audio from `sr_from` to `sr_to` Hz by linear interpolation, as float32
    (frames * sr_to / sr_from rounded, channels); `x` itself when the rates match or it is empty."""
    if sr_from == sr_to or x.shape[0] == 0:
        return x
    n = int(round(x.shape[0] * sr_to / sr_from))
    t_new = np.arange(n) * (sr_from / sr_to)
    t_old = np.arange(x.shape[0])
    return np.stack([np.interp(t_new, t_old, x[:, c]) for c in range(x.shape[1])], axis=1).astype(np.float32)


def encode_wav(samples: np.ndarray, sr: int) -> bytes:
    """A 16-bit PCM WAV file (the downloadable master)."""
    buf = io.BytesIO()
    sf.write(buf, _as_frames(samples), int(sr), format="WAV", subtype="PCM_16")
    return buf.getvalue()


def mp3_supported() -> bool:
    """Whether this libsndfile build can write MP3."""
    try:
        return "MP3" in sf.available_formats() and "MPEG_LAYER_III" in sf.available_subtypes("MP3")
    except Exception:  # pragma: no cover - very old soundfile
        return False


STREAM_PEAK = 0.89
"""Peak level of the stream copy (-1 dBFS): lossy codecs overshoot, and a decoder clips there."""


def encode_stream(samples: np.ndarray, sr: int) -> tuple[bytes, str, str]:
    """A compressed copy for the player: ``(data, extension, mime)``.

    MP3 when libsndfile can write it (at 44.1/48 kHz or the other MPEG rates), else Ogg Vorbis.
    Audio peaking above -1 dBFS is turned down to it first; lossy codecs still overshoot on
    harsh material, so the copy is decoded and, where it would clip, encoded again quieter.
    """
    frames = _as_frames(samples)
    peak = float(np.abs(frames).max()) if frames.size else 0.0
    if peak > STREAM_PEAK:
        frames = frames * np.float32(STREAM_PEAK / peak)
    data, ext, mime = _encode_lossy(frames, int(sr))
    for _ in range(2):
        decoded, _sr = decode(data)
        over = float(np.abs(decoded).max()) if decoded.size else 0.0
        if over <= 0.999:
            break
        frames = frames * np.float32(0.97 / over)
        data, ext, mime = _encode_lossy(frames, int(sr))
    return data, ext, mime


def _encode_lossy(frames: np.ndarray, sr: int) -> tuple[bytes, str, str]:
    if mp3_supported() and sr in (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000):
        buf = io.BytesIO()
        try:
            # compression_level 0.0 is the highest bit rate; 0.3 gives about 180 kbit/s VBR.
            sf.write(buf, frames, sr, format="MP3", subtype="MPEG_LAYER_III", compression_level=0.3)
            data = buf.getvalue()
            if data:
                return data, *STREAM_MP3
        except (sf.LibsndfileError, RuntimeError, TypeError):
            pass
    buf = io.BytesIO()
    sf.write(buf, frames, sr, format="OGG", subtype="VORBIS")
    return buf.getvalue(), *STREAM_OGG


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Read any stored audio (WAV, MP3, OGG, FLAC) into float32 (frames, channels) and its rate."""
    samples, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples, int(sr)


def duration_of(data: bytes) -> float:
    """Length in seconds of stored audio (header first; decodes when the header has no count)."""
    try:
        info = sf.info(io.BytesIO(data))
        if info.frames > 0 and info.samplerate > 0:
            return info.frames / info.samplerate
    except (sf.LibsndfileError, RuntimeError):
        pass
    samples, sr = decode(data)
    return samples.shape[0] / sr if sr else 0.0


def waveform_peaks(samples: np.ndarray, n: int = 160) -> list[float]:
    """`n` bars for a waveform drawing: each bucket's max absolute sample (all channels), 0..1.

    Rounded to 3 decimals. Buckets split the frames evenly; with fewer frames than buckets the
    missing buckets are 0.
    """
    if n <= 0:
        return []
    a = np.asarray(samples, dtype=np.float32)
    if a.ndim == 2:
        a = np.abs(a).max(axis=1) if a.shape[1] else np.zeros(a.shape[0], np.float32)
    else:
        a = np.abs(a.reshape(-1))
    a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=1.0)
    frames = a.shape[0]
    if frames == 0:
        return [0.0] * n
    edges = np.linspace(0, frames, n + 1).astype(np.int64)
    starts, ends = edges[:-1], edges[1:]
    out = np.zeros(n, dtype=np.float64)
    nonempty = ends > starts
    if nonempty.any():
        out[nonempty] = np.maximum.reduceat(a, starts[nonempty])
        # reduceat runs each bucket up to the next given start, which is the bucket's own end
        # (the edges are contiguous and empty buckets start where they end).
    out = np.clip(out, 0.0, 1.0)
    return [round(float(v), 3) for v in out]
