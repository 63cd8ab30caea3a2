"""The style-training job, and the styles a generation renders with.

    run(style_id)         RQ entry point (`core.queue.TRAIN_STYLE_JOB`, on STYLE_TRAIN_QUEUE): claim
                          the queued style, decode its songs and uploads into TrainingSamples at
                          the music engine's rate, `music.train_style(...)` with progress on the
                          style's row and `should_stop` seeing a cancel, then store the adapter,
                          config.json and report.json and mark it ready (credits captured). Every
                          failure settles it once through `core.styles.fail` (credits released).
    style_ref(params)     a generation's `params["style"]` as a StyleRef whose adapter file lies
                          on local disk: fetched once per hash into VAR_DIR/styles-cache/.

The engines decide what an adapter is (the real engine: a LoRA in safetensors; the offline
arranger: a JSON bias); an engine without `supports_styles` refuses with a clear message.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from rq.timeouts import JobTimeoutException

import models
from core import styles as core_styles
from core.storage import StorageUnavailable, get_storage, with_retries
from jobs import audio as audio_mod
from jobs import runtime
from jobs.dbretry import db_retry
from jobs.engines.base import Cancelled, EngineError, StyleRef, TrainingSample
from models import Song, Style

log = logging.getLogger("tunesmith.styles")

PROGRESS_LOW, PROGRESS_HIGH = 5, 95  # the engine's 0..1 maps onto these percents; the rest is I/O
OFFLINE_ENGINE = "offline-arranger"  # the offline music engine's name: its styles are JSON biases
WRITE_EVERY = 0.5  # seconds between progress writes (a stage change is written at once)
STOP_EVERY = 0.5  # seconds between cancel checks


def run(style_id: str) -> dict:
    """RQ entry point (enqueued by dotted path as jobs.styles.run)."""
    db_retry(lambda: models.db.connect(reuse_if_open=True))
    try:
        return _run(style_id)
    finally:
        if not models.db.is_closed():
            models.db.close()


def _run(style_id: str) -> dict:
    cfg = runtime.config()
    started = time.perf_counter()
    style = db_retry(lambda: core_styles.claim(style_id))
    if style is None:
        return {"skipped": "not queued (cancelled, deleted or already trained)"}
    try:
        return _train(style, cfg, started)
    except Cancelled:
        db_retry(lambda: core_styles.fail(style, core_styles.CANCELLED, status="cancelled", attempt=style.attempt))
        return {"failed": 1, "error": "cancelled"}
    except JobTimeoutException:
        db_retry(lambda: core_styles.fail(style, "The training took longer than its time limit and was stopped; "
                                                 "your credits were returned.", attempt=style.attempt))
        raise
    except StorageUnavailable as exc:
        log.warning("style %s: storage unavailable: %s", style.id, exc)
        db_retry(lambda: core_styles.fail(style, "Storage was unreachable, so the style could not be trained.",
                                          attempt=style.attempt))
        return {"failed": 1, "error": "storage"}
    except EngineError as exc:
        log.warning("style %s: engine refused: %s", style.id, exc)
        db_retry(lambda: core_styles.fail(style, f"The engine could not train this style: {str(exc)[:300]}",
                                          attempt=style.attempt))
        return {"failed": 1, "error": "engine"}
    except Exception as exc:
        from jobs.engines import is_cuda_oom, is_fatal_cuda_error

        if is_cuda_oom(exc):
            db_retry(lambda: core_styles.fail(style, "The GPU ran out of memory while training. Try fewer or "
                                                     "shorter songs.", attempt=style.attempt))
            return {"failed": 1, "error": "oom"}
        log.exception("style %s failed", style.id)
        db_retry(lambda: core_styles.fail(style, f"Something went wrong while training this style "
                                                 f"({type(exc).__name__}).", attempt=style.attempt))
        if is_fatal_cuda_error(exc):
            raise SystemExit(3) from exc
        return {"failed": 1, "error": type(exc).__name__}


def _train(style: Style, cfg, started: float) -> dict:
    music = runtime.engines().music
    if not getattr(music, "supports_styles", False) or not hasattr(music, "train_style"):
        raise EngineError(f"the music engine {getattr(music, 'name', '?')} cannot train styles")
    storage = get_storage(cfg)
    state = {"t": 0.0, "stage": "", "stop_t": 0.0, "stop": False}

    def report_progress(fraction: float, stage: str = "training") -> None:
        pct = PROGRESS_LOW + int((PROGRESS_HIGH - PROGRESS_LOW) * max(0.0, min(1.0, float(fraction))))
        now = time.monotonic()
        if stage != state["stage"] or now - state["t"] >= WRITE_EVERY or fraction >= 1.0:
            state.update(t=now, stage=stage)
            if not db_retry(lambda: core_styles.progress(style, stage, pct)):
                raise Cancelled()

    def should_stop() -> bool:
        now = time.monotonic()
        if not state["stop"] and now - state["stop_t"] >= STOP_EVERY:
            state["stop_t"] = now
            state["stop"] = bool(db_retry(lambda: core_styles.stop_requested(style)))
        return state["stop"]

    db_retry(lambda: core_styles.progress(style, "preparing", 2))
    samples = _samples(style, storage, int(music.sample_rate), should_stop)
    report_progress(0.0, "training")
    trained = music.train_style(samples, cfg, progress=report_progress, should_stop=should_stop)
    if should_stop():
        raise Cancelled()
    db_retry(lambda: core_styles.progress(style, "saving", PROGRESS_HIGH + 2))
    digest = hashlib.sha256(trained.adapter).hexdigest()
    key = core_styles.adapter_key(style.user_id, style.id, trained.filename)
    report = dict(trained.report)
    report.setdefault("samples", len(samples))
    report.setdefault("seconds", round(time.perf_counter() - started, 3))
    files = [(key, trained.adapter, "application/octet-stream"),
             (core_styles.adapter_key(style.user_id, style.id, "config.json"),
              json.dumps(trained.config, sort_keys=True).encode(), "application/json"),
             (core_styles.adapter_key(style.user_id, style.id, "report.json"),
              json.dumps(report, sort_keys=True).encode(), "application/json")]
    for f in files:
        with_retries(lambda f=f: storage.put(*f))
    done = db_retry(lambda: core_styles.finish(
        style, adapter_key=key, adapter_hash=digest, engine=str(music.name), offline=bool(music.offline),
        config=trained.config, report=report))
    if not done:  # cancelled or deleted meanwhile: these files are nobody's
        for f in files:
            storage.delete(f[0])
        if Style.get_or_none(Style.id == style.id) is not None:
            db_retry(lambda: core_styles.fail(style, core_styles.CANCELLED, status="cancelled", attempt=style.attempt))
        return {"failed": 1, "error": "cancelled"}
    seconds = round(time.perf_counter() - started, 3)
    log.info("style %s trained from %d sample(s) in %.2fs by %s", style.id, len(samples), seconds, music.name)
    return {"trained": style.id, "hash": digest, "seconds": seconds}


def _samples(style: Style, storage, sr: int, should_stop) -> list[TrainingSample]:
    out = []
    rows = core_styles.samples(style)
    songs = {s.id: s for s in Song.select().where(Song.id.in_([r.song_id for r in rows if r.song_id]))}
    for row in rows:
        if should_stop():
            raise Cancelled()
        song = songs.get(row.song_id) if row.song_id else None
        key = row.upload_key or (song.audio_key if song is not None else None)
        if not key:
            raise EngineError("a song this style learns from was deleted; train it again without it")
        samples, rate = audio_mod.decode(with_retries(lambda key=key: storage.get(key)))
        if rate != sr:
            samples = audio_mod.resample(samples, rate, sr)
        samples = audio_mod.stereo(np.asarray(samples, dtype=np.float32))
        caption = (song.tags if song is not None else "") or row.caption or ""
        lyrics = (song.lyrics if song is not None else "") or row.lyrics or ""
        out.append(TrainingSample(audio=samples, sample_rate=sr, caption=caption, lyrics=lyrics,
                                  duration=samples.shape[0] / float(sr)))
    return out


# ---------------------------------------------------------------------------- using a style
def cache_dir(cfg) -> Path:
    return Path(cfg.VAR_DIR) / "styles-cache"


def style_ref(params_style: dict | None, cfg=None, storage=None) -> StyleRef | None:
    """A generation's `params["style"]` ({id, hash, weight, engine}) as a StyleRef with the
    adapter on local disk, fetched once per hash (checked against it) into the cache. None
    without a style; EngineError when the style is gone or its file does not match."""
    if not params_style:
        return None
    cfg = cfg or runtime.config()
    style_id, digest = str(params_style.get("id") or ""), str(params_style.get("hash") or "")
    weight = float(params_style.get("weight") or core_styles.WEIGHT_DEFAULT)
    style = db_retry(lambda: Style.get_or_none(Style.id == style_id))
    if style is None or style.status != "ready" or not style.adapter_key:
        raise EngineError("the style this song was asked with was deleted")
    if digest and style.adapter_hash != digest:
        raise EngineError("the style changed since this song was asked for")
    ext = style.adapter_key.rsplit(".", 1)[-1] if "." in style.adapter_key.rsplit("/", 1)[-1] else "bin"
    folder = cache_dir(cfg)
    path = folder / f"{style.adapter_hash}.{ext}"
    if not path.exists():
        storage = storage or get_storage(cfg)
        data = with_retries(lambda: storage.get(style.adapter_key))
        if hashlib.sha256(data).hexdigest() != style.adapter_hash:
            raise EngineError("the style's adapter file is damaged")
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the whole file or none
    return StyleRef(id=style.id, hash=style.adapter_hash, weight=weight, path=path, engine=style.engine)


def check_engine(ref: StyleRef | None, music) -> None:
    """Refuse a style the worker's music engine cannot apply (another engine trained it, or it
    has no style support), before any rendering."""
    if ref is None:
        return
    if not getattr(music, "supports_styles", False):
        raise EngineError(f"the music engine {getattr(music, 'name', '?')} cannot render with styles")
    offline_style = ref.engine == OFFLINE_ENGINE
    if ref.engine and offline_style != bool(getattr(music, "offline", False)):
        raise EngineError(f"this style was trained by {ref.engine}, and this worker renders with "
                          f"{getattr(music, 'name', '?')}")
