"""Admin area: the RQ dashboard (rq-dashboard) mounted at /admin/rq, the people pages
(/admin/users, `users.py`) and moderation (/admin/moderation, `moderation.py`), for admins only
(with a second factor when ADMIN_REQUIRE_2FA is set).

Visitors are sent to log in (302), signed-in non-admins get 403. The dashboard's actions
(requeue, delete, empty, compact) are POSTs that the app-wide CSRF protection checks: the
dashboard's own script sends the `_csrf_token` cookie back as an `X-CSRFToken` header, so this
area sets that cookie (path-scoped, SameSite=Strict) on its pages. The one action the dashboard
also answers on GET (`requeue all`) is refused on GET.
"""
from __future__ import annotations

from flask import abort, current_app, redirect, request, url_for
from flask_login import current_user
from flask_wtf.csrf import generate_csrf
from werkzeug.exceptions import NotFound

from ..extensions import settings

PREFIX = "/admin/rq"
DASHBOARD = "rq_dashboard"


def register(app):
    import rq_dashboard
    from rq.exceptions import NoSuchJobError
    from rq_dashboard.web import setup_rq_connection

    cfg = app.extensions["tunesmith_config"]
    app.config.setdefault("RQ_DASHBOARD_REDIS_URL", cfg.REDIS_URL)
    app.config.setdefault("RQ_DASHBOARD_POLL_INTERVAL", 5000)
    with app.app_context():
        setup_rq_connection(app)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=PREFIX)
    from .moderation import bp as moderation_bp
    from .users import bp as users_bp

    app.register_blueprint(users_bp)
    app.register_blueprint(moderation_bp)
    app.before_request(_admins_only)
    app.after_request(_csrf_cookie)

    @app.errorhandler(NoSuchJobError)
    def _no_such_job(err):  # a job that expired or was deleted: 404, not a server error
        return current_app.handle_http_exception(NotFound())


def _admins_only():
    if request.blueprint != DASHBOARD:
        return None
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")), 302)
    if not current_user.is_admin:
        abort(403)
    from ..auth.views import require_admin_2fa

    if (setup := require_admin_2fa()) is not None:
        return setup
    if request.method == "GET" and request.endpoint == f"{DASHBOARD}.requeue_all":
        abort(405)
    return None


def _csrf_cookie(response):
    if request.blueprint == DASHBOARD and request.method == "GET" and response.mimetype == "text/html" \
            and current_user.is_authenticated and current_user.is_admin:
        response.set_cookie("_csrf_token", generate_csrf(), path=PREFIX, samesite="Strict", httponly=False,
                            secure=settings().SESSION_COOKIE_SECURE)
    return response
