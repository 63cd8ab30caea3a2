"""The steps every job shares, on one small context object.

A `Job` holds what one run of a generation needs — the generation, its unfinished songs, the
stage timer, the engines, the storage and the settings — and the steps that the generation job
(`jobs.generate`) and the studio operations (`jobs.studio`) run alike:

    job.stage(name, percent)      progress on the song rows (and a cancel seen here stops the job)
    job.render(music, requests)   every variant in one engine call, progress per step
    job.store(requests, audios, spec, cover=..., extra_files=...)
                                  cover -> encode -> upload -> core.songs.finish_song per song
                                  (after the cover, in the background when the worker overlaps
                                  jobs: `handoff`)

Every database write goes through `jobs.dbretry.db_retry`, so a short database outage delays
a job instead of failing its songs.

Progress is written only to songs still `processing` and owned by this run (`attempt`), so a
song failed meanwhile (by the reconciler or a cancel) is never brought back, and a run that was
presumed dead and replaced stops at its next step (`Superseded`) without touching the retry.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from core import catalogue, dispatch
from core.songs import finish_song
from core.storage import with_retries
from jobs import audio as audio_mod
from jobs.dbretry import db_retry
from jobs.engines.base import EngineError, MusicRequest, SongSpec
from models import Generation, Song, utcnow

GUIDANCE_BY_VARIANT = (7.5, 15.0, 10.0, 12.5)  # the original's pair first
PROGRESS = {"writing": 5, "composing": 10, "painting": 78, "encoding": 86, "uploading": 92}


class Cancelled(Exception):
    """The owner cancelled this generation; the job stops at the next step or stage."""


class Superseded(Exception):
    """This run no longer owns its songs (the reconciler gave them to a new run, or failed
    them): the job stops without writing anything more."""


class StageTimer:
    """Seconds spent per stage: `with timer("music"): ...` adds to `timer.seconds["music"]`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, stage: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[stage] = timer.seconds.get(stage, 0.0) + time.perf_counter() - self.t

        return _Ctx()


def guidance_for(variant: int) -> float:
    return GUIDANCE_BY_VARIANT[variant % len(GUIDANCE_BY_VARIANT)]


def _encode(rendered) -> dict:
    stream, ext, mime = audio_mod.encode_stream(rendered.samples, rendered.sample_rate)
    return {"wav": audio_mod.encode_wav(rendered.samples, rendered.sample_rate), "stream": stream, "ext": ext,
            "mime": mime, "peaks": audio_mod.waveform_peaks(rendered.samples),
            "duration": rendered.samples.shape[0] / float(rendered.sample_rate)}


@dataclass
class Job:
    gen: Generation
    songs: list[Song]
    engines: Any
    storage: Any
    config: Any
    attempt: int = 1
    timer: StageTimer = field(default_factory=StageTimer)
    handoff: Callable[[Callable[[], int]], None] | None = None  # runs the finishing in the background
    gpu_started: float = field(default_factory=time.time)  # the job's GPU window (wall clock), for
    gpu_done: float | None = None  # the idle-gap figure: claim .. covers painted

    def _owned(self):
        return Song.id.in_([s.id for s in self.songs]) & (Song.status == "processing") & (Song.attempt == self.attempt)

    def stage(self, stage: str, progress: int | None = None) -> None:
        """Write the stage and percent to the songs; raise Cancelled when the owner asked to stop."""
        if self.songs and dispatch.cancel_requested(self.config, self.gen.id):
            raise Cancelled()
        pct = PROGRESS.get(stage, 0) if progress is None else progress

        def write() -> int:
            now = utcnow()
            return Song.update(stage=stage, progress=pct, updated_at=now, heartbeat_at=now).where(
                self._owned()).execute()

        if self.songs and not db_retry(write):
            raise Superseded()

    def render(self, music, requests: list[MusicRequest]) -> list:
        """Render every request in one engine call, writing throttled progress (and seeing a
        cancel) at each step; one result per song."""
        last = {"t": 0.0, "p": -1}
        low, high = PROGRESS["composing"], PROGRESS["painting"]

        def progress(fraction: float) -> None:
            pct = low + int((high - low) * max(0.0, min(1.0, fraction)))
            now_t = time.monotonic()
            if pct != last["p"] and (now_t - last["t"] > 0.5 or fraction >= 1.0):
                last.update(t=now_t, p=pct)
                self.stage("composing", pct)

        self._keep_seeds(requests)
        with self.timer("music"):
            audios = music.render(requests, progress=progress)
        if len(audios) != len(self.songs):
            raise EngineError(f"the music engine returned {len(audios)} result(s) for {len(self.songs)} song(s)")
        return audios

    def _keep_seeds(self, requests: list[MusicRequest]) -> None:
        """Store each song's seed before it is rendered, so a retry renders the same song."""
        for song, req in zip(self.songs, requests):
            if song.seed is None:
                db_retry(lambda: Song.update(seed=req.seed).where((Song.id == song.id) & Song.seed.is_null()).execute())
                song.seed = req.seed

    def store(self, requests: list[MusicRequest], audios: list, spec: SongSpec, *, cover: bytes | None = None,
              extra_files: Callable[[Song], list] | None = None) -> int | None:
        """Cover, then encode, upload and finish each rendered song; returns how many were
        finished, or None when the finishing was handed to the background (`handoff`).

        `spec` gives the title, tags, lyrics and categories the songs get; `cover` (PNG bytes)
        is used for every song instead of painting one; `extra_files(song)` lists more
        (key, bytes, type) to upload with a song. The covers are the job's last GPU work
        (all variants in one call where the engine can); what follows runs on CPU and network,
        so with a `handoff` the worker takes its next job while these files are written."""
        self.stage("painting")
        with self.timer("cover"):
            if cover is not None:
                covers = [cover] * len(requests)
            elif hasattr(self.engines.cover, "paint_many"):
                covers = self.engines.cover.paint_many(spec.title, spec.tags, [r.seed for r in requests])
            else:
                covers = [self.engines.cover.paint(spec.title, spec.tags, r.seed) for r in requests]
        self.gpu_done = time.time()

        def finish() -> int:
            return self._finish(audios, covers, spec, extra_files)

        if self.handoff is not None:
            self.handoff(finish)
            return None
        return finish()

    def _finish(self, audios: list, covers: list[bytes], spec: SongSpec,
                extra_files: Callable[[Song], list] | None) -> int:
        """Encode, upload and settle each song. The encodes (the MP3 encoder is the costly
        part) and the uploads run side by side in threads, which the codec and the network
        calls allow (they release the GIL)."""
        engines, storage, timer, todo = self.engines, self.storage, self.timer, self.songs
        self.stage("encoding")
        workers = max(1, min(len(todo), os.cpu_count() or 1))
        written: dict[str, list[str]] = {}
        with ThreadPoolExecutor(max_workers=workers) as pool:
            with timer("encode"):
                encoded = list(pool.map(_encode, audios))
            uploads = []
            for song, enc, cover_png in zip(todo, encoded, covers):
                enc["keys"] = catalogue.song_keys(song.user_id, song.id, enc["ext"], self.attempt)
                files = [(enc["keys"]["audio_key"], enc["wav"], "audio/wav"),
                         (enc["keys"]["stream_key"], enc["stream"], enc["mime"]),
                         (enc["keys"]["cover_key"], cover_png, "image/png")]
                files += extra_files(song) if extra_files else []
                written[song.id] = [key for key, _, _ in files]
                uploads += files
            self.stage("uploading")
            with timer("upload"):
                list(pool.map(lambda f: with_retries(lambda: storage.put(*f)), uploads))
        done = 0
        for song, rendered, enc in zip(todo, audios, encoded):
            with timer("db"):
                finished = db_retry(lambda: finish_song(
                    song, title=spec.title, attempt=self.attempt, categories=spec.categories, tags=spec.tags,
                    lyrics=spec.lyrics, seed=rendered.seed, guidance=rendered.guidance, steps=rendered.steps,
                    engine=engines.music.name, writer_engine=engines.writer.name, cover_engine=engines.cover.name,
                    offline=bool(engines.music.offline), duration=round(enc["duration"], 3), peaks=enc["peaks"],
                    language=spec.language or "", **enc["keys"]))
            if finished:
                done += 1
            else:  # failed or retried meanwhile: this run's files are nobody's, drop them
                for key in written[song.id]:
                    storage.delete(key)
        return done
