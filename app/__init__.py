"""Tunesmith's web app: `create_app(config)` builds it (gunicorn "app:create_app()")."""
from __future__ import annotations

import logging
import re
import uuid

from flask import Flask, g, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

import models
from config import Config
from core import catalogue, moderation, search
from core.errors import UserError

from .extensions import csrf, htmx, limiter, login_manager

log = logging.getLogger("tunesmith.web")


def create_app(config: Config | None = None) -> Flask:
    config = config or Config()
    app = Flask(__name__)
    app.config.from_object(config)
    app.extensions["tunesmith_config"] = config
    if getattr(config, "TRUSTED_PROXIES", 0):
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config.TRUSTED_PROXIES, x_proto=config.TRUSTED_PROXIES)
    if not logging.getLogger().handlers:
        from core.logs import install as install_logging

        install_logging(config.LOG_LEVEL)

    workers = getattr(config, "DATABASE_WEB_PARALLEL_WORKERS", 0)
    models.init_db(config.DATABASE_URL, config.DATABASE_POOL_SIZE,
                   {"max_parallel_workers_per_gather": workers} if workers >= 0 else None)
    search.configure(getattr(config, "SEARCH_CANDIDATES", search.CANDIDATES), getattr(config, "SEARCH_TIER_START", None))

    csrf.init_app(app)
    htmx.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please log in to continue."
    login_manager.login_message_category = "info"
    limiter.init_app(app)

    @login_manager.user_loader
    def load_user(user_id: str):
        uid, _, version = user_id.partition(":")
        try:
            user = models.User.by_id(int(uid))
        except ValueError:
            return None
        if user is None or str(user.session_version) != version:
            return None
        return user

    @app.before_request
    def _open_db():
        g.request_id = request.headers.get("X-Request-ID") or uuid.uuid4().hex[:16]
        models.db.connect(reuse_if_open=True)

    @app.teardown_request
    def _close_db(exc):
        if not models.db.is_closed():
            models.db.close()

    @app.after_request
    def _headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers["X-Request-ID"] = g.get("request_id", "")
        if request.headers.get("HX-Request") is not None or response.mimetype == "text/html":
            response.vary.add("HX-Request")
        return response

    from . import admin, api, billing, ops, songs
    from .auth import bp as auth_bp
    from .create import bp as create_bp
    from .main import bp as main_bp
    from .settings import bp as settings_bp

    app.register_blueprint(main_bp)
    app.register_blueprint(auth_bp, url_prefix="/auth")
    songs.register(app)
    app.register_blueprint(create_bp)
    for area in (billing, api, admin, ops):
        area.register(app)
    app.register_blueprint(settings_bp)
    from .profiles import bp as profiles_bp

    app.register_blueprint(profiles_bp)
    from . import playlists

    playlists.register(app)
    from . import styles as styles_area

    styles_area.register(app)

    from . import security

    security.install(app, config)
    from . import caching

    caching.install(app)

    from .cli import register_cli

    register_cli(app)
    _register_errors(app)
    _register_template_helpers(app)
    return app


def wants_json() -> bool:
    return request.path.startswith("/api/") or (
        request.accept_mimetypes.best == "application/json" and not request.headers.get("HX-Request"))


def error_json(status: int, code: str, message: str, field: str | None = None):
    return jsonify(UserError(message, status, field, code).as_json()), status


def _register_errors(app: Flask) -> None:
    messages = {
        400: "The request could not be understood.",
        403: "You are not allowed to do that.",
        404: "There is nothing here.",
        405: "That method is not allowed here.",
        413: "That upload or request is too large.",
        429: "Too many attempts. Please wait a moment and try again.",
        500: "Something went wrong on our side. Please try again.",
        503: "Tunesmith is briefly unavailable. Please try again in a moment.",
    }

    @app.errorhandler(UserError)
    def _user_error(err: UserError):
        """A UserError that no view turned into its form: JSON for API clients, else the page."""
        if wants_json():
            resp = jsonify(err.as_json())
            resp.status_code = err.status
            return resp
        return render_template("errors/error.html", status=err.status, title="That did not work",
                               message=err.message), err.status

    @app.errorhandler(CSRFError)
    def _csrf(err):
        msg = "Your form expired or was sent without its security token. Reload the page and try again."
        if wants_json():
            return error_json(400, "csrf", msg)
        return render_template("errors/error.html", status=400, title="Form expired", message=msg), 400

    @app.errorhandler(HTTPException)
    def _http(err: HTTPException):
        status = err.code or 500
        msg = messages.get(status, err.description)
        if status == 429:
            msg = f"Too many attempts ({err.description}). Please wait a moment and try again."
        if wants_json():
            resp = error_json(status, err.name.lower().replace(" ", "_"), msg)
        else:
            resp = render_template("errors/error.html", status=status, title=err.name, message=msg), status
        return resp

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        import peewee

        if isinstance(err, (peewee.OperationalError, peewee.InterfaceError)):
            log.error("database unavailable: %s", err)
            status, title = 503, "Service unavailable"
            # Render the page as for a visitor: asking the database who is signed in would fail
            # again inside this handler and turn the 503 into a 500.
            g._login_user = login_manager.anonymous_user()
        elif isinstance(err, ValueError) and "NUL (0x00)" in str(err):
            # PostgreSQL cannot store or compare text with NUL characters: the input is refused.
            msg = "Text cannot contain NUL (\\0) characters."
            if wants_json():
                return error_json(400, "invalid", msg)
            return render_template("errors/error.html", status=400, title="Bad request", message=msg), 400
        else:
            log.exception("unhandled error on %s %s", request.method, request.path)
            status, title = 500, "Server error"
        if wants_json():
            return error_json(status, "unavailable" if status == 503 else "server_error", messages[status])
        return render_template("errors/error.html", status=status, title=title, message=messages[status]), status


_URL_SAFE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SLOT = "__tunesmith_slot{}__"  # URL-safe, so url_for leaves it as is


def link(endpoint: str, **values) -> str:
    """`url_for` for the links a page repeats per song (tiles, cards): the URL is built once per
    request and endpoint with placeholders, then each call fills in its values (ids, handles,
    slugs: letters, digits, _ and -, nothing to quote). Other text values are built by `url_for`
    once per request and value; anything else goes to `url_for` each time."""
    from flask import g, url_for

    cache = g.setdefault("_links", {})
    if not all(isinstance(v, str) and _URL_SAFE.fullmatch(v) for v in values.values()):
        if not all(isinstance(v, str) for v in values.values()):
            return url_for(endpoint, **values)
        key = (endpoint, tuple(sorted(values.items())))  # e.g. the same `next` on every tile's login link
        if key not in cache:
            cache[key] = url_for(endpoint, **values)
        return cache[key]
    names = tuple(sorted(values))
    pattern = cache.get((endpoint, names))
    if pattern is None:
        pattern = cache[(endpoint, names)] = url_for(endpoint, **{n: _SLOT.format(i) for i, n in enumerate(names)})
        if not all(_SLOT.format(i) in pattern for i in range(len(names))):  # a value was quoted
            pattern = cache[(endpoint, names)] = ""
    if not pattern:
        return url_for(endpoint, **values)
    for i, n in enumerate(names):
        pattern = pattern.replace(_SLOT.format(i), values[n])
    return pattern


def wave_path(peaks, step: int = 4, height: int = 64) -> str:
    """The SVG path of a waveform (`songs/_waveform.html`): one bar per peak (0..1, clamped),
    `step` units apart, at least 2 high, centred in `height`. Built here, not in the template,
    where concatenating a few hundred bars was half of the song page's rendering."""
    parts = []
    for i, p in enumerate(peaks or ()):
        h = max(2.0, min(max(float(p), 0.0), 1.0) * (height - 4))
        parts.append(f"M{i * step + 1.5} {round((height - h) / 2, 1)}v{round(h, 1)}")
    return "".join(parts)


def _register_template_helpers(app: Flask) -> None:
    from . import tiles  # feed tiles and library cards rendered once while nothing they show changes
    from .caching import static_url  # /static/<file>?v=<content hash>, cached for a year

    tiles.install(app)
    app.jinja_env.globals.update(link=link, static_url=static_url, wave_path=wave_path,
                                config_obj=app.extensions["tunesmith_config"], catalogue=catalogue, moderation=moderation,
                                new_idempotency_key=lambda: uuid.uuid4().hex)
