"""The generation job: writer -> music (all variants in one batched call) -> cover -> encode ->
peaks -> upload -> processed. Progress goes to the Song rows as it goes; the database is the
source of truth, so the job is idempotent (finished songs are skipped) and every failure settles
each unfinished song exactly once: failed with a message and its credit released.
"""
from __future__ import annotations

import logging
import os
import secrets
import time

from rq.timeouts import JobTimeoutException

import models
from jobs import dispatch, runtime
from jobs import metrics
from jobs.engines.base import EngineError, MusicRequest, SongSpec, TransientError, WriteRequest
from jobs.storage import get_storage, song_prefix, with_retries
from models import Category, Generation, Song, SongCategory, utcnow

log = logging.getLogger("tunesmith.job")

GUIDANCE_BY_VARIANT = (7.5, 15.0, 10.0, 12.5)  # the original's pair first
PROGRESS = {"writing": 5, "composing": 10, "painting": 78, "encoding": 86, "uploading": 92}


class Cancelled(Exception):
    """The owner cancelled this generation; the job stops at the next step or stage."""


class StageTimer:
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


def run(generation_id: str) -> dict:
    """RQ entry point (enqueued by dotted path as jobs.generate.run)."""
    models.db.connect(reuse_if_open=True)
    cfg = runtime.config()
    try:
        dispatch.count_run(cfg, generation_id)
        return _run(generation_id)
    finally:
        try:
            gen = Generation.get_or_none(Generation.id == generation_id)
            if gen is not None:
                dispatch.finished(cfg, gen)  # free the owner's slot, hand out the next job
        except Exception:  # Redis away: the reconciler rebuilds the counters
            log.exception("could not release the dispatch slot of %s", generation_id)
        if not models.db.is_closed():
            models.db.close()


@metrics.recorded
def _run(generation_id: str) -> dict:
    gen = Generation.get_or_none(Generation.id == generation_id)
    if gen is None:
        return {"skipped": "generation no longer exists"}
    todo = list(Song.select().where((Song.generation == gen) & (Song.status.not_in(Song.FINAL)))
                .order_by(Song.variant))
    if not todo:
        return {"skipped": "already finished"}
    timer = StageTimer()
    started = time.perf_counter()
    try:
        done = _generate(gen, todo, timer)
    except Cancelled:
        fail_songs(todo, "Cancelled by you. Your credits were returned.")
        return {"failed": len(todo), "error": "cancelled"}
    except JobTimeoutException:
        fail_songs(todo, "This song took longer than its time limit and was stopped.")
        raise
    except TransientError as exc:
        log.warning("generation %s: storage unavailable after retries: %s", gen.id, exc)
        fail_songs(todo, "Storage was unreachable, so the song could not be saved.")
        return {"failed": len(todo), "error": "storage"}
    except EngineError as exc:
        log.warning("generation %s: engine refused: %s", gen.id, exc)
        fail_songs(todo, f"The engine could not make this song: {str(exc)[:300]}")
        return {"failed": len(todo), "error": "engine"}
    except Exception as exc:
        from jobs.engines import is_cuda_oom, is_fatal_cuda_error

        if is_cuda_oom(exc):
            log.error("generation %s: GPU out of memory", gen.id)
            fail_songs(todo, "The GPU ran out of memory for this song. Try a shorter duration or fewer variants.")
            return {"failed": len(todo), "error": "oom"}
        log.exception("generation %s failed", gen.id)
        fail_songs(todo, f"Something went wrong while making this song ({type(exc).__name__}).")
        if is_fatal_cuda_error(exc):
            log.critical("fatal CUDA error: the worker exits so that its process manager restarts it")
            raise SystemExit(3) from exc
        return {"failed": len(todo), "error": type(exc).__name__}
    total = time.perf_counter() - started
    result = {"processed": done, "seconds": round(total, 4), "stages": {k: round(v, 4) for k, v in timer.seconds.items()}}
    log.info("generation %s processed %d song(s) in %.2fs %s", gen.id, done, total, result["stages"])
    return result


def _set_stage(songs: list[Song], stage: str, progress: int | None = None) -> None:
    if songs and dispatch.cancel_requested(runtime.config(), songs[0].generation_id):
        raise Cancelled()
    pct = PROGRESS.get(stage, 0) if progress is None else progress
    Song.update(stage=stage, progress=pct, updated_at=utcnow()).where(
        Song.id.in_([s.id for s in songs]) & (Song.status == "processing")).execute()


def _generate(gen: Generation, todo: list[Song], timer: StageTimer) -> int:
    cfg = runtime.config()
    engines = runtime.engines()
    storage = get_storage(cfg)
    now = utcnow()
    Song.update(status="processing", stage="writing", progress=PROGRESS["writing"], started_at=now,
                updated_at=now, error="").where(Song.id.in_([s.id for s in todo]) & (Song.status == "queued")).execute()
    todo = list(Song.select().where(Song.id.in_([s.id for s in todo]) & (Song.status == "processing"))
                .order_by(Song.variant))
    if not todo:
        return 0
    if gen.operation != "generate":  # retake, extend, repaint, remix, stems: no writer
        from jobs import studio

        return studio.run(gen, todo, timer, engines, storage)

    with timer("writer"):
        spec: SongSpec = engines.writer.write(WriteRequest(
            mode=gen.mode, description=gen.description, prompt=gen.prompt, lyrics=gen.lyrics,
            described_lyrics=gen.described_lyrics, instrumental=gen.instrumental))
    lyrics = "" if gen.instrumental else spec.lyrics
    title = (spec.title or "Untitled")[:120]

    _set_stage(todo, "composing")
    params = gen.params or {}
    requests = []
    for song in todo:
        if song.seed is not None:
            seed = song.seed
        elif params.get("seed") is not None:
            seed = int(params["seed"]) + song.variant
        else:
            seed = secrets.randbelow(2**31 - 1)
        requests.append(MusicRequest(
            tags=spec.tags, lyrics=lyrics, duration=float(gen.duration), seed=int(seed),
            instrumental=gen.instrumental, guidance=GUIDANCE_BY_VARIANT[song.variant % len(GUIDANCE_BY_VARIANT)],
            steps=params.get("steps"), bpm=spec.bpm, key=spec.key, time_signature=spec.time_signature))

    audios = render_music(engines.music, requests, todo, timer)

    return store_songs(gen, todo, requests, audios, title=title, spec=spec, lyrics=lyrics, engines=engines,
                       storage=storage, timer=timer)


def _encode(rendered) -> dict:
    from jobs import audio as audio_mod

    stream, ext, mime = audio_mod.encode_stream(rendered.samples, rendered.sample_rate)
    return {"wav": audio_mod.encode_wav(rendered.samples, rendered.sample_rate), "stream": stream, "ext": ext,
            "mime": mime, "peaks": audio_mod.waveform_peaks(rendered.samples),
            "duration": rendered.samples.shape[0] / float(rendered.sample_rate)}


def store_songs(gen: Generation, todo: list[Song], requests: list[MusicRequest], audios: list, *, title: str,
                spec: SongSpec, lyrics: str, engines, storage, timer: StageTimer, cover: bytes | None = None,
                extra_files=None) -> int:
    """Cover, encode, upload and finish each rendered song; returns how many were finished.

    Covers are painted one after another (one GPU); the variants' encodes (the MP3 encoder is the
    costly part) and the uploads run side by side in threads, which the codec and the network
    calls allow (they release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    _set_stage(todo, "painting")
    with timer("cover"):
        covers = [cover if cover is not None else engines.cover.paint(title, spec.tags, req.seed) for req in requests]
    _set_stage(todo, "encoding")
    workers = max(1, min(len(todo), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        with timer("encode"):
            encoded = list(pool.map(_encode, audios))
        uploads = []
        for song, enc, cover_png in zip(todo, encoded, covers):
            prefix = song_prefix(gen.user_id, song.id)
            enc["keys"] = {"audio_key": prefix + "master.wav", "stream_key": prefix + f"stream.{enc['ext']}",
                           "cover_key": prefix + "cover.png"}
            uploads += [(enc["keys"]["audio_key"], enc["wav"], "audio/wav"),
                        (enc["keys"]["stream_key"], enc["stream"], enc["mime"]),
                        (enc["keys"]["cover_key"], cover_png, "image/png")]
            uploads += extra_files(song) if extra_files else []
        _set_stage(todo, "uploading")
        with timer("upload"):
            list(pool.map(lambda f: with_retries(lambda: storage.put(*f)), uploads))
    done = 0
    for song, rendered, enc in zip(todo, audios, encoded):
        with timer("db"):
            finished = finish_song(song, title=title, spec=spec, lyrics=lyrics, rendered=rendered,
                                   duration=enc["duration"], peaks=enc["peaks"], engines=engines, **enc["keys"])
        if finished:
            done += 1
        else:  # failed meanwhile (e.g. by the reconciler): its credit is back, drop the files
            storage.delete_prefix(song_prefix(gen.user_id, song.id))
    return done


def render_music(music, requests: list[MusicRequest], todo: list[Song], timer: StageTimer) -> list:
    """Render every request in one engine call, writing throttled progress (and seeing a cancel)
    to the songs at each step; one result per song."""
    last = {"t": 0.0, "p": -1}

    def progress(fraction: float) -> None:
        pct = PROGRESS["composing"] + int((PROGRESS["painting"] - PROGRESS["composing"]) * max(0.0, min(1.0, fraction)))
        now_t = time.monotonic()
        if pct != last["p"] and (now_t - last["t"] > 0.5 or fraction >= 1.0):
            last.update(t=now_t, p=pct)
            _set_stage(todo, "composing", pct)

    with timer("music"):
        audios = music.render(requests, progress=progress)
    if len(audios) != len(todo):
        raise EngineError(f"the music engine returned {len(audios)} result(s) for {len(todo)} song(s)")
    return audios


def finish_song(song: Song, *, title, spec: SongSpec, lyrics, rendered, duration, peaks, engines,
                audio_key, stream_key, cover_key) -> bool:
    with models.write_transaction():
        updated = Song.update(
            status="processed", stage="done", progress=100, error="", title=song.title or title,
            tags=spec.tags, lyrics=lyrics, seed=rendered.seed, guidance=rendered.guidance, steps=rendered.steps,
            engine=engines.music.name, writer_engine=engines.writer.name, cover_engine=engines.cover.name,
            offline=bool(engines.music.offline), duration=round(duration, 3), audio_key=audio_key,
            stream_key=stream_key, cover_key=cover_key, peaks=peaks, finished_at=utcnow(), updated_at=utcnow(),
        ).where((Song.id == song.id) & (Song.status == "processing")).execute()
        if not updated:
            return False
        models.apply_credits(song.user_id, 0, "capture", f"song:{song.id}:settle", f"Song “{title[:60]}” made")
        for name in spec.categories[:3]:
            SongCategory.get_or_create(song=song.id, category=Category.named(name))
    return True


def fail_songs(songs: list[Song], message: str) -> int:
    """Mark each unfinished song failed and release its credit, exactly once per song."""
    released = 0
    for song in songs:
        with models.write_transaction():
            updated = Song.update(status="failed", stage="failed", error=message[:1000], finished_at=utcnow(),
                                  updated_at=utcnow()).where(
                (Song.id == song.id) & (Song.status.not_in(Song.FINAL))).execute()
            if updated and models.apply_credits(song.user_id, 1, "release", f"song:{song.id}:settle",
                                                "Credit returned: a song could not be made"):
                released += 1
    return released
