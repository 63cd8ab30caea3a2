"""Pure-text helpers shared by every writer (the offline rules writer and the LLM writer).

Whatever produced the text (a person, a rule, a language model), it passes through these
functions before it is stored or handed to the music engine:

- `parse_musical_hints` reads tempo, key and time signature out of free text or tags;
- `normalise_category` / `normalise_categories` turn loose genre names into one spelling each
  (so "hip hop", "HipHop" and "hip-hop" are one category);
- `normalise_lyrics` maps any section heading style to the music engine's section tags and
  removes chatter and markdown;
- `normalise_tags` makes a clean comma-separated, lower-case, de-duplicated tag line;
- `make_title` derives a short human title from a description (never "Untitled").

Nothing here imports anything heavier than `re`.
"""
from __future__ import annotations

import re
from typing import Iterable

__all__ = [
    "LYRICS_MAX_CHARS",
    "SECTION_TAGS",
    "make_title",
    "normalise_categories",
    "normalise_category",
    "normalise_key",
    "normalise_lyrics",
    "normalise_tags",
    "parse_musical_hints",
]

LYRICS_MAX_CHARS = 5000
"""Lyrics are cut (at a line boundary) to at most this many characters."""

SECTION_TAGS = ("[intro]", "[verse]", "[pre-chorus]", "[chorus]", "[bridge]", "[outro]")
"""The section tags lyrics may carry after `normalise_lyrics`."""

BPM_MIN, BPM_MAX = 40, 240

# --------------------------------------------------------------------------------------------
# Musical hints: tempo, key, time signature
# --------------------------------------------------------------------------------------------

_BPM_RES = (
    re.compile(r"(?<![\d.])(\d{2,3}(?:\.\d+)?)\s*-?\s*(?:bpm|beats\s+per\s+minute)\b", re.I),
    re.compile(r"\b(?:tempo|bpm)\s*(?:of|at|is|=|:|~|around|about)?\s*(\d{2,3}(?:\.\d+)?)(?![\d.])", re.I),
)

_ACC = r"(#|♯|b|♭|-?sharp|-?flat)"
# "A minor", "F# major", "Bb min", "c sharp minor", "E-flat major" (note letter any case).
_KEY_LONG_RE = re.compile(
    rf"(?<![\w#♯♭])([A-Ga-g])\s*{_ACC}?\s*(major|minor|maj|min)\b", re.I
)
# "Bbm", "F#m", "C#min", "Am", "Emaj", "DM": short forms, note letter upper case.
_KEY_SHORT_RE = re.compile(r"(?<![\w#♯♭])([A-G])(#|♯|b|♭)?(m|min|maj|M)(?![\w#♯♭])")
# "key of D", "in the key of F#".
_KEY_OF_RE = re.compile(rf"\bkey\s+of\s+([A-Ga-g])\s*{_ACC}?(?![\w#♯♭])", re.I)

_TIME_SIG_RE = re.compile(r"(?<![\d/])([2-9]|1[0-5])\s*/\s*(2|4|8|16)(?![\d/])")


def _accidental(raw: str | None) -> str:
    if not raw:
        return ""
    raw = raw.lower().lstrip("-")
    if raw in ("#", "♯", "sharp"):
        return "#"
    return "b"


def normalise_key(note: str, accidental: str | None, mode: str | None) -> str:
    """Spell a key the one way tags carry it: "A minor", "F# major", "Bb minor"."""
    acc = _accidental(accidental)
    m = (mode or "major").lower()
    minor = m in ("minor", "min", "m")
    return f"{note.upper()}{acc} {'minor' if minor else 'major'}"


def _parse_bpm(text: str) -> int | None:
    for rx in _BPM_RES:
        for m in rx.finditer(text):
            value = int(round(float(m.group(1))))
            if BPM_MIN <= value <= BPM_MAX:
                return value
    return None


def _short_key_allowed(text: str, start: int, end: int) -> bool:
    """Short forms like "Am" are words too ("Am I dreaming"): accept them only in tag position.

    Tag position: the whole comma-separated chunk, or right after "in"/"key"; "F#m"-style
    forms with an accidental are unambiguous and always accepted.
    """
    token = text[start:end]
    if any(c in token[1:] for c in "#♯♭") or (len(token) > 1 and token[1] == "b" and token != "Bb"):
        return True
    before = text[:start]
    after = text[end:]
    chunk_start = max(before.rfind(","), before.rfind("\n"), before.rfind(";"), before.rfind("|"))
    chunk_before = before[chunk_start + 1 :].strip()
    ends = [i for i in (after.find(","), after.find("\n"), after.find(";"), after.find("|")) if i >= 0]
    chunk_after = after[: min(ends)] if ends else after
    if not chunk_before and not chunk_after.strip():
        return True
    return bool(re.search(r"\b(in|key)\s*:?\s*$", chunk_before, re.I))


def _parse_key(text: str) -> str | None:
    m = _KEY_LONG_RE.search(text)
    best: tuple[int, str] | None = None
    if m:
        best = (m.start(), normalise_key(m.group(1), m.group(2), m.group(3)))
    for s in _KEY_SHORT_RE.finditer(text):
        if best is not None and s.start() >= best[0]:
            break
        if _short_key_allowed(text, s.start(), s.end()):
            mode = "major" if s.group(3) in ("maj", "M") else "minor"
            best = (s.start(), normalise_key(s.group(1), s.group(2), mode))
            break
    k = _KEY_OF_RE.search(text)
    if k and (best is None or k.start() < best[0]):
        # "key of D minor" is already caught by the long form at a later offset; prefer it.
        tail = text[k.end() : k.end() + 12].lower()
        mode = "minor" if re.match(r"\s*(minor|min)\b", tail) else "major"
        best = (k.start(), normalise_key(k.group(1), k.group(2), mode))
    return best[1] if best else None


def _parse_time_signature(text: str) -> str | None:
    m = _TIME_SIG_RE.search(text)
    if m:
        return f"{int(m.group(1))}/{int(m.group(2))}"
    if re.search(r"\bwaltz\b", text, re.I):
        return "3/4"
    return None


def parse_musical_hints(text: str) -> dict:
    """Read tempo, key and time signature from free text or a tag line.

    Returns ``{"bpm": int | None, "key": str | None, "time_signature": str | None}``;
    e.g. "dark synthwave, 120bpm, F# minor, 6/8" gives
    ``{"bpm": 120, "key": "F# minor", "time_signature": "6/8"}``. Tempos outside 40-240 are
    ignored; keys are spelled "<Note>[#|b] major|minor"; "waltz" implies 3/4.
    """
    text = text or ""
    return {
        "bpm": _parse_bpm(text),
        "key": _parse_key(text),
        "time_signature": _parse_time_signature(text),
    }


# --------------------------------------------------------------------------------------------
# Categories
# --------------------------------------------------------------------------------------------

CATEGORY_MAX_CHARS = 32
CATEGORY_MAX_WORDS = 4

# Keys are the name lower-cased with everything but letters and digits removed.
_CATEGORY_SYNONYMS: dict[str, str] = {
    "hiphop": "Hip-Hop",
    "hiphoprap": "Hip-Hop",
    "rap": "Rap",
    "rnb": "R&B",
    "randb": "R&B",
    "rhythmandblues": "R&B",
    "rb": "R&B",
    "electronica": "Electronic",
    "electronic": "Electronic",
    "electro": "Electronic",
    "electronicmusic": "Electronic",
    "edm": "EDM",
    "lofi": "Lo-Fi",
    "lofihiphop": "Lo-Fi",
    "chillhop": "Lo-Fi",
    "dnb": "Drum & Bass",
    "drumandbass": "Drum & Bass",
    "drumnbass": "Drum & Bass",
    "db": "Drum & Bass",
    "kpop": "K-Pop",
    "jpop": "J-Pop",
    "jrock": "J-Rock",
    "synthwave": "Synthwave",
    "retrowave": "Synthwave",
    "outrun": "Synthwave",
    "synthpop": "Synth-Pop",
    "rocknroll": "Rock & Roll",
    "rockandroll": "Rock & Roll",
    "rockroll": "Rock & Roll",
    "80s": "80s",
    "80": "80s",
    "eighties": "80s",
    "1980s": "80s",
    "90s": "90s",
    "nineties": "90s",
    "1990s": "90s",
    "70s": "70s",
    "seventies": "70s",
    "1970s": "70s",
    "60s": "60s",
    "sixties": "60s",
    "1960s": "60s",
    "00s": "2000s",
    "2000s": "2000s",
    "ukgarage": "UK Garage",
    "ukg": "UK Garage",
    "idm": "IDM",
    "ambient": "Ambient",
    "dubstep": "Dubstep",
    "triphop": "Trip-Hop",
    "postrock": "Post-Rock",
    "postpunk": "Post-Punk",
    "popmusic": "Pop",
    "rockmusic": "Rock",
    "classicalmusic": "Classical",
    "orchestral": "Orchestral",
    "cinematic": "Cinematic",
    "soundtrack": "Soundtrack",
    "ost": "Soundtrack",
    "country": "Country",
    "countrymusic": "Country",
    "edmpop": "EDM",
    "alternative": "Alternative",
    "alt": "Alternative",
    "altrock": "Alternative Rock",
    "indie": "Indie",
    "singersongwriter": "Singer-Songwriter",
    "acapella": "A Cappella",
    "acappella": "A Cappella",
    "bossanova": "Bossa Nova",
    "neosoul": "Neo-Soul",
    "doowop": "Doo-Wop",
    "nudisco": "Nu-Disco",
    "numetal": "Nu Metal",
    "lounge": "Lounge",
    "latin": "Latin",
    "reggaeton": "Reggaeton",
    "afrobeat": "Afrobeat",
    "afrobeats": "Afrobeats",
    "phonk": "Phonk",
    "trap": "Trap",
    "drill": "Drill",
    "grime": "Grime",
}

# Words kept upper case (acronyms) when title-casing an unknown name.
_ACRONYMS = {"edm", "idm", "uk", "us", "dj", "mc", "r&b", "ost", "ebm"}
_SMALL_WORDS = {"a", "an", "and", "of", "the", "in", "on", "for", "to", "n", "with", "at", "by", "or"}

_JUNK_CATEGORIES = {
    "", "none", "na", "nan", "null", "other", "misc", "miscellaneous", "unknown", "genre",
    "genres", "category", "categories", "music", "song", "songs", "track", "tag", "tags",
    "various", "general", "etc", "tbd", "n a",
}

_LIST_PREFIX_RE = re.compile(r"^\s*(?:[-*•·+>#]+|\d+\s*[.)\]:-]|\(?[a-z]\)|[a-z][.)])\s*", re.I)
_LABEL_PREFIX_RE = re.compile(r"^\s*(?:categories|category|genres?|tags?|styles?)\s*[:=-]\s*", re.I)


def _strip_decoration(s: str) -> str:
    s = s.strip()
    s = _LABEL_PREFIX_RE.sub("", s)
    prev = None
    while prev != s:
        prev = s
        if not re.match(r"^\d+0'?s\b", s):  # "80s" is a name, not a list number
            s = _LIST_PREFIX_RE.sub("", s, count=1)
        s = s.strip().strip("\"'`“”‘’*_[](){}<>").strip()
        s = s.rstrip(".;:!?").strip()
    return s


def _title_case_words(name: str) -> str:
    words = name.split(" ")
    out: list[str] = []
    for i, word in enumerate(words):
        low = word.lower()
        if low in _ACRONYMS:
            out.append(word.upper())
            continue
        if i > 0 and low in _SMALL_WORDS:
            out.append(low)
            continue
        parts = [p[:1].upper() + p[1:].lower() if p else p for p in word.split("-")]
        out.append("-".join(parts))
    return " ".join(out)


def normalise_category(name: str | None) -> str | None:
    """One spelling per category, or None for junk.

    Case, spacing and punctuation variants and common synonyms collapse to one name
    ("hip hop" / "hip-hop" / "HipHop" -> "Hip-Hop", "rnb" / "r&b" -> "R&B",
    "electronica" -> "Electronic"); list bullets, numbering, quotes and "Genre:" labels go;
    empty, placeholder ("none", "misc"), too long (> 32 chars or > 4 words) or letterless
    names give None.
    """
    if not name or not isinstance(name, str):
        return None
    s = _strip_decoration(name)
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"\s*&\s*", " & ", s)
    if not s:
        return None
    key = re.sub(r"[^a-z0-9]", "", s.lower())
    if s.lower() in _JUNK_CATEGORIES or key in {re.sub(r"[^a-z0-9]", "", j) for j in _JUNK_CATEGORIES}:
        return None
    if key in _CATEGORY_SYNONYMS:
        return _CATEGORY_SYNONYMS[key]
    if not re.search(r"[A-Za-z]", s):
        return None
    if len(s) > CATEGORY_MAX_CHARS or len(s.split(" ")) > CATEGORY_MAX_WORDS:
        return None
    if re.search(r"[<>{}\[\]=@\\/|^~$%]", s) or "http" in s.lower():
        return None
    # "Hip Hop Music" -> look the core up too.
    core = re.sub(r"(music|genre)$", "", key)
    if core and core in _CATEGORY_SYNONYMS:
        return _CATEGORY_SYNONYMS[core]
    s = re.sub(r"\s+(music|genre)$", "", s, flags=re.I) or s
    # Keep an explicit mixed-case spelling the writer chose for a word like "IDM" or "McJazz";
    # otherwise title-case.
    return _title_case_words(s)


def normalise_categories(
    names: Iterable[str] | str | None, limit: int = 3, fallback: str | None = None
) -> list[str]:
    """Normalise, de-duplicate (case-insensitively) and cap a list of categories.

    Accepts a list or one comma/newline-separated string (a language model's answer). Returns at
    most `limit` names in first-seen order; when nothing valid survives, returns
    ``[normalise_category(fallback)]`` if a fallback is given, else ``[]``.
    """
    if names is None:
        items: list[str] = []
    elif isinstance(names, str):
        items = re.split(r"[,\n;|/]+", names)
    else:
        items = []
        for n in names:
            if isinstance(n, str):
                items.extend(re.split(r"[,\n;|]+", n))
    out: list[str] = []
    seen: set[str] = set()
    for item in items:
        cat = normalise_category(item)
        if cat is None:
            continue
        k = cat.lower()
        if k in seen:
            continue
        seen.add(k)
        out.append(cat)
        if len(out) >= max(1, limit):
            break
    if not out and fallback:
        fb = normalise_category(fallback)
        if fb:
            out.append(fb)
    return out


# --------------------------------------------------------------------------------------------
# Lyrics
# --------------------------------------------------------------------------------------------

# Heading words -> section tag. Longest names first so "pre-chorus" wins over "chorus".
_SECTION_WORDS: list[tuple[str, str]] = [
    (r"pre[\s_-]*chorus|pre[\s_-]*hook|build[\s_-]*up|lift", "[pre-chorus]"),
    (r"post[\s_-]*chorus|final[\s_-]*chorus|last[\s_-]*chorus|chorus|hook|refrain|drop", "[chorus]"),
    (r"verse|rap|spoken(?:[\s_-]*word)?|couplet", "[verse]"),
    (r"bridge|middle[\s_-]*(?:8|eight)|interlude|breakdown|(?:guitar|sax|piano|synth|instrumental)?[\s_-]*solo|instrumental[\s_-]*break|break", "[bridge]"),
    (r"intro(?:duction)?|opening|prelude", "[intro]"),
    (r"outro|coda|ending|fade[\s_-]*out|end", "[outro]"),
]
_NUMBER_WORDS = r"(?:\d+|one|two|three|four|five|six|i{1,3}|iv|v|first|second|third|final|last)"
_HEADING_CORE = (
    r"(?P<name>" + "|".join(f"(?:{w})" for w, _ in _SECTION_WORDS) + r")"
    + rf"(?:\s*[-#]?\s*{_NUMBER_WORDS})?(?:\s*[x×]\s*\d+)?(?:\s*\([^()]{{0,30}}\))?"
)
# A heading in brackets or parentheses: "(Chorus)", "[Verse 2: Artist]", "[Hook x2]:".
_BRACKET_HEADING_RE = re.compile(
    r"^\s*(?:#{1,6}\s*)?(?:\*\*|__|\*)?\s*[\[(]\s*" + _HEADING_CORE
    + r"\s*(?:[:\-–—|][^\])]*)?[\])]\s*(?:\*\*|__|\*)?\s*:?\s*(?P<rest>.*)$",
    re.I,
)
# A bare or markdown heading: "Verse 1:", "**Bridge**", "## Hook", "CHORUS x2", and
# "Chorus: la la la" (the words after the colon are the section's first line).
_PLAIN_HEADING_RE = re.compile(
    r"^\s*(?:#{1,6}\s*)?(?P<emph>\*\*|__|\*)?\s*" + _HEADING_CORE
    + r"\s*(?:\*\*|__|\*)?\s*(?:(?P<colon>:)\s*(?:\*\*|__|\*)?\s*(?P<rest>.*))?$",
    re.I,
)
_INSTRUMENTAL_MARK_RE = re.compile(r"^\s*[\[(]\s*(?:instrumental|inst|no\s+vocals?)\s*[\])]\s*$", re.I)
_CHATTER_RE = re.compile(
    r"^\s*(?:here(?:'s| is| are)|sure|certainly|of course|okay|ok|below (?:is|are)|i hope|"
    r"these lyrics|this song|feel free|note:|enjoy)\b",
    re.I,
)
_TITLE_LINE_RE = re.compile(r"^\s*(?:\*\*|#+\s*)?(?:song\s+)?title\s*[:\-]", re.I)
_FENCE_RE = re.compile(r"^\s*(?:```|~~~)")


def _section_tag(name: str) -> str:
    low = name.lower()
    for words, tag in _SECTION_WORDS:
        if re.fullmatch(words, low, re.I):
            return tag
    return "[verse]"


def _clean_lyric_line(line: str) -> str:
    line = line.replace("\t", " ")
    line = re.sub(r"^\s*#{1,6}\s+", "", line)  # markdown heading marker
    line = re.sub(r"^\s*(?:[-*•]\s+|>\s*)", "", line)  # bullets, quotes
    line = re.sub(r"(\*\*|__)(.*?)\1", r"\2", line)
    line = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"\1", line)
    line = re.sub(r"(?<![\w_])_(?!\s)(.+?)(?<!\s)_(?![\w_])", r"\1", line)
    line = line.replace("`", "")
    line = re.sub(r"[ \u00a0]+", " ", line)
    return line.strip()


def _heading(line: str) -> tuple[str, str] | None:
    """(tag, rest-of-line) when `line` is a section heading, else None."""
    m = _BRACKET_HEADING_RE.match(line)
    if m:
        return _section_tag(m.group("name")), (m.group("rest") or "").strip()
    m = _PLAIN_HEADING_RE.match(line)
    if not m:
        return None
    name = m.group("name")
    marked = bool(m.group("emph")) or m.group("colon") is not None or line.lstrip().startswith("#")
    if not marked and name.lower() in ("end", "break", "drop", "lift", "ending", "opening", "rap"):
        # Plain "End" / "Break" / "Drop" lines are lyrics, not headings.
        return None
    return _section_tag(name), (m.group("rest") or "").strip()


def normalise_lyrics(text: str | None) -> str:
    """Lyrics in the music engine's shape.

    - any heading style ("Verse 1:", "(Chorus)", "[Pre-Chorus]", "**Bridge**", "## Hook",
      "[Verse 2: Artist]", "CHORUS x2") becomes one of [intro] [verse] [pre-chorus] [chorus]
      [bridge] [outro] on its own line (hook/refrain -> chorus, interlude/solo -> bridge, ...);
    - code fences, markdown emphasis, bullets, "Title: ..." lines and a model's chatter
      ("Here are the lyrics:") go; other bracketed stage directions ("[Guitar riff]") go;
    - an "[instrumental]" marker alone means no lyrics: "";
    - blank lines collapse to one, a blank line precedes each section, empty sections go;
    - lyrics without any heading start with [verse];
    - the result is cut at a line boundary to at most 5,000 characters.
    """
    if not text:
        return ""
    text = str(text).replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    out: list[str] = []  # entries: a tag, a lyric line, or "" for a blank
    seen_content = False
    for raw in lines:
        if _FENCE_RE.match(raw):
            continue
        if _INSTRUMENTAL_MARK_RE.match(raw):
            continue
        if _TITLE_LINE_RE.match(raw) and not seen_content:
            continue
        if not seen_content and _CHATTER_RE.match(raw) and (raw.rstrip().endswith(":") or len(raw) < 120):
            continue
        if _CHATTER_RE.match(raw) and seen_content and re.match(
            r"^\s*(?:i hope|feel free|enjoy|note:|these lyrics|this song)", raw, re.I
        ):
            continue
        if re.fullmatch(r"\s*(?:[-*_=~]\s*){3,}", raw):  # markdown rules
            out.append("")
            continue
        stripped = raw.strip()
        head = _heading(stripped)
        if head:
            tag, rest = head
            out.append(tag)
            rest = _clean_lyric_line(rest)
            if rest:
                out.append(rest)
            seen_content = True
            continue
        line = _clean_lyric_line(raw)
        if re.fullmatch(r"\[[^\]]*\]", line):
            continue  # an unknown bracketed direction: not singable
        out.append(line)
        if line:
            seen_content = True

    # Assemble: drop empty sections, collapse blanks, blank line before each tag.
    sections: list[tuple[str | None, list[str]]] = []
    current: tuple[str | None, list[str]] = (None, [])
    for item in out:
        if item in SECTION_TAGS:
            sections.append(current)
            current = (item, [])
        else:
            current[1].append(item)
    sections.append(current)

    blocks: list[str] = []
    for tag, body in sections:
        cleaned: list[str] = []
        for line in body:
            if line == "":
                if cleaned and cleaned[-1] != "":
                    cleaned.append("")
            else:
                cleaned.append(line)
        while cleaned and cleaned[-1] == "":
            cleaned.pop()
        if not cleaned:
            continue
        if tag is None:
            tag = "[verse]"
        blocks.append("\n".join([tag, *cleaned]))
    result = "\n\n".join(blocks)
    return _cap_lyrics(result, LYRICS_MAX_CHARS)


def _cap_lyrics(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit + 1]
    nl = cut.rfind("\n")
    cut = cut[:nl] if nl > 0 else text[:limit]
    lines = cut.rstrip().split("\n")
    while lines and (lines[-1].strip() in SECTION_TAGS or not lines[-1].strip()):
        lines.pop()
    return "\n".join(lines)[:limit]


# --------------------------------------------------------------------------------------------
# Tags
# --------------------------------------------------------------------------------------------


def normalise_tags(text: str | Iterable[str] | None, limit: int = 300) -> str:
    """A clean tag line: comma-separated, lower-case, trimmed, de-duplicated, at most `limit` chars.

    Accepts a string (commas, semicolons, pipes or new lines separate tags; a "Tags:" label,
    bullets, quotes and a trailing full stop go) or a list of tags. Whole tags are dropped
    from the end to fit `limit`; a single over-long tag is cut at a word boundary.
    """
    if not text:
        return ""
    if isinstance(text, str):
        parts = re.split(r"[,;\n|]+", text)
    else:
        parts = []
        for t in text:
            if t:
                parts.extend(re.split(r"[,;\n|]+", str(t)))
    out: list[str] = []
    seen: set[str] = set()
    for p in parts:
        p = _LABEL_PREFIX_RE.sub("", p.strip())
        p = re.sub(r"^\s*(?:[-*•·+>]+|\d+[.)])\s+", "", p)
        p = p.strip().strip("\"'`“”‘’*_[](){}").strip()
        p = p.rstrip(".!:").strip()
        p = re.sub(r"\s+", " ", p).lower()
        if not p or p in seen:
            continue
        seen.add(p)
        out.append(p)
    result = ""
    for tag in out:
        candidate = tag if not result else f"{result}, {tag}"
        if len(candidate) <= limit:
            result = candidate
        elif not result:
            cut = tag[:limit]
            sp = cut.rfind(" ")
            result = (cut[:sp] if sp > limit // 2 else cut).strip()
            break
        else:
            break
    return result


# --------------------------------------------------------------------------------------------
# Titles
# --------------------------------------------------------------------------------------------

TITLE_MAX_CHARS = 120
DEFAULT_TITLE = "New Song"

_TITLE_LEADIN_RE = re.compile(
    r"^(?:(?:please|can you|could you|i want|i'd like|i would like|make|create|write|generate|compose|give me|produce)\b\s*(?:me\s+)?)+",
    re.I,
)
_TITLE_FILLER = {
    "a", "an", "the", "some", "my", "our", "song", "track", "tune", "piece", "number", "banger",
    "ballad", "anthem", "jam", "instrumental", "beat",
}
_TITLE_QUOTED_RE = re.compile(r"(?:called|titled|entitled|named|title)\s*:?\s*[\"“'‘]([^\"”'’]{1,80})[\"”'’]", re.I)
_TITLE_NAMED_RE = re.compile(r"\b(?:called|titled|entitled|named)\s+([^,.;:!?\n]{1,80})", re.I)
_TITLE_ABOUT_RE = re.compile(r"\babout\s+([^,.;:!?\n]{2,120})", re.I)
_TITLE_CUT_RE = re.compile(
    r"\s+(?:with|featuring|feat\.?|ft\.?|in\s+the\s+style|in\s+[A-G](?:#|b)?\s+(?:major|minor)|at\s+\d|that|which|who|whose|where|while|using)\b.*$",
    re.I,
)


def _smart_title_case(phrase: str) -> str:
    words = phrase.split()
    out = []
    for i, w in enumerate(words):
        core = w.strip("\"'“”‘’()")
        if any(c.isupper() for c in core[1:]) or core.isupper() and len(core) > 1:
            out.append(w)  # keep acronyms and deliberate casing (LA, DJ, McCartney)
        elif 0 < i < len(words) - 1 and core.lower() in _SMALL_WORDS:
            out.append(w.lower())
        else:
            out.append(w[:1].upper() + w[1:])
    return " ".join(out)


def _shorten_words(phrase: str, max_words: int = 7, max_chars: int = 60) -> str:
    words = phrase.split()
    words = words[:max_words]
    while words and words[-1].lower().strip(",.") in _SMALL_WORDS | {"and", "but", "so", "very"}:
        words.pop()
    s = " ".join(words)
    if len(s) > max_chars:
        s = s[:max_chars]
        sp = s.rfind(" ")
        if sp > 10:
            s = s[:sp]
    return s.strip(" ,.-–—")


def make_title(text: str | None) -> str:
    """A short human title (1-120 chars) from a description, tag line or lyrics.

    Prefers an explicit name ('called "Neon Rain"'), then the subject after "about"
    ("a song about driving through Tokyo at night" -> "Driving Through Tokyo at Night"), then the
    first clause with filler removed; section tags and musical hints (bpm, keys) are ignored.
    Never returns "Untitled": with nothing usable it returns "New Song".
    """
    if not text:
        return DEFAULT_TITLE
    text = str(text)
    # Lyrics: skip tag lines; use the first sung line.
    lines = [
        ln for ln in (l.strip() for l in text.replace("\r", "\n").split("\n"))
        if ln and not re.fullmatch(r"\[[^\]]*\]|\([^)]*\)", ln) and not _FENCE_RE.match(ln)
    ]
    if not lines:
        return DEFAULT_TITLE
    first = lines[0]
    first = re.sub(r"[*_`#>]+", " ", first)
    first = re.sub(r"\s+", " ", first).strip()

    m = _TITLE_QUOTED_RE.search(first)
    if m and m.group(1).strip():
        return _finish_title(m.group(1).strip(), keep_case=True)
    m = _TITLE_NAMED_RE.search(first)
    if m:
        cand = _TITLE_CUT_RE.sub("", m.group(1)).strip()
        if cand:
            return _finish_title(cand)
    m = _TITLE_ABOUT_RE.search(first)
    if m:
        cand = _TITLE_CUT_RE.sub("", m.group(1)).strip()
        cand = re.sub(r"^(?:how|what|when|why)\s+", "", cand, flags=re.I) if len(cand.split()) > 3 else cand
        cand = _strip_hints(cand)
        if len(cand) >= 2 and not re.fullmatch(r"[\d\s]+", cand):
            return _finish_title(cand)

    clause = re.split(r"[.;:!?]|,\s", first)[0]
    clause = _TITLE_LEADIN_RE.sub("", clause.strip())
    clause = _TITLE_CUT_RE.sub("", _strip_hints(clause))
    words = clause.split()
    while words and words[0].lower() in _TITLE_FILLER:
        words.pop(0)
    # "upbeat synthwave song" -> drop a trailing "song"/"track".
    while words and words[-1].lower() in _TITLE_FILLER:
        words.pop()
    cand = " ".join(words)
    if not re.search(r"[A-Za-z]", cand):
        # Fall back to the other lines (lyrics whose first line was only hints).
        for ln in lines[1:3]:
            cand = _strip_hints(re.sub(r"[*_`#>]+", " ", ln)).strip()
            if re.search(r"[A-Za-z]", cand):
                break
        else:
            return DEFAULT_TITLE
    return _finish_title(cand)


def _strip_hints(s: str) -> str:
    s = re.sub(r"(?<![\d.])\d{2,3}\s*-?\s*bpm\b", " ", s, flags=re.I)
    s = re.sub(r"\b[A-G](?:#|b)?\s*(?:major|minor)\b", " ", s, flags=re.I)
    s = re.sub(r"\b\d+\s*/\s*\d+\b", " ", s)
    return re.sub(r"\s+", " ", s).strip(" ,.-–—")


def _finish_title(cand: str, keep_case: bool = False) -> str:
    cand = cand.strip().strip("\"'“”‘’").strip()
    cand = re.sub(r"\s+", " ", cand)
    if not keep_case:
        cand = _shorten_words(cand)
        cand = _smart_title_case(cand)
    cand = cand[:TITLE_MAX_CHARS].strip()
    if not cand or not re.search(r"\w", cand):
        return DEFAULT_TITLE
    if cand.lower() == "untitled":
        return DEFAULT_TITLE
    return cand
