"""Profile pages, the avatar, follows and the profile settings.

- GET `/u/<handle>`: display name, handle, bio, avatar, the account's public songs (newest
  first, "Load more" with HTMX, a link without; both carry `?after=<cursor>`, keyset paging on
  song (user_id, published, status, published_at, id); an old `?page=N` shows the first page, a
  cursor that does not decode is a 400), its public playlists, totals, followers and a Follow
  button for signed-in others. Unknown, suspended and deleted accounts are 404.
- POST `/u/<handle>/follow` (`follow` = 1 or 0 sets the state; without it, toggles): HTMX gets
  the button back, a plain form a 303 to where it came from.
- GET `/u/<handle>/avatar`: a redirect to a short-lived signed URL, like song covers.
- GET/POST `/settings/profile` (`name`, `handle`, `bio`, `avatar`, `remove_avatar`): a refused
  field re-renders the form with its message and a 4xx, and nothing changes.
"""
from __future__ import annotations

from urllib.parse import urlparse

from flask import abort, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from core import profiles
from core.errors import UserError
from core.storage import StorageUnavailable, get_storage
from models import User

from ..extensions import htmx, limiter, settings
from ..main import feed
from ..songs.media import signed_url
from ..songs.pages import absolute_url
from . import bp
from .forms import ProfileForm

PAGE_SIZE = 24


def _account_key() -> str:
    return f"profile:{current_user.id}" if current_user.is_authenticated else f"profile-ip:{request.remote_addr}"


def _follow_key() -> str:
    return f"follow:{current_user.id}" if current_user.is_authenticated else f"follow-ip:{request.remote_addr}"


def _found_or_404(handle: str) -> User:
    user = profiles.find(handle)
    if user is None:
        abort(404)
    return user


def _safe_next(target: str | None, default: str) -> str:
    if target:
        parsed = urlparse(target)
        if not parsed.scheme and not parsed.netloc and target.startswith("/") and not target.startswith("//"):
            return target
    return default


def avatar_url(user: User) -> str | None:
    """The avatar's address on this site (with the key's name, so a new picture is a new URL)."""
    if not user.avatar_key or not user.handle:
        return None
    version = user.avatar_key.rsplit("/", 1)[-1].split(".", 1)[0][:16]
    return url_for("profiles.avatar", handle=user.handle, v=version)


def share_meta(user: User, totals: dict) -> dict:
    """Open Graph / Twitter card fields for a profile page (absolute URLs)."""
    songs = totals["songs"]
    summary = f"{songs} song{'' if songs == 1 else 's'} on Tunesmith"
    description = f"{user.bio.strip()[:200]} · {summary}" if (user.bio or "").strip() else summary
    meta = {"title": f"{user.display_name} (@{user.handle})", "description": description,
            "url": absolute_url("profiles.profile", handle=user.handle), "image": None}
    if user.avatar_key:
        version = user.avatar_key.rsplit("/", 1)[-1].split(".", 1)[0][:16]
        meta["image"] = absolute_url("profiles.avatar", handle=user.handle, v=version)
    return meta


def _follow_context(user: User, **extra) -> dict:
    ctx = dict(profile=user, following=profiles.is_following(current_user, user),
               followers=profiles.totals(user)["followers"])
    ctx.update(extra)
    return ctx


# ---------------------------------------------------------------------------------- the page
@bp.get("/u/<handle>")
def profile(handle):
    user = _found_or_404(handle)
    if handle != user.handle:  # /u/Alice -> /u/alice
        return redirect(url_for("profiles.profile", handle=user.handle, **request.args), 301)
    after = (request.args.get("after") or "").strip() or None
    listing = feed.newest_page(profiles.public_songs(user), after, PAGE_SIZE)
    feed.annotate(listing.songs, current_user)
    if htmx and htmx.target == "profile-more":
        return render_template("profiles/_songs_more.html", profile=user, listing=listing)
    totals = profiles.totals(user)
    ctx = dict(profile=user, listing=listing, totals=totals, followers=totals["followers"],
               following=profiles.is_following(current_user, user),
               playlists=profiles.public_playlists(user) if not after else [],
               avatar=avatar_url(user), og=share_meta(user, totals))
    return render_template("profiles/page.html", **ctx)


@bp.get("/u/<handle>/avatar")
def avatar(handle):
    user = _found_or_404(handle)
    if not user.avatar_key:
        abort(404)
    resp = redirect(signed_url(user.avatar_key), 302)
    resp.headers["Cache-Control"] = f"private, max-age={max(0, settings().SIGNED_URL_TTL // 3)}"
    return resp


@bp.post("/u/<handle>/follow")
@login_required
@limiter.limit(lambda: settings().FOLLOW_RATE_LIMIT, key_func=_follow_key)
def follow(handle):
    user = _found_or_404(handle)
    wanted = {"1": True, "0": False}.get(request.form.get("follow", ""))
    back = _safe_next(request.form.get("next"), url_for("profiles.profile", handle=user.handle))
    try:
        now_following = profiles.set_follow(current_user, user, wanted)
    except UserError as exc:
        if htmx:
            return render_template("profiles/_follow_button.html", **_follow_context(user, follow_error=exc.message)), exc.status
        flash(exc.message, "error")
        return redirect(back, 303)
    if htmx:
        return render_template("profiles/_follow_button.html", **_follow_context(user))
    flash(f"You follow {user.display_name} now: their new songs show in your Following tab." if now_following
          else f"You no longer follow {user.display_name}.", "success")
    return redirect(back, 303)


# ---------------------------------------------------------------------------------- settings
def _settings_page(form: ProfileForm, user: User, status: int = 200):
    resp = make_response(render_template("settings/profile.html", form=form, user=user, avatar=avatar_url(user),
                                         bio_max=profiles.BIO_MAX, handle_max=profiles.HANDLE_MAX,
                                         avatar_max_mb=profiles.AVATAR_MAX_BYTES // (1024 * 1024)), status)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _upload() -> bytes | None:
    """The uploaded avatar's bytes (one more than the limit at most: enough to refuse it)."""
    f = request.files.get("avatar")
    if f is None or not f.filename:
        return None
    return f.read(profiles.AVATAR_MAX_BYTES + 1)


@bp.route("/settings/profile", methods=["GET", "POST"])
@login_required
@limiter.limit(lambda: settings().PROFILE_RATE_LIMIT, methods=["POST"], key_func=_account_key)
def edit():
    user = User.get_by_id(current_user.id)
    profiles.ensure_handle(user)
    if request.method == "GET":
        return _settings_page(ProfileForm(formdata=None, name=user.name, handle=user.handle, bio=user.bio), user)
    form = ProfileForm()
    if not form.validate_on_submit():
        return _settings_page(form, user, 422)
    try:
        data = _upload()
        webp = profiles.process_avatar(data) if data is not None else None
        changes = profiles.check_profile(user, name=form.name.data, handle=form.handle.data, bio=form.bio.data)
        done = profiles.save_profile(user, changes, avatar=webp, remove_avatar=bool(form.remove_avatar.data),
                                     storage=get_storage(settings()))
    except UserError as exc:
        target = getattr(form, exc.field or "", None) or form.name
        target.errors = [*(target.errors or []), exc.message]
        return _settings_page(form, user, exc.status)
    except StorageUnavailable:
        form.avatar.errors = ["We could not store the picture just now. Please try again in a minute."]
        return _settings_page(form, user, 503)
    flash("Your profile is saved." if done else "Nothing changed.", "success" if done else "info")
    return redirect(url_for("profiles.edit"), 303)
