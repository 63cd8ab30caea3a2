"""Reading a new song's request (form fields or JSON) into a `core.songs.Draft`.

Shared by the Create form, the JSON API and the CLI, so all three validate alike; all three then
submit through `core.songs.submit`, which reserves the credits and hands the work to the queue.
"""
from __future__ import annotations

from core import catalogue, styles
from core.errors import UserError
from core.songs import Draft
from models import Generation

LIMITS = {"description": 1000, "prompt": 300, "lyrics": 5000, "described_lyrics": 1000}
LABELS = {"description": "Description", "prompt": "Style tags", "lyrics": "Lyrics",
          "described_lyrics": "What the lyrics are about"}


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


def style_fields(data: dict, req: Draft) -> None:
    """`style_id` (one's own or a published ready style; `submit` checks it) and `style_weight`
    (0.1-2.0, default 1.0) into the draft, errors into `req.errors`."""
    style_id = data.get("style_id")
    if style_id is not None and not isinstance(style_id, str):
        req.errors["style_id"] = "The style must be given by its id."
    elif style_id and style_id.strip():
        req.style_id = style_id.strip()
    try:
        req.style_weight = styles.parse_weight(data.get("style_weight"))
    except UserError as exc:
        req.errors["style_weight"] = exc.message


def parse(data: dict, config) -> Draft:
    """Validate raw input (form or JSON). Collects every error with the field it belongs to."""
    errors: dict[str, str] = {}
    req = Draft(errors=errors)
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
    language = data.get("language") or catalogue.AUTO_LANGUAGE
    if not isinstance(language, str) or (language.strip().lower() not in catalogue.LANGUAGES
                                         and language.strip().lower() != catalogue.AUTO_LANGUAGE):
        errors["language"] = "Choose a language from the list, or Auto to sing in the language of your words."
    else:
        req.language = language.strip().lower()
    if _bool(data.get("guidance_pair")):  # advanced: the original's guidance per variant (base/SFT only)
        req.params = {"guidance_pair": True}
    style_fields(data, req)
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
