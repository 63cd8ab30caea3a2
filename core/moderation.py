"""Moderation: reports, hiding songs, suspending accounts, the word filter and the action log.

    report(song, reporter, reason, details)  a person reports a song they can see (one open
                                             report per person and song: again = updated)
    hide(song, actor, reason) / unhide(...)  out of every public place / back; the owner still
                                             sees the song, with the reason
    dismiss(song, actor)                     the song's open reports closed, nothing wrong found
    suspend(user, actor) / lift(user, actor) the account cannot sign in, its tokens are revoked
                                             and its songs are public to nobody / restored
    refusal(config, draft)                   the UserError (422) for a submit whose words are on
                                             LYRICS_BLOCKLIST, or None
    open_reports() / recent_actions()        what the moderation page shows

What "publicly visible" means is `models.Song.publicly_visible()`, in one place; hiding and
suspending only change the columns it reads. Every step a moderator takes writes a
`ModerationAction` (who, what, when) in the same transaction as the change itself. The web
(`app/admin/moderation.py`, `app/admin/users.py`, the song page's report form) calls these.
"""
from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass, field

import peewee as pw

import models
from core.errors import UserError
from models import ApiToken, ModerationAction, Report, Song, User, utcnow

REASONS = {
    "spam": "Spam or misleading",
    "hateful": "Hateful or abusive",
    "sexual": "Sexual content",
    "violent": "Violent or dangerous",
    "copyright": "Copyright infringement",
    "other": "Something else",
}
DETAILS_MAX = 1000
HIDE_REASON_MAX = 200
NOTE_MAX = 255
ACTION_LABELS = {"hide": "hid", "unhide": "unhid", "dismiss": "dismissed the reports on",
                 "suspend": "suspended", "lift": "lifted the suspension of"}
THANKS = "Thanks — a moderator will look at it."


# -- reports ------------------------------------------------------------------------------------
def report(song: Song, reporter: User, reason, details) -> Report:
    """File (or update) `reporter`'s open report of `song`. The caller has checked that the
    reporter may see the song. UserError 400, nothing written, for a reason not in REASONS,
    details over DETAILS_MAX characters, or the reporter's own song (they can hide it
    themselves by unpublishing it)."""
    reason = reason if isinstance(reason, str) else ""
    if reason not in REASONS:
        raise UserError("Choose what is wrong with the song from the list.", 400, "reason", "invalid_reason")
    details = (details if isinstance(details, str) else "").replace("\r\n", "\n").replace("\x00", "").strip()
    if len(details) > DETAILS_MAX:
        raise UserError(f"Keep the details to {DETAILS_MAX:,} characters (these have {len(details):,}).", 400,
                        "details", "too_long")
    if song.user_id == reporter.id:
        raise UserError("This is your own song: to take it out of the feed, unpublish it.", 400, code="own_song")
    with models.write_transaction():
        mine = (Report.song == song.id) & (Report.reporter == reporter.id) & (Report.status == "open")
        existing = Report.get_or_none(mine)
        if existing is not None:
            Report.update(reason=reason, details=details).where(Report.id == existing.id).execute()
            existing.reason, existing.details = reason, details
            return existing
        return Report.create(song=song.id, reporter=reporter.id, reason=reason, details=details)


def _close_reports(where, actor: User, status: str) -> int:
    return Report.update(status=status, resolved_at=utcnow(), resolved_by=actor.id).where(
        where & (Report.status == "open")).execute()


def _log(actor: User, action: str, kind: str, target_id, note: str = "") -> ModerationAction:
    assert action in ModerationAction.ACTIONS, action
    return ModerationAction.create(actor=actor.id, action=action, target_kind=kind, target_id=str(target_id),
                                   note=" ".join(note.split())[:NOTE_MAX])


def clean_note(note, limit: int = NOTE_MAX) -> str:
    return " ".join(str(note or "").replace("\x00", "").split())[:limit]


# -- songs --------------------------------------------------------------------------------------
def hide(song: Song, actor: User, reason) -> int:
    """Hide `song` from everyone but its owner, who sees `reason`; its open reports are closed
    as actioned. Hiding a hidden song again replaces the reason. Returns the reports closed."""
    reason = " ".join(str(reason or "").replace("\x00", "").split())
    if not reason:
        raise UserError("Say why the song is hidden: its owner sees the reason.", 422, "reason")
    if len(reason) > HIDE_REASON_MAX:
        raise UserError(f"Keep the reason to {HIDE_REASON_MAX} characters (this one has {len(reason)}).", 422,
                        "reason")
    now = utcnow()
    with models.write_transaction():
        Song.update(hidden_at=pw.fn.COALESCE(Song.hidden_at, now), hidden_reason=reason, updated_at=now).where(
            Song.id == song.id).execute()
        closed = _close_reports(Report.song == song.id, actor, "actioned")
        _log(actor, "hide", "song", song.id, reason)
    song.hidden_at = song.hidden_at or now
    song.hidden_reason = reason
    return closed


def unhide(song: Song, actor: User) -> None:
    """Show a hidden song again wherever its owner has published it."""
    with models.write_transaction():
        updated = Song.update(hidden_at=None, hidden_reason="", updated_at=utcnow()).where(
            (Song.id == song.id) & Song.hidden_at.is_null(False)).execute()
        if not updated:
            raise UserError("This song is not hidden.", 409, code="not_hidden")
        _log(actor, "unhide", "song", song.id, song.hidden_reason or "")
    song.hidden_at, song.hidden_reason = None, ""


def dismiss(song: Song, actor: User, note="") -> int:
    """Close the song's open reports: nothing to act on. Returns how many were closed."""
    with models.write_transaction():
        closed = _close_reports(Report.song == song.id, actor, "dismissed")
        if not closed:
            raise UserError("There are no open reports on this song.", 409, code="no_reports")
        _log(actor, "dismiss", "song", song.id, clean_note(note) or f"{closed} report{'s' if closed != 1 else ''}")
    return closed


# -- accounts -----------------------------------------------------------------------------------
def suspend(user: User, actor: User, note="", song: Song | None = None) -> None:
    """Suspend `user`: signed out everywhere, API tokens revoked, cannot sign in, and none of
    their songs is public any more (`Song.publicly_visible`). With `song` (suspended over a
    report of it), that song's open reports are closed as actioned."""
    if user.id == actor.id:
        raise UserError("You cannot suspend your own account.", 409, "suspend", "own_account")
    now = utcnow()
    with models.write_transaction():
        User.update(suspended_at=pw.fn.COALESCE(User.suspended_at, now),
                    session_version=User.session_version + 1).where(User.id == user.id).execute()
        ApiToken.update(revoked_at=now).where((ApiToken.user == user.id) & ApiToken.revoked_at.is_null()).execute()
        if song is not None:
            _close_reports(Report.song == song.id, actor, "actioned")
        _log(actor, "suspend", "user", user.id, clean_note(note) or (f"over song {song.id}" if song else ""))
    user.suspended_at = user.suspended_at or now


def lift(user: User, actor: User, note="") -> None:
    """Lift the suspension: the account can sign in again and its published songs are public."""
    with models.write_transaction():
        updated = User.update(suspended_at=None).where(
            (User.id == user.id) & User.suspended_at.is_null(False)).execute()
        if not updated:
            raise UserError("This account is not suspended.", 409, "suspend", "not_suspended")
        _log(actor, "lift", "user", user.id, clean_note(note))
    user.suspended_at = None


# -- what the moderation page shows -------------------------------------------------------------
@dataclass
class ReportGroup:
    """A song's open reports: how many, the reasons by count, and each report (newest first)."""

    song: Song
    count: int
    reasons: list[tuple[str, int]] = field(default_factory=list)
    reports: list[Report] = field(default_factory=list)


def open_reports(limit: int = 50) -> list[ReportGroup]:
    """Songs with open reports, most reported first (then the most recently reported): three
    queries whatever the number of reports."""
    n = pw.fn.COUNT(Report.id)
    latest = pw.fn.MAX(Report.created_at)
    top = list(Report.select(Report.song, n.alias("n")).where(Report.status == "open")
               .group_by(Report.song).order_by(n.desc(), latest.desc(), Report.song).limit(limit).tuples())
    if not top:
        return []
    ids = [sid for sid, _ in top]
    songs = {s.id: s for s in Song.select(Song, User).join(User).where(Song.id.in_(ids))}
    reporter = User.alias("reporter")
    rows = (Report.select(Report, reporter).join(reporter, pw.JOIN.LEFT_OUTER, on=(Report.reporter == reporter.id))
            .where((Report.status == "open") & Report.song.in_(ids))
            .order_by(Report.created_at.desc(), Report.id.desc()))
    by_song: dict[str, list[Report]] = {}
    for row in rows:
        by_song.setdefault(row.song_id, []).append(row)
    groups = []
    for sid, count in top:
        if sid not in songs:  # deleted meanwhile (its reports go with it)
            continue
        reports = by_song.get(sid, [])
        reasons = Counter(r.reason for r in reports).most_common()
        groups.append(ReportGroup(songs[sid], count, [(REASONS.get(k, k), c) for k, c in reasons], reports))
    return groups


def hidden_songs(limit: int = 50) -> list[Song]:
    return list(Song.select(Song, User).join(User).where(Song.hidden_at.is_null(False))
                .order_by(Song.hidden_at.desc(), Song.id).limit(limit))


def suspended_users(limit: int = 50) -> list[User]:
    return list(User.select().where(User.suspended_at.is_null(False) & User.deleted_at.is_null())
                .order_by(User.suspended_at.desc(), User.id).limit(limit))


def recent_actions(limit: int = 50) -> list[ModerationAction]:
    """The latest moderation steps, newest first, each with its actor joined and a
    `target_label` (the song's title or the account's email; "(deleted)" when gone)."""
    actor = User.alias("actor")
    rows = list(ModerationAction.select(ModerationAction, actor)
                .join(actor, pw.JOIN.LEFT_OUTER, on=(ModerationAction.actor == actor.id))
                .order_by(ModerationAction.created_at.desc(), ModerationAction.id.desc()).limit(limit))
    song_ids = {r.target_id for r in rows if r.target_kind == "song"}
    user_ids = {int(r.target_id) for r in rows if r.target_kind == "user" and r.target_id.isdigit()}
    titles = {s.id: s.title or "Untitled" for s in Song.select(Song.id, Song.title).where(Song.id.in_(song_ids))} \
        if song_ids else {}
    emails = {u.id: u.email for u in User.select(User.id, User.email).where(User.id.in_(user_ids))} if user_ids else {}
    for row in rows:
        if row.target_kind == "song":
            row.target_label = titles.get(row.target_id, "(deleted song)")
        else:
            row.target_label = emails.get(int(row.target_id) if row.target_id.isdigit() else 0, "(deleted account)")
        row.label = ACTION_LABELS.get(row.action, row.action)
    return rows


# -- the word filter ----------------------------------------------------------------------------
FILTERED_FIELDS = {"description": "description", "prompt": "style tags", "lyrics": "lyrics",
                   "described_lyrics": "description of the lyrics", "title": "title"}


@functools.lru_cache(maxsize=8)
def _pattern(words: tuple[str, ...]) -> re.Pattern | None:
    """One regex for the list: each word or phrase as whole words (not inside a longer word),
    any case, any whitespace between a phrase's words."""
    parts = [r"\s+".join(re.escape(token) for token in w.split()) for w in words if w.strip()]
    if not parts:
        return None
    parts.sort(key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)", re.IGNORECASE)


def contains_blocked(words, text: str) -> bool:
    pattern = _pattern(tuple(words or ()))
    return bool(pattern is not None and text and pattern.search(text))


def refusal(config, draft) -> UserError | None:
    """The refusal for a submit whose description, style tags, lyrics (or a title it sets)
    contain a word or phrase of LYRICS_BLOCKLIST: a 422 naming the field, not the word; None
    when it is clean. Called by `core.songs.submit` before anything is written or charged."""
    words = tuple(getattr(config, "LYRICS_BLOCKLIST", ()) or ())
    if not words:
        return None
    texts = {name: getattr(draft, name, "") or "" for name in FILTERED_FIELDS}
    texts["title"] = str((draft.params or {}).get("title") or "") if getattr(draft, "params", None) else ""
    for name, text in texts.items():
        if isinstance(text, str) and contains_blocked(words, text):
            return UserError(f"There is a blocked word in the {FILTERED_FIELDS[name]}. Change it and try again; "
                             "nothing was charged.", 422, name, "blocked_words")
    return None
