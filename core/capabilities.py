"""What the live workers can do, as they advertise it, so the web refuses a studio operation no
worker can run instead of charging for a job that would fail.

Each GPU worker records its capabilities in Redis under its own key with a TTL (renewed with its
heartbeat): the music checkpoint's name and kind, the ACE-Step tasks it can do, and whether a
stems engine is present. The record is JSON:

    {"model": "ACE-Step/acestep-v15-turbo", "kind": "turbo", "tasks": ["repaint", "text2music"],
     "offline": false, "stems": "demucs/htdemucs", "stems_offline": false, "queues": ["default"]}

`refusal(config, operation)` reads the live records: when there are some and none of them can
do the operation, it returns a 422 `UserError` naming the checkpoint(s); with no record (no
worker up, or workers that do not advertise) it returns None — no fleet information, accept.

Operation -> what a worker needs (operations are `core.catalogue.OPERATIONS`):

    generate, retake   text2music
    extend, repaint    repaint
    remix              cover (ACE-Step's cover task, which needs the audio tokenizer)
    stems              a stems engine, or the extract task (base checkpoints only)

The offline music engine does every operation through the offline studio. This module imports
neither the worker side nor torch: `engine_caps` reads an `Engines` holder by attribute only.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

from core.catalogue import OPERATIONS
from core.errors import UserError

log = logging.getLogger("tunesmith.capabilities")

KEY_PREFIX = "tunesmith:worker-caps:"
ALL_TASKS = ("text2music", "repaint", "cover", "extract")
"""The ACE-Step tasks the studio uses; the offline studio does all of them."""

NEEDS: dict[str, tuple[str, ...]] = {
    "generate": ("text2music",),
    "retake": ("text2music",),
    "extend": ("repaint",),
    "repaint": ("repaint",),
    "remix": ("cover",),
    "stems": ("extract",),  # or a stems engine
}
assert set(NEEDS) == set(OPERATIONS), "every catalogue operation says what it needs"

_CANNOT = {
    "generate": ("cannot render new songs", "new songs need ACE-Step's text2music task"),
    "retake": ("cannot render retakes", "retakes need ACE-Step's text2music task"),
    "extend": ("cannot extend songs", "extending needs a checkpoint with ACE-Step's repaint task"),
    "repaint": ("cannot repaint sections", "repainting needs a checkpoint with ACE-Step's repaint task"),
    "remix": ("cannot remix songs", "remixes need a checkpoint converted with its audio tokenizer "
                                    "(ACE-Step's cover task)"),
    "stems": ("cannot separate stems", "stems need a base checkpoint or the Demucs separator"),
}


def key(worker_name: str) -> str:
    """The Redis key of one worker's record."""
    return KEY_PREFIX + str(worker_name)


def record(conn, worker_name: str, caps: dict, ttl: int) -> None:
    """Store (or renew) a worker's capabilities for `ttl` seconds."""
    body = dict(caps)
    body.setdefault("at", time.time())
    conn.set(key(worker_name), json.dumps(body, sort_keys=True, default=list), ex=max(1, int(ttl)))


def forget(conn, worker_name: str) -> None:
    """Remove a worker's record (it is stopping)."""
    conn.delete(key(worker_name))


def fleet(conn, queue: str | None = None) -> list[dict]:
    """The live records (those whose TTL has not run out), each with its ``worker`` name,
    sorted by worker. With `queue`, only workers serving it (a record that names no queues
    serves every queue)."""
    names = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in conn.scan_iter(match=KEY_PREFIX + "*"))
    if not names:
        return []
    out = []
    for name, raw in zip(names, conn.mget(names)):
        if raw is None:  # expired between the scan and the read
            continue
        try:
            caps = json.loads(raw)
        except (TypeError, ValueError):
            log.warning("unreadable capability record %s", name)
            continue
        if not isinstance(caps, dict):
            continue
        queues = caps.get("queues")
        if queue is not None and queues and queue not in queues:
            continue
        caps["worker"] = name[len(KEY_PREFIX):]
        out.append(caps)
    return out


def can(caps: dict, operation: str) -> bool:
    """Whether a worker with this record can do a studio operation."""
    if caps.get("offline"):
        return True  # the offline studio does every operation
    tasks = set(caps.get("tasks") or ())
    if operation == "stems" and caps.get("stems"):
        return True
    return all(t in tasks for t in NEEDS[operation])


def _checkpoint(model: Any) -> str:
    name = str(model or "unknown")
    return name.rstrip("/").rsplit("/", 1)[-1] or name


def refusal(config_or_conn, operation: str) -> UserError | None:
    """A 422 `UserError` when live workers advertise capabilities and none can do `operation`;
    None when one can, or when no worker advertises (nothing is known: accept). Redis being
    unreachable also gives None (the job would say so itself).

    `config_or_conn` is a `config.Config` (its REDIS_URL; only workers serving its QUEUE_NAME
    count) or a Redis connection (every worker counts)."""
    from redis.exceptions import RedisError

    if operation not in NEEDS:
        raise ValueError(f"unknown operation {operation!r}")
    queue = None
    if hasattr(config_or_conn, "REDIS_URL"):
        from core.queue import redis_conn

        conn, queue = redis_conn(config_or_conn), getattr(config_or_conn, "QUEUE_NAME", None)
    else:
        conn = config_or_conn
    try:
        live = fleet(conn, queue)
    except RedisError as exc:
        log.warning("capabilities unreadable (%s): accepting %s", exc, operation)
        return None
    if not live or any(can(caps, operation) for caps in live):
        return None
    models = sorted({_checkpoint(caps.get("model")) for caps in live})
    what, needs = _CANNOT[operation]
    subject = (f"The loaded checkpoint ({models[0]})" if len(models) == 1
               else f"The loaded checkpoints ({', '.join(models)})")
    return UserError(f"{subject} {what}; {needs}.", status=422, code="unsupported", operation=operation,
                     models=models)


def engine_caps(engines) -> dict:
    """The record of an `Engines` holder (attributes only: this module never imports the
    worker side). A real music engine says what it can do (`tasks`, `kind`, `model_id`); the
    offline engines do everything through the offline studio."""
    music = getattr(engines, "music", None)
    offline = bool(getattr(music, "offline", True))
    tasks = getattr(music, "tasks", None)
    if offline or tasks is None:
        tasks = ALL_TASKS
    stems = getattr(engines, "stems", None)
    return {
        "model": str(getattr(music, "model_id", None) or getattr(music, "name", None) or type(music).__name__),
        "kind": "offline" if offline else str(getattr(music, "kind", None) or "unknown"),
        "tasks": sorted(str(t) for t in tasks),
        "offline": offline,
        "stems": (str(getattr(stems, "name", None) or type(stems).__name__)) if stems is not None else None,
        "stems_offline": bool(getattr(stems, "offline", True)) if stems is not None else None,
    }
