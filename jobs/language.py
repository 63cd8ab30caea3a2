"""The language a song is sung in, when the person left it to us ("auto").

ACE-Step 1.5 takes the lyrics' language as `vocal_language`. The order: the person's choice;
else the language the writer says it wrote in (a model writer follows the language of the
request); else the language of the person's own words — their lyrics, or what they wrote
about the song — identified by py3langid (langid.py's model, restricted to the languages
ACE-Step sings); else "unknown", which the pipeline accepts. An instrumental is "unknown".
"""
from __future__ import annotations

import threading

from core.catalogue import AUTO_LANGUAGE, LANGUAGES

UNKNOWN = "unknown"
MIN_LETTERS = 12  # fewer letters than this say too little to tell a language (a CJK sign counts 3)
_CODES = {"yue": "zh"}  # langid has no Cantonese: written Cantonese reads as Chinese
_lock = threading.Lock()
_identifier = None


def _langid():
    global _identifier
    with _lock:
        if _identifier is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
            ident.set_languages(sorted({_CODES.get(c, c) for c in LANGUAGES} & set(ident.labels)))
            _identifier = ident
    return _identifier


def detect(text: str | None, min_confidence: float = 0.5) -> str | None:
    """The ISO 639-1 code of `text`'s language among those ACE-Step sings, or None when the
    text is too short or the identification is not confident."""
    text = (text or "").strip()
    if sum((3 if ord(ch) >= 0x2E80 else 1) for ch in text if ch.isalpha()) < MIN_LETTERS:  # a CJK sign says more
        return None
    code, confidence = _langid().classify(text)
    return code if confidence >= min_confidence and code in LANGUAGES else None


def choose(chosen: str | None, written: str | None, *own_words: str, instrumental: bool = False) -> str:
    """The song's language: the person's choice, the writer's, the person's own words', or
    "unknown"."""
    if instrumental:
        return UNKNOWN
    if chosen and chosen != AUTO_LANGUAGE and chosen in LANGUAGES:
        return chosen
    if written and written in LANGUAGES:
        return written
    for words in own_words:
        code = detect(words)
        if code:
            return code
    return UNKNOWN
