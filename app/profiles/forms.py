"""The profile settings form (the handle's rules, the bio's and the avatar's are core.profiles')."""
from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import BooleanField, StringField, TextAreaField

from core import profiles


def _normalise_handle(value):
    return profiles.normalise_handle(value) if isinstance(value, str) else value


class ProfileForm(FlaskForm):
    name = StringField("Display name", render_kw={"maxlength": profiles.NAME_MAX})
    handle = StringField("Handle", filters=[_normalise_handle],
                         render_kw={"autocomplete": "off", "autocapitalize": "none", "spellcheck": "false"})
    bio = TextAreaField("Bio", render_kw={"rows": 4})
    avatar = FileField("Avatar", render_kw={"accept": "image/png,image/jpeg,image/webp,image/gif"})
    remove_avatar = BooleanField("Remove my avatar")
