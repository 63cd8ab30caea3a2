"""Flask extensions as module globals, `init_app`-ed by create_app()."""
from __future__ import annotations

from flask import current_app, request
from flask_htmx import HTMX
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect

csrf = CSRFProtect()
htmx = HTMX()
login_manager = LoginManager()
limiter = Limiter(key_func=get_remote_address, default_limits=[], strategy="moving-window")


def form_email_key() -> str:
    """Rate-limit key for per-account limits: the (lower-cased) email being tried."""
    return "account:" + (request.form.get("email") or "").strip().lower()[:254]


def settings():
    """This app's settings (the `config.Config` that create_app was given): the one way views
    read a setting."""
    return current_app.extensions["tunesmith_config"]
