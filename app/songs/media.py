"""Media: redirects to short-lived signed URLs, and the local storage's signed file route."""
import hashlib

from flask import Blueprint, abort, redirect, request, send_file
from flask_login import current_user

from core.storage import LocalStorage, get_storage

from ..extensions import settings

from . import bp, get_owned_song_or_404, get_visible_song_or_404

files_bp = Blueprint("files", __name__)


def signed_url(key: str, download_name: str | None = None, external: bool = False) -> str:
    cfg = settings()
    url = get_storage(cfg).url(key, cfg.SIGNED_URL_TTL, download_name)
    if external and url.startswith("/"):
        url = request.host_url.rstrip("/") + url
    return url


def _redirect(url: str, cache: bool = True):
    resp = redirect(url, 302)
    ttl = settings().SIGNED_URL_TTL
    resp.headers["Cache-Control"] = f"private, max-age={max(0, ttl // 3)}" if cache else "no-store"
    return resp


def listener_id() -> str:
    if current_user.is_authenticated:
        return f"u:{current_user.id}"
    raw = f"{request.remote_addr}|{request.user_agent.string}".encode()
    return "v:" + hashlib.sha256(raw).hexdigest()[:32]


@bp.route("/songs/<song_id>/audio")
def audio(song_id):
    song = get_visible_song_or_404(song_id)
    if song.status != "processed" or not (song.stream_key or song.audio_key):
        abort(404)
    song.count_listen(listener_id())
    return _redirect(signed_url(song.stream_key or song.audio_key), cache=False)


@bp.route("/songs/<song_id>/cover")
def cover(song_id):
    song = get_visible_song_or_404(song_id)
    if not song.cover_key:
        abort(404)
    return _redirect(signed_url(song.cover_key))


@bp.route("/songs/<song_id>/download")
def download(song_id):
    song = get_owned_song_or_404(song_id)
    if song.status != "processed" or not song.audio_key:
        abort(404)
    return _redirect(signed_url(song.audio_key, song.download_name()), cache=False)


@files_bp.route("/files/<token>")
def local_file(token):
    storage = get_storage(settings())
    if not isinstance(storage, LocalStorage):
        abort(404)
    try:
        path, download_name = storage.resolve(token)
    except PermissionError as exc:
        abort(403, str(exc))
    if not path.is_file():
        abort(404)
    resp = send_file(path, as_attachment=bool(download_name), download_name=download_name,
                     conditional=True, max_age=300)
    resp.headers["Cache-Control"] = "private, max-age=300"
    return resp
