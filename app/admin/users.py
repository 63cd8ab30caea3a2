"""People, for admins (/admin/users): search, an account's balance and ledger, grant (or take
back) credits through the ledger, make or unmake an admin, suspend or restore an account."""
from __future__ import annotations

import uuid

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user

import models
from core import moderation
from core.errors import UserError
from models import CreditEntry, Song, User

bp = Blueprint("admin_users", __name__, url_prefix="/admin/users")
PAGE = 50
GRANT_MAX = 100000


@bp.before_request
def _admins_only():
    from ..auth.views import abort_unless_admin

    return abort_unless_admin()


def _user_or_404(user_id) -> User:
    try:
        uid = int(user_id)
    except (TypeError, ValueError):
        abort(404)
    user = User.get_or_none((User.id == uid) if 0 < uid < 2**63 else (User.id == 0))
    if user is None:
        abort(404)
    return user


@bp.get("")
def users():
    q = (request.args.get("q") or "").strip()[:254]
    try:
        page = max(1, min(int(request.args.get("page", 1)), 10000))
    except ValueError:
        page = 1
    query = User.select().where(User.deleted_at.is_null())
    if q:
        query = query.where(User.email.contains(q.lower()) | User.name.contains(q))
    rows = list(query.order_by(User.created_at.desc(), User.id.desc()).offset((page - 1) * PAGE).limit(PAGE + 1))
    return render_template("admin/users.html", users=rows[:PAGE], q=q, page=page, more=len(rows) > PAGE)


def _detail(user: User, status: int = 200, errors: dict | None = None, form: dict | None = None):
    ledger = list(CreditEntry.select().where(CreditEntry.user == user.id).order_by(CreditEntry.id.desc()).limit(100))
    songs = Song.select().where(Song.user == user.id).count()
    return render_template("admin/user.html", user=user, ledger=ledger, songs=songs, errors=errors or {},
                           form=form or {}), status


@bp.get("/<user_id>")
def user(user_id):
    return _detail(_user_or_404(user_id))


@bp.post("/<user_id>/grant")
def grant(user_id):
    user = _user_or_404(user_id)
    raw = (request.form.get("credits") or "").strip()
    note = " ".join((request.form.get("note") or "").split())[:200]
    form = {"credits": raw[:12], "note": note}
    try:
        credits = int(raw)
    except ValueError:
        return _detail(user, 422, {"credits": "Enter a whole number of credits, like 50 (or -10 to take back)."}, form)
    if credits == 0 or abs(credits) > GRANT_MAX:
        return _detail(user, 422, {"credits": f"Enter a number from 1 to {GRANT_MAX} (or a negative one to take back)."},
                       form)
    label = note or ("Granted by an admin" if credits > 0 else "Taken back by an admin")
    try:
        with models.write_transaction():
            models.apply_credits(user, credits, "admin", f"admin:{uuid.uuid4().hex}",
                                 f"{label} ({current_user.email})")
    except models.InsufficientCredits as exc:
        return _detail(user, 422, {"credits": f"{exc} Take back at most what they have."}, form)
    flash(f"{'Granted' if credits > 0 else 'Took back'} {abs(credits)} credit{'s' if abs(credits) != 1 else ''}: "
          f"{user.email} now has {user.balance()}.", "success")
    return redirect(url_for("admin_users.user", user_id=user.id), 303)


@bp.post("/<user_id>/admin")
def set_admin(user_id):
    user = _user_or_404(user_id)
    make = request.form.get("is_admin") == "1"
    if user.id == current_user.id and not make:
        return _detail(user, 409, {"admin": "You cannot remove your own admin rights; ask another admin."})
    User.update(is_admin=make).where(User.id == user.id).execute()
    flash(f"{user.email} is {'now an admin' if make else 'no longer an admin'}.", "success")
    return redirect(url_for("admin_users.user", user_id=user.id), 303)


@bp.post("/<user_id>/suspend")
def suspend(user_id):
    user = _user_or_404(user_id)
    suspend_it = request.form.get("suspended", "1") == "1"
    try:  # the one suspend/lift (core.moderation): signed out everywhere, tokens revoked, logged
        if suspend_it:
            moderation.suspend(user, current_user)
        elif user.suspended_at is not None:
            moderation.lift(user, current_user)
    except UserError as exc:
        return _detail(user, exc.status, {"suspend": exc.message})
    flash(f"{user.email} is {'suspended: signed out everywhere, API tokens revoked' if suspend_it else 'restored'}.",
          "success")
    return redirect(url_for("admin_users.user", user_id=user.id), 303)
