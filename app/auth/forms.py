from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, Length, Optional, Regexp, ValidationError

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
