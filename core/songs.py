"""A song's life, from submit to settle: the one home of the rules about songs and their credits.

    submit(user, draft)  one transaction: the Generation, its Songs and the credit reservation
                         (`reserve_ref`); then the hand-off to the queue (core.dispatch)
    finish_song(song)    processing -> processed and the credit captured (`settle_ref`)
    fail_songs(songs)    unfinished -> failed and the credit released (`settle_ref`)
    retry_or_fail(...)   a dead worker's songs: queued again for their next run, or failed after
                         the last of JOB_ATTEMPTS runs
    cancel(gen)          queued: failed and released at once; running: the worker stops
    delete_song(song)    files and row; an unfinished song's credit released (`settle_ref`)

Invariants: every song settles exactly once — `settle_ref(song)` is a unique ledger ref, and
every status change is a conditional UPDATE from the state it expects, so a worker, the
reconciler, a cancel and a delete racing each other settle a song once between them. A run of
the worker owns its songs by their `attempt` number: its writes are conditioned on it, so a run
presumed dead (paused, cut off) cannot write over the run that replaced it. The Create
form, the JSON API, the CLI and every studio tool submit through `submit`; the worker finishes
and fails through `finish_song` / `fail_songs`. No other code builds a ledger ref for a song.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from peewee import IntegrityError

import models
from core import capabilities, catalogue, dispatch, moderation, styles, webhooks
from core.errors import UserError
from core.storage import with_retries
from models import Category, Generation, Song, SongCategory, User, utcnow

log = logging.getLogger("tunesmith.songs")

CANCELLED = "Cancelled by you. Your credits were returned."


# -- ledger refs: built here and nowhere else ---------------------------------------------------
def reserve_ref(generation_id: str) -> str:
    """The reservation of a generation's credits (one credit per song, taken at submit)."""
    return f"gen:{generation_id}:reserve"


def settle_ref(song_id: str) -> str:
    """A song's settlement: a capture (made) or a release (failed, cancelled, deleted early)."""
    return f"song:{song_id}:settle"


# -- submit -------------------------------------------------------------------------------------
@dataclass
class Draft:
    """What a person asks for, validated: a new song (`operation="generate"`) or a studio
    operation on `parent` (or on `upload`, audio bytes for a remix). `duration` is the request's
    whole seconds; `song_duration` the songs' expected length when it is not whole (studio)."""

    mode: str = "description"
    description: str = ""
    prompt: str = ""
    lyrics: str = ""
    described_lyrics: str = ""
    instrumental: bool = False
    duration: int = 60
    variants: int = 2
    idempotency_key: str | None = None
    operation: str = "generate"
    parent: Song | None = None
    params: dict | None = None
    upload: bytes | None = None
    song_duration: float | None = None
    language: str = catalogue.AUTO_LANGUAGE  # or an ISO 639-1 code of catalogue.LANGUAGES
    style_id: str | None = None  # a trained style to render with (checked by `submit`: core.styles.usable)
    style_weight: float = styles.WEIGHT_DEFAULT
    errors: dict[str, str] = field(default_factory=dict)


def _existing(user_id: int, key: str | None) -> Generation | None:
    if not key:
        return None
    return Generation.get_or_none((Generation.user == user_id) & (Generation.idempotency_key == key))


def _reserve_note(draft: Draft) -> str:
    if draft.operation == "generate":
        what = draft.description or draft.prompt or "a song"
        return f"Reserved for {draft.variants} song{'s' if draft.variants != 1 else ''}: {what[:80]}"
    title = (draft.parent.title if draft.parent is not None else "") or "Untitled"
    noun = catalogue.operation(draft.operation).noun
    return f"Reserved for a {noun} of “{title[:60]}”"


def submit(user: User, draft: Draft, config, source: str = "web") -> tuple[Generation, bool]:
    """Create the Generation and its Songs and reserve their credits in ONE transaction, then
    hand it to the queue. Returns (generation, created): created is False when the idempotency
    key was seen before (then nothing new is written or charged).

    Raises UserError for a draft with errors, 422 for an operation no live worker can do or
    words on LYRICS_BLOCKLIST (core.moderation), and 402 when the credits do not cover it: then
    nothing is written (an uploaded file stored for it is removed again)."""
    if draft.errors:
        name, message = next(iter(draft.errors.items()))
        raise UserError(message, 422, name)
    if user.suspended_at is not None or user.deleted_at is not None:
        raise UserError("This account is suspended, so it cannot make songs.", 403, code="suspended")
    if getattr(config, "REQUIRE_EMAIL_VERIFICATION", False) and user.email_verified_at is None:
        raise UserError("Confirm your email address first: open the link we mailed you, or send a new one "
                        "from your account settings.", 403, code="email_unverified")
    seen = _existing(user.id, draft.idempotency_key)
    if seen is not None:
        return seen, False
    style = styles.usable(user, draft.style_id)  # 404 someone else's private style, 409 not ready
    refused = capabilities.refusal(config, draft.operation)  # no live worker can do it: charge nothing
    if refused is None:
        refused = moderation.refusal(config, draft)  # a word on LYRICS_BLOCKLIST: charge nothing
    if refused is not None:
        raise refused
    gen_id = models.new_id()
    params = dict(draft.params) if draft.params is not None else None
    if draft.language and draft.language != catalogue.AUTO_LANGUAGE:
        params = {**(params or {}), "language": draft.language}
    if style is not None:
        params = {**(params or {}), "style": {"id": style.id, "hash": style.adapter_hash,
                                              "weight": float(draft.style_weight), "engine": style.engine}}
    storage = None
    if draft.upload is not None:
        from core.storage import get_storage

        storage = get_storage(config)
        key = catalogue.upload_key(user.id, gen_id, params["upload_ext"])
        with_retries(lambda: storage.put(key, draft.upload, f"audio/{params['upload_ext']}"))
        params["upload_key"] = key
    parent_id = draft.parent.id if draft.parent is not None and draft.upload is None else None
    song_duration = draft.song_duration if draft.song_duration is not None else draft.duration
    try:
        with models.write_transaction():
            gen = Generation.create(
                id=gen_id, user=user.id, mode=draft.mode, operation=draft.operation, source_song_id=parent_id,
                params=params, description=draft.description, prompt=draft.prompt, lyrics=draft.lyrics,
                described_lyrics=draft.described_lyrics, instrumental=draft.instrumental, duration=draft.duration,
                variants=draft.variants, idempotency_key=draft.idempotency_key)
            models.apply_credits(user.id, -draft.variants, "reserve", reserve_ref(gen.id), _reserve_note(draft))
            for i in range(draft.variants):
                Song.create(id=models.new_id(), generation=gen, user=user.id, variant=i, parent=parent_id,
                            instrumental=draft.instrumental, duration=round(float(song_duration), 3), stage="queued",
                            style=style.id if style is not None else None,
                            style_hash=style.adapter_hash if style is not None else "")
    except models.InsufficientCredits as exc:
        if storage is not None:
            storage.delete(params["upload_key"])
        raise UserError(f"{exc} Buy more credits or make fewer variants.", 402, "variants",
                        "insufficient_credits") from None
    except IntegrityError:
        if storage is not None:
            storage.delete(params["upload_key"])
        seen = _existing(user.id, draft.idempotency_key)  # a concurrent submit with the same key won
        if seen is not None:
            return seen, False
        raise
    try:
        dispatch.add_pending(config, gen)
    except Exception:  # Redis down: the reconciler enqueues it later; the songs stay queued
        log.exception("could not enqueue generation %s now; the reconciler will", gen.id)
    log.info("generation %s submitted via %s: %s %s, %d song(s), %ds", gen.id, source, draft.operation,
             draft.mode, draft.variants, draft.duration)
    return gen, True


# -- settle -------------------------------------------------------------------------------------
def finish_song(song: Song, *, title: str, attempt: int | None = None, categories=(), **fields) -> bool:
    """processing -> processed with `fields` (keys, seed, engines, ...), the credit captured and
    up to three categories filed, in one transaction. False when the song was no longer
    processing by run `attempt` (failed meanwhile, or retried by another run): then nothing is
    written. Calling it again for the same run after it committed answers True and writes
    nothing (the worker repeats a write whose answer a database outage lost)."""
    now = utcnow()
    owned = (Song.id == song.id) & (Song.status == "processing")
    if attempt is not None:
        owned &= Song.attempt == attempt
    with models.write_transaction():
        updated = Song.update(status="processed", stage="done", progress=100, error="", title=song.title or title,
                              finished_at=now, updated_at=now, **fields).where(owned).execute()
        if not updated:  # True only when this same run finished it already (a retried commit)
            return attempt is not None and Song.select().where(
                (Song.id == song.id) & (Song.status == "processed") & (Song.attempt == attempt)).exists()
        models.apply_credits(song.user_id, 0, "capture", settle_ref(song.id), f"Song “{title[:60]}” made")
        for name in list(categories)[:3]:
            SongCategory.get_or_create(song=song.id, category=Category.named(name))
        webhooks.on_song_final(song, "song.processed")  # the outbox: committed with the status
    return True


def fail_songs(songs, message: str, attempt: int | None = None) -> int:
    """Mark each unfinished song failed with `message` and release its credit, exactly once per
    song; with `attempt`, only songs that run still owns. Returns how many credits were released."""
    released = 0
    for song in songs:
        owned = (Song.id == song.id) & (Song.status.not_in(Song.FINAL))
        if attempt is not None:
            owned &= Song.attempt == attempt
        with models.write_transaction():
            updated = Song.update(status="failed", stage="failed", error=message[:1000], finished_at=utcnow(),
                                  updated_at=utcnow()).where(owned).execute()
            if updated:
                webhooks.on_song_final(song, "song.failed")  # the outbox: committed with the status
            if updated and models.apply_credits(song.user_id, 1, "release", settle_ref(song.id),
                                                "Credit returned: a song could not be made"):
                released += 1
    return released


def retry_or_fail(config, gen: Generation, songs, attempt: int) -> str:
    """The worker running `gen`'s run `attempt` is gone. Its unfinished songs (processed
    variants stay as they are) go back to `queued` for run attempt + 1, with the same spec and
    seeds, and the generation back in its owner's pending list — or, after the last of
    JOB_ATTEMPTS runs, fail with their credits released. Returns "retried" or "failed"."""
    ids = [s.id for s in songs]
    if attempt >= config.JOB_ATTEMPTS:
        fail_songs(songs, f"The worker making this song stopped {attempt} times, so it was given up; "
                          "your credit was returned.", attempt=attempt)
        return "failed"
    with models.write_transaction():
        moved = Song.update(status="queued", stage="queued", progress=0, heartbeat_at=None, updated_at=utcnow(),
                            error=f"Worker restarted — retrying, attempt {attempt + 1} of {config.JOB_ATTEMPTS}").where(
            Song.id.in_(ids) & (Song.status == "processing") & (Song.attempt == attempt)).execute()
    if moved:
        dispatch.add_pending(config, gen, dispatch_now=False)
    log.warning("generation %s: run %d lost its worker; %d song(s) queued for run %d", gen.id, attempt, moved,
                attempt + 1)
    return "retried"


def cancel(config, gen: Generation) -> str:
    """Cancel a generation: "finished" when there is nothing left to stop; "cancelled" when it
    had not reached a worker (its songs fail and their credits come back now); "stopping" when a
    worker runs it (it stops at its next step and then releases the credits)."""
    if gen.is_finished():
        return "finished"
    if dispatch.request_cancel(config, gen) == "queued":
        fail_songs(Song.select().where((Song.generation == gen) & (Song.status.not_in(Song.FINAL))), CANCELLED)
        return "cancelled"
    return "stopping"


def delete_song(song: Song, storage) -> int:
    """Delete the song's stored objects and its row (likes, listens and categories go with it by
    cascade). A song deleted before it finished gets its reserved credit back (the settlement
    ref, so it is never returned twice). If storage fails (StorageUnavailable) the transaction
    rolls back and the row stays. Returns the number of objects removed."""
    prefix = catalogue.song_prefix(song.user_id, song.id)
    with models.write_transaction():
        status = Song.select(Song.status).where(Song.id == song.id).scalar()
        if status is None:
            return 0
        Song.delete().where(Song.id == song.id).execute()
        if status not in Song.FINAL:
            models.apply_credits(song.user_id, 1, "release", settle_ref(song.id),
                                 "Credit returned: a song was deleted before it finished")
        removed = storage.delete_prefix(prefix)
        for key in {song.audio_key, song.stream_key, song.cover_key} - {None, ""}:
            if not key.startswith(prefix):
                storage.delete(key)
                removed += 1
    return removed


# -- library actions ----------------------------------------------------------------------------
def publish(song: Song) -> None:
    """Show the song in the public feed; only a finished song can be published."""
    if song.status != "processed" or not song.publish():
        raise UserError("Only a finished song can be published.", 409, code="not_finished")


def clean_title(title) -> str:
    """A title as typed, trimmed, with runs of whitespace collapsed; UserError when it is empty
    or longer than TITLE_MAX characters."""
    clean = " ".join("".join(ch if ch.isprintable() else " " for ch in str(title or "")).split())
    if not clean:
        raise UserError("Give the song a title.", 422, "title")
    if len(clean) > catalogue.TITLE_MAX:
        raise UserError(f"Keep the title to {catalogue.TITLE_MAX} characters (this one has {len(clean)}).",
                        422, "title")
    return clean


def rename(song: Song, title) -> str:
    return song.set_title(clean_title(title))


def like(song: Song, user, liked: bool | None = None) -> bool:
    """Like (True), unlike (False) or toggle (None); only a finished song can be liked."""
    if song.status != "processed":
        raise UserError("Only a finished song can be liked.", 409, code="not_finished")
    return song.set_like(user, liked)
