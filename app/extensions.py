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


def go_to(target: str, fragment: bool, status: int = 200):
    """After a form's POST: a 303 to `target`, or, for an HTMX request that wanted a fragment,
    an empty answer with `status` and HX-Redirect (HTMX then loads `target` as a page)."""
    from flask import make_response, redirect

    if not fragment:
        return redirect(target, 303)
    resp = make_response("", status)
    resp.headers["HX-Redirect"] = target
    return resp
