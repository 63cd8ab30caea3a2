"""Password rules: at least 8 characters, not one of the common passwords shipped with the app
(`common_passwords.txt`, compared lower-cased), not the account's own address; and a strength
estimate (0-4) the forms show next to the field."""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

MIN_LENGTH = 8
MAX_LENGTH = 200
LIST = Path(__file__).with_name("common_passwords.txt")
LABELS = ("very weak", "weak", "fair", "good", "strong")


@lru_cache(maxsize=1)
def common() -> frozenset[str]:
    lines = LIST.read_text(encoding="utf-8").splitlines()
    return frozenset(ln.strip().lower() for ln in lines if ln.strip() and not ln.startswith("#"))


def problem(password: str, email: str = "") -> str | None:
    """Why `password` is refused, in words a person can act on, or None when it is fine."""
    pw = password or ""
    if len(pw) < MIN_LENGTH or len(pw) > MAX_LENGTH:
        return f"Use at least {MIN_LENGTH} characters (and at most {MAX_LENGTH})."
    low = pw.lower()
    if low in common():
        return "That password is one of the most common ones, so it is guessed first. Choose another."
    if len(set(low)) <= 2:
        return "That password repeats one or two characters. Choose one that is harder to guess."
    local = (email or "").split("@", 1)[0].lower()
    if local and len(local) >= 4 and (low == local or low == (email or "").lower()):
        return "Do not use your email address as your password."
    return None


def strength(password: str) -> int:
    """0 (very weak) .. 4 (strong): a rough guess from length and the kinds of characters, with
    common passwords at 0. The browser shows the same estimate while typing (js/password.js)."""
    pw = password or ""
    if not pw or pw.lower() in common():
        return 0
    pool = 0
    pool += 26 if any(c.islower() for c in pw) else 0
    pool += 26 if any(c.isupper() for c in pw) else 0
    pool += 10 if any(c.isdigit() for c in pw) else 0
    pool += 33 if any(not c.isalnum() for c in pw) else 0
    unique = len(set(pw))
    bits = (unique + (len(pw) - unique) * 0.5) * math.log2(max(pool, 2))
    return 0 if bits < 28 else 1 if bits < 36 else 2 if bits < 50 else 3 if bits < 64 else 4
