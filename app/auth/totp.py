"""Two-factor sign-in with time-based one-time codes (RFC 6238, pyotp): any authenticator app."""
from __future__ import annotations

import pyotp

ISSUER = "Tunesmith"


def new_secret() -> str:
    return pyotp.random_base32()


def uri(secret: str, email: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=ISSUER)


def check(secret: str | None, code: str | None) -> bool:
    """The code is the current one (or the one just before or after, for clocks a little off)."""
    digits = "".join(ch for ch in (code or "") if ch.isdigit())
    if not secret or len(digits) != 6:
        return False
    return pyotp.TOTP(secret).verify(digits, valid_window=1)


def verify(user, code: str | None) -> bool:
    return check(user.totp_secret, code)
