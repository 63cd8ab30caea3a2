from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, Length, Optional, Regexp, ValidationError

from core import profiles

from . import passwords

EMAIL_RE = r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$"


class RegisterForm(FlaskForm):
    email = EmailField("Email", validators=[
        DataRequired("Enter your email address."),
        Length(max=254, message="That email address is too long."),
        Regexp(EMAIL_RE, message="Enter a valid email address, like name@example.com."),
    ])
    password = PasswordField("Password", validators=[
        DataRequired("Choose a password."),
        Length(min=8, max=200, message="Use at least 8 characters (and at most 200)."),
    ])
    name = StringField("Name (optional)", validators=[Optional(), Length(max=80, message="Keep the name under 80 characters.")])
    handle = StringField("Handle (optional)", filters=[profiles.normalise_handle], validators=[Optional()],
                         render_kw={"autocomplete": "off", "autocapitalize": "none", "spellcheck": "false"})

    def validate_password(self, field):
        _refuse_weak(field, self.email.data)

    def validate_handle(self, field):
        problem = profiles.handle_problem(field.data or "")
        if problem:
            raise ValidationError(problem)


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired("Enter your email address."), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired("Enter your password."), Length(max=200)])


class PasswordForm(FlaskForm):
    current = PasswordField("Current password", validators=[DataRequired("Enter your current password.")])
    new = PasswordField("New password", validators=[
        DataRequired("Choose a new password."),
        Length(min=8, max=200, message="Use at least 8 characters (and at most 200)."),
    ])

    def validate_new(self, field):
        if field.data == self.current.data:
            raise ValidationError("The new password must differ from the current one.")
        _refuse_weak(field, getattr(self, "account_email", ""))


def _refuse_weak(field, email: str = "") -> None:
    """Length is checked by the field's own validator; this adds the common-password rules."""
    if field.data and passwords.MIN_LENGTH <= len(field.data) <= passwords.MAX_LENGTH:
        reason = passwords.problem(field.data, email or "")
        if reason:
            raise ValidationError(reason)


def _strip(value):
    return value.strip() if isinstance(value, str) else value


def _email_field(label: str = "Email"):
    return EmailField(label, filters=[_strip], validators=[
        DataRequired("Enter your email address."),
        Length(max=254, message="That email address is too long."),
        Regexp(EMAIL_RE, message="Enter a valid email address, like name@example.com."),
    ])


def _new_password_field(label: str = "New password"):
    return PasswordField(label, validators=[
        DataRequired("Choose a new password."),
        Length(min=8, max=200, message="Use at least 8 characters (and at most 200)."),
    ])


class ForgotForm(FlaskForm):
    email = _email_field()


class ResetForm(FlaskForm):
    password = _new_password_field()
    account_email = ""

    def validate_password(self, field):
        _refuse_weak(field, self.account_email)


class TotpForm(FlaskForm):
    code = StringField("Code from your authenticator app", validators=[
        DataRequired("Enter the 6-digit code from your authenticator app."),
        Regexp(r"^\s*\d{3}\s?\d{3}\s*$", message="The code is 6 digits, like 123 456."),
    ])


class NameForm(FlaskForm):
    name = StringField("Display name", validators=[Length(max=80, message="Keep the name under 80 characters.")])


class EmailChangeForm(FlaskForm):
    email = _email_field("New email address")
    password = PasswordField("Current password", id="email-password", validators=[
        DataRequired("Enter your current password."), Length(max=200)])


def _confirm_password(field_id: str):
    return PasswordField("Your password", id=field_id, validators=[
        DataRequired("Enter your password to confirm."), Length(max=200)])


class DeleteAccountForm(FlaskForm):
    password = _confirm_password("delete-password")


class DisableTotpForm(FlaskForm):
    password = _confirm_password("disable-password")
