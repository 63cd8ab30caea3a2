"""The mails the account pages send: password reset, address confirmation, change of address.

Links are absolute: built on BASE_URL when it is set (so a forged Host header cannot point a
reset link elsewhere), else on the address the request came to."""
from __future__ import annotations

from flask import url_for

from core import accounts, mail

from ..extensions import settings


def absolute(endpoint: str, **values) -> str:
    base = settings().BASE_URL
    if base:
        return base.rstrip("/") + url_for(endpoint, **values)
    return url_for(endpoint, _external=True, **values)


def _minutes(seconds: int) -> str:
    if seconds >= 7200:
        return f"{seconds // 3600} hours"
    return f"{max(1, seconds // 60)} minutes"


def reset_message(user):
    cfg = settings()
    token = accounts.issue_token(cfg, user, "reset", cfg.RESET_TOKEN_TTL)
    return mail.compose(cfg, user.email, "Reset your Tunesmith password", [
        f"Hello {user.display_name},",
        "someone (hopefully you) asked to reset the password of your Tunesmith account. "
        f"The link below works once, for {_minutes(cfg.RESET_TOKEN_TTL)}; using it logs out every other session.",
        "If you did not ask for this, ignore this mail: your password stays as it is.",
    ], link=("Choose a new password", absolute("auth.reset", token=token)))


def send_verification(user) -> str:
    cfg = settings()
    token = accounts.issue_token(cfg, user, "verify", cfg.VERIFY_TOKEN_TTL)
    return mail.send(cfg, mail.compose(cfg, user.email, "Confirm your email address for Tunesmith", [
        f"Hello {user.display_name},",
        "please confirm that this is your address, so you can make songs and get back into your "
        f"account if you forget your password. The link works for {_minutes(cfg.VERIFY_TOKEN_TTL)}.",
    ], link=("Confirm my address", absolute("auth.verify", token=token))))


def send_email_change(user, new_email: str) -> str:
    cfg = settings()
    token = accounts.issue_token(cfg, user, "email", cfg.VERIFY_TOKEN_TTL, new_email=new_email)
    return mail.send(cfg, mail.compose(cfg, new_email, "Confirm your new email address for Tunesmith", [
        f"Hello {user.display_name},",
        f"you asked to sign in to Tunesmith with {new_email} from now on. Confirm it with the link below "
        f"(it works for {_minutes(cfg.VERIFY_TOKEN_TTL)}); until then your account keeps its current address.",
        "If you did not ask for this, ignore this mail.",
    ], link=("Confirm my new address", absolute("auth.verify", token=token))))

