"""API tokens: issued once in plain text, stored only as a SHA-256 hash.

A token looks like `ts_<43 url-safe characters>` (256 random bits). The database keeps its
hash (the lookup key) and its first characters (`prefix`, so a person can tell tokens apart);
the token itself is shown once, when it is made, and never again.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from core.errors import UserError
from models import ApiToken, User, utcnow

TOKEN_PREFIX = "ts_"
NAME_MAX = 80
MAX_ACTIVE = 25
LAST_USED_GRANULARITY = dt.timedelta(minutes=1)  # write last_used_at at most once a minute


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()


def clean_name(name) -> str:
    clean = " ".join("".join(ch if ch.isprintable() else " " for ch in str(name or "")).split())
    if not clean:
        raise UserError("Give the token a name, e.g. “laptop script”.", 422, "name")
    if len(clean) > NAME_MAX:
        raise UserError(f"Keep the name to {NAME_MAX} characters (this one has {len(clean)}).", 422, "name")
    return clean


def active(user):
    return ApiToken.select().where((ApiToken.user == user.id) & ApiToken.revoked_at.is_null())


def issue(user: User, name) -> tuple[ApiToken, str]:
    """Make a token for `user`: returns (row, plain token). The plain token is not kept."""
    clean = clean_name(name)
    if active(user).count() >= MAX_ACTIVE:
        raise UserError(f"You have {MAX_ACTIVE} active tokens; revoke one you no longer use first.", 409,
                        code="too_many_tokens")
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.create(user=user.id, name=clean, token_hash=hash_token(raw), prefix=raw[:10])
    return token, raw


def authenticate(raw: str | None) -> ApiToken | None:
    """The live token (with its user loaded) for a plain token, or None (unknown or revoked)."""
    if not raw or not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
        return None
    token = (ApiToken.select(ApiToken, User).join(User)
             .where((ApiToken.token_hash == hash_token(raw)) & ApiToken.revoked_at.is_null()).first())
    if token is None:
        return None
    now = utcnow()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_GRANULARITY:
        ApiToken.update(last_used_at=now).where(ApiToken.id == token.id).execute()
        token.last_used_at = now
    return token


def owned(user, token_id) -> ApiToken | None:
    try:
        token_id = int(token_id)
    except (TypeError, ValueError):
        return None
    if not 0 < token_id < 2**63:  # beyond the id column's range: no such token (not an overflow)
        return None
    return ApiToken.get_or_none((ApiToken.id == token_id) & (ApiToken.user == user.id))


def revoke(token: ApiToken) -> None:
    """Revoke at once (idempotent: the first revocation time is kept)."""
    ApiToken.update(revoked_at=utcnow()).where((ApiToken.id == token.id) & ApiToken.revoked_at.is_null()).execute()
    token.revoked_at = ApiToken.select(ApiToken.revoked_at).where(ApiToken.id == token.id).scalar()


def rename(token: ApiToken, name) -> str:
    clean = clean_name(name)
    ApiToken.update(name=clean).where(ApiToken.id == token.id).execute()
    token.name = clean
    return clean
