"""Submitting a generation: validation, credit reservation and the hand-off to the queue.

Shared by the Create form, the JSON API and the CLI, so all three validate and charge alike.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from peewee import IntegrityError

import models
from jobs import dispatch
from models import Generation, Song, User

log = logging.getLogger("tunesmith.create")

LIMITS = {"description": 1000, "prompt": 300, "lyrics": 5000, "described_lyrics": 1000}
LABELS = {"description": "Description", "prompt": "Style tags", "lyrics": "Lyrics",
          "described_lyrics": "What the lyrics are about"}


class SubmitError(Exception):
    """Bad input or not enough credits. `status` is the HTTP status; `field` names the input."""

    def __init__(self, message: str, field: str | None = None, status: int = 422, code: str = "invalid"):
        super().__init__(message)
        self.message, self.field, self.status, self.code = message, field, status, code


@dataclass
class Request:
    mode: str = "description"
    description: str = ""
    prompt: str = ""
    lyrics: str = ""
    described_lyrics: str = ""
    instrumental: bool = False
    duration: int = 60
    variants: int = 2
    idempotency_key: str | None = None
    errors: dict[str, str] = field(default_factory=dict)


def _text(value) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError
    return value.replace("\r\n", "\n").replace("\x00", "").strip()


def _int(value, name: str, low: int, high: int, default: int, errors: dict) -> int:
    if value is None or value == "":
        return default
    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(value) if not isinstance(value, float) else (int(value) if value.is_integer() else None)
        if number is None:
            raise ValueError
    except (TypeError, ValueError):
        errors[name] = f"Enter a whole number from {low} to {high}."
        return default
    if not low <= number <= high:
        errors[name] = f"Choose a value from {low} to {high}."
    return number


def _bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, (int, float)):
        return bool(value)
    return str(value).strip().lower() in {"1", "true", "on", "yes", "y"}


def parse(data: dict, config) -> Request:
    """Validate raw input (form or JSON). Collects every error with the field it belongs to."""
    errors: dict[str, str] = {}
    req = Request(errors=errors)
    mode = data.get("mode") or "description"
    if mode not in Generation.MODES:
        errors["mode"] = "Choose one of: describe the song, your own lyrics, or describe the lyrics."
        mode = "description"
    req.mode = mode
    for name, limit in LIMITS.items():
        try:
            value = _text(data.get(name))
        except TypeError:
            errors[name] = f"{LABELS[name]} must be text."
            value = ""
        if len(value) > limit:
            errors[name] = f"{LABELS[name]} is {len(value):,} characters; the limit is {limit:,}."
        setattr(req, name, value)
    req.instrumental = _bool(data.get("instrumental"))
    req.duration = _int(data.get("duration"), "duration", config.MIN_DURATION, config.MAX_DURATION,
                        config.DEFAULT_DURATION, errors)
    req.variants = _int(data.get("variants"), "variants", 1, config.MAX_VARIANTS, config.DEFAULT_VARIANTS, errors)
    key = data.get("idempotency_key")
    if key is not None and not isinstance(key, str):
        errors["idempotency_key"] = "The idempotency key must be text."
    elif key:
        key = key.strip()
        if len(key) > 100:
            errors["idempotency_key"] = "The idempotency key is too long (100 characters at most)."
        req.idempotency_key = key or None

    if mode == "description":
        if not req.description and "description" not in errors:
            errors["description"] = "Describe the song you want, e.g. “a dreamy synthwave track about night drives”."
    else:
        if not req.prompt and "prompt" not in errors:
            errors["prompt"] = "Add a few style tags, e.g. “synthwave, 110 bpm, female vocals”."
        if not req.instrumental:
            if mode == "lyrics" and not req.lyrics and "lyrics" not in errors:
                errors["lyrics"] = "Write your lyrics, or switch on Instrumental."
            if mode == "described_lyrics" and not req.described_lyrics and "described_lyrics" not in errors:
                errors["described_lyrics"] = "Say what the lyrics should be about, or switch on Instrumental."
    if req.instrumental:
        req.lyrics = "" if mode != "lyrics" else req.lyrics  # kept for the record, never sung
    return req


def submit(user: User, req: Request, config, source: str = "web") -> tuple[Generation, bool]:
    """Create the Generation and its Songs and reserve their credits in ONE transaction, then
    enqueue. Returns (generation, created): created is False when the idempotency key was seen.
    Raises SubmitError (402) when the credits do not cover it: then nothing is written."""
    if req.errors:
        name, message = next(iter(req.errors.items()))
        raise SubmitError(message, name)
    if req.idempotency_key:
        existing = Generation.get_or_none((Generation.user == user.id) &
                                          (Generation.idempotency_key == req.idempotency_key))
        if existing is not None:
            return existing, False
    try:
        with models.write_transaction():
            gen = Generation.create(
                user=user.id, mode=req.mode, description=req.description, prompt=req.prompt, lyrics=req.lyrics,
                described_lyrics=req.described_lyrics, instrumental=req.instrumental, duration=req.duration,
                variants=req.variants, idempotency_key=req.idempotency_key)
            what = req.description or req.prompt or "a song"
            models.apply_credits(user.id, -req.variants, "reserve", f"gen:{gen.id}:reserve",
                                 f"Reserved for {req.variants} song{'s' if req.variants != 1 else ''}: {what[:80]}")
            for i in range(req.variants):
                Song.create(id=models.new_id(), generation=gen, user=user.id, variant=i,
                            instrumental=req.instrumental, duration=req.duration, stage="queued")
    except models.InsufficientCredits as exc:
        raise SubmitError(f"{exc} Buy more credits or make fewer variants.", "variants", 402, "insufficient_credits")
    except IntegrityError:
        if req.idempotency_key:  # a concurrent submit with the same key won the race
            existing = Generation.get_or_none((Generation.user == user.id) &
                                              (Generation.idempotency_key == req.idempotency_key))
            if existing is not None:
                return existing, False
        raise
    try:
        dispatch.add_pending(config, gen)
    except Exception:  # Redis down: the reconciler enqueues it later; the songs stay queued
        log.exception("could not enqueue generation %s now; the reconciler will", gen.id)
    log.info("generation %s submitted via %s: %s, %d variant(s), %ds", gen.id, source, req.mode,
             req.variants, req.duration)
    return gen, True
