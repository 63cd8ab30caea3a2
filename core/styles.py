"""A style's life, from the request to train it to its deletion: the one home of the rules about
styles and their credits.

    create(user, ...)      validate (4-30 of one's own finished songs and/or checked uploads, a
                           name), then ONE transaction: the Style (queued), its samples and the
                           reservation of STYLE_TRAIN_CREDITS (`reserve_ref`); then the training
                           job on STYLE_TRAIN_QUEUE
    claim / finish / fail  the job's steps: queued -> training -> ready (credits taken,
                           `capture_ref`) | failed (credits returned, `release_ref`)
    cancel(style)          queued: cancelled and released at once; training: the job sees
                           `stop_requested` and stops, then releases
    publish / unpublish    a ready style usable by anyone (never downloadable)
    delete(style)          the adapter files and uploads in storage and the row; songs made with
                           it keep their audio and their `style_hash` (their style link then
                           reads "a deleted style")
    usable(user, id)       what submit asks: the style a song may be made with, or a 4xx

Invariants: a style settles once — every status change is a conditional UPDATE from the state
it expects, in the transaction of its ledger entry, and each ref is unique; the job owns a
training by the style's `attempt`, so a late run cannot write over a newer one.
"""
from __future__ import annotations

import logging

import models
from core.errors import UserError
from models import Song, Style, StyleSample, User, utcnow

log = logging.getLogger("tunesmith.styles")

NAME_MAX = 60
DESCRIPTION_MAX = 500
WEIGHT_MIN, WEIGHT_MAX, WEIGHT_DEFAULT = 0.1, 2.0, 1.0
ID_MAX = 32
CANCELLED = "Cancelled by you. Your credits were returned."
CHOICES_MAX = 100  # styles offered in a create form: one's own ready ones, then published ones


# -- ledger refs: built here and nowhere else ---------------------------------------------------
def reserve_ref(style_id: str) -> str:
    return f"style-reserve:{style_id}"


def capture_ref(style_id: str) -> str:
    return f"style-capture:{style_id}"


def release_ref(style_id: str) -> str:
    return f"style-release:{style_id}"


# -- storage keys -------------------------------------------------------------------------------
def prefix(user_id: int, style_id: str) -> str:
    """Every object of a style lies under this prefix (its owner's folder, so deleting the
    account removes it too)."""
    return f"users/{user_id}/styles/{style_id}/"


def adapter_key(user_id: int, style_id: str, filename: str) -> str:
    return prefix(user_id, style_id) + filename


def upload_key(user_id: int, style_id: str, position: int, ext: str) -> str:
    return prefix(user_id, style_id) + f"uploads/{position:02d}.{ext}"


# -- reading ------------------------------------------------------------------------------------
def get(style_id) -> Style | None:
    style_id = str(style_id or "").strip()
    if not style_id or len(style_id) > ID_MAX:
        return None
    return Style.select(Style, User).join(User).where(Style.id == style_id).first()


def of(user) -> list[Style]:
    return list(Style.select().where(Style.user == user.id).order_by(Style.created_at.desc()))


def choices(user) -> list[Style]:
    """The styles `user` may make songs with: their own ready ones, then ready ones others
    published (accounts active), newest first."""
    if user is None or not getattr(user, "is_authenticated", False):
        return []
    own = list(Style.select().where((Style.user == user.id) & (Style.status == "ready"))
               .order_by(Style.created_at.desc()).limit(CHOICES_MAX))
    public = list(Style.select(Style, User).join(User).where(
        (Style.user != user.id) & (Style.public == True) & (Style.status == "ready")  # noqa: E712
        & User.suspended_at.is_null() & User.deleted_at.is_null())
        .order_by(Style.created_at.desc()).limit(max(0, CHOICES_MAX - len(own))))
    return own + public


def samples(style: Style) -> list[StyleSample]:
    return list(StyleSample.select().where(StyleSample.style == style.id).order_by(StyleSample.position))


def songs_of(style: Style, viewer) -> list[Song]:
    """The songs the style learned from, as `viewer` may see them (the owner: all)."""
    ids = [s.song_id for s in samples(style) if s.song_id]
    if not ids:
        return []
    rows = Song.select(Song, User).join(User).where(Song.id.in_(ids))
    by_id = {s.id: s for s in rows if s.visible_to(viewer)}
    return [by_id[i] for i in ids if i in by_id]


def made_with(style: Style, viewer, limit: int = 24) -> list[Song]:
    """Songs made with the style that `viewer` may see, newest first."""
    query = (Song.select(Song, User).join(User).where((Song.style == style.id) & (Song.status == "processed"))
             .order_by(Song.created_at.desc()).limit(limit * 2))
    return [s for s in query if s.visible_to(viewer)][:limit]


# -- validation ---------------------------------------------------------------------------------
def clean_name(value) -> str:
    name = " ".join("".join(ch if ch.isprintable() else " " for ch in str(value or "")).split())
    if not name:
        raise UserError("Give the style a name.", 422, "name")
    if len(name) > NAME_MAX:
        raise UserError(f"Keep the name to {NAME_MAX} characters (this one has {len(name)}).", 422, "name")
    return name


def clean_description(value) -> str:
    text = str(value or "").replace("\r\n", "\n").replace("\x00", "").strip()
    if len(text) > DESCRIPTION_MAX:
        raise UserError(f"Keep the description to {DESCRIPTION_MAX} characters (this one has {len(text):,}).",
                        422, "description")
    return text


def parse_weight(value) -> float:
    """A style weight from a form or JSON: 0.1 to 2.0; empty means 1.0."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return WEIGHT_DEFAULT
    try:
        if isinstance(value, bool):
            raise ValueError
        weight = float(value)
    except (TypeError, ValueError):
        raise UserError(f"The style weight must be a number from {WEIGHT_MIN:g} to {WEIGHT_MAX:g}.", 422,
                        "style_weight") from None
    if not (WEIGHT_MIN <= weight <= WEIGHT_MAX):  # also refuses NaN
        raise UserError(f"The style weight must be from {WEIGHT_MIN:g} to {WEIGHT_MAX:g}.", 422, "style_weight")
    return round(weight, 3)


def usable(user, style_id) -> Style | None:
    """The style `user` may make a song with (their own, or one someone published), ready; None
    when no style was asked for. UserError 404 for a style that does not exist or is someone
    else's private one (the same answer: its existence is not told), 409 when not ready."""
    if style_id is None or (isinstance(style_id, str) and not style_id.strip()):
        return None
    if not isinstance(style_id, str):
        raise UserError("The style must be given by its id.", 422, "style_id")
    style = get(style_id)
    if style is None or not (style.owned_by(user) or (style.public and style.user.is_active)):
        raise UserError("There is no such style, or it is not yours to use.", 404, "style_id", "style_not_found")
    if style.status != "ready":
        raise UserError("This style is not ready yet: wait for its training to finish.", 409, "style_id",
                        "style_not_ready")
    return style


def _source_songs(user, song_ids) -> list[Song]:
    ids: list[str] = []
    for raw in song_ids or ():
        value = str(raw or "").strip()
        if value and value not in ids:
            ids.append(value)
    if any(len(i) > ID_MAX for i in ids):
        raise UserError("One of the songs does not exist, or is not yours.", 404, "song_ids")
    if not ids:
        return []
    found = {s.id: s for s in Song.select().where(Song.id.in_(ids))}
    out = []
    for i in ids:
        song = found.get(i)
        if song is None or song.user_id != user.id:
            raise UserError("One of the songs does not exist, or is not yours: a style learns only from "
                            "your own songs and uploads.", 404, "song_ids")
        if song.status != "processed" or not song.audio_key:
            raise UserError(f"“{song.title or 'Untitled'}” is not finished yet, so a style cannot learn from it.",
                            409, "song_ids")
        out.append(song)
    return out


def trainer_refusal(config) -> UserError | None:
    """A 503 when live workers serve this deployment's songs but none serves the training
    queue (the training would wait forever); None when one does or nothing is known."""
    from redis.exceptions import RedisError

    from core import capabilities
    from core.queue import redis_conn

    try:
        conn = redis_conn(config)
        if capabilities.fleet(conn, config.STYLE_TRAIN_QUEUE):
            return None
        if capabilities.fleet(conn, config.QUEUE_NAME):
            return UserError("No worker trains styles right now, so nothing was charged. Try again later.", 503,
                             code="no_trainer")
    except RedisError:
        return None
    return None


# -- create -------------------------------------------------------------------------------------
def create(user: User, config, *, name, description="", song_ids=(), uploads=(), storage=None) -> Style:
    """Validate and start a style: `song_ids` of the person's own finished songs and `uploads`,
    a list of dicts {data, ext, seconds, name} already checked by the web (format, size, length);
    4-30 in all. One transaction creates the Style and its samples and reserves the credits;
    then the training job is enqueued. UserError (nothing written, nothing charged) otherwise."""
    if user.suspended_at is not None or user.deleted_at is not None:
        raise UserError("This account is suspended, so it cannot train styles.", 403, code="suspended")
    name = clean_name(name)
    description = clean_description(description)
    songs = _source_songs(user, song_ids)
    uploads = list(uploads or ())
    total = len(songs) + len(uploads)
    low, high = config.STYLE_MIN_SONGS, config.STYLE_MAX_SONGS
    if total < low:
        raise UserError(f"A style learns from {low} to {high} songs; you chose {total}. Pick at least {low}.",
                        422, "song_ids")
    if total > high:
        raise UserError(f"A style learns from {low} to {high} songs; you chose {total}. Pick at most {high}.",
                        422, "song_ids")
    cost = int(config.STYLE_TRAIN_CREDITS)
    if user.balance() < cost:
        raise UserError(f"Training a style needs {cost} credits; you have {user.balance()}.", 402, "form",
                        "insufficient_credits")
    refused = trainer_refusal(config)
    if refused is not None:
        raise refused
    style_id = models.new_id()
    keys: list[str] = []
    if uploads:
        from core.storage import get_storage, with_retries

        storage = storage or get_storage(config)
        for i, up in enumerate(uploads):
            key = upload_key(user.id, style_id, len(songs) + i, up["ext"])
            with_retries(lambda: storage.put(key, up["data"], f"audio/{up['ext']}"))
            keys.append(key)
    try:
        with models.write_transaction():
            style = Style.create(id=style_id, user=user.id, name=name, description=description, credits=cost,
                                 stage="queued", config={"samples": total})
            models.apply_credits(user.id, -cost, "reserve", reserve_ref(style_id),
                                 f"Reserved for training the style “{name[:60]}”")
            position = 0
            for song in songs:
                StyleSample.create(style=style_id, song=song.id, caption=song.tags or "", lyrics=song.lyrics or "",
                                   duration=float(song.duration or 0), position=position)
                position += 1
            for up, key in zip(uploads, keys):
                StyleSample.create(style=style_id, upload_key=key, upload_name=str(up.get("name") or "")[:120],
                                   caption=str(up.get("caption") or ""), duration=float(up.get("seconds") or 0),
                                   position=position)
                position += 1
    except models.InsufficientCredits as exc:
        for key in keys:
            storage.delete(key)
        raise UserError(f"{exc} Training a style needs {cost} credits.", 402, "form", "insufficient_credits") from None
    except Exception:
        for key in keys:
            storage.delete(key)
        raise
    _enqueue(config, style)
    log.info("style %s submitted: %d sample(s), %d credit(s)", style.id, total, cost)
    return style


def _enqueue(config, style: Style) -> None:
    from core.queue import enqueue_style

    try:
        enqueue_style(config, style)
    except Exception:  # Redis down: the worker's reconciler (`recover`) enqueues it later
        log.exception("could not enqueue style %s now", style.id)


def recover(config, now=None) -> dict:
    """The reconciler's pass over styles: a queued style with no job in Redis (enqueued while
    Redis was away) is enqueued again; a training whose row has not moved for longer than
    STYLE_TRAIN_TIMEOUT (its worker died without a word) fails with its credits returned."""
    import datetime as dt

    from core.queue import fetch_job, style_job_id

    now = now or utcnow()
    requeued = failed = 0
    settle = dt.timedelta(seconds=60)  # a style just made is being enqueued by its request
    for style in Style.select().where((Style.status == "queued") & (Style.created_at < now - settle)):
        if fetch_job(config, style_job_id(style.id, style.attempt + 1)) is None:
            _enqueue(config, style)
            requeued += 1
    stale = now - dt.timedelta(seconds=int(config.STYLE_TRAIN_TIMEOUT) + 60)
    for style in Style.select().where((Style.status == "training") & (Style.updated_at < stale)):
        if fail(style, "The worker training this style stopped, so it was given up; your credits were returned.",
                attempt=style.attempt):
            failed += 1
    return {"requeued": requeued, "failed": failed}


# -- the job's steps ----------------------------------------------------------------------------
def claim(style_id: str) -> Style | None:
    """queued -> training for a new run (attempt + 1); None when there is nothing to train."""
    style = Style.get_or_none(Style.id == style_id)
    if style is None or style.status != "queued":
        return None
    now = utcnow()
    updated = Style.update(status="training", stage="preparing", progress=1, attempt=style.attempt + 1,
                           error="", updated_at=now).where((Style.id == style_id) & (Style.status == "queued")
                                                           & (Style.attempt == style.attempt)).execute()
    return Style.get_by_id(style_id) if updated else None


def progress(style: Style, stage: str, percent: int) -> bool:
    """The running training's stage and percent; False when this run no longer owns it."""
    return bool(Style.update(stage=stage[:40], progress=max(0, min(99, int(percent))), updated_at=utcnow()).where(
        (Style.id == style.id) & (Style.status == "training") & (Style.attempt == style.attempt)).execute())


def stop_requested(style: Style) -> bool:
    """Whether the owner cancelled (or deleted) the style while this run trains it."""
    row = (Style.select(Style.status, Style.attempt, Style.cancel_requested_at)
           .where(Style.id == style.id).first())
    return row is None or row.status != "training" or row.attempt != style.attempt or \
        row.cancel_requested_at is not None


def finish(style: Style, *, adapter_key: str, adapter_hash: str, engine: str, offline: bool, config: dict,
           report: dict) -> bool:
    """training -> ready and the reserved credits taken, in one transaction; False when this
    run no longer owns the style (cancelled or deleted meanwhile): then nothing is written."""
    now = utcnow()
    with models.write_transaction():
        updated = Style.update(status="ready", stage="done", progress=100, error="", adapter_key=adapter_key,
                               adapter_hash=adapter_hash, engine=engine[:120], offline=bool(offline),
                               config=config, report=report, finished_at=now, updated_at=now).where(
            (Style.id == style.id) & (Style.status == "training") & (Style.attempt == style.attempt)
            & Style.cancel_requested_at.is_null()).execute()
        if not updated:
            return False
        models.apply_credits(style.user_id, 0, "capture", capture_ref(style.id), f"Style “{style.name[:60]}” trained")
    return True


def fail(style: Style, message: str, *, status: str = "failed", attempt: int | None = None,
         expect: str | None = None) -> bool:
    """Unfinished (or only `expect`) -> failed (or cancelled) with `message` and the credits
    returned, once; with `attempt`, only while that run owns it. False when nothing changed."""
    now = utcnow()
    owned = (Style.id == style.id) & (Style.status.not_in(Style.FINAL))
    if attempt is not None:
        owned &= Style.attempt == attempt
    if expect is not None:
        owned &= Style.status == expect
    with models.write_transaction():
        updated = Style.update(status=status, stage=status, error=message[:1000], finished_at=now,
                               updated_at=now).where(owned).execute()
        if not updated:
            return False
        credits = Style.select(Style.credits).where(Style.id == style.id).scalar() or 0
        models.apply_credits(style.user_id, int(credits), "release", release_ref(style.id),
                             "Credits returned: a style could not be trained" if status == "failed"
                             else "Credits returned: a style's training was cancelled")
    return True


# -- the owner's actions ------------------------------------------------------------------------
def cancel(config, style: Style) -> str:
    """"finished" when there is nothing to stop; "cancelled" when no worker had taken it (the
    credits come back now); "stopping" when a worker trains it (it stops at its next step)."""
    if style.is_final:
        return "finished"
    if fail(style, CANCELLED, status="cancelled", expect="queued"):
        _drop_job(config, style)
        return "cancelled"
    Style.update(cancel_requested_at=utcnow(), stage="stopping", updated_at=utcnow()).where(
        (Style.id == style.id) & (Style.status == "training")).execute()
    return "finished" if Style.get_by_id(style.id).is_final else "stopping"


def _drop_job(config, style: Style) -> None:
    from core.queue import get_queue, style_job_id

    try:
        get_queue(config, config.STYLE_TRAIN_QUEUE).remove(style_job_id(style.id, style.attempt + 1))
    except Exception:  # Redis away: the job finds the style cancelled and does nothing
        pass


def publish(style: Style) -> None:
    if style.status != "ready":
        raise UserError("Only a ready style can be published.", 409, code="not_ready")
    Style.update(public=True, updated_at=utcnow()).where(Style.id == style.id).execute()
    style.public = True


def unpublish(style: Style) -> None:
    Style.update(public=False, updated_at=utcnow()).where(Style.id == style.id).execute()
    style.public = False


def delete(config, style: Style, storage) -> int:
    """Remove the style's files (adapter, config, report, uploads) and its row; an unfinished
    training's credits come back (a running job sees the row gone and stops). Songs made with
    it keep playing. Returns the number of objects removed."""
    with models.write_transaction():
        status = Style.select(Style.status).where(Style.id == style.id).scalar()
        if status is None:
            return 0
        if status not in Style.FINAL:
            fail(style, CANCELLED, status="cancelled")
        Song.update(style=None).where(Song.style == style.id).execute()
        Style.delete().where(Style.id == style.id).execute()
        removed = storage.delete_prefix(prefix(style.user_id, style.id))
    if status == "queued":
        _drop_job(config, style)
    return removed
