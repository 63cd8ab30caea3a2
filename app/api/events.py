"""Server-sent events: GET /api/v1/generations/<id>/events streams a generation's stage and
percent until every song of it is final.

The stream polls the database (the worker writes progress to the song rows) every
SSE_POLL_INTERVAL seconds and sends an event whenever something changed:

    event: progress   data: {"generation_id", "status", "progress", "finished", "songs": [...]}
    event: done       the same, once the generation is finished; then the stream ends
    event: timeout    after SSE_MAX_SECONDS: reconnect (or poll GET /generations/<id>)
    event: gone       the generation's songs were deleted

plus a `: keep-alive` comment every SSE_KEEPALIVE_SECONDS so proxies keep the connection open.
Each poll takes a database connection and gives it back at once, so a stream never holds one of
the pool's connections while it waits; under gunicorn's threaded workers a stream occupies one
thread for at most SSE_MAX_SECONDS.
"""
from __future__ import annotations

import json
import time

from flask import Response

import models
from models import Song

from ..extensions import settings
from . import bp
from .actions import owned_generation
from .serialize import generation_state, song_progress_json
from .views import api_limit, token_required


def snapshot(generation_id: str) -> dict | None:
    """The generation's progress now, on a connection of its own (None: its songs are gone)."""
    models.db.connect(reuse_if_open=True)
    try:
        rows = list(Song.select(Song.id, Song.status, Song.stage, Song.progress, Song.error, Song.title)
                    .where(Song.generation == generation_id).order_by(Song.variant))
    finally:
        if not models.db.is_closed():
            models.db.close()
    if not rows:
        return None
    return {"generation_id": generation_id, **generation_state(rows),
            "songs": [song_progress_json(s) for s in rows]}


def _event(name: str, data: dict, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


_UNREAD = object()


def stream(generation_id: str, interval: float, max_seconds: float, keepalive: float):
    start = time.monotonic()
    last_sent = start
    previous = None
    seq = 0
    yield f"retry: {int(max(1.0, interval) * 1000)}\n\n"
    while True:
        try:
            snap = snapshot(generation_id)
        except Exception:  # the database briefly away: try again at the next poll, within the bound
            snap = _UNREAD
        now = time.monotonic()
        if snap is None:
            yield _event("gone", {"generation_id": generation_id})
            return
        if snap is not _UNREAD and snap != previous:
            seq += 1
            yield _event("done" if snap["finished"] else "progress", snap, seq)
            previous, last_sent = snap, now
            if snap["finished"]:
                return
        if now - start >= max_seconds:
            yield _event("timeout", {"generation_id": generation_id, "after_seconds": int(max_seconds)})
            return
        if now - last_sent >= keepalive:
            yield ": keep-alive\n\n"
            last_sent = now
        time.sleep(interval)


@bp.get("/generations/<generation_id>/events")
@api_limit
@token_required
def generation_events(generation_id):
    gen = owned_generation(generation_id)
    cfg = settings()
    resp = Response(stream(gen.id, cfg.SSE_POLL_INTERVAL, cfg.SSE_MAX_SECONDS, cfg.SSE_KEEPALIVE_SECONDS),
                    mimetype="text/event-stream")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Accel-Buffering"] = "no"  # nginx: pass events on as they come
    return resp
