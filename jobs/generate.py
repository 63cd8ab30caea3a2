"""The generation job: writer -> music (all variants in one batched call) -> cover -> encode ->
peaks -> upload -> processed. Progress goes to the Song rows as it goes; the database is the
source of truth, so the job is idempotent (finished songs are skipped) and every failure settles
each unfinished song exactly once through `core.songs.fail_songs`: failed with a message and its
credit released. Studio operations (retake, extend, ...) run in `jobs.studio` on the same `Job`.
"""
from __future__ import annotations

import logging
import secrets
import time
from dataclasses import asdict, replace

from rq.timeouts import JobTimeoutException

import models
from core import dispatch, metrics
from core.songs import CANCELLED, fail_songs
from core.storage import StorageUnavailable, get_storage
from jobs import language, runtime, studio
from jobs import styles as job_styles
from jobs.dbretry import db_retry
from jobs.engines.base import EngineError, MusicRequest, SongSpec, WriteRequest
from jobs.pipeline import PROGRESS, Cancelled, Job, StageTimer, Superseded, guidance_for
from models import Generation, Song, utcnow

log = logging.getLogger("tunesmith.job")


def run(generation_id: str) -> dict:
    """RQ entry point (enqueued by dotted path as jobs.generate.run)."""
    db_retry(lambda: models.db.connect(reuse_if_open=True))  # the database may be briefly away
    cfg = runtime.config()
    result = None
    try:
        dispatch.count_run(cfg, generation_id)
        result = _run(generation_id)
        return result
    finally:
        try:
            gen = Generation.get_or_none(Generation.id == generation_id)
            if gen is not None and not (result or {}).get("superseded"):  # a superseded run's slot is gone
                dispatch.finished(cfg, gen)  # free the owner's slot, hand out the next job
        except Exception:  # Redis or the database away: the reconciler rebuilds the counters
            log.exception("could not release the dispatch slot of %s", generation_id)
        if not models.db.is_closed():
            models.db.close()


@metrics.recorded(runtime.config)
def _run(generation_id: str) -> dict:
    started = time.perf_counter()
    gen = db_retry(lambda: Generation.get_or_none(Generation.id == generation_id))
    if gen is None:
        return {"skipped": "generation no longer exists"}
    job = db_retry(lambda: _claim(gen))
    if job is None:
        return {"skipped": "already finished"}
    runtime.begin(gen.id, job.attempt)
    finisher = runtime.finisher()
    if finisher is not None:  # the GPU worker: encode and upload beside the next job

        def handoff(finish) -> None:
            with job.timer("finisher_wait"):  # the job before may still be writing its files
                finisher.submit(lambda: _finish_in_background(job, finish, started))

        job.handoff = handoff
    result = None
    try:
        result = _settle(job, lambda: _generate(job), started)
        return result
    finally:
        if not (result or {}).get("handed_off"):
            runtime.end(gen.id, job.attempt)


def _finish_in_background(job: Job, finish, started: float) -> None:
    """The finisher thread: the job's encode, upload and settle, on its own connection, with
    the same outcomes as inline; its metrics are recorded here (the job is done only now)."""
    from core.logs import bind_job
    from core.queue import job_id, redis_conn

    bind_job(job_id(job.gen.id, job.attempt))  # its lines say which job they belong to
    result = error = None
    try:
        result = _settle(job, finish, started)
    except BaseException as exc:  # the thread's last word: never lose it silently
        error = exc
        log.exception("generation %s: finishing in the background failed", job.gen.id)
    finally:
        runtime.end(job.gen.id, job.attempt)
        try:
            cfg = job.config
            metrics.record(redis_conn(cfg), result, time.perf_counter() - started, error, metrics.prefix_for(cfg))
        except Exception as exc:
            log.warning("could not record job metrics: %s", exc)
        if not models.db.is_closed():
            models.db.close()


def _settle(job: Job, body, started: float) -> dict:
    """Run `body` (the job, or its finishing half) and turn each way it can end into the
    result and the songs' fate: every unfinished song settles once (failed, credit released),
    except a superseded run's, which belong to the run that replaced it."""
    gen, todo, attempt, timer = job.gen, job.songs, job.attempt, job.timer

    def fail(message: str) -> None:
        db_retry(lambda: fail_songs(todo, message, attempt))

    try:
        done = body()
    except Superseded:
        log.warning("generation %s: run %d was replaced by a newer run; stopping without writing", gen.id, attempt)
        return {"skipped": "superseded", "superseded": attempt}
    except Cancelled:
        fail(CANCELLED)
        return {"failed": len(todo), "error": "cancelled"}
    except JobTimeoutException:
        fail("This song took longer than its time limit and was stopped.")
        raise
    except StorageUnavailable as exc:
        log.warning("generation %s: storage unavailable after retries: %s", gen.id, exc)
        fail("Storage was unreachable, so the song could not be saved.")
        return {"failed": len(todo), "error": "storage"}
    except EngineError as exc:
        log.warning("generation %s: engine refused: %s", gen.id, exc)
        fail(f"The engine could not make this song: {str(exc)[:300]}")
        return {"failed": len(todo), "error": "engine"}
    except Exception as exc:
        from jobs.engines import is_cuda_oom, is_fatal_cuda_error

        if is_cuda_oom(exc):
            log.error("generation %s: GPU out of memory", gen.id)
            fail("The GPU ran out of memory for this song. Try a shorter duration or fewer variants.")
            return {"failed": len(todo), "error": "oom"}
        log.exception("generation %s failed", gen.id)
        fail(f"Something went wrong while making this song ({type(exc).__name__}).")
        if is_fatal_cuda_error(exc):
            log.critical("fatal CUDA error: the worker exits so that its process manager restarts it")
            raise SystemExit(3) from exc
        return {"failed": len(todo), "error": type(exc).__name__}
    gpu = [round(job.gpu_started, 4), round(job.gpu_done or time.time(), 4)]
    if done is None:
        return {"handed_off": len(todo), "gpu": gpu, "finisher_wait": round(timer.seconds.get("finisher_wait", 0.0), 4)}
    total = time.perf_counter() - started
    result = {"processed": done, "seconds": round(total, 4), "gpu": gpu,
              "stages": {k: round(v, 4) for k, v in timer.seconds.items()}}
    log.info("generation %s processed %d song(s) in %.2fs %s", gen.id, done, total, result["stages"])
    return result


def _claim(gen: Generation) -> Job | None:
    """Take the generation's queued songs for a new run: processing, owned by attempt + 1 (a
    conditional UPDATE, so two workers never claim the same song). None when nothing is left."""
    cfg = runtime.config()
    queued = list(Song.select().where((Song.generation == gen) & (Song.status == "queued")))
    if not queued:
        return None
    attempt = max(s.attempt for s in queued) + 1
    now = utcnow()
    Song.update(status="processing", stage="writing", progress=PROGRESS["writing"], started_at=now, heartbeat_at=now,
                attempt=attempt, updated_at=now, error="").where(
        Song.id.in_([s.id for s in queued]) & (Song.status == "queued")).execute()
    todo = list(Song.select().where(Song.id.in_([s.id for s in queued]) & (Song.status == "processing") &
                                    (Song.attempt == attempt)).order_by(Song.variant))
    if not todo:
        return None
    return Job(gen, todo, engines=runtime.engines(), storage=get_storage(cfg), config=cfg, attempt=attempt)


def _generate(job: Job) -> int:
    gen, timer = job.gen, job.timer
    if gen.operation != "generate":  # retake, extend, repaint, remix, stems: no writer
        return studio.run(job)

    params = dict(gen.params or {})
    if params.get("spec"):  # a retry: the first run's words, so title and lyrics do not change
        spec = SongSpec(**params["spec"])
    else:
        with timer("writer"):
            spec = job.engines.writer.write(WriteRequest(
                mode=gen.mode, description=gen.description, prompt=gen.prompt, lyrics=gen.lyrics,
                described_lyrics=gen.described_lyrics, instrumental=gen.instrumental))
        spec = replace(spec, lyrics="" if gen.instrumental else spec.lyrics, title=(spec.title or "Untitled")[:120])
        own_words = (gen.lyrics if gen.mode == "lyrics" else "", gen.described_lyrics, gen.description)
        spec = replace(spec, language=language.choose(params.get("language"), spec.language, *own_words,
                                                      instrumental=gen.instrumental))
        params["spec"] = asdict(spec)
        db_retry(lambda: Generation.update(params=params).where(Generation.id == gen.id).execute())

    job.stage("composing")
    style = job_styles.style_ref(params.get("style"), job.config, job.storage)  # a trained style, on local disk
    job_styles.check_engine(style, job.engines.music)
    requests = []
    for song in job.songs:
        if song.seed is not None:
            seed = song.seed
        elif params.get("seed") is not None:
            seed = int(params["seed"]) + song.variant
        else:
            seed = secrets.randbelow(2**31 - 1)
        requests.append(MusicRequest(
            tags=spec.tags, lyrics=spec.lyrics, duration=float(gen.duration), seed=int(seed),
            instrumental=gen.instrumental, guidance=guidance_for(song.variant) if params.get("guidance_pair") else None,
            steps=params.get("steps"), bpm=spec.bpm, key=spec.key, time_signature=spec.time_signature,
            vocal_language=spec.language, style=style))

    audios = job.render(job.engines.music, requests)
    return job.store(requests, audios, spec)
