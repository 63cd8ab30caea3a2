"""A person's account beyond signing in: the links sent by mail (reset, confirm, change of
address), deleting an account, and exporting its data (a background job).

Mail links carry a random token signed with SECRET_KEY (a salt per purpose, an age limit); the
database keeps only its hash (`MailToken`) and marks it used with a conditional UPDATE, so a link
works once, even when it is opened twice at the same moment.

Deleting an account removes the person's songs and their files (`core.songs.delete_song`, then
everything else under `users/<id>/` in storage), their likes (the songs' counts move with them),
listens, tokens, exports and every other row that points at them. The ledger stays: its rows
are the operator's books (purchases, refunds and the credits they paid for must still add up
for accounting, tax and chargebacks), so the user row stays as an anonymised tombstone (no
email, name, password or second factor) that the entries point at, and the entries' notes that
quoted the person's words are cleared. See docs/accounts.md.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import secrets
import zipfile

import peewee as pw
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

import models
from models import ApiToken, CreditEntry, DataExport, Generation, Like, Listen, MailToken, Song, User, utcnow

from .errors import UserError

log = logging.getLogger("tunesmith.accounts")

EXPORT_JOB = "core.accounts.run_export"
# Tables whose rows outlive the account (pointing at its tombstone): the operator's books.
KEPT_MODELS = (CreditEntry, User)
# Ledger kinds whose notes may quote the person (song descriptions, titles): cleared on deletion.
PERSONAL_NOTE_KINDS = ("reserve", "capture", "release")

_config = None


def configure(config) -> None:
    """The settings the export job reads in this process (the web app sets them; a worker that
    did not gets them from the environment on first use)."""
    global _config
    _config = config


def settings():
    global _config
    if _config is None:
        from config import Config

        _config = Config()
    return _config


# ------------------------------------------------------------------------------ mail tokens
def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def _signer(config, purpose: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(config.SECRET_KEY, salt=f"tunesmith-mail-{purpose}")


def issue_token(config, user: User, purpose: str, ttl: int, new_email: str | None = None) -> str:
    """A new single-use link token for `user`; earlier unused tokens of the same purpose stop
    working (only the newest link in the inbox counts)."""
    assert purpose in MailToken.PURPOSES, purpose
    raw = secrets.token_urlsafe(24)
    now = utcnow()
    with models.write_transaction():
        MailToken.update(used_at=now).where((MailToken.user == user.id) & (MailToken.purpose == purpose) &
                                            MailToken.used_at.is_null()).execute()
        MailToken.create(user=user.id, purpose=purpose, token_hash=_hash(raw), new_email=new_email,
                         created_at=now, expires_at=now + dt.timedelta(seconds=ttl))
    return _signer(config, purpose).dumps(raw)


def find_token(config, purpose: str, token: str, ttl: int) -> MailToken | None:
    """The live token row for a link (signature good, not expired, not used), else None."""
    if not token or len(token) > 300:
        return None
    try:
        raw = _signer(config, purpose).loads(token, max_age=ttl)
    except (SignatureExpired, BadSignature):
        return None
    row = (MailToken.select(MailToken, User).join(User)
           .where((MailToken.token_hash == _hash(str(raw))) & (MailToken.purpose == purpose)).first())
    if row is None or row.used_at is not None or row.expires_at <= utcnow() or row.user.deleted_at is not None:
        return None
    return row


def use_token(row: MailToken) -> bool:
    """Mark the token used; False when another request used it first. Call inside the
    transaction that does what the link is for."""
    return bool(MailToken.update(used_at=utcnow()).where((MailToken.id == row.id) &
                                                         MailToken.used_at.is_null()).execute())


# ------------------------------------------------------------------------------ deletion
def tombstone_email(user_id: int) -> str:
    return f"deleted-{user_id}@deleted.invalid"


def delete_account(user: User, storage) -> int:
    """Delete everything of `user` but the books (see the module's note). Returns the number
    of stored objects removed. Storage failures raise before the account row changes, so a
    retry finishes the job."""
    from . import songs as song_life

    uid = user.id
    removed = 0
    for song in list(Song.select().where(Song.user == uid)):
        removed += song_life.delete_song(song, storage)
    for like in list(Like.select().where(Like.user == uid)):
        song = Song.get_or_none(Song.id == like.song_id)
        if song is not None:
            song.set_like(user, False)
    removed += storage.delete_prefix(f"users/{uid}/")
    with models.write_transaction():
        Listen.delete().where(Listen.listener == f"u:{uid}").execute()
        for model in reversed(pw.sort_models(models.ALL_MODELS)):
            if model in KEPT_MODELS:
                continue
            for field, target in model._meta.refs.items():
                if target is not User:
                    continue
                if field.null:
                    model.update({field: None}).where(field == uid).execute()
                else:
                    model.delete().where(field == uid).execute()
        (CreditEntry.update(note=pw.Case(None, [(CreditEntry.kind == k, f"{k.capitalize()} (account deleted)")
                                                for k in PERSONAL_NOTE_KINDS], CreditEntry.note))
         .where((CreditEntry.user == uid) & CreditEntry.kind.in_(PERSONAL_NOTE_KINDS)).execute())
        User.update(email=tombstone_email(uid), name="", password_hash="!", is_admin=False, totp_secret=None,
                    email_verified_at=None, deleted_at=utcnow(), handle=None, bio="", avatar_key=None,
                    session_version=User.session_version + 1).where(User.id == uid).execute()
    log.info("account %s deleted: %d stored object(s) removed, ledger kept anonymised", uid, removed)
    return removed


# ------------------------------------------------------------------------------ export
def export_key(user_id: int, export_id: str) -> str:
    return f"users/{user_id}/exports/{export_id}.zip"


def latest_export(user: User) -> DataExport | None:
    return (DataExport.select().where(DataExport.user == user.id)
            .order_by(DataExport.created_at.desc()).first())


def start_export(config, user: User, download_url) -> DataExport:
    """Create the export row and enqueue its job (after the commit). `download_url(export)`
    gives the signed link the ready mail carries. One export at a time: 409 while one runs."""
    from .queue import get_queue

    current = latest_export(user)
    if current is not None and current.status == "queued":
        raise UserError("Your export is being prepared; we mail you when it is ready.", 409, code="export_running")
    with models.write_transaction():
        export = DataExport.create(user=user.id)
    try:
        get_queue(config).enqueue(EXPORT_JOB, export.id, download_url(export), job_id=f"export-{export.id}",
                                  job_timeout=1800, result_ttl=300, failure_ttl=7 * 24 * 3600,
                                  description=f"data export {export.id} of user {user.id}")
    except Exception as exc:  # Redis down: say so instead of leaving a row that never finishes
        DataExport.update(status="failed", error="could not be queued", finished_at=utcnow()).where(
            DataExport.id == export.id).execute()
        raise UserError("Exports cannot be started right now. Please try again in a few minutes.", 503,
                        code="unavailable") from exc
    return export


def _iso(value) -> str | None:
    return value.isoformat() + "Z" if isinstance(value, dt.datetime) else value


def _row(model_instance, fields) -> dict:
    return {f: _iso(getattr(model_instance, f)) for f in fields}


SONG_FIELDS = ("id", "title", "status", "tags", "lyrics", "instrumental", "seed", "guidance", "steps", "engine",
               "writer_engine", "cover_engine", "offline", "duration", "language", "published", "published_at",
               "listen_count", "like_count", "created_at", "finished_at", "variant")
PLAYLIST_FIELDS = ("id", "title", "description", "public", "created_at", "updated_at")
GENERATION_FIELDS = ("id", "mode", "operation", "source_song_id", "description", "prompt", "lyrics",
                     "described_lyrics", "instrumental", "duration", "variants", "created_at")


def export_data(user: User) -> dict:
    """Everything the account holds, as JSON-ready data (the export's `account.json`)."""
    uid = user.id
    songs = list(Song.select().where(Song.user == uid).order_by(Song.created_at))
    cats = Song.categories_for([s.id for s in songs])
    return {
        "format": "tunesmith-export/1",
        "exported_at": _iso(utcnow()),
        "account": {"email": user.email, "name": user.name, "handle": user.handle, "bio": user.bio,
                    "created_at": _iso(user.created_at),
                    "email_verified_at": _iso(user.email_verified_at), "is_admin": user.is_admin,
                    "two_factor": user.has_totp, "credits": user.balance()},
        "generations": [_row(g, GENERATION_FIELDS) for g in
                        Generation.select().where(Generation.user == uid).order_by(Generation.created_at)],
        "songs": [{**_row(s, SONG_FIELDS), "generation_id": s.generation_id, "parent_id": s.parent_id,
                   "categories": [c.name for c in cats.get(s.id, [])], "files": _song_files(s)} for s in songs],
        "likes": [{"song_id": lk.song_id, "created_at": _iso(lk.created_at)} for lk in
                  Like.select().where(Like.user == uid).order_by(Like.created_at)],
        "listens": [{"song_id": ls.song_id, "created_at": _iso(ls.created_at)} for ls in
                    Listen.select().where(Listen.listener == f"u:{uid}").order_by(Listen.created_at)],
        "credit_ledger": [{"delta": e.delta, "kind": e.kind, "ref": e.ref, "note": e.note,
                           "balance_after": e.balance_after, "created_at": _iso(e.created_at)} for e in
                          CreditEntry.select().where(CreditEntry.user == uid).order_by(CreditEntry.id)],
        "playlists": [{**_row(p, PLAYLIST_FIELDS),
                       "song_ids": [e.song_id for e in p.entries.order_by(models.PlaylistEntry.position)]}
                      for p in models.Playlist.select().where(models.Playlist.user == uid)
                      .order_by(models.Playlist.created_at)],
        "following": [f.followee.handle for f in
                      models.Follow.select().where(models.Follow.follower == uid).order_by(models.Follow.created_at)
                      if f.followee.handle],
        "api_tokens": [{"name": t.name, "prefix": t.prefix, "created_at": _iso(t.created_at),
                        "last_used_at": _iso(t.last_used_at), "revoked_at": _iso(t.revoked_at)} for t in
                       ApiToken.select().where(ApiToken.user == uid).order_by(ApiToken.id)],
    }


def _song_files(song: Song) -> dict[str, str]:
    """{role: path inside the zip} of the song's stored files."""
    out = {}
    for role, key in (("audio", song.audio_key), ("stream", song.stream_key), ("cover", song.cover_key)):
        if key:
            out[role] = f"songs/{song.id}/{role}{_ext(key)}"
    return out


def _ext(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[-1] if "." in name else ""


README = """Your Tunesmith data
===================

account.json   your account, generations (what you asked for), songs (with their categories and
               the files below), likes, listens, the credit ledger and your API tokens (names only)
songs/<id>/    each song's audio (audio.*: the master; stream.*: the compressed copy) and cover
"""


def build_export(user: User, storage) -> bytes:
    data = export_data(user)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("README.txt", README)
        zf.writestr("account.json", json.dumps(data, indent=2, ensure_ascii=False))
        for song in Song.select().where(Song.user == user.id):
            for role, key in (("audio", song.audio_key), ("stream", song.stream_key), ("cover", song.cover_key)):
                if not key:
                    continue
                try:
                    blob = storage.get(key)
                except Exception:  # noqa: BLE001 - a missing file is named in the zip, not fatal
                    log.warning("export of user %s: %s is missing", user.id, key)
                    continue
                compress = zipfile.ZIP_STORED if role != "audio" or key.endswith((".mp3", ".ogg", ".opus")) \
                    else zipfile.ZIP_DEFLATED
                zf.writestr(f"songs/{song.id}/{role}{_ext(key)}", blob, compress_type=compress)
    return buf.getvalue()


def run_export(export_id: str, download_url: str | None = None) -> str:
    """The export job: build the zip, store it, mark the export ready, mail the link."""
    from .mail import compose, send_quietly
    from .storage import get_storage

    config = settings()
    export = DataExport.get_or_none(DataExport.id == export_id)
    if export is None or export.status != "queued":
        return "nothing to do"
    user = User.get_by_id(export.user_id)
    storage = get_storage(config)
    try:
        blob = build_export(user, storage)
        key = export_key(user.id, export.id)
        storage.put(key, blob, "application/zip")
    except Exception as exc:
        DataExport.update(status="failed", error=str(exc)[:255], finished_at=utcnow()).where(
            DataExport.id == export.id).execute()
        raise
    for old in DataExport.select().where((DataExport.user == user.id) & (DataExport.id != export.id) &
                                         DataExport.key.is_null(False)):
        storage.delete(old.key)
    DataExport.update(key=None).where((DataExport.user == user.id) & (DataExport.id != export.id)).execute()
    DataExport.update(status="ready", key=key, size=len(blob), finished_at=utcnow()).where(
        DataExport.id == export.id).execute()
    if download_url:
        days = max(1, round(config.EXPORT_LINK_TTL / 86400))
        send_quietly(config, compose(
            config, user.email, "Your Tunesmith data export is ready",
            [f"Hello {user.display_name},",
             f"the export of your Tunesmith data is ready ({len(blob) / 1e6:.1f} MB): your account and "
             "songs as JSON, with every song's audio and cover.",
             f"The link works for {days} day{'s' if days != 1 else ''}, for you when you are logged in."],
            link=("Download your data", download_url)))
    log.info("export %s of user %s ready: %d bytes", export.id, user.id, len(blob))
    return key

