from urllib.parse import urlparse

from flask import abort, flash, make_response, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user
from peewee import IntegrityError

import models
from core import accounts, mail, profiles
from core.errors import UserError
from models import User, utcnow

from ..extensions import form_email_key, limiter, settings
from . import bp, mailer, totp
from .forms import ForgotForm, LoginForm, PasswordForm, RegisterForm, ResetForm, TotpForm

PENDING_2FA = "2fa_pending"  # session key: the account that gave its password and owes a code


def _safe_next(target: str | None) -> str:
    if target:
        parsed = urlparse(target)
        if not parsed.scheme and not parsed.netloc and target.startswith("/") and not target.startswith("//"):
            return target
    return url_for("main.index")


def _no_store(resp):
    resp = make_response(resp)
    resp.headers["Cache-Control"] = "no-store"
    return resp


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
                user = profiles.register(email, form.password.data, form.name.data or "",
                                         credits=settings().NEW_USER_CREDITS, handle=form.handle.data or None)
            except UserError as exc:  # the handle chosen is taken
                form.handle.errors.append(exc.message)
            except IntegrityError:
                form.email.errors.append("An account with this email already exists. Log in instead?")
            else:
                login_user(user)
                flash(f"Welcome to Tunesmith! You have {user.credits} credits to make songs.", "success")
                if settings().REQUIRE_EMAIL_VERIFICATION:
                    try:
                        mailer.send_verification(user)
                        flash(f"We sent a link to {user.email}: open it to confirm your address and start "
                              "making songs.", "info")
                    except mail.MailError:
                        flash("We could not send the confirmation mail just now. Use “Resend” in a few "
                              "minutes.", "error")
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
        if user is not None and user.deleted_at is None and user.check_password(form.password.data):
            if user.suspended_at is not None:
                form.email.errors.append("This account is suspended. Write to the site's operator if you "
                                         "think this is a mistake.")
                return render_template("auth/login.html", form=form), 403
            next_url = _safe_next(request.args.get("next"))
            if user.has_totp:
                session[PENDING_2FA] = {"uid": user.id, "v": user.session_version, "next": next_url}
                return redirect(url_for("auth.two_factor"), 303)
            login_user(user)
            flash("Welcome back.", "success")
            return redirect(next_url, 303)
        form.password.errors.append("That email and password do not match an account.")
        status = 401
    elif request.method == "POST":
        status = 422
    return render_template("auth/login.html", form=form), status


def _two_factor_key() -> str:
    pending = session.get(PENDING_2FA) or {}
    return f"2fa:{pending.get('uid', '-')}"


@bp.route("/2fa", methods=["GET", "POST"])
@limiter.limit(lambda: settings().LOGIN_ACCOUNT_RATE_LIMIT, methods=["POST"], key_func=_two_factor_key)
def two_factor():
    """The second step of signing in, for accounts with two-factor sign-in."""
    pending = session.get(PENDING_2FA)
    user = User.get_or_none(User.id == pending["uid"]) if pending else None
    if user is None or not user.is_active or not user.has_totp or user.session_version != pending.get("v"):
        session.pop(PENDING_2FA, None)
        flash("Log in with your email and password first.", "info")
        return redirect(url_for("auth.login"), 303)
    form = TotpForm()
    status = 200
    if form.validate_on_submit():
        if totp.verify(user, form.code.data):
            session.pop(PENDING_2FA, None)
            login_user(user)
            flash("Welcome back.", "success")
            return redirect(_safe_next(pending.get("next")), 303)
        form.code.errors.append("That code is not right (or has expired). Enter the current code from your app.")
        status = 401
    elif request.method == "POST":
        status = 422
    return _no_store(render_template("auth/two_factor.html", form=form)), status


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
    form.account_email = current_user.email
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


# ---------------------------------------------------------------------------------- recovery
FORGOT_SENT = ("If an account uses that address, we have sent it a link to choose a new password. "
               "It works once, for an hour. Check your spam folder if it does not arrive in a few minutes.")


@bp.route("/forgot", methods=["GET", "POST"])
@limiter.limit(lambda: settings().FORGOT_RATE_LIMIT, methods=["POST"])
@limiter.limit(lambda: settings().FORGOT_ACCOUNT_RATE_LIMIT, methods=["POST"], key_func=form_email_key)
def forgot():
    """The same answer (status and body) whether or not the address has an account; the mail
    goes out on a thread, so the answer's timing does not tell either."""
    form = ForgotForm()
    if form.validate_on_submit():
        email = form.email.data.strip().lower()
        user = User.get_or_none((User.email == email) & User.deleted_at.is_null())
        if user is not None and user.suspended_at is None:
            mail.send_in_background(settings(), mailer.reset_message(user))
        return _no_store(render_template("auth/forgot.html", form=ForgotForm(formdata=None), sent=True,
                                         sent_message=FORGOT_SENT)), 200
    status = 422 if request.method == "POST" else 200
    return _no_store(render_template("auth/forgot.html", form=form, sent=False)), status


def _bad_link(kind: str):
    messages = {
        "reset": ("This reset link does not work", "It has expired, was already used, or a newer one was sent. "
                  "Ask for a new link below."),
        "verify": ("This confirmation link does not work", "It has expired, was already used, or a newer one "
                   "was sent. Log in and ask for a new one."),
    }
    title, message = messages[kind]
    if kind == "reset":
        return _no_store(render_template("auth/forgot.html", form=ForgotForm(formdata=None), sent=False,
                                         link_error=f"{title}: {message}")), 410
    return render_template("errors/error.html", status=410, title=title, message=message), 410


@bp.route("/reset/<token>", methods=["GET", "POST"])
@limiter.limit(lambda: settings().FORGOT_RATE_LIMIT, methods=["POST"])
def reset(token):
    cfg = settings()
    row = accounts.find_token(cfg, "reset", token, cfg.RESET_TOKEN_TTL)
    if row is None or not row.user.is_active:
        return _bad_link("reset")
    form = ResetForm()
    form.account_email = row.user.email
    if form.validate_on_submit():
        with models.write_transaction():
            if not accounts.use_token(row):
                return _bad_link("reset")
            user = User.get_by_id(row.user_id)
            user.set_password(form.password.data)
            user.session_version += 1  # every other session ends
            if user.email_verified_at is None:
                user.email_verified_at = utcnow()  # the link proved the address
            user.save()
        logout_user()
        session.pop(PENDING_2FA, None)
        if user.has_totp:
            flash("Password changed. Log in with it and your authenticator code.", "success")
            return redirect(url_for("auth.login"), 303)
        login_user(user)
        flash("Password changed. You are logged in here; every other session was logged out.", "success")
        return redirect(url_for("main.index"), 303)
    status = 422 if request.method == "POST" else 200
    return _no_store(render_template("auth/reset.html", form=form, token=token, email=row.user.email)), status


# ---------------------------------------------------------------------------------- confirmation
@bp.get("/verify/<token>")
def verify(token):
    """Confirms the account's address (purpose "verify") or a new address (purpose "email")."""
    cfg = settings()
    for purpose in ("verify", "email"):
        row = accounts.find_token(cfg, purpose, token, cfg.VERIFY_TOKEN_TTL)
        if row is not None:
            break
    else:
        return _bad_link("verify")
    with models.write_transaction():
        if not accounts.use_token(row):
            return _bad_link("verify")
        if purpose == "email":
            new = row.new_email
            if User.select().where((User.email == new) & (User.id != row.user_id)).exists():
                flash("Another account uses that address now, so yours was not changed.", "error")
                return redirect(url_for("settings.account"), 303)
            User.update(email=new, email_verified_at=utcnow()).where(User.id == row.user_id).execute()
            message = f"Your address is now {new}. Log in with it from now on."
        else:
            User.update(email_verified_at=utcnow()).where(
                (User.id == row.user_id) & User.email_verified_at.is_null()).execute()
            message = "Thank you: your address is confirmed."
    flash(message, "success")
    if current_user.is_authenticated and current_user.id == row.user_id:
        return redirect(url_for("settings.account"), 303)
    return redirect(url_for("auth.login"), 303)


def _account_key() -> str:
    return f"account-mail:{current_user.get_id() if current_user.is_authenticated else request.remote_addr}"


@bp.post("/verify/resend")
@login_required
@limiter.limit(lambda: settings().ACCOUNT_MAIL_RATE_LIMIT, key_func=_account_key)
def resend_verification():
    if current_user.is_verified:
        flash("Your address is already confirmed.", "info")
    else:
        try:
            mailer.send_verification(current_user)
            flash(f"We sent a new confirmation link to {current_user.email}.", "success")
        except mail.MailError:
            flash("We could not send the mail just now. Please try again in a few minutes.", "error")
            return redirect(_safe_next(request.form.get("next")), 303)
    return redirect(_safe_next(request.form.get("next") or url_for("settings.account")), 303)


def require_admin_2fa():
    """ADMIN_REQUIRE_2FA: an admin without a second factor is sent to set one up before any
    admin page."""
    if not settings().ADMIN_REQUIRE_2FA or not current_user.is_authenticated or not current_user.is_admin:
        return None
    if current_user.has_totp:
        return None
    flash("Admins must turn on two-factor sign-in first.", "info")
    return redirect(url_for("settings.account", _anchor="two-factor"), 303)


def abort_unless_admin():
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")), 302)
    if not current_user.is_admin:
        abort(403)
    return require_admin_2fa()
