"""Playlists: a person's ordered lists of songs, private or public. The rules live here; the web
(app/playlists) reads the request, calls these and renders.

    create(user, title, description, public)   a new list (MAX_PLAYLISTS per person, MAX_ENTRIES songs each)
    entries(playlist, viewer)                  what `viewer` may see of it, in order
    add(playlist, song_id)                     a song the owner may see, finished, not yet in it
    remove / move / reorder                    positions 0..n-1, rewritten in one transaction
    rename / set_public / delete

Who sees what: the owner sees every entry (one whose song is no longer visible to them, e.g.
another person's song made private, is kept but shown without its details, so it can be
removed or moved); anyone else sees the list only while it is public and its owner's account is
active (`Playlist.visible_to`), and of it only the songs they may see (`Song.publicly_visible()`,
or their own). Every refusal is a `UserError` and writes nothing: adding a song that is already
in the list is refused (409), not ignored; a song that is unknown or that the owner may not see
is 404 (the same answer, so a private song's existence is not revealed); an unfinished one 409;
a new order that does not name every entry exactly once 400.
"""
from __future__ import annotations

from dataclasses import dataclass

import peewee as pw

import models
from core.errors import UserError
from models import Playlist, PlaylistEntry, Song, User, utcnow

TITLE_MAX = 120
DESCRIPTION_MAX = 1000
MAX_PLAYLISTS = 200
MAX_ENTRIES = 500
ID_MAX = 32  # song and playlist ids are 32 hex characters


# -- input ----------------------------------------------------------------------------------------
def clean_title(raw) -> str:
    """A title as typed, trimmed, runs of whitespace (and control characters) made one space."""
    clean = " ".join("".join(ch if ch.isprintable() else " " for ch in str(raw or "")).split())
    if not clean:
        raise UserError("Give the playlist a title.", 422, "title")
    if len(clean) > TITLE_MAX:
        raise UserError(f"Keep the title to {TITLE_MAX} characters (this one has {len(clean)}).", 422, "title")
    return clean


def clean_description(raw) -> str:
    """Free text with its line breaks kept; other control characters dropped; trimmed."""
    text = str(raw or "").replace("\r\n", "\n").replace("\r", "\n")
    text = "".join(ch for ch in text if ch == "\n" or ch.isprintable()).strip()
    if len(text) > DESCRIPTION_MAX:
        raise UserError(f"Keep the description to {DESCRIPTION_MAX} characters (this one has {len(text)}).",
                        422, "description")
    return text


def parse_ids(values) -> list[str]:
    """Song ids from form values: repeated fields, comma- (or space-) separated, or both."""
    out = []
    for value in values or ():
        out.extend(part for part in str(value).replace(",", " ").split() if part)
    return out


# -- reading --------------------------------------------------------------------------------------
def get(playlist_id) -> Playlist | None:
    """The playlist with its owner joined, or None (also for ids that cannot be one)."""
    if not playlist_id or len(str(playlist_id)) > ID_MAX:
        return None
    return (Playlist.select(Playlist, User).join(User)
            .where(Playlist.id == str(playlist_id)).first())


def of(user) -> list[Playlist]:
    """The person's playlists, most recently changed first, each with `song_count`."""
    count = pw.fn.COUNT(PlaylistEntry.id)
    return list(Playlist.select(Playlist, count.alias("song_count"))
                .join(PlaylistEntry, pw.JOIN.LEFT_OUTER).switch(Playlist)
                .where(Playlist.user == user.id)
                .group_by(Playlist.id)
                .order_by(Playlist.updated_at.desc(), Playlist.id))


def choices(user) -> list[Playlist]:
    """id and title of each of the person's playlists, for "Add to playlist" (one query)."""
    return list(Playlist.select(Playlist.id, Playlist.title).where(Playlist.user == user.id)
                .order_by(Playlist.updated_at.desc(), Playlist.id))


@dataclass
class Entry:
    song: Song
    position: int
    public: bool  # anyone may see the song now
    available: bool  # the viewer may see the song's details (title, audio, cover)


def entries(playlist: Playlist, viewer) -> list[Entry]:
    """The songs of `playlist` in order, as `viewer` may see them (one query)."""
    public_now = pw.Case(None, [(Song.publicly_visible(), 1)], 0)
    query = (PlaylistEntry.select(PlaylistEntry, Song, User, public_now.alias("song_public"))
             .join(Song).join(User)
             .where(PlaylistEntry.playlist == playlist.id)
             .order_by(PlaylistEntry.position, PlaylistEntry.id))
    viewer_id = viewer.id if viewer is not None and getattr(viewer, "is_authenticated", False) else None
    if not playlist.owned_by(viewer):  # others see what Song.visible_to lets them: public songs, and their own
        seen = Song.publicly_visible()
        query = query.where(seen | (Song.user == viewer_id) if viewer_id is not None else seen)
    out = []
    for row in query:
        public = bool(row.song_public)
        out.append(Entry(song=row.song, position=row.position, public=public,
                         available=public or row.song.user_id == viewer_id))
    return out


# -- writing --------------------------------------------------------------------------------------
def _touch(playlist: Playlist) -> None:
    now = utcnow()
    Playlist.update(updated_at=now).where(Playlist.id == playlist.id).execute()
    playlist.updated_at = now


def create(user: User, title, description="", public: bool = False, song_id: str | None = None) -> Playlist:
    """A new playlist; with `song_id`, holding that song (both or neither are written)."""
    title, description = clean_title(title), clean_description(description)
    with models.write_transaction():
        if Playlist.select().where(Playlist.user == user.id).count() >= MAX_PLAYLISTS:
            raise UserError(f"You have {MAX_PLAYLISTS} playlists, the most one person can have. "
                            "Delete one to make another.", 409, code="limit")
        playlist = Playlist.create(user=user.id, title=title, description=description, public=bool(public))
        if song_id:
            add(playlist, song_id)
    return playlist


def add(playlist: Playlist, song_id) -> Song:
    """Add a song the owner may see (their own or a public one), finished, at the end."""
    song_id = str(song_id or "").strip()
    if not song_id:
        raise UserError("Choose a song to add.", 400, "song_id")
    song = Song.get_or_none(Song.id == song_id) if len(song_id) <= ID_MAX else None
    if song is None or not song.visible_to(playlist.user):
        raise UserError("There is no such song, or it is private.", 404, "song_id", code="not_found")
    if song.status != "processed":
        raise UserError("Only a finished song can be added to a playlist.", 409, "song_id", code="not_finished")
    with models.write_transaction():
        current = PlaylistEntry.select().where(PlaylistEntry.playlist == playlist.id)
        if current.where(PlaylistEntry.song == song.id).exists():
            raise UserError(f"“{song.title or 'Untitled'}” is already in “{playlist.title}”.", 409, "song_id",
                            code="duplicate")
        if current.count() >= MAX_ENTRIES:
            raise UserError(f"A playlist holds at most {MAX_ENTRIES} songs.", 409, "song_id", code="limit")
        last = (PlaylistEntry.select(pw.fn.MAX(PlaylistEntry.position))
                .where(PlaylistEntry.playlist == playlist.id).scalar())
        try:
            with models.db.atomic():  # a savepoint: the same song added twice at once loses cleanly
                PlaylistEntry.insert(playlist=playlist.id, song=song.id,
                                     position=(last + 1) if last is not None else 0).execute()
        except pw.IntegrityError:
            raise UserError(f"“{song.title or 'Untitled'}” is already in “{playlist.title}”.", 409, "song_id",
                            code="duplicate") from None
        _touch(playlist)
    return song


def remove(playlist: Playlist, song_id) -> None:
    song_id = str(song_id or "").strip()
    with models.write_transaction():
        deleted = (PlaylistEntry.delete().where((PlaylistEntry.playlist == playlist.id) &
                                                (PlaylistEntry.song == song_id)).execute())
        if not deleted:
            raise UserError("That song is not in this playlist.", 404, "song_id", code="not_found")
        _touch(playlist)


def _write_order(playlist: Playlist, ordered: list[str], current: dict[str, int]) -> None:
    for position, sid in enumerate(ordered):
        if current[sid] != position:
            (PlaylistEntry.update(position=position)
             .where((PlaylistEntry.playlist == playlist.id) & (PlaylistEntry.song == sid)).execute())
    _touch(playlist)


def _current(playlist: Playlist) -> tuple[list[str], dict[str, int]]:
    rows = list(PlaylistEntry.select(PlaylistEntry.song, PlaylistEntry.position)
                .where(PlaylistEntry.playlist == playlist.id).order_by(PlaylistEntry.position, PlaylistEntry.id))
    return [r.song_id for r in rows], {r.song_id: r.position for r in rows}


def move(playlist: Playlist, song_id, direction) -> bool:
    """One step up or down; False when it is already first (up) or last (down)."""
    if direction not in ("up", "down"):
        raise UserError("Move a song up or down.", 400, "direction")
    song_id = str(song_id or "").strip()
    with models.write_transaction():
        order, current = _current(playlist)
        if song_id not in current:
            raise UserError("That song is not in this playlist.", 404, "song_id", code="not_found")
        i = order.index(song_id)
        j = i - 1 if direction == "up" else i + 1
        if not 0 <= j < len(order):
            return False
        order[i], order[j] = order[j], order[i]
        _write_order(playlist, order, current)
    return True


def reorder(playlist: Playlist, new_order: list[str]) -> None:
    """Put the entries in `new_order`, which must name each of them exactly once."""
    with models.write_transaction():
        order, current = _current(playlist)
        if len(new_order) != len(order) or set(new_order) != set(order):
            raise UserError("The new order must list exactly the songs of this playlist, each once. "
                            "It may have changed in another window: reload the page and try again.",
                            400, "song_ids", code="order_mismatch")
        _write_order(playlist, list(new_order), current)


def rename(playlist: Playlist, title, description=None) -> None:
    """A new title (and, when given, a new description)."""
    changes = {"title": clean_title(title)}
    if description is not None:
        changes["description"] = clean_description(description)
    changes["updated_at"] = utcnow()
    Playlist.update(**changes).where(Playlist.id == playlist.id).execute()
    for k, v in changes.items():
        setattr(playlist, k, v)


def set_public(playlist: Playlist, public: bool) -> None:
    now = utcnow()
    Playlist.update(public=bool(public), updated_at=now).where(Playlist.id == playlist.id).execute()
    playlist.public, playlist.updated_at = bool(public), now


def delete(playlist: Playlist) -> None:
    """The playlist and its entries (cascade); the songs stay."""
    with models.write_transaction():
        PlaylistEntry.delete().where(PlaylistEntry.playlist == playlist.id).execute()
        Playlist.delete().where(Playlist.id == playlist.id).execute()
