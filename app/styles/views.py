"""Style pages and actions.

GET /styles lists the signed-in person's styles (each card polls itself while it trains) with
the form to train one; POST /styles trains one (`name`, `description`, `song_ids` (repeated),
`audio` (files)): 303 to its page, or the form again with a 4xx and nothing written or charged.
GET /styles/<id> shows a style to its owner, or to anyone while it is published and ready (404
otherwise, never 403); GET /styles/<id>/status is its card. POST /styles/<id>/cancel,
/publish, /unpublish and /delete are the owner's (others: 404). No route serves the adapter
file: a published style is used by others' songs, never handed out.
"""
from __future__ import annotations

from flask import abort, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from core import styles
from core.errors import UserError
from core.storage import get_storage
from models import Song, Style

from ..extensions import go_to, htmx, settings
from ..songs.studio import inspect_upload
from . import bp

SONG_CHOICES = 200  # own finished songs offered in the form, newest first
PLOT_W, PLOT_H, PLOT_PAD = 320, 120, 6


def _fragment() -> bool:
    return bool(htmx) and not htmx.boosted


def _no_store(resp):
    resp.headers["Cache-Control"] = "private, no-store"
    return resp


def _owned_or_404(style_id) -> Style:
    style = styles.get(style_id)
    if style is None or not style.owned_by(current_user):
        abort(404)
    return style


def loss_plot(report: dict | None) -> dict | None:
    """The training report's loss curve as an inline SVG polyline (server-side, no script):
    {"points": "x,y x,y ...", "width", "height", "first", "last", "steps"}; None without points."""
    raw = (report or {}).get("loss") or []
    pts = []
    for item in raw:
        try:
            step, loss = float(item[0]), float(item[1])
        except (TypeError, ValueError, IndexError):
            continue
        if step == step and loss == loss and abs(step) != float("inf") and abs(loss) != float("inf"):
            pts.append((step, loss))
    if not pts:
        return None
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    span_x, span_y = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    w, h = PLOT_W - 2 * PLOT_PAD, PLOT_H - 2 * PLOT_PAD
    points = " ".join(f"{PLOT_PAD + (x - x0) / span_x * w:.1f},{PLOT_PAD + (1 - (y - y0) / span_y) * h:.1f}"
                      for x, y in pts)
    return {"points": points, "width": PLOT_W, "height": PLOT_H, "first": ys[0], "last": ys[-1],
            "low": y0, "high": y1, "count": len(pts)}


def _song_choices() -> list[Song]:
    return list(Song.select().where((Song.user == current_user.id) & (Song.status == "processed")
                                    & Song.audio_key.is_null(False))
                .order_by(Song.created_at.desc()).limit(SONG_CHOICES))


def _render_index(status: int = 200, errors: dict | None = None, form: dict | None = None):
    cfg = settings()
    others = [s for s in styles.choices(current_user) if not s.owned_by(current_user)]
    resp = make_response(render_template(
        "styles/index.html", styles=styles.of(current_user), others=others, songs=_song_choices(),
        errors=errors or {}, form=form or {}, cfg=cfg, name_max=styles.NAME_MAX,
        description_max=styles.DESCRIPTION_MAX), status)
    return _no_store(resp)


def _render_page(style: Style, status: int = 200, **extra):
    ctx = dict(style=style, owner=style.owned_by(current_user), plot=loss_plot(style.report),
               sources=styles.songs_of(style, current_user), uploads=[s for s in styles.samples(style) if s.upload_key],
               made=styles.made_with(style, current_user))
    ctx.update(extra)
    resp = make_response(render_template("styles/page.html", **ctx), status)
    return _no_store(resp) if ctx["owner"] else resp


# ------------------------------------------------------------------------------- pages
@bp.get("")
@login_required
def index():
    return _render_index()


@bp.post("")
@login_required
def create():
    cfg = settings()
    song_ids = [s for s in request.form.getlist("song_ids") if s.strip()][:cfg.STYLE_MAX_SONGS + 1]
    form = {"name": (request.form.get("name") or "")[:500],
            "description": (request.form.get("description") or "")[:5000], "song_ids": set(song_ids)}
    try:
        uploads = []
        files = [f for f in request.files.getlist("audio") if f is not None and f.filename]
        if len(song_ids) + len(files) > cfg.STYLE_MAX_SONGS:
            raise UserError(f"A style learns from {cfg.STYLE_MIN_SONGS} to {cfg.STYLE_MAX_SONGS} songs; you chose "
                            f"{len(song_ids) + len(files)}. Pick at most {cfg.STYLE_MAX_SONGS}.", 422, "song_ids")
        from ..songs.studio import UPLOAD_MAX_BYTES

        for file in files:
            data = file.read(UPLOAD_MAX_BYTES + 1)
            try:
                ext, seconds = inspect_upload(data)
            except UserError as exc:
                exc.message = f"{file.filename.rsplit('/', 1)[-1][:80]}: {exc.message}"
                raise
            uploads.append({"data": data, "ext": ext, "seconds": seconds,
                            "name": (file.filename.rsplit("/", 1)[-1].rsplit(".", 1)[0] or "Uploaded audio")[:80]})
        style = styles.create(current_user, cfg, name=form["name"], description=form["description"],
                              song_ids=song_ids, uploads=uploads)
    except UserError as exc:
        return _render_index(exc.status, {exc.field or "form": exc.message}, form)
    flash(f"Training “{style.name}”: {cfg.STYLE_TRAIN_CREDITS} credits are reserved until it is ready.", "success")
    target = url_for("styles.page", style_id=style.id)
    return go_to(target, _fragment(), 201)


@bp.get("/<style_id>")
def page(style_id):
    style = styles.get(style_id)
    if style is None or not style.visible_to(current_user):
        abort(404)
    return _render_page(style)


@bp.get("/<style_id>/status")
def status(style_id):
    """The style's card (its owner's), polled by HTMX while it trains."""
    style = _owned_or_404(style_id)
    return _no_store(make_response(render_template("styles/_card.html", style=style)))


# ------------------------------------------------------------------------------- actions
def _done(style: Style, message: str, card: bool = False):
    if card and _fragment():
        return _no_store(make_response(render_template("styles/_card.html", style=style, notice=message)))
    flash(message, "success")
    return redirect(url_for("styles.page", style_id=style.id), 303)


@bp.post("/<style_id>/cancel")
def cancel(style_id):
    style = _owned_or_404(style_id)
    outcome = styles.cancel(settings(), style)
    style = styles.get(style.id)
    message = {"cancelled": "Cancelled; your credits were returned.",
               "stopping": "Stopping the training; your credits come back once it has stopped.",
               "finished": "This style's training had already ended."}[outcome]
    return _done(style, message, card=request.form.get("view") == "card")


@bp.post("/<style_id>/publish")
def publish(style_id):
    style = _owned_or_404(style_id)
    try:
        styles.publish(style)
    except UserError as exc:
        return _render_page(style, exc.status, action_error=exc.message)
    return _done(style, f"“{style.name}” is published: anyone can make songs with it (nobody can download it).")


@bp.post("/<style_id>/unpublish")
def unpublish(style_id):
    style = _owned_or_404(style_id)
    styles.unpublish(style)
    return _done(style, f"“{style.name}” is private again: only you can use it.")


@bp.post("/<style_id>/delete")
def delete(style_id):
    style = _owned_or_404(style_id)
    styles.delete(settings(), style, get_storage(settings()))
    flash(f"Deleted the style “{style.name}”. Songs made with it keep playing.", "success")
    return go_to(url_for("styles.index"), _fragment())
