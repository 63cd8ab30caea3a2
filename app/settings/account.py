"""Settings: the account (/settings/account) — display name, change of address (confirmed at the
new address), two-factor sign-in, data export, deleting the account."""
from __future__ import annotations

from flask import abort, flash, make_response, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

import models
from core import accounts, mail
from core.errors import UserError
from core.storage import StorageUnavailable, get_storage
from models import DataExport, User

from ..auth import mailer, totp
from ..auth.forms import DeleteAccountForm, DisableTotpForm, EmailChangeForm, NameForm, TotpForm
from ..extensions import htmx, limiter, settings
from . import bp

PENDING_SECRET = "totp_setup"  # session key: the secret shown while two-factor is being set up


@bp.record_once
def _configure_jobs(state):
    accounts.configure(state.app.extensions["tunesmith_config"])


def _mail_key() -> str:
    return f"account-mail:{current_user.id}"


def _signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings().SECRET_KEY, salt="tunesmith-export")


def export_link(export: DataExport) -> str:
    return mailer.absolute("settings.export_download", token=_signer().dumps(export.id))


def _page(status: int = 200, *, forms: dict | None = None, errors: dict | None = None, totp_secret=None):
    forms = forms or {}
    export = accounts.latest_export(current_user)
    ctx = dict(
        name_form=forms.get("name") or NameForm(formdata=None, name=current_user.name),
        email_form=forms.get("email") or EmailChangeForm(formdata=None),
        delete_form=forms.get("delete") or DeleteAccountForm(formdata=None),
        totp_form=forms.get("totp") or TotpForm(formdata=None),
        disable_form=forms.get("disable") or DisableTotpForm(formdata=None),
        errors=errors or {},
        export=export,
        export_url=export_link(export) if export is not None and export.status == "ready" else None,
        totp_secret=totp_secret,
        totp_uri=totp.uri(totp_secret, current_user.email) if totp_secret else None,
    )
    resp = make_response(render_template("settings/account.html", **ctx), status)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.route("/account", methods=["GET", "POST"])
@login_required
@limiter.limit(lambda: settings().ACCOUNT_MAIL_RATE_LIMIT, methods=["POST"], key_func=_mail_key,
               exempt_when=lambda: request.form.get("action") != "email")
def account():
    if request.method == "GET":
        return _page(totp_secret=session.get(PENDING_SECRET))
    action = request.form.get("action", "name")
    if action == "email":
        return _change_email()
    form = NameForm()
    if not form.validate_on_submit():
        return _page(422, forms={"name": form})
    name = " ".join((form.name.data or "").split())
    User.update(name=name).where(User.id == current_user.id).execute()
    flash("Your display name is saved." if name else "Your display name is cleared.", "success")
    return redirect(url_for("settings.account"), 303)


def _change_email():
    form = EmailChangeForm()
    if not form.validate_on_submit():
        return _page(422, forms={"email": form})
    new = form.email.data.strip().lower()
    if not current_user.check_password(form.password.data):
        form.password.errors.append("That is not your current password.")
        return _page(422, forms={"email": form})
    if new == current_user.email:
        form.email.errors.append("That is already your address.")
        return _page(422, forms={"email": form})
    if User.select().where(User.email == new).exists():
        form.email.errors.append("Another account uses that address.")
        return _page(409, forms={"email": form})
    try:
        mailer.send_email_change(current_user, new)
    except mail.MailError:
        form.email.errors.append("We could not send the confirmation mail just now. Please try again later.")
        return _page(503, forms={"email": form})
    flash(f"We sent a link to {new}. Your address changes when you open it.", "success")
    return redirect(url_for("settings.account"), 303)


# ---------------------------------------------------------------------------------- two-factor
@bp.post("/account/2fa/start")
@login_required
def totp_start():
    if current_user.has_totp:
        return redirect(url_for("settings.account", _anchor="two-factor"), 303)
    session[PENDING_SECRET] = totp.new_secret()
    return redirect(url_for("settings.account", _anchor="two-factor"), 303)


@bp.post("/account/2fa/confirm")
@login_required
def totp_confirm():
    secret = session.get(PENDING_SECRET)
    if not secret or current_user.has_totp:
        flash("Start setting up two-factor sign-in again.", "info")
        return redirect(url_for("settings.account", _anchor="two-factor"), 303)
    form = TotpForm()
    if not form.validate_on_submit():
        return _page(422, forms={"totp": form}, totp_secret=secret)
    if not totp.check(secret, form.code.data):
        form.code.errors.append("That code is not right. Check your app's clock and enter the current code.")
        return _page(422, forms={"totp": form}, totp_secret=secret)
    with models.write_transaction():
        User.update(totp_secret=secret, session_version=User.session_version + 1).where(
            User.id == current_user.id).execute()
    session.pop(PENDING_SECRET, None)
    login_user(User.get_by_id(current_user.id))  # this session goes on; others sign in again with a code
    flash("Two-factor sign-in is on. You will be asked for a code when you log in.", "success")
    return redirect(url_for("settings.account", _anchor="two-factor"), 303)


@bp.post("/account/2fa/disable")
@login_required
def totp_disable():
    form = DisableTotpForm()
    if not form.validate_on_submit():
        return _page(422, forms={"disable": form})
    if not current_user.check_password(form.password.data):
        form.password.errors.append("That is not your password.")
        return _page(422, forms={"disable": form})
    if settings().ADMIN_REQUIRE_2FA and current_user.is_admin:
        form.password.errors.append("Admins must keep two-factor sign-in on here.")
        return _page(409, forms={"disable": form})
    User.update(totp_secret=None).where(User.id == current_user.id).execute()
    flash("Two-factor sign-in is off.", "info")
    return redirect(url_for("settings.account", _anchor="two-factor"), 303)


# ---------------------------------------------------------------------------------- export
@bp.post("/account/export")
@login_required
@limiter.limit(lambda: settings().ACCOUNT_MAIL_RATE_LIMIT, key_func=_mail_key)
def export():
    try:
        accounts.start_export(settings(), current_user, export_link)
    except UserError as exc:
        return _page(exc.status, errors={"export": exc.message})
    flash("We are preparing your export. The link appears here and comes by mail when it is ready.", "success")
    if htmx:
        return _export_fragment()
    return redirect(url_for("settings.account", _anchor="export"), 303)


@bp.get("/account/export/status")
@login_required
def export_status():
    return _export_fragment()


def _export_fragment():
    export = accounts.latest_export(current_user)
    url = export_link(export) if export is not None and export.status == "ready" else None
    resp = make_response(render_template("settings/_export.html", export=export, export_url=url, errors={}))
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/account/export/<token>")
@login_required
def export_download(token):
    try:
        export_id = _signer().loads(token, max_age=settings().EXPORT_LINK_TTL)
    except SignatureExpired:
        return render_template("errors/error.html", status=410, title="This download link has expired",
                               message="Start a new export in your account settings."), 410
    except BadSignature:
        abort(404)
    export = DataExport.get_or_none((DataExport.id == str(export_id)) & (DataExport.user == current_user.id))
    if export is None or export.status != "ready" or not export.key:
        abort(404)
    url = get_storage(settings()).url(export.key, settings().SIGNED_URL_TTL,
                                      download_name=f"tunesmith-export-{export.created_at:%Y-%m-%d}.zip")
    return redirect(url, 302)


# ---------------------------------------------------------------------------------- deletion
@bp.post("/account/delete")
@login_required
def delete():
    form = DeleteAccountForm()
    if not form.validate_on_submit():
        return _page(422, forms={"delete": form})
    if not current_user.check_password(form.password.data):
        form.password.errors = ["That is not your password, so nothing was deleted."]
        return _page(403, forms={"delete": form})
    user = User.get_by_id(current_user.id)
    try:
        accounts.delete_account(user, get_storage(settings()))
    except StorageUnavailable:
        return _page(503, errors={"delete": "Storage is not answering, so your account was not deleted. "
                                            "Please try again in a few minutes."})
    logout_user()
    session.clear()
    flash("Your account and your songs are deleted. Thank you for making music here.", "info")
    return redirect(url_for("main.index"), 303)
