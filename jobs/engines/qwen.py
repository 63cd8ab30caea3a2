"""The real writer: Qwen2-7B-Instruct (transformers) writes title, tags, tempo, key, time
signature, lyrics and categories in ONE structured chat call.

The model is asked for a single JSON object. Its answer is parsed leniently (code fences,
chatter around the object, single quotes, trailing commas, Python literals, a cut-off end) and
then validated field by field against `SCHEMA`. When anything is missing or invalid the call is
retried once; whatever is still missing after that comes from the offline writer (logged).
What the person typed always wins: their lyrics and style tags are kept, and tempo, key and time
signature written in their text override the model's.

The prompt (`build_messages`) and that answer handling (`ChatWriter`) are shared with the served
writer (`served_writer.ServedWriter`, the same model behind an OpenAI-compatible server); only
`QwenWriter` needs torch, and it imports it when it is built.
"""
from __future__ import annotations

import ast
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import SongSpec, WriteRequest
from .text import (
    make_title,
    normalise_categories,
    normalise_lyrics,
    normalise_tags,
    parse_musical_hints,
)

log = logging.getLogger(__name__)

FIELDS = ("title", "tags", "bpm", "key", "time_signature", "lyrics", "categories")

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": 120},
        "tags": {"type": "string", "minLength": 1},
        "bpm": {"type": "integer", "minimum": 40, "maximum": 240},
        "key": {"type": "string", "pattern": r"^[A-G][#b]? (major|minor)$"},
        "time_signature": {"type": "string", "pattern": r"^\d{1,2}/(2|4|8|16)$"},
        "lyrics": {"type": "string"},
        "categories": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
    },
    "required": list(FIELDS),
}
"""The answer's shape (JSON Schema). `validate_answer` checks it field by field, leniently
coercing near-misses ("120 bpm" -> 120, "Am" -> "A minor", a tag list -> a tag line)."""

DEFAULT_MAX_NEW_TOKENS = 1536  # a full song's lyrics (~500-900 tokens) plus the JSON around them
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.8
DEFAULT_TOP_K = 20
DEFAULT_REPETITION_PENALTY = 1.05
MAX_INPUT_CHARS = 3000

# Qwen's ChatML, used when a tokenizer ships without a chat template.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SYSTEM_PROMPT = """You are a songwriter and music producer. Answer with ONE JSON object and nothing else (no markdown, no comments), using double quotes, with exactly these keys:
"title": a short original song title (2 to 6 words),
"tags": comma-separated style tags for a music model, lower case: genre, sub-genre, mood, instruments, vocal type, production (6 to 12 tags),
"bpm": the tempo, an integer from 40 to 240,
"key": the key, like "A minor" or "F# major",
"time_signature": "4/4", "3/4" or "6/8",
"lyrics": the complete lyrics, each section headed by a tag on its own line: [intro], [verse], [pre-chorus], [chorus], [bridge], [outro]; "" when told the song is instrumental or the lyrics are given,
"categories": a list of 1 to 3 broad genre names, like ["Synthwave", "Pop"].
Example: {"title": "Neon Rain", "tags": "synthwave, retro, dreamy, analog synths, gated drums, female vocals", "bpm": 110, "key": "A minor", "time_signature": "4/4", "lyrics": "[verse]\\nCity lights are calling me tonight\\n...\\n[chorus]\\n...", "categories": ["Synthwave", "Electronic"]}"""


# ---------------------------------------------------------------------------------------------
# Parsing a model's answer
# ---------------------------------------------------------------------------------------------

_FENCE_RE = re.compile(r"```(?:json|JSON|js|javascript|python)?\s*\n?(.*?)(?:```|$)", re.S)
_KEY_ALIASES = {
    "song_title": "title",
    "name": "title",
    "song_name": "title",
    "style": "tags",
    "styles": "tags",
    "style_tags": "tags",
    "tag": "tags",
    "prompt": "tags",
    "genre_tags": "tags",
    "tempo": "bpm",
    "beats_per_minute": "bpm",
    "keyscale": "key",
    "key_scale": "key",
    "musical_key": "key",
    "timesignature": "time_signature",
    "time": "time_signature",
    "meter": "time_signature",
    "lyric": "lyrics",
    "song_lyrics": "lyrics",
    "category": "categories",
    "genres": "categories",
    "genre": "categories",
}


def _balanced_object(text: str, start: int) -> tuple[str, bool]:
    """The text of the JSON-ish object starting at `start` and whether it closed.

    Respects strings in double or single quotes and backslash escapes.
    """
    depth = 0
    quote: str | None = None
    escaped = False
    for i in range(start, len(text)):
        c = text[i]
        if quote:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == quote:
                quote = None
            continue
        if c in "\"'":
            # A single quote inside a word ("don't") is an apostrophe, not a string.
            if c == "'" and i > 0 and text[i - 1].isalnum() and i + 1 < len(text) and text[i + 1].isalnum():
                continue
            quote = c
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return text[start : i + 1], True
    return text[start:], False


def _close_truncated(fragment: str) -> str:
    """Close an object cut off mid-way (the model ran out of tokens): strings, then brackets."""
    stack: list[str] = []
    quote: str | None = None
    escaped = False
    for c in fragment:
        if quote:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == quote:
                quote = None
            continue
        if c == '"':
            quote = c
        elif c in "{[":
            stack.append("}" if c == "{" else "]")
        elif c in "}]" and stack:
            stack.pop()
    out = fragment
    if quote:
        out += quote
    out = re.sub(r"[,:\s]+$", "", out)
    # A dangling key without a value ("..., "lyr") would not parse: drop it.
    out = re.sub(r',\s*"[^"]*"\s*$', "", out)
    return out + "".join(reversed(stack))


def _loads(candidate: str) -> Any:
    """json.loads with repairs: control characters in strings, trailing commas, smart quotes,
    Python literals (single quotes, True/False/None)."""
    attempts = [candidate]
    fixed = candidate.replace("\u201c", '"').replace("\u201d", '"').replace("\u2018", "'").replace("\u2019", "'")
    fixed = re.sub(r",\s*([}\]])", r"\1", fixed)
    attempts.append(fixed)
    for text in attempts:
        try:
            return json.loads(text, strict=False)
        except ValueError:
            pass
    # Python-ish literal: {'title': 'x', 'bpm': 120, 'ok': True}
    py = re.sub(r"\btrue\b", "True", fixed)
    py = re.sub(r"\bfalse\b", "False", py)
    py = re.sub(r"\bnull\b", "None", py)
    try:
        return ast.literal_eval(py)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    # Unquoted keys: {title: "x"}
    quoted = re.sub(r'([{,]\s*)([A-Za-z_][A-Za-z0-9_ ]*)\s*:', r'\1"\2":', fixed)
    try:
        return json.loads(quoted, strict=False)
    except ValueError:
        return None


def _normalise_keys(obj: dict) -> dict:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = re.sub(r"[\s\-]+", "_", str(k).strip().lower())
        key = _KEY_ALIASES.get(key, key)
        if key not in out:
            out[key] = v
    return out


def parse_answer(text: str | None) -> dict[str, Any] | None:
    """The first JSON object in a model's answer, as a dict with canonical keys, or None.

    Tolerates code fences, chatter before or after the object, single quotes, trailing commas,
    raw new lines inside strings, smart quotes, Python literals, unquoted keys and an answer cut
    off before its end. Keys are lower-cased and common aliases mapped ("style" -> "tags",
    "tempo" -> "bpm", "genres" -> "categories").
    """
    if not text or not isinstance(text, str):
        return None
    candidates: list[str] = []
    for m in _FENCE_RE.finditer(text):
        if "{" in m.group(1):
            candidates.append(m.group(1))
    candidates.append(text)
    for source in candidates:
        start = source.find("{")
        while start != -1:
            fragment, closed = _balanced_object(source, start)
            obj = _loads(fragment if closed else _close_truncated(fragment))
            if isinstance(obj, list):
                obj = next((o for o in obj if isinstance(o, dict)), None)
            if isinstance(obj, dict) and obj:
                return _normalise_keys(obj)
            start = source.find("{", start + 1)
    return None


# ---------------------------------------------------------------------------------------------
# Validating fields
# ---------------------------------------------------------------------------------------------


def _as_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    return None


def _valid_title(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    title = re.sub(r"\s+", " ", value).strip().strip("\"'“”‘’*#").strip()
    if not title or not re.search(r"\w", title) or title.lower() in ("untitled", "title", "song title", "new song"):
        return None
    if len(title) > 120:
        cut = title[:120]
        title = cut[: cut.rfind(" ")] if " " in cut else cut
    return title


def _valid_tags(value: Any) -> str | None:
    if isinstance(value, (list, tuple)):
        value = [v for v in value if isinstance(v, str)]
    elif not isinstance(value, str):
        return None
    tags = normalise_tags(value)
    return tags or None


def _valid_bpm(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        bpm = int(round(value))
    elif isinstance(value, str):
        m = re.search(r"\d{2,3}(?:\.\d+)?", value)
        if not m:
            return None
        bpm = int(round(float(m.group(0))))
    else:
        return None
    return bpm if 40 <= bpm <= 240 else None


def _valid_key(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    key = parse_musical_hints(text)["key"]
    if key is None and re.fullmatch(r"[A-Ga-g][#b♯♭]?", text):
        key = parse_musical_hints(f"{text[0].upper()}{text[1:]} major")["key"]
    return key


_NUMERATOR_METERS = {"2": "2/4", "3": "3/4", "4": "4/4", "5": "5/4", "6": "6/8", "7": "7/8", "9": "9/8", "12": "12/8"}


def _valid_time_signature(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        value = str(int(value))
    if not isinstance(value, str):
        return None
    text = value.strip()
    parsed = parse_musical_hints(text)["time_signature"]
    if parsed:
        return parsed
    if re.fullmatch(r"\d{1,2}", text):
        return _NUMERATOR_METERS.get(text)
    return None


def _valid_lyrics(value: Any) -> str | None:
    text = _as_text(value)
    if text is None:
        return None
    lyrics = normalise_lyrics(text)
    # A few words are not a song: require at least two sung lines.
    sung = [ln for ln in lyrics.split("\n") if ln.strip() and not ln.startswith("[")]
    return lyrics if len(sung) >= 2 else None


def _valid_categories(value: Any) -> list[str] | None:
    if isinstance(value, str) or (isinstance(value, (list, tuple)) and value):
        cats = normalise_categories(value, limit=3)
        return cats or None
    return None


_VALIDATORS = {
    "title": _valid_title,
    "tags": _valid_tags,
    "bpm": _valid_bpm,
    "key": _valid_key,
    "time_signature": _valid_time_signature,
    "lyrics": _valid_lyrics,
    "categories": _valid_categories,
}


def validate_answer(
    answer: dict[str, Any] | None, wanted: tuple[str, ...] = FIELDS
) -> tuple[dict[str, Any], list[str]]:
    """(valid fields, problems) for the `wanted` fields of a parsed answer.

    Values are coerced to their stored form (normalised tags, lyrics and categories; a key
    spelled "A minor"; "4/4"); a missing or unusable field is named in `problems`.
    """
    valid: dict[str, Any] = {}
    problems: list[str] = []
    if answer is None:
        return valid, ["the answer held no JSON object"]
    for name in wanted:
        if name not in answer or answer[name] in (None, "", []):
            problems.append(f"{name} is missing")
            continue
        value = _VALIDATORS[name](answer[name])
        if value is None:
            problems.append(f"{name} is invalid ({str(answer[name])[:40]!r})")
        else:
            valid[name] = value
    return valid, problems


_META_TAG_RE = re.compile(
    r"^(?:\d{2,3}\s*bpm|[a-g][#b]?\s*(?:major|minor|maj|min)|(?:in\s+)?(?:the\s+)?key\s+of\s+.+)$", re.I
)


def tags_with_meta(tags: str | list[str], bpm: int | None, key: str | None) -> str:
    """The tag line with the song's final tempo and key as its last tags ("..., 110 bpm, a minor").

    Tags that only state a tempo or a key are replaced, so the line never contradicts the
    song's `bpm` / `key` fields (the offline writer's tag lines carry them the same way).
    """
    kept = [t for t in normalise_tags(tags).split(", ") if t and not _META_TAG_RE.match(t)]
    if bpm:
        kept.append(f"{int(bpm)} bpm")
    if key:
        kept.append(key)
    return normalise_tags(kept)


# ---------------------------------------------------------------------------------------------
# Prompting (one function for the in-process and the served writer)
# ---------------------------------------------------------------------------------------------


def wanted_fields(request: WriteRequest) -> tuple[str, ...]:
    """The fields the model must produce for this request."""
    wanted = ["title", "tags", "bpm", "key", "time_signature", "categories"]
    if not request.instrumental and request.mode in ("description", "described_lyrics"):
        wanted.append("lyrics")
    return tuple(wanted)


def build_messages(request: WriteRequest, problems: list[str] | None = None) -> list[dict[str, str]]:
    """The chat sent to the model for a request (and, on the retry, what was wrong with the
    first answer): the system prompt and one user message. `QwenWriter` renders it with the
    tokenizer's chat template; `ServedWriter` sends it as it is to a chat-completions server."""

    def clip(text: str) -> str:
        return (text or "").strip()[:MAX_INPUT_CHARS]

    lines: list[str] = []
    if request.mode == "lyrics":
        lines.append("Here are a person's own lyrics and style. Do not rewrite the lyrics: set \"lyrics\" to \"\".")
        if request.prompt.strip():
            lines.append(f"Style: {clip(request.prompt)}")
        lines.append(f"Lyrics:\n{clip(request.lyrics)}")
        lines.append("Give the title, tags, bpm, key, time_signature and categories that fit them.")
    elif request.mode == "described_lyrics":
        lines.append(f"Write a song about: {clip(request.described_lyrics)}")
        if request.prompt.strip():
            lines.append(f"Style: {clip(request.prompt)} (keep these tags)")
    else:
        lines.append(f"Write a song for this description: {clip(request.description)}")
    if request.instrumental:
        lines.append('The song is instrumental: no vocals, set "lyrics" to "".')
    if problems:
        lines.append(
            "Your previous answer could not be used (" + "; ".join(problems[:6]) + "). "
            "Answer again with only the JSON object."
        )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n".join(lines)}]


def retry_temperature(temperature: float) -> float:
    """The temperature of the second attempt: a little cooler than the first, at least 0.3."""
    return max(0.3, temperature - 0.2)


# ---------------------------------------------------------------------------------------------
# The writers
# ---------------------------------------------------------------------------------------------


@dataclass
class WriteStats:
    """What the last `write` did (for logs, tests and the benchmark)."""

    attempts: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    fallback_fields: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class ChatWriter:
    """The write loop shared by every writer on a chat model: ask (`build_messages`), parse
    (`parse_answer`), validate (`validate_answer`), retry once with the problems named, then
    merge the person's input, the model's valid fields and the offline writer's answer for
    whatever is still missing (`_compose`).

    Subclasses set `model_id`, `name` and `temperature` and implement `generate(messages, *,
    temperature=None) -> str` (one chat completion, adding to `self.last`'s token counts).
    """

    offline = False
    model_id: str = "writer"
    name: str = "writer"
    temperature: float = DEFAULT_TEMPERATURE

    def _start_stats(self) -> None:
        self.last = WriteStats()
        self.fallbacks = 0  # writes that needed the offline writer for some field
        self._offline = None

    def wanted_fields(self, request: WriteRequest) -> tuple[str, ...]:
        """The fields the model must produce for this request."""
        return wanted_fields(request)

    def messages(self, request: WriteRequest, problems: list[str] | None = None) -> list[dict[str, str]]:
        """The chat sent to the model for a request (and, on the retry, what was wrong)."""
        return build_messages(request, problems)

    def generate(self, messages: list[dict[str, str]], *, temperature: float | None = None) -> str:
        raise NotImplementedError

    def _offline_spec(self, request: WriteRequest) -> SongSpec:
        if self._offline is None:
            from .offline_writer import OfflineWriter

            self._offline = OfflineWriter()
        return self._offline.write(request)

    def write(self, request: WriteRequest) -> SongSpec:
        """Title, tags, tempo, key, time signature, lyrics and categories for a request."""
        self.last = WriteStats()
        wanted = self.wanted_fields(request)
        found: dict[str, Any] = {}
        problems: list[str] = []
        for attempt in range(2):
            self.last.attempts = attempt + 1
            reply = self.generate(self.messages(request, problems if attempt else None),
                                  temperature=None if attempt == 0 else retry_temperature(self.temperature))
            valid, problems = validate_answer(parse_answer(reply), tuple(f for f in wanted if f not in found))
            found.update(valid)
            if not problems:
                break
            log.info("writer answer %d unusable: %s", attempt + 1, "; ".join(problems))
        self.last.problems = problems
        return self._compose(request, found, wanted)

    def _compose(self, request: WriteRequest, found: dict[str, Any], wanted: tuple[str, ...]) -> SongSpec:
        """Merge the person's input, the model's valid fields and the offline writer's answer."""
        person_text = " ".join(filter(None, [request.prompt, request.description, request.described_lyrics]))
        hints = parse_musical_hints(person_text)
        values = dict(found)
        # The person's words win over the model's.
        if request.prompt.strip() and request.mode in ("lyrics", "described_lyrics"):
            values["tags"] = normalise_tags(request.prompt) or values.get("tags")
        for name in ("bpm", "key", "time_signature"):
            if hints.get(name):
                values[name] = hints[name]
        if request.instrumental:
            values["lyrics"] = ""
        elif request.mode == "lyrics":
            values["lyrics"] = normalise_lyrics(request.lyrics)

        missing = [f for f in FIELDS if values.get(f) in (None, "", [])
                   and not (f == "lyrics" and "lyrics" not in wanted)]
        if missing:
            offline = self._offline_spec(request)
            for name in missing:
                values[name] = getattr(offline, name)
            self.fallbacks += 1
            self.last.fallback_fields = missing
            log.warning(
                "writer %s: no usable %s after %d attempt(s) (%s); the offline writer's answer is used for them",
                self.model_id, ", ".join(missing), self.last.attempts, "; ".join(self.last.problems) or "ok",
            )
        title = values.get("title") or make_title(request.description or request.described_lyrics or request.lyrics)
        return SongSpec(
            title=title,
            tags=tags_with_meta(values.get("tags") or "", values.get("bpm"), values.get("key")),
            lyrics="" if request.instrumental else normalise_lyrics(values.get("lyrics") or ""),
            categories=normalise_categories(values.get("categories") or [], limit=3),
            bpm=values.get("bpm"),
            key=values.get("key"),
            time_signature=values.get("time_signature"),
        )


CACHE_MODES = ("dynamic", "static")
STATIC_PROMPT_TOKENS = 2048
"""The prompt part of the static KV cache: the system prompt (~450 tokens) and the longest user
message (style and lyrics, up to 2 x `MAX_INPUT_CHARS` characters of text). A longer prompt
grows the cache for that call (and, on CUDA, compiles the decoding step once more)."""


class QwenWriter(ChatWriter):
    """Writer on an instruction-tuned causal LM (Qwen2-7B-Instruct by default), in this process.

    Args:
        path: the model folder (config, weights, tokenizer with a chat template).
        model / tokenizer: an already built causal LM (placed on `device`) and its tokenizer,
            instead of a folder (benchmarks use the real architecture with random weights).
        model_id: the name stored on songs.
        device: ``"cuda"`` or ``"cpu"`` (bf16 on CUDA, float32 on CPU).
        max_new_tokens / temperature / top_p / top_k: generation settings (None keeps the defaults).
        dtype: ``"bfloat16"``, ``"float32"``..., or None/``"auto"``: bf16 on CUDA, float32 on CPU
            (``"bfloat16"`` halves a CPU writer's memory, at some speed on CPUs without bf16 units).
        cache: ``"dynamic"`` (default: a KV cache that grows token by token) or ``"static"``: a
            cache allocated once at a fixed length (`max_cache_len` = `STATIC_PROMPT_TOKENS` +
            `max_new_tokens`, at most the model's context), so every call has the same shapes; on
            CUDA the decoding step is then compiled (``torch.compile``, "reduce-overhead": CUDA
            graphs) once, at load time (`warmup`). Elsewhere the static cache runs uncompiled.
        prompt_lookup: prompt-lookup decoding: when > 0, up to this many tokens are proposed at
            each step from n-grams already in the prompt and the answer (a chorus that repeats)
            and checked in one forward pass; the tokens are those the model would have chosen.
            0 (default) is off.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
        model_id: str | None = None,
        device: str = "cuda",
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        dtype: str | None = None,
        cache: str | None = None,
        prompt_lookup: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if path is None and (model is None or tokenizer is None):
            raise ValueError("QwenWriter needs a model folder or a model and its tokenizer")
        cache = (cache or "dynamic").strip().lower()
        if cache not in CACHE_MODES:
            raise ValueError(f"writer cache {cache!r}: expected one of {', '.join(CACHE_MODES)}")
        if prompt_lookup is not None and int(prompt_lookup) < 0:
            raise ValueError(f"writer prompt lookup {prompt_lookup!r}: expected 0 (off) or more tokens")
        self.path = Path(path) if path is not None else None
        self.model_id = model_id or (self.path.name if self.path else "writer")
        self.name = self.model_id
        self.device = torch.device(device)
        if dtype and dtype != "auto":
            if dtype not in ("bfloat16", "float16", "float32"):
                raise ValueError(f"writer dtype {dtype!r}: expected auto, bfloat16, float16 or float32")
            self.dtype = getattr(torch, dtype)
        else:
            self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        started = time.monotonic()
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.tokenizer = tokenizer
        if not getattr(self.tokenizer, "chat_template", None):
            self.tokenizer.chat_template = CHATML_TEMPLATE
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(str(self.path), dtype=self.dtype, local_files_only=True)
            model.to(self.device)
        else:
            self.dtype = model.dtype
        self.model = model
        self.model.eval()
        self.max_new_tokens = int(max_new_tokens or DEFAULT_MAX_NEW_TOKENS)
        self.temperature = float(temperature if temperature is not None else DEFAULT_TEMPERATURE)
        self.top_p = float(top_p if top_p is not None else DEFAULT_TOP_P)
        self.top_k = int(top_k if top_k is not None else DEFAULT_TOP_K)
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.tokenizer.eos_token_id
        self.cache = cache
        self.prompt_lookup = int(prompt_lookup or 0)
        context = getattr(getattr(self.model, "config", None), "max_position_embeddings", None) or 32768
        self.max_cache_len = min(int(context), STATIC_PROMPT_TOKENS + self.max_new_tokens)
        self.compiled = self.cache == "static" and self.device.type == "cuda"
        self._start_stats()
        if self.compiled:
            self.warmup()
        self.load_seconds = time.monotonic() - started
        log.info(
            "writer %s loaded on %s (%s, %s cache%s%s) in %.1f s",
            self.model_id, self.device, str(self.dtype).replace("torch.", ""), self.cache,
            f" of {self.max_cache_len} tokens, compiled decoding" if self.compiled else "",
            f", prompt lookup {self.prompt_lookup}" if self.prompt_lookup else "", self.load_seconds,
        )

    # ------------------------------------------------------------------ generating

    def generation_kwargs(self, temperature: float | None = None, *, max_new_tokens: int | None = None) -> dict[str, Any]:
        """The keyword arguments of `model.generate` for one call (besides the inputs)."""
        temp = self.temperature if temperature is None else temperature
        sampling = temp > 0
        kwargs: dict[str, Any] = dict(
            max_new_tokens=int(max_new_tokens or self.max_new_tokens),
            do_sample=sampling,
            repetition_penalty=DEFAULT_REPETITION_PENALTY,
            pad_token_id=self.pad_token_id,
        )
        if sampling:
            kwargs.update(temperature=temp, top_p=self.top_p, top_k=self.top_k)
        if self.cache == "static":
            kwargs.update(cache_implementation="static", max_cache_len=self.max_cache_len)
            if self.compiled:
                from transformers import CompileConfig

                kwargs["compile_config"] = CompileConfig(fullgraph=False, mode="reduce-overhead")
            else:
                kwargs["disable_compile"] = True
        if self.prompt_lookup:
            kwargs["prompt_lookup_num_tokens"] = self.prompt_lookup
        return kwargs

    def encode(self, messages: list[dict[str, str]]) -> tuple[Any, Any]:
        """(input_ids, attention_mask) of a chat on the writer's device."""
        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        return inputs["input_ids"].to(self.device), inputs["attention_mask"].to(self.device)

    def generate_ids(self, input_ids: Any, attention_mask: Any, **overrides: Any) -> Any:
        """`model.generate` with the writer's settings (`overrides` replace them): all the ids."""
        import torch

        kwargs = self.generation_kwargs(overrides.pop("temperature", None),
                                        max_new_tokens=overrides.pop("max_new_tokens", None))
        kwargs.update(overrides)
        try:
            with torch.inference_mode():
                return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        except Exception as exc:
            from . import is_cuda_oom

            if is_cuda_oom(exc) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise

    def generate(self, messages: list[dict[str, str]], *, temperature: float | None = None) -> str:
        """One chat completion: the assistant's reply text."""
        input_ids, attention_mask = self.encode(messages)
        started = time.monotonic()
        output = self.generate_ids(input_ids, attention_mask, temperature=temperature)
        new = output[0, input_ids.shape[1] :]
        self.last.prompt_tokens += int(input_ids.shape[1])
        self.last.new_tokens += int(new.shape[0])
        self.last.seconds += time.monotonic() - started
        return self.tokenizer.decode(new, skip_special_tokens=True)

    def warmup(self, new_tokens: int = 8) -> float:
        """One short generation so the first job does not pay for compiling the decoding step
        (static cache on CUDA); seconds spent."""
        started = time.monotonic()
        input_ids, attention_mask = self.encode(build_messages(WriteRequest(mode="description", description="warm-up")))
        self.generate_ids(input_ids, attention_mask, max_new_tokens=new_tokens)
        return time.monotonic() - started

    def describe(self) -> dict[str, Any]:
        """Facts for logs and the UI."""
        return {
            "model": self.model_id,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "cache": self.cache,
            "max_cache_len": self.max_cache_len if self.cache == "static" else None,
            "compiled": self.compiled,
            "prompt_lookup": self.prompt_lookup,
        }
