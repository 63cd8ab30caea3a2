"""Profiles: the public page of an account (`/u/<handle>`), its avatar, following and unfollowing,
and the person's own profile settings (`/settings/profile`). The rules are in core.profiles."""
from flask import Blueprint

bp = Blueprint("profiles", __name__)

from . import views  # noqa: E402,F401  (the routes register on bp)
