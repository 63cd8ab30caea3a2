"""The three engine roles and the values that pass between them and the job.

Each role has a real (GPU) implementation and an offline (CPU, no weights) one; the job only
talks to these interfaces. Engines are built once per worker process and then called many times.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

Progress = Callable[[float], None]
"""Called with a fraction in [0, 1] as an engine works (may be throttled by the caller)."""

TrainProgress = Callable[[float, str], None]
"""Called by `train_style` with a fraction in [0, 1] and a short stage name ("analysing",
"training", "saving"...)."""


@dataclass
class StyleRef:
    """A trained style applied to one MusicRequest."""

    id: str
    hash: str  # sha256 of the adapter file: the cache / resident-adapter / batching key
    weight: float = 1.0  # adapter scale for this request (0..2)
    path: Path | None = None  # the adapter file on local disk (the job fetches it by hash into a cache)
    engine: str = ""  # the music engine that trained it (an engine refuses another engine's style)


@dataclass
class TrainingSample:
    """One song a style learns from."""

    audio: np.ndarray  # float32 (frames, channels) at `sample_rate`
    sample_rate: int
    caption: str  # style tags / caption
    lyrics: str
    duration: float  # seconds


@dataclass
class TrainedStyle:
    """What `train_style` returns: the adapter file and what to record about it."""

    adapter: bytes  # the adapter file's bytes (real engine: safetensors; offline: JSON)
    filename: str  # "adapter.safetensors" (real) or "adapter.json" (offline)
    config: dict  # e.g. the LoRA settings (r, lora_alpha, target_modules) and the base checkpoint
    report: dict  # {"loss": [[step, loss], ...], "steps": n, "seconds": s, "samples": k, "audio_seconds": t}


@dataclass
class WriteRequest:
    """What a person asked for. `mode` is description | lyrics | described_lyrics."""

    mode: str
    description: str = ""  # the whole-song description (description mode)
    prompt: str = ""  # style tags the person typed (lyrics / described_lyrics modes)
    lyrics: str = ""  # the person's own lyrics (lyrics mode)
    described_lyrics: str = ""  # what the lyrics should be about (described_lyrics mode)
    instrumental: bool = False


@dataclass
class SongSpec:
    """The writer's answer: everything the music and cover engines need."""

    title: str
    tags: str  # comma-separated style tags, e.g. "synthwave, 120 bpm, A minor, female vocals"
    lyrics: str  # "" when instrumental; sections tagged [verse]/[chorus]/[bridge]/[intro]/[outro]
    categories: list[str] = field(default_factory=list)  # 1-3 normalised names, e.g. ["Synthwave"]
    bpm: int | None = None
    key: str | None = None  # e.g. "A minor"
    time_signature: str | None = None  # e.g. "4/4"
    language: str | None = None  # ISO 639-1 code the lyrics are in, when the writer says (or "unknown")


@dataclass
class MusicRequest:
    """One variant to render. A batch is a list of these rendered in one engine call."""

    tags: str
    lyrics: str
    duration: float  # seconds
    seed: int
    instrumental: bool = False
    guidance: float | None = None  # None: the engine's default (turbo checkpoints use none)
    steps: int | None = None  # None: the engine's default
    bpm: int | None = None
    key: str | None = None
    time_signature: str | None = None
    # Studio tasks (retake is a plain text2music with another seed). `source_audio` is float32
    # (frames, channels) at the engine's sample rate; times are seconds into it.
    task: str = "text2music"  # text2music | repaint | cover | extract
    source_audio: np.ndarray | None = None
    repaint_start: float | None = None
    repaint_end: float | None = None
    strength: float = 1.0  # cover: how closely the result follows the source (0..1)
    track: str | None = None  # extract: which track (vocals, drums, bass, other)
    vocal_language: str | None = None  # language code of the lyrics ("en", "ja"...); None: the engine's setting
    style: StyleRef | None = None  # a trained style to render with (None: no adapter active)


@dataclass
class RenderedAudio:
    samples: np.ndarray  # float32, shape (frames, channels), within [-1, 1]
    sample_rate: int
    seed: int
    steps: int | None
    guidance: float | None
    stems: dict[str, np.ndarray] | None = None  # optional per-instrument tracks (same shape)


class Writer(Protocol):
    name: str  # e.g. "offline-writer" or "Qwen/Qwen2-7B-Instruct"
    offline: bool

    def write(self, request: WriteRequest) -> SongSpec: ...


class MusicEngine(Protocol):
    name: str
    offline: bool
    sample_rate: int

    def render(self, requests: list[MusicRequest], progress: Progress | None = None) -> list[RenderedAudio]:
        """Render every request in ONE batched call; result i belongs to request i."""
        ...


class CoverEngine(Protocol):
    name: str
    offline: bool

    def paint(self, title: str, tags: str, seed: int) -> bytes:
        """Return a PNG (512x512 unless the engine says otherwise)."""
        ...

    def paint_many(self, title: str, tags: str, seeds: list[int]) -> list[bytes]:
        """One PNG per seed (a song's variants), in one model call where the engine can;
        ``paint_many(t, g, [s])[0]`` is ``paint(t, g, s)``."""
        ...


class EngineError(RuntimeError):
    """An engine could not do its work for this request (the job fails, credits come back)."""


class Cancelled(Exception):
    """`train_style` saw `should_stop()` return True and stopped (the job releases the credits)."""
