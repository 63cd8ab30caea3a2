"""The catalogue of what a song can be made by, and where its files live.

One place for the operations' names, labels, ledger wording and title suffixes, the stem names,
and the storage keys; templates get it as the `catalogue` global, the web validates against it
and the worker names its files from it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Operation:
    name: str
    label: str  # the tool's button ("Extend")
    made_as: str  # how a song made by it is described ("Extension of …")
    noun: str  # in the credit history ("Reserved for an extension of …")
    title_suffix: str  # appended to the source's title
    help: str  # one line under the tool
    uses_writer: bool = False  # the writer runs first (text to song)


OPERATIONS: dict[str, Operation] = {op.name: op for op in (
    Operation("generate", "Create", "Generated", "song", "", "Describe a song or bring lyrics.", uses_writer=True),
    Operation("retake", "Retake", "Retake", "retake", "", "Same settings, a new seed. One credit per variant."),
    Operation("extend", "Extend", "Extension", "extension", " (extended)",
              "Continue the song by 10–120 s; the result is the whole longer song."),
    Operation("repaint", "Repaint", "Repaint", "repaint", " (repainted)",
              "Regenerate a section (seconds); the rest stays as it is."),
    Operation("remix", "Remix", "Remix", "remix", " (remix)",
              "A new style over this song, or over a WAV/MP3/FLAC you upload (20 MB, 10 min at most)."),
    Operation("stems", "Stems", "Stems", "stems", " (stems)", "Split into vocals, drums, bass and other. One credit."),
)}
STUDIO_OPERATIONS = tuple(name for name in OPERATIONS if name != "generate")
PURE_RENDERS = ("generate", "retake")  # operations whose audio is one engine render
STEMS = ("vocals", "drums", "bass", "other")
TITLE_MAX = 120


def operation(name: str) -> Operation:
    return OPERATIONS[name]


def derived_title(op: str, base: str) -> str:
    """The title of a song made by `op` from a song (or upload) called `base`."""
    suffix = OPERATIONS[op].title_suffix
    return (base[:TITLE_MAX - len(suffix)] + suffix).strip()


# -- storage keys ------------------------------------------------------------------------------
def song_prefix(user_id: int, song_id: str) -> str:
    """Every object of a song lies under this prefix (deleting a song deletes the prefix)."""
    return f"users/{user_id}/songs/{song_id}/"


def attempt_prefix(user_id: int, song_id: str, attempt: int = 1) -> str:
    """The folder a song's run `attempt` writes into: the song's own for the first run,
    `attempt-N/` under it for a retry."""
    return song_prefix(user_id, song_id) + (f"attempt-{attempt}/" if attempt > 1 else "")


def song_keys(user_id: int, song_id: str, stream_ext: str, attempt: int = 1) -> dict[str, str]:
    """The master WAV, the stream and the cover of a song, as the Song row's key fields. A retry
    (attempt 2, 3, ...) writes under its own folder, so a run presumed dead that wakes up cannot
    overwrite the files of the run that replaced it."""
    prefix = attempt_prefix(user_id, song_id, attempt)
    return {"audio_key": prefix + "master.wav", "stream_key": prefix + f"stream.{stream_ext}",
            "cover_key": prefix + "cover.png"}


def stem_key(user_id: int, song_id: str, name: str, attempt: int = 1) -> str:
    """A stem of a stems song, in the folder of the run that made it (as `song_keys`)."""
    return attempt_prefix(user_id, song_id, attempt) + f"stems/{name}.wav"


def upload_key(user_id: int, generation_id: str, ext: str) -> str:
    """Where audio uploaded for a studio operation (remix) is kept."""
    return f"users/{user_id}/uploads/{generation_id}/source.{ext}"


# The languages ACE-Step 1.5 sings (its `VALID_LANGUAGES`), by ISO 639-1 code ("yue": Cantonese).
LANGUAGES = {
    "ar": "Arabic", "az": "Azerbaijani", "bg": "Bulgarian", "bn": "Bengali", "ca": "Catalan", "cs": "Czech",
    "da": "Danish", "de": "German", "el": "Greek", "en": "English", "es": "Spanish", "fa": "Persian",
    "fi": "Finnish", "fr": "French", "he": "Hebrew", "hi": "Hindi", "hr": "Croatian", "ht": "Haitian Creole",
    "hu": "Hungarian", "id": "Indonesian", "is": "Icelandic", "it": "Italian", "ja": "Japanese", "ko": "Korean",
    "la": "Latin", "lt": "Lithuanian", "ms": "Malay", "ne": "Nepali", "nl": "Dutch", "no": "Norwegian",
    "pa": "Punjabi", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sa": "Sanskrit",
    "sk": "Slovak", "sr": "Serbian", "sv": "Swedish", "sw": "Swahili", "ta": "Tamil", "te": "Telugu",
    "th": "Thai", "tl": "Tagalog", "tr": "Turkish", "uk": "Ukrainian", "ur": "Urdu", "vi": "Vietnamese",
    "yue": "Cantonese", "zh": "Chinese",
}
AUTO_LANGUAGE = "auto"  # the create form's default: the language of the person's own words


def language_name(code: str | None) -> str:
    return LANGUAGES.get(code or "", "")

