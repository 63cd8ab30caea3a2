"""The Create page: three modes, instrumental switch, duration, variants."""
import uuid

from flask import Blueprint, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from core import songs
from core.errors import UserError

from ..extensions import htmx, limiter, settings
from . import service

bp = Blueprint("create", __name__)

INSPIRATIONS = [
    "an upbeat pop anthem about a summer road trip",
    "a melancholic piano ballad about leaving home",
    "a lo-fi hip-hop beat for late-night studying",
    "an energetic rock song about never giving up",
    "a dreamy synthwave track about neon city nights",
    "a warm acoustic folk song about an old friend",
]
STYLE_BADGES = ["pop", "rock", "hip-hop", "electronic", "lo-fi", "synthwave", "acoustic",
                "female vocals", "male vocals", "120 bpm", "A minor", "upbeat", "chill"]


def _user_key() -> str:
    return f"user:{current_user.get_id()}" if current_user.is_authenticated else request.remote_addr or "?"


def _render(req: songs.Draft | None = None, status: int = 200, message: str | None = None):
    cfg = settings()
    req = req or songs.Draft(duration=cfg.DEFAULT_DURATION, variants=cfg.DEFAULT_VARIANTS)
    # A boosted navigation (hx-boost link) wants the whole page; the form's own hx-post the form.
    template = "create/_form.html" if htmx and not htmx.boosted else "create/create.html"
    return render_template(template, req=req, errors=req.errors, message=message, cfg=cfg,
                           inspirations=INSPIRATIONS, badges=STYLE_BADGES,
                           new_key=uuid.uuid4().hex), status


@bp.route("/create", methods=["GET", "POST"])
@login_required
@limiter.limit(lambda: settings().CREATE_RATE_LIMIT, key_func=_user_key, methods=["POST"])
def create():
    if request.method == "GET":
        cfg = settings()
        chosen = (request.args.get("style_id") or "").strip()[:32] or None  # "Make a song in this style"
        return _render(songs.Draft(duration=cfg.DEFAULT_DURATION, variants=cfg.DEFAULT_VARIANTS, style_id=chosen))
    cfg = settings()
    req = service.parse(request.form.to_dict(), cfg)
    if req.errors:
        return _render(req, 422)
    try:
        gen, created = songs.submit(current_user, req, cfg)
    except UserError as exc:
        req.errors[exc.field or "form"] = exc.message
        return _render(req, exc.status, exc.message)
    if created:
        flash(f"Making {gen.variants} song{'s' if gen.variants != 1 else ''} — watch them appear below.", "success")
    target = url_for("songs.library")
    if htmx:
        resp = make_response("", 204)
        resp.headers["HX-Location"] = target
        return resp
    return redirect(target, 303)

