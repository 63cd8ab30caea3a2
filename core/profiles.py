"""Public profiles: handles, bios, avatars and follows.

Every account has a unique handle, its address at `/u/<handle>`: 3 to 30 characters of
`a-z 0-9 _`, lower-case (what a person types is trimmed and lower-cased), none of the words the
site's own paths and roles use (`RESERVED`). A person chooses one at sign-up or in their profile
settings; an account without one gets one derived from its display name, or the first part of
its address: slugified, padded with underscores to 3 characters, made unique with a numeric
suffix (`alice`, `alice2`, ...). The same derivation fills the accounts that existed before
handles (migration 0035), in account order, so it is deterministic.

Uniqueness is the database's unique index on `user.handle`: two sign-ups racing for the same
derived handle both try, one insert fails with IntegrityError and that one retries with the next
suffix; a handle a person chose and lost to a race is refused with the usual "taken" message.

The avatar is an uploaded image decoded with Pillow (anything else is refused, as are files over
AVATAR_MAX_BYTES and images over AVATAR_MAX_PIXELS, before their pixels are decoded), cropped to
a centred square and stored as a 256x256 WebP under the account's storage prefix, so deleting
the account deletes it.
"""
from __future__ import annotations

import io
import logging
import re
import secrets
import unicodedata
import warnings

import peewee as pw

import models
from models import Follow, Song, User, utcnow

from .errors import UserError

log = logging.getLogger("tunesmith.profiles")

HANDLE_MIN = 3
HANDLE_MAX = 30
HANDLE_RE = re.compile(r"^[a-z0-9_]+$")
NAME_MAX = 80
BIO_MAX = 500
AVATAR_MAX_BYTES = 5 * 1024 * 1024
AVATAR_MAX_PIXELS = 40_000_000  # e.g. 8000 x 5000; larger images are refused before decoding
AVATAR_SIZE = 256
AVATAR_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
AVATAR_CONTENT_TYPE = "image/webp"
HANDLE_ATTEMPTS = 8  # inserts tried when concurrent sign-ups take the derived handles first

# Words that name the site's own paths, roles and the product: nobody may take them.
RESERVED = frozenset("""
    about abuse account accounts admin administrator admins api app assets auth avatar billing blog
    contact create dashboard delete discover docs download explore feed files following followers
    healthz help home index legal library login logout me metrics moderation moderator mod new
    null official operator owner playlist playlists press privacy profile profiles readyz register
    report reports root security settings signin signout signup staff static status styles
    songs song studio support system terms tunesmith u undefined user users webhook webhooks www
""".split())

TAKEN = "That handle is taken. Try another one."


# ------------------------------------------------------------------------------ handle rules
def normalise_handle(raw) -> str:
    """What a person typed, as a handle is compared and stored: trimmed, lower-case, and
    without a leading @ (people often type one)."""
    value = (raw or "").strip().lower() if isinstance(raw, str) else ""
    return value[1:] if value.startswith("@") else value


def handle_problem(handle: str) -> str | None:
    """Why `handle` (normalised) cannot be a handle, in words a person can act on; None if it can."""
    if len(handle) < HANDLE_MIN:
        return f"A handle needs at least {HANDLE_MIN} characters."
    if len(handle) > HANDLE_MAX:
        return f"A handle has at most {HANDLE_MAX} characters."
    if not HANDLE_RE.match(handle):
        return "Use only lower-case letters a–z, digits and underscores (_) in a handle."
    if handle in RESERVED:
        return f"“{handle}” is reserved. Choose another handle."
    return None


def check_handle(raw) -> str:
    """The normalised handle, or UserError (422, field `handle`) with the reason."""
    handle = normalise_handle(raw)
    problem = handle_problem(handle)
    if problem:
        raise UserError(problem, 422, "handle", code="invalid_handle")
    return handle


def handle_taken(handle: str, except_user_id: int | None = None) -> bool:
    query = User.select(User.id).where(User.handle == handle)
    if except_user_id is not None:
        query = query.where(User.id != except_user_id)
    return query.exists()


# ------------------------------------------------------------------------------ derivation
def slugify(text: str) -> str:
    """`text` as handle characters: accents folded to ASCII, lower-case, every run of other
    characters one underscore, none at the ends, at most HANDLE_MAX long."""
    ascii_text = unicodedata.normalize("NFKD", text or "").encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9]+", "_", ascii_text).strip("_")
    return slug[:HANDLE_MAX].rstrip("_")


def base_handle(name: str, email: str) -> str:
    """The handle an account would get if it were free: from the display name, else the first
    part of the address, else "user"; padded with underscores to HANDLE_MIN."""
    slug = slugify(name) or slugify((email or "").split("@", 1)[0]) or "user"
    return slug.ljust(HANDLE_MIN, "_")


def candidates(base: str):
    """`base`, then base2, base3, ... (the base cut so each stays within HANDLE_MAX)."""
    yield base
    n = 2
    while True:
        suffix = str(n)
        yield base[:HANDLE_MAX - len(suffix)] + suffix
        n += 1


def derive_handle(name: str, email: str, taken) -> str:
    """The first free, allowed handle for this name and address; `taken` is a set of handles
    in use (or anything with `in`). Deterministic: the same inputs give the same handle."""
    for candidate in candidates(base_handle(name, email)):
        if candidate not in taken and handle_problem(candidate) is None:
            return candidate
    raise AssertionError("unreachable: candidates() never ends")


def _taken_near(base: str) -> set[str]:
    """The handles in use that a candidate of `base` could collide with, in one query."""
    prefix = base[:HANDLE_MAX - 7]  # every candidate up to a 7-digit suffix starts with it
    return {h for (h,) in User.select(User.handle).where(User.handle.startswith(prefix)).tuples()}


def new_handle(name: str, email: str, also_taken=()) -> str:
    """A free handle derived from this name and address, as of now."""
    taken = _taken_near(base_handle(name, email)) | set(also_taken)
    return derive_handle(name, email, taken)


def register(email: str, password: str, name: str = "", credits: int = 0, handle: str | None = None) -> User:
    """Create an account (`User.register`) with the handle the person chose (already checked by
    `check_handle`) or one derived from its name or address. A chosen handle that is taken is
    refused with UserError; a derived one lost to a concurrent sign-up is derived again.
    IntegrityError means the address has an account."""
    email = email.strip().lower()
    tried: list[str] = []
    for _ in range(HANDLE_ATTEMPTS):
        if handle:
            if handle_taken(handle):
                raise UserError(TAKEN, 422, "handle", code="handle_taken")
            candidate = handle
        else:
            candidate = new_handle(name, email, tried)
        try:
            return User.register(email, password, name, credits=credits, handle=candidate)
        except pw.IntegrityError:
            if User.select().where(User.email == email).exists():
                raise
            if handle:
                raise UserError(TAKEN, 422, "handle", code="handle_taken") from None
            tried.append(candidate)
    raise UserError("We could not find a free handle just now. Choose one yourself.", 409, "handle",
                    code="handle_taken")


def ensure_handle(user: User) -> str:
    """The account's handle, deriving and saving one first if it has none (accounts made by a
    script or an older version)."""
    if user.handle:
        return user.handle
    tried: list[str] = []
    for _ in range(HANDLE_ATTEMPTS):
        candidate = new_handle(user.name, user.email, tried)
        try:
            with models.db.atomic():
                done = User.update(handle=candidate).where((User.id == user.id) & User.handle.is_null()).execute()
        except pw.IntegrityError:
            tried.append(candidate)
            continue
        user.handle = candidate if done else User.select(User.handle).where(User.id == user.id).scalar()
        return user.handle
    raise UserError("We could not find a free handle just now. Choose one yourself.", 409, "handle")


def fill_missing_handles() -> int:
    """Give every account without a handle one (the migration's step): in account order, each
    the first free candidate of its own base. Returns how many were given one."""
    taken = {h for (h,) in User.select(User.handle).where(User.handle.is_null(False)).tuples()}
    rows = list(User.select(User.id, User.name, User.email).where(User.handle.is_null()).order_by(User.id).tuples())
    for uid, name, email in rows:
        handle = derive_handle(name or "", email or "", taken)
        taken.add(handle)
        User.update(handle=handle).where(User.id == uid).execute()
    return len(rows)


# ------------------------------------------------------------------------------ profile
def find(handle: str) -> User | None:
    """The account at /u/<handle>, if it may be shown: not suspended, not deleted."""
    handle = normalise_handle(handle)
    if not handle or len(handle) > HANDLE_MAX:
        return None
    return User.get_or_none((User.handle == handle) & User.suspended_at.is_null() & User.deleted_at.is_null())


def check_profile(user: User, *, name, handle, bio) -> dict:
    """What saving this display name, handle and bio would change ({field: value}); UserError
    (with its field) for the first that is refused. Writes nothing."""
    name = " ".join((name or "").split())
    if len(name) > NAME_MAX:
        raise UserError(f"Keep the name under {NAME_MAX} characters.", 422, "name")
    handle = check_handle(handle)
    bio = "\n".join(line.rstrip() for line in (bio or "").replace("\r\n", "\n").split("\n")).strip()
    if len(bio) > BIO_MAX:
        raise UserError(f"Keep the bio to {BIO_MAX} characters (it has {len(bio)}).", 422, "bio")
    if "\x00" in name or "\x00" in bio:
        raise UserError("Text cannot contain NUL (\\0) characters.", 400, "bio" if "\x00" in bio else "name")
    changes = {}
    if name != user.name:
        changes["name"] = name
    if handle != user.handle:
        if handle_taken(handle, except_user_id=user.id):
            raise UserError(TAKEN, 422, "handle", code="handle_taken")
        changes["handle"] = handle
    if bio != (user.bio or ""):
        changes["bio"] = bio
    return changes


def save_profile(user: User, changes: dict, *, avatar: bytes | None = None, remove_avatar: bool = False,
                 storage=None) -> list[str]:
    """Write `changes` (from `check_profile`) and the new avatar (from `process_avatar`, stored
    first) together; a handle taken meanwhile raises UserError and then nothing changes (the
    stored picture is removed again). The replaced picture is deleted. Returns what changed."""
    changes = dict(changes)
    new_key = None
    if avatar is not None:
        new_key = avatar_key(user.id)
        storage.put(new_key, avatar, AVATAR_CONTENT_TYPE)
        changes["avatar_key"] = new_key
    elif remove_avatar and user.avatar_key:
        changes["avatar_key"] = None
    if not changes:
        return []
    old_key = user.avatar_key
    try:
        with models.db.atomic():
            User.update(**changes).where(User.id == user.id).execute()
    except pw.IntegrityError:
        if new_key:
            _remove_quietly(storage, new_key)
        raise UserError(TAKEN, 422, "handle", code="handle_taken") from None
    for field, value in changes.items():
        setattr(user, field, value)
    if "avatar_key" in changes and old_key:
        _remove_quietly(storage, old_key)
    return ["avatar" if field == "avatar_key" else field for field in changes]


def public_songs(user: User):
    """The account's songs anyone may see (published, processed, not hidden), newest first."""
    return (Song.public_tiles().where(Song.user == user.id)
            .order_by(Song.published_at.desc(), Song.id.desc()))


def totals(user: User) -> dict:
    """Songs, listens and likes over the account's public songs, and its followers: the counters
    on its row (kept by the database, `install_totals`), read with the row itself: one indexed
    lookup however many songs the account has."""
    row = (User.select(User.song_count, User.listen_total, User.like_total, User.follower_count)
           .where(User.id == user.id).tuples().first()) or (0, 0, 0, 0)
    songs, listens, likes, followers = (max(0, int(v or 0)) for v in row)
    return {"songs": songs, "listens": listens, "likes": likes, "followers": followers}


# -- the counters behind totals() ----------------------------------------------------------------
# A song counts while it is public to anyone: published, processed, not hidden by moderation (an
# account suspended or deleted has no profile page, so its own state does not enter). The
# triggers move the counters in the transaction of every write to a song or a follow - publish,
# unpublish, hide, restore, delete, a listen, a like, a bulk update or a row written by hand -
# so no caller has to remember them, and reading them costs the same at 10 songs or 100,000.
_VISIBLE = "{r}.published AND {r}.status = 'processed' AND {r}.hidden_at IS NULL"
_SUMS = {"song_count": "1", "listen_total": "{r}.listen_count", "like_total": "{r}.like_count"}
_WATCHED = "published, status, hidden_at, listen_count, like_count, user_id"
TOTALS_TRIGGERS = ("user_totals_insert", "user_totals_delete", "user_totals_update",
                   "user_followers_insert", "user_followers_delete")


def _recount_sql() -> str:
    """Every account's counters recomputed from its songs and follows (the migration's fill)."""
    sets = [f'"{col}" = (SELECT COALESCE(SUM({expr.format(r="s")}), 0) FROM "song" s '
            f'WHERE s.user_id = "user".id AND {_VISIBLE.format(r="s")})' for col, expr in _SUMS.items()]
    sets.append('"follower_count" = (SELECT COUNT(*) FROM "follow" f WHERE f.followee_id = "user".id)')
    return 'UPDATE "user" SET ' + ", ".join(sets)


def _sqlite_triggers() -> list[str]:
    def moved(sign: str, r: str) -> str:
        return ", ".join(f'"{col}" = "{col}" {sign} {expr.format(r=r)}' for col, expr in _SUMS.items())

    def change(col: str, expr: str) -> str:  # one UPDATE for both sides (the same account, mostly)
        return (f'"{col}" = "{col}" + (CASE WHEN id = new.user_id AND {_VISIBLE.format(r="new")} '
                f'THEN {expr.format(r="new")} ELSE 0 END) - (CASE WHEN id = old.user_id AND '
                f'{_VISIBLE.format(r="old")} THEN {expr.format(r="old")} ELSE 0 END)')

    changes = ", ".join(change(col, expr) for col, expr in _SUMS.items())
    return [
        *(f"DROP TRIGGER IF EXISTS {name}" for name in TOTALS_TRIGGERS),
        f'CREATE TRIGGER user_totals_insert AFTER INSERT ON "song" WHEN {_VISIBLE.format(r="new")} '
        f'BEGIN UPDATE "user" SET {moved("+", "new")} WHERE id = new.user_id; END',
        f'CREATE TRIGGER user_totals_delete AFTER DELETE ON "song" WHEN {_VISIBLE.format(r="old")} '
        f'BEGIN UPDATE "user" SET {moved("-", "old")} WHERE id = old.user_id; END',
        f'CREATE TRIGGER user_totals_update AFTER UPDATE OF {_WATCHED} ON "song" '
        f'WHEN ({_VISIBLE.format(r="old")}) OR ({_VISIBLE.format(r="new")}) '
        f'BEGIN UPDATE "user" SET {changes} WHERE id IN (old.user_id, new.user_id); END',
        'CREATE TRIGGER user_followers_insert AFTER INSERT ON "follow" '
        'BEGIN UPDATE "user" SET follower_count = follower_count + 1 WHERE id = new.followee_id; END',
        'CREATE TRIGGER user_followers_delete AFTER DELETE ON "follow" '
        'BEGIN UPDATE "user" SET follower_count = follower_count - 1 WHERE id = old.followee_id; END',
    ]


def _postgres_triggers() -> list[str]:
    def add(sign: str, r: str) -> str:
        return ", ".join(f'"{col}" = "{col}" {sign} {expr.format(r=r)}' for col, expr in _SUMS.items())

    same = ", ".join(f'"{col}" = "{col}" + (CASE WHEN n THEN {expr.format(r="NEW")} ELSE 0 END) '
                     f'- (CASE WHEN o THEN {expr.format(r="OLD")} ELSE 0 END)' for col, expr in _SUMS.items())
    return [
        f"""CREATE OR REPLACE FUNCTION user_totals() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE o boolean := false; n boolean := false;
BEGIN
  IF TG_OP <> 'INSERT' THEN o := coalesce({_VISIBLE.format(r="OLD")}, false); END IF;
  IF TG_OP <> 'DELETE' THEN n := coalesce({_VISIBLE.format(r="NEW")}, false); END IF;
  IF TG_OP = 'UPDATE' AND OLD.user_id = NEW.user_id THEN
    IF o OR n THEN UPDATE "user" SET {same} WHERE id = NEW.user_id; END IF;
  ELSE
    IF o THEN UPDATE "user" SET {add("-", "OLD")} WHERE id = OLD.user_id; END IF;
    IF n THEN UPDATE "user" SET {add("+", "NEW")} WHERE id = NEW.user_id; END IF;
  END IF;
  RETURN NULL;
END $$""",
        """CREATE OR REPLACE FUNCTION user_followers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    UPDATE "user" SET follower_count = follower_count + 1 WHERE id = NEW.followee_id;
  ELSE
    UPDATE "user" SET follower_count = follower_count - 1 WHERE id = OLD.followee_id;
  END IF;
  RETURN NULL;
END $$""",
        'DROP TRIGGER IF EXISTS user_totals ON "song"',
        'DROP TRIGGER IF EXISTS user_followers ON "follow"',
        f'CREATE TRIGGER user_totals AFTER INSERT OR DELETE OR UPDATE OF {_WATCHED} ON "song" '
        'FOR EACH ROW EXECUTE PROCEDURE user_totals()',
        'CREATE TRIGGER user_followers AFTER INSERT OR DELETE ON "follow" '
        'FOR EACH ROW EXECUTE PROCEDURE user_followers()',
    ]


def install_totals(database: pw.Database) -> None:
    """Create (or re-create) the triggers that keep the profile counters and recompute every
    account's counters from its songs and follows; safe to run again. A migration that rebuilds
    the song or follow table on SQLite (a copy-and-rename drops its triggers) must call it
    afterwards, as it calls core.search.install."""
    sqlite = isinstance(database, pw.SqliteDatabase)
    for sql in (_sqlite_triggers() if sqlite else _postgres_triggers()):
        database.execute_sql(sql)
    database.execute_sql(_recount_sql())


def public_playlists(user: User) -> list:
    """The account's public playlists, most recently changed first."""
    Playlist = models.Playlist
    return list(Playlist.select().where((Playlist.user == user.id) & (Playlist.public == True))  # noqa: E712
                .order_by(Playlist.updated_at.desc(), Playlist.id))


# ------------------------------------------------------------------------------ follows
def is_following(user, target: User) -> bool:
    if user is None or not getattr(user, "is_authenticated", False):
        return False
    return Follow.select().where((Follow.follower == user.id) & (Follow.followee == target.id)).exists()


def set_follow(user: User, target: User, follow: bool | None = None) -> bool:
    """Follow or unfollow `target`: True/False sets the state (a double click does not undo
    itself), None toggles it. Returns whether `user` follows `target` now."""
    if user.id == target.id:
        raise UserError("You cannot follow yourself.", 422, code="self_follow")
    with models.write_transaction():
        exists = Follow.select().where((Follow.follower == user.id) & (Follow.followee == target.id)).exists()
        want = (not exists) if follow is None else bool(follow)
        if want and not exists:
            try:
                with models.db.atomic():  # a savepoint: a concurrent follow by the same person loses cleanly
                    Follow.insert(follower=user.id, followee=target.id, created_at=utcnow()).execute()
            except pw.IntegrityError:
                pass
        elif not want and exists:
            Follow.delete().where((Follow.follower == user.id) & (Follow.followee == target.id)).execute()
    return want


# ------------------------------------------------------------------------------ avatars
def avatar_key(user_id: int) -> str:
    """A new key for the account's avatar (a fresh name each time, so caches never serve the
    old picture), under the account's prefix."""
    return f"users/{user_id}/avatar/{secrets.token_hex(8)}.webp"


def process_avatar(data: bytes) -> bytes:
    """The uploaded bytes as a 256x256 WebP (centred square crop). UserError for an empty or
    too large file, one that is not an image Pillow reads, or one with too many pixels."""
    if not data:
        raise UserError("Choose an image to upload.", 422, "avatar", code="no_file")
    if len(data) > AVATAR_MAX_BYTES:
        raise UserError(f"That image is larger than {AVATAR_MAX_BYTES // (1024 * 1024)} MB. Upload a smaller one.",
                        413, "avatar", code="too_large")
    from PIL import Image, ImageOps, UnidentifiedImageError

    unreadable = UserError("That file is not an image we can read. Upload a PNG, JPEG, WebP or GIF.",
                           422, "avatar", code="not_an_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=AVATAR_FORMATS) as img:
                width, height = img.size  # read from the header: nothing decoded yet
                if width < 1 or height < 1 or width * height > AVATAR_MAX_PIXELS:
                    raise UserError("That image has too many pixels. Upload one under 40 megapixels.",
                                    413, "avatar", code="too_large")
                img.load()
                img = ImageOps.exif_transpose(img)
                has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
                img = img.convert("RGBA" if has_alpha else "RGB")
                square = ImageOps.fit(img, (AVATAR_SIZE, AVATAR_SIZE), Image.Resampling.LANCZOS)
    except UserError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning,
            OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError):
        raise unreadable from None
    out = io.BytesIO()
    square.save(out, "WEBP", quality=85, method=4)
    return out.getvalue()


def _remove_quietly(storage, key: str) -> None:
    """The old picture is no longer referenced: a failed delete only leaves an orphan behind."""
    try:
        storage.delete(key)
    except Exception as exc:  # noqa: BLE001 - storage errors differ by backend; the row is already right
        log.warning("could not delete the old avatar %s: %s", key, exc)
