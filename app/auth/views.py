from urllib.parse import urlparse

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user
from peewee import IntegrityError

import models
from models import User

from ..extensions import form_email_key, limiter, settings
from . import bp
from .forms import LoginForm, PasswordForm, RegisterForm


def _safe_next(target: str | None) -> str:
    if target:
        parsed = urlparse(target)
        if not parsed.scheme and not parsed.netloc and target.startswith("/") and not target.startswith("//"):
            return target
    return url_for("main.index")


@bp.route("/register", methods=["GET", "POST"])
@limiter.limit(lambda: settings().REGISTER_RATE_LIMIT, methods=["POST"])
def register():
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))
    form = RegisterForm()
    if form.validate_on_submit():
        email = form.email.data.strip().lower()
        if User.select().where(User.email == email).exists():
            form.email.errors.append("An account with this email already exists. Log in instead?")
        else:
            try:
                user = User.register(email, form.password.data, form.name.data or "",
                                     credits=settings().NEW_USER_CREDITS)
            except IntegrityError:
                form.email.errors.append("An account with this email already exists. Log in instead?")
            else:
                login_user(user)
                flash(f"Welcome to Tunesmith! You have {user.credits} credits to make songs.", "success")
                return redirect(url_for("main.index"), 303)
    status = 422 if request.method == "POST" else 200
    return render_template("auth/register.html", form=form), status


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(lambda: settings().LOGIN_RATE_LIMIT, methods=["POST"])
@limiter.limit(lambda: settings().LOGIN_ACCOUNT_RATE_LIMIT, methods=["POST"], key_func=form_email_key)
def login():
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))
    form = LoginForm()
    status = 200
    if form.validate_on_submit():
        user = User.get_or_none(User.email == form.email.data.strip().lower())
        if user is not None and user.check_password(form.password.data):
            login_user(user)
            flash("Welcome back.", "success")
            return redirect(_safe_next(request.args.get("next")), 303)
        form.password.errors.append("That email and password do not match an account.")
        status = 401
    elif request.method == "POST":
        status = 422
    return render_template("auth/login.html", form=form), status


@bp.route("/logout", methods=["POST"])
def logout():
    logout_user()
    flash("You are logged out.", "info")
    return redirect(url_for("main.index"), 303)


@bp.route("/logout-everywhere", methods=["POST"])
@login_required
def logout_everywhere():
    current_user.bump_session_version()
    logout_user()
    flash("You are logged out on every device.", "info")
    return redirect(url_for("auth.login"), 303)


@bp.route("/password", methods=["GET", "POST"])
@login_required
def password():
    form = PasswordForm()
    status = 200
    if form.validate_on_submit():
        if not current_user.check_password(form.current.data):
            form.current.errors.append("That is not your current password.")
            status = 422
        else:
            with models.write_transaction():
                user = User.get_by_id(current_user.id)
                user.set_password(form.new.data)
                user.session_version += 1
                user.save()
            login_user(user)  # this session continues with the new version; others end
            flash("Password changed. Other sessions were logged out.", "success")
            return redirect(url_for("auth.password"), 303)
    elif request.method == "POST":
        status = 422
    return render_template("auth/password.html", form=form), status
