"""Peewee models and the database handle.

The same code runs on SQLite (the embedded default, WAL mode) and PostgreSQL (pooled).
Behaviour lives here: balances, credit reservations, visibility.
"""
from __future__ import annotations

import datetime as dt
import json
import uuid
from urllib.parse import parse_qs, urlparse

import peewee as pw
from playhouse.pool import PooledPostgresqlDatabase

db = pw.DatabaseProxy()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def new_id() -> str:
    return uuid.uuid4().hex


def connect_database(url: str, pool_size: int = 10, session: dict | None = None) -> pw.Database:
    """Build a database for `url` (sqlite:///path, sqlite:///:memory:, postgres://...).
    `session`: PostgreSQL settings for every connection (`-c name=value`), after any `options`
    the URL gives."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else parsed.path
        if path != ":memory:":
            import os

            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return pw.SqliteDatabase(
            path,
            pragmas={"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 10000, "synchronous": "normal"},
            timeout=10,
            check_same_thread=False,
        )
    if parsed.scheme in {"postgres", "postgresql"}:
        options = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        if session:
            extra = " ".join(f"-c {name}={value}" for name, value in session.items())
            options["options"] = f"{options['options']} {extra}" if options.get("options") else extra
        return PooledPostgresqlDatabase(
            (parsed.path or "/").lstrip("/"),
            user=parsed.username,
            password=parsed.password,
            host=parsed.hostname,
            port=parsed.port or 5432,
            max_connections=pool_size,
            stale_timeout=300,
            timeout=10,
            connect_timeout=5,
            **options,
        )
    raise ValueError(f"DATABASE_URL scheme {parsed.scheme!r} is not supported (use sqlite:/// or postgres://)")


def init_db(url: str, pool_size: int = 10, session: dict | None = None) -> pw.Database:
    old = db.obj
    if old is not None:
        try:
            old.close_all() if hasattr(old, "close_all") else old.close()
        except Exception:  # an old handle that cannot close cleanly is dropped anyway
            pass
    database = connect_database(url, pool_size, session)
    db.initialize(database)
    return database


def is_sqlite() -> bool:
    return isinstance(db.obj, pw.SqliteDatabase)


def write_transaction():
    """A transaction that takes the write lock up front on SQLite (no lock upgrades, no
    deadlocks between concurrent submits); a plain transaction on PostgreSQL."""
    if is_sqlite():
        return db.atomic("IMMEDIATE")
    return db.atomic()


class BaseModel(pw.Model):
    class Meta:
        database = db
        legacy_table_names = False

    @classmethod
    def one_compiled(cls, name: str, build, *values):
        """The row of `build()` (a select of this model matching at most one row) or None, with
        the select's SQL built once per kind of database and kept (`compiled_sql`: its `slot`s
        are `values`). For the few reads every request makes (who is
        signed in, the song a poll asks about): peewee composes a query's text anew on every
        call, about 0.4 ms for a user's row and 0.7 ms for a song's, a third of a status poll."""
        sql, params = compiled_sql(name, build, *values)
        return next(iter(cls.raw(sql, *params)), None)


# name, kind of database -> (the SQL, its parameters as built, where each run's values go)
_COMPILED: dict[tuple[str, str], tuple[str, tuple, tuple]] = {}
_SLOT = "\x00tunesmith-parameter-"


def _mark(n: int) -> str:
    return f"{_SLOT}{n}\x00"


def slot(n: int = 0) -> pw.Value:
    """The place of a compiled query's `n`-th value (`compiled_sql`), written into the query
    as it is built; never converted (the field's converter would see the mark, not the value)."""
    return pw.Value(_mark(n), converter=False)


def _slot_of(param) -> int | None:
    if isinstance(param, str) and param.startswith(_SLOT):
        return int(param[len(_SLOT):-1])
    return None


def compiled_sql(name: str, build, *values) -> tuple[str, list]:
    """(SQL, parameters) of `build()` run with `values`, the query's text built once per `name`
    and kind of database (its placeholders and quoting) and kept. Where `build` wrote `slot(n)`
    the n-th value goes; its other parameters stay as built."""
    key = (name, type(db.obj).__name__)
    entry = _COMPILED.get(key)
    if entry is None:
        sql, params = build().sql()
        places = tuple(_slot_of(p) for p in params)
        entry = _COMPILED[key] = (sql, tuple(params), places)
    sql, built, places = entry
    return sql, [built[i] if place is None else values[place] for i, place in enumerate(places)]


def run_compiled(name: str, build, *values):
    """The cursor of a compiled query (`compiled_sql`) run with `values`: rows as tuples."""
    return db.execute_sql(*compiled_sql(name, build, *values))


def any_of(field, n: int = 0):
    """`field` is one of the list given as the compiled query's `n`-th value (`ids_parameter`):
    one placeholder for any number of values, so that the query's text is built once (an IN
    list's text changes with its length). PostgreSQL: `= ANY(array)`; SQLite: the values as a
    JSON array, read by `json_each`."""
    if is_sqlite():
        return field.in_(pw.SQL("(SELECT value FROM json_each(?))", [_mark(n)]))
    return field == pw.fn.ANY(slot(n))


def ids_parameter(values) -> object:
    """The value an `any_of` slot takes: a list on PostgreSQL, its JSON text on SQLite."""
    values = list(values)
    return json.dumps(values) if is_sqlite() else values


class JSONField(pw.TextField):
    def db_value(self, value):
        return None if value is None else json.dumps(value, separators=(",", ":"))

    def python_value(self, value):
        return None if value is None else json.loads(value)


class InsufficientCredits(Exception):
    def __init__(self, needed: int, balance: int):
        super().__init__(f"This needs {needed} credit{'s' if needed != 1 else ''}; you have {balance}.")
        self.needed = needed
        self.balance = balance


class User(BaseModel):
    email = pw.CharField(max_length=254, unique=True)
    password_hash = pw.CharField(max_length=255)
    name = pw.CharField(max_length=80, default="")
    is_admin = pw.BooleanField(default=False)
    credits = pw.IntegerField(default=0)  # cached balance: always equals the ledger's sum
    has_purchased = pw.BooleanField(default=False)
    session_version = pw.IntegerField(default=1)
    created_at = pw.DateTimeField(default=utcnow)
    # Accounts (migration 0033): a confirmed address, suspension by an admin, the tombstone of a
    # deleted account (kept so its anonymised ledger rows keep their owner), two-factor sign-in.
    email_verified_at = pw.DateTimeField(null=True)
    suspended_at = pw.DateTimeField(null=True)
    deleted_at = pw.DateTimeField(null=True)
    totp_secret = pw.CharField(max_length=64, null=True)  # set once two-factor sign-in is confirmed
    # Profiles (migration 0035): the public handle (/u/<handle>: lower-case a-z 0-9 _, unique; the
    # rules and its derivation are in core.profiles), a short bio and the avatar's storage key.
    handle = pw.CharField(max_length=30, unique=True, null=True)
    bio = pw.TextField(default="")
    avatar_key = pw.CharField(max_length=300, null=True)
    # Profile totals (migration 0040): over the account's public songs (published, processed, not
    # hidden) and its followers, kept by database triggers (core.profiles.install_totals).
    song_count = pw.IntegerField(default=0)
    listen_total = pw.BigIntegerField(default=0)
    like_total = pw.BigIntegerField(default=0)
    follower_count = pw.IntegerField(default=0)

    # flask-login protocol
    is_anonymous = False
    is_authenticated = True

    @property
    def is_active(self) -> bool:
        """Suspended and deleted accounts cannot sign in (flask-login refuses inactive users)."""
        return self.suspended_at is None and self.deleted_at is None

    @property
    def is_verified(self) -> bool:
        return self.email_verified_at is not None

    @property
    def has_totp(self) -> bool:
        return bool(self.totp_secret)

    def get_id(self) -> str:
        return f"{self.id}:{self.session_version}"

    @property
    def display_name(self) -> str:
        return self.name or self.email.split("@", 1)[0]

    def set_password(self, password: str) -> None:
        from werkzeug.security import generate_password_hash

        self.password_hash = generate_password_hash(password, method="scrypt")

    def check_password(self, password: str) -> bool:
        from werkzeug.security import check_password_hash

        return check_password_hash(self.password_hash, password)

    def balance(self) -> int:
        return User.select(User.credits).where(User.id == self.id).scalar() or 0

    def ledger_balance(self) -> int:
        return CreditEntry.select(pw.fn.COALESCE(pw.fn.SUM(CreditEntry.delta), 0)).where(
            CreditEntry.user == self).scalar()

    @classmethod
    def by_id(cls, user_id: int) -> "User | None":
        """The user with this id (its SQL compiled once: every signed-in request asks)."""
        return cls.one_compiled("user-by-id", lambda: cls.select().where(cls.id == slot(0)), user_id)

    @classmethod
    def register(cls, email: str, password: str, name: str = "", credits: int = 0,
                 handle: str | None = None) -> "User":
        with write_transaction():
            user = cls(email=email.strip().lower(), name=name.strip(), handle=handle)
            user.set_password(password)
            user.save()
            if credits:
                apply_credits(user, credits, "grant", f"user:{user.id}:signup", "Welcome credits")
        return user

    def bump_session_version(self) -> None:
        User.update(session_version=User.session_version + 1).where(User.id == self.id).execute()
        self.session_version = User.get_by_id(self.id).session_version


class CreditEntry(BaseModel):
    """Append-only ledger. `ref` makes every step idempotent."""

    KINDS = ("grant", "reserve", "capture", "release", "purchase", "refund", "admin")

    user = pw.ForeignKeyField(User, backref="credit_entries", on_delete="CASCADE")
    delta = pw.IntegerField()
    kind = pw.CharField(max_length=16)
    ref = pw.CharField(max_length=200, unique=True)
    note = pw.CharField(max_length=255, default="")
    balance_after = pw.IntegerField()
    created_at = pw.DateTimeField(default=utcnow, index=True)


def apply_credits(user: User | int, delta: int, kind: str, ref: str, note: str = "",
                  allow_partial: bool = False) -> CreditEntry | None:
    """Add `delta` credits (negative to take) as one ledger entry, idempotently by `ref`.

    Must be called inside a transaction. Returns the entry, or None when `ref` was already
    applied. Taking more than the balance raises InsufficientCredits, unless `allow_partial`,
    which takes what there is (the balance stops at zero) and records the shortfall in the note.
    """
    assert kind in CreditEntry.KINDS, kind
    user_id = user if isinstance(user, int) else user.id
    if CreditEntry.select().where(CreditEntry.ref == ref).exists():
        return None
    if delta < 0:
        need = -delta
        updated = (User.update(credits=User.credits - need)
                   .where((User.id == user_id) & (User.credits >= need)).execute())
        if not updated:
            balance = User.select(User.credits).where(User.id == user_id).scalar() or 0
            if not allow_partial:
                raise InsufficientCredits(need, balance)
            take = balance
            User.update(credits=User.credits - take).where(User.id == user_id).execute()
            note = f"{note} (only {take} of {need} could be taken back)".strip()
            delta = -take
    elif delta > 0:
        User.update(credits=User.credits + delta).where(User.id == user_id).execute()
    balance_after = User.select(User.credits).where(User.id == user_id).scalar()
    return CreditEntry.create(user=user_id, delta=delta, kind=kind, ref=ref, note=note[:255],
                              balance_after=balance_after)


class Generation(BaseModel):
    MODES = ("description", "lyrics", "described_lyrics")

    id = pw.CharField(primary_key=True, max_length=32, default=new_id)
    user = pw.ForeignKeyField(User, backref="generations", on_delete="CASCADE")
    mode = pw.CharField(max_length=20)
    operation = pw.CharField(max_length=20, default="generate")  # generate | retake | extend | ...
    source_song_id = pw.CharField(max_length=32, null=True)
    params = JSONField(null=True)  # operation settings (sections, strengths, seeds ...)
    description = pw.TextField(default="")
    prompt = pw.TextField(default="")
    lyrics = pw.TextField(default="")
    described_lyrics = pw.TextField(default="")
    instrumental = pw.BooleanField(default=False)
    duration = pw.IntegerField()
    variants = pw.IntegerField(default=2)
    idempotency_key = pw.CharField(max_length=100, null=True)
    created_at = pw.DateTimeField(default=utcnow, index=True)

    class Meta:
        indexes = ((("user", "idempotency_key"), True),)

    def is_finished(self) -> bool:
        return not Song.select().where((Song.generation == self.id) & (Song.status.not_in(Song.FINAL))).exists()


class Style(BaseModel):
    """A person's trained style (a LoRA adapter, or on the offline engines a JSON bias) made from
    4-30 of their songs or uploads (migration 0039). Private to its owner until published; a
    published style can be used (never downloaded) by anyone. The rules are in core.styles."""

    STATUSES = ("queued", "training", "ready", "failed", "cancelled")
    FINAL = ("ready", "failed", "cancelled")

    id = pw.CharField(primary_key=True, max_length=32, default=new_id)
    user = pw.ForeignKeyField(User, backref="styles", on_delete="CASCADE")
    name = pw.CharField(max_length=60)
    description = pw.CharField(max_length=500, default="")
    status = pw.CharField(max_length=16, default="queued", index=True)
    stage = pw.CharField(max_length=40, default="queued")
    progress = pw.IntegerField(default=0)
    error = pw.TextField(default="")
    public = pw.BooleanField(default=False)
    engine = pw.CharField(max_length=120, default="")  # the music engine that trained it
    offline = pw.BooleanField(default=False)  # trained by the offline engine (a JSON bias, no LoRA)
    adapter_key = pw.CharField(max_length=300, null=True)  # storage key of the adapter file
    adapter_hash = pw.CharField(max_length=64, default="")  # sha256 hex of the adapter file
    config = JSONField(null=True)
    report = JSONField(null=True)  # {"loss": [[step, loss], ...], "steps": n, "seconds": s, ...}
    credits = pw.IntegerField(default=0)  # what its training reserved
    attempt = pw.IntegerField(default=0)
    cancel_requested_at = pw.DateTimeField(null=True)  # the owner asked a running training to stop
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)
    finished_at = pw.DateTimeField(null=True)

    class Meta:
        indexes = ((("user", "created_at"), False), (("public", "status"), False))

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL

    def owned_by(self, user) -> bool:
        return user is not None and getattr(user, "is_authenticated", False) and user.id == self.user_id

    def visible_to(self, user) -> bool:
        """The owner always; anyone else while it is published, ready and its owner active."""
        return self.owned_by(user) or (self.public and self.status == "ready" and self.user.is_active)


class Song(BaseModel):
    STATUSES = ("queued", "processing", "processed", "failed")
    FINAL = ("processed", "failed")

    id = pw.CharField(primary_key=True, max_length=32, default=new_id)
    generation = pw.ForeignKeyField(Generation, backref="songs", on_delete="CASCADE")
    user = pw.ForeignKeyField(User, backref="songs", on_delete="CASCADE")
    parent = pw.ForeignKeyField("self", null=True, backref="children", on_delete="SET NULL")
    variant = pw.IntegerField(default=0)
    title = pw.CharField(max_length=120, default="")
    status = pw.CharField(max_length=16, default="queued", index=True)
    stage = pw.CharField(max_length=40, default="queued")
    progress = pw.IntegerField(default=0)
    error = pw.TextField(default="")
    tags = pw.TextField(default="")
    lyrics = pw.TextField(default="")
    instrumental = pw.BooleanField(default=False)
    seed = pw.BigIntegerField(null=True)
    guidance = pw.FloatField(null=True)
    steps = pw.IntegerField(null=True)
    engine = pw.CharField(max_length=120, default="")
    writer_engine = pw.CharField(max_length=120, default="")
    cover_engine = pw.CharField(max_length=120, default="")
    offline = pw.BooleanField(default=False)
    duration = pw.FloatField(null=True)
    audio_key = pw.CharField(max_length=300, null=True)
    stream_key = pw.CharField(max_length=300, null=True)
    cover_key = pw.CharField(max_length=300, null=True)
    peaks = JSONField(null=True)
    published = pw.BooleanField(default=False)
    published_at = pw.DateTimeField(null=True)
    listen_count = pw.IntegerField(default=0)
    like_count = pw.IntegerField(default=0)
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)
    started_at = pw.DateTimeField(null=True)
    finished_at = pw.DateTimeField(null=True)
    # Fencing: the run (1, 2, ...) that owns the song while it is processing; every write of a
    # run is conditioned on it, so a worker that was presumed dead cannot overwrite a retry.
    attempt = pw.IntegerField(default=0)
    heartbeat_at = pw.DateTimeField(null=True)  # the owning worker's last sign of life
    language = pw.CharField(max_length=8, default="")  # ISO 639-1 code sung in; "unknown"; "" before it is made
    # Moderation (migration 0036): hidden from everyone but its owner, who sees the reason.
    hidden_at = pw.DateTimeField(null=True)
    hidden_reason = pw.CharField(max_length=200, default="")
    # Styles (migration 0039): the style it was made with and its adapter's hash (kept when the
    # style is deleted: the song keeps playing and says it was made with a deleted style).
    style = pw.ForeignKeyField(Style, null=True, backref="songs", on_delete="SET NULL")
    style_hash = pw.CharField(max_length=64, default="")

    class Meta:
        indexes = (
            (("user", "created_at"), False),
            (("published", "status", "created_at"), False),
        )

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL

    @classmethod
    def publicly_visible(cls):
        """THE condition for a song anyone may see (the feed, search, profiles, song pages for
        others, any public list): published, processed, not hidden by moderation, and its
        account neither suspended nor deleted. A query using it must join `User` (the author)."""
        return ((cls.published == True) & (cls.status == "processed") & cls.hidden_at.is_null()  # noqa: E712
                & User.suspended_at.is_null() & User.deleted_at.is_null())

    @classmethod
    def publicly_visible_alone(cls):
        """`publicly_visible()` for a query that does not join the author: the song's account is
        tested against the few suspended or deleted ones (migration 0042's partial index), which
        costs the same for a thousand candidates as for one (search's, `core.search.page`)."""
        hidden = User.select(User.id).where(User.suspended_at.is_null(False) | User.deleted_at.is_null(False))
        return ((cls.published == True) & (cls.status == "processed") & cls.hidden_at.is_null()  # noqa: E712
                & cls.user.not_in(hidden))

    @classmethod
    def public(cls):
        """The publicly visible songs with their authors joined (no query per card)."""
        return cls.select(cls, User).join(User).switch(cls).where(cls.publicly_visible())

    # What a feed tile (app/templates/main/_song_tile.html) and the keyset cursors read of a song
    # and of its author: no lyrics, peaks, settings or storage keys.
    TILE_COLUMNS = ("id", "user", "generation", "title", "status", "duration", "listen_count", "like_count",
                    "published", "published_at", "created_at", "hidden_at")
    TILE_AUTHOR_COLUMNS = ("id", "name", "email", "handle")

    @classmethod
    def public_tiles(cls):
        """`public()` reading only the tiles' columns: a Discover page shows about 70 songs, and
        building their whole rows (lyrics, the waveform's peaks as JSON) was most of its time.
        The rows are for showing, never for saving."""
        return (cls.select(*(getattr(cls, n) for n in cls.TILE_COLUMNS),
                           *(getattr(User, n) for n in cls.TILE_AUTHOR_COLUMNS))
                .join(User).switch(cls).where(cls.publicly_visible()))

    @classmethod
    def tiles(cls, query) -> list["Song"]:
        """The songs of `query` (a `public_tiles()` select, filtered and ordered as wanted), the
        rows read straight into songs and authors (`read_tiles`)."""
        return cls.read_tiles(db.execute_sql(*query.sql()))

    @classmethod
    def tiles_by_ids(cls, ids) -> dict[str, "Song"]:
        """The publicly visible ones of these songs as tiles, by id: Discover's one read of its
        rankings' songs, its SQL compiled once (`any_of`) and its rows read straight."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        cursor = run_compiled("song-tiles-by-ids", lambda: cls.public_tiles().where(any_of(cls.id)),
                              ids_parameter(ids))
        return {song.id: song for song in cls.read_tiles(cursor)}

    @classmethod
    def read_tiles(cls, cursor) -> list["Song"]:
        """Songs and their authors from the rows of a `public_tiles()` select (TILE_COLUMNS, then
        TILE_AUTHOR_COLUMNS), each value converted by its field as peewee would; building them
        through peewee's row wrapper was a third of a Discover page's database time. The songs
        are for showing, never for saving."""
        song_fields = [cls._meta.fields[n] for n in cls.TILE_COLUMNS]
        author_fields = [User._meta.fields[n] for n in cls.TILE_AUTHOR_COLUMNS]
        split = len(song_fields)
        if len(cursor.description) != split + len(author_fields):
            raise ValueError("Song.read_tiles reads the rows of public_tiles() selects only")
        out = []
        for row in cursor:
            song, author = cls(__no_default__=True), User(__no_default__=True)
            song.__data__ = {f.name: f.python_value(v) for f, v in zip(song_fields, row)}
            author.__data__ = {f.name: f.python_value(v) for f, v in zip(author_fields, row[split:])}
            song.__rel__["user"] = author
            out.append(song)
        return out

    @property
    def is_hidden(self) -> bool:
        return self.hidden_at is not None

    # What a status card's ETag is built from (app/caching.status_etag) and what telling who
    # may see the song needs.
    CARD_POLL_COLUMNS = ("id", "user", "generation", "status", "stage", "progress", "attempt", "updated_at",
                         "title", "published")

    @classmethod
    def by_id(cls, song_id: str) -> "Song | None":
        """The whole song with this id (its SQL compiled once: song pages and polls ask often)."""
        return cls.one_compiled("song-by-id", lambda: cls.select().where(cls.id == slot(0)), song_id)

    @classmethod
    def polled(cls, song_id: str, whole: bool) -> "Song | None":
        """The song a status poll asks about, whole or only CARD_POLL_COLUMNS, with its generation's
        id and owner attached (the queue position needs both), in one compiled query."""
        def build():
            columns = (cls,) if whole else tuple(getattr(cls, n) for n in cls.CARD_POLL_COLUMNS)
            return (cls.select(*columns, Generation.user.alias("generation_owner_id"))
                    .join(Generation).where(cls.id == slot(0)))

        row = cls.one_compiled("song-polled-whole" if whole else "song-polled", build, song_id)
        if row is not None:
            row.generation = Generation(id=row.generation_id, user=row.generation_owner_id)
        return row

    def visible_to(self, user) -> bool:
        """The owner always sees their song; anyone else only while it is publicly visible."""
        if user is not None and getattr(user, "is_authenticated", False) and user.id == self.user_id:
            return True
        if not (self.published and self.status == "processed"):  # no query for the obvious cases
            return False
        return Song.select(Song.id).join(User).where((Song.id == self.id) & Song.publicly_visible()).exists()

    def owned_by(self, user) -> bool:
        return user is not None and getattr(user, "is_authenticated", False) and user.id == self.user_id

    LISTEN_WINDOW = dt.timedelta(minutes=30)

    def count_listen(self, listener: str) -> bool:
        """Count a listen once per listener per song per LISTEN_WINDOW (not every seek or reload)."""
        with write_transaction():
            recent = Listen.select().where((Listen.song == self.id) & (Listen.listener == listener) &
                                           (Listen.created_at > utcnow() - self.LISTEN_WINDOW)).exists()
            if recent:
                return False
            Listen.create(song=self.id, listener=listener)
            Song.update(listen_count=Song.listen_count + 1).where(Song.id == self.id).execute()
        self.listen_count += 1
        return True

    def download_name(self, ext: str = "wav") -> str:
        safe = "".join(ch if ch.isalnum() or ch in " -_()" else " " for ch in (self.title or "Untitled"))
        return f"{' '.join(safe.split())[:80] or 'Untitled'}.{ext}"

    def category_names(self) -> list[str]:
        return [c.name for c in Category.select().join(SongCategory).where(SongCategory.song == self)
                .order_by(Category.name)]

    # -- feed & song page: the writes behind publishing, renaming and likes ------------------
    # (the rules a person is told about are in core.songs, which calls these)
    def publish(self) -> bool:
        """Show the song in the public feed, if it is finished (False otherwise). The first
        publication time is kept, so unpublishing and publishing again does not bump it."""
        now = utcnow()
        updated = Song.update(published=True, published_at=pw.fn.COALESCE(Song.published_at, now),
                              updated_at=now).where((Song.id == self.id) & (Song.status == "processed")).execute()
        if updated:
            self.published = True
            self.published_at = Song.select(Song.published_at).where(Song.id == self.id).scalar() or now
        return bool(updated)

    def unpublish(self) -> None:
        Song.update(published=False, updated_at=utcnow()).where(Song.id == self.id).execute()
        self.published = False

    def set_title(self, title: str) -> str:
        Song.update(title=title, updated_at=utcnow()).where(Song.id == self.id).execute()
        self.title = title
        return title

    def liked_by(self, user) -> bool:
        if user is None or not getattr(user, "is_authenticated", False):
            return False
        return Like.select().where((Like.user == user.id) & (Like.song == self.id)).exists()

    def set_like(self, user, liked: bool | None = None) -> bool:
        """Like or unlike for `user`: `liked` True/False sets the state (so a double click does
        not undo itself), None toggles it. Returns whether the user likes the song now; refreshes
        `like_count`. One like per user (unique index); the count moves by the rows actually
        inserted or deleted, as an in-place increment, so concurrent clicks keep it exact."""
        with write_transaction():
            exists = Like.select().where((Like.user == user.id) & (Like.song == self.id)).exists()
            want = (not exists) if liked is None else bool(liked)
            delta = 0
            if want and not exists:
                try:
                    with db.atomic():  # a savepoint: a concurrent insert by the same user loses cleanly
                        Like.insert(user=user.id, song=self.id).execute()
                    delta = 1
                except pw.IntegrityError:
                    delta = 0
            elif not want and exists:
                delta = -Like.delete().where((Like.user == user.id) & (Like.song == self.id)).execute()
            if delta:
                Song.update(like_count=Song.like_count + delta).where(Song.id == self.id).execute()
            self.like_count = Song.select(Song.like_count).where(Song.id == self.id).scalar() or 0
        return want

    SEARCH_MAX_TERMS = 6

    @classmethod
    def search_expression(cls, q: str):
        """Every word of `q` must appear, case-insensitively and literally (% and _ are not
        wildcards), in the title, tags or lyrics. None for an empty query."""
        expr = None
        for term in (q or "").split()[:cls.SEARCH_MAX_TERMS]:
            match = cls.title.contains(term) | cls.tags.contains(term) | cls.lyrics.contains(term)
            expr = match if expr is None else (expr & match)
        return expr

    @classmethod
    def categories_for(cls, song_ids) -> dict[str, list["Category"]]:
        """{song id: [Category, ...] by name} for many songs in one query. The rows come back as
        tuples and each category is built once (a feed page's 70 songs share a handful), which
        is most of this call's time saved; the Category objects are for reading."""
        out: dict[str, list[Category]] = {}
        ids = list(dict.fromkeys(song_ids))
        if not ids:
            return out
        rows = run_compiled("categories-for", lambda: (
            SongCategory.select(SongCategory.song, Category.id, Category.name, Category.slug,
                                Category.published_count).join(Category)
            .where(any_of(SongCategory.song)).order_by(Category.name)), ids_parameter(ids))
        built: dict[int, Category] = {}
        for song_id, cid, name, slug, count in rows:
            category = built.get(cid)
            if category is None:
                category = built[cid] = Category(id=cid, name=name, slug=slug, published_count=count)
            out.setdefault(song_id, []).append(category)
        return out


class Category(BaseModel):
    name = pw.CharField(max_length=60, unique=True)
    slug = pw.CharField(max_length=60, unique=True)
    # Migration 0038: how many publicly visible songs it holds, counted by core.feed_rank.refresh
    # (on the worker, every FEED_REFRESH_SECONDS), so no page counts them.
    published_count = pw.IntegerField(default=0)

    @classmethod
    def named(cls, name: str) -> "Category":
        slug = "-".join("".join(ch.lower() if ch.isalnum() else " " for ch in name).split()) or "other"
        category, _ = cls.get_or_create(slug=slug, defaults={"name": name})
        return category


class SongCategory(BaseModel):
    song = pw.ForeignKeyField(Song, backref="song_categories", on_delete="CASCADE")
    category = pw.ForeignKeyField(Category, backref="song_categories", on_delete="CASCADE")

    class Meta:
        indexes = ((("song", "category"), True),)


class Like(BaseModel):
    user = pw.ForeignKeyField(User, backref="likes", on_delete="CASCADE")
    song = pw.ForeignKeyField(Song, backref="likes", on_delete="CASCADE")
    created_at = pw.DateTimeField(default=utcnow, index=True)

    class Meta:
        indexes = ((("user", "song"), True),)

    @classmethod
    def song_ids_liked_by(cls, user, song_ids) -> set[str]:
        """Which of these songs `user` likes, in one query (empty for visitors)."""
        ids = list(dict.fromkeys(song_ids))
        if not ids or user is None or not getattr(user, "is_authenticated", False):
            return set()
        rows = run_compiled("song-ids-liked-by",
                            lambda: cls.select(cls.song).where((cls.user == slot(0)) & any_of(cls.song, 1)),
                            user.id, ids_parameter(ids))
        return {song_id for song_id, in rows}


class Listen(BaseModel):
    """One counted listen; a listener is counted once per song per listen window."""

    song = pw.ForeignKeyField(Song, backref="listens", on_delete="CASCADE")
    listener = pw.CharField(max_length=80)  # "u:<user id>" or "v:<hash of visitor>"
    created_at = pw.DateTimeField(default=utcnow, index=True)

    class Meta:
        indexes = ((("song", "listener", "created_at"), False),)


class WebhookEvent(BaseModel):
    id = pw.CharField(primary_key=True, max_length=200)  # the webhook-id header
    type = pw.CharField(max_length=80)
    outcome = pw.CharField(max_length=255, default="")
    received_at = pw.DateTimeField(default=utcnow)


class ApiToken(BaseModel):
    user = pw.ForeignKeyField(User, backref="api_tokens", on_delete="CASCADE")
    name = pw.CharField(max_length=80)
    token_hash = pw.CharField(max_length=64, unique=True)
    prefix = pw.CharField(max_length=16, default="")
    created_at = pw.DateTimeField(default=utcnow)
    last_used_at = pw.DateTimeField(null=True)
    revoked_at = pw.DateTimeField(null=True)


class MailToken(BaseModel):
    """A link sent by mail (password reset, address confirmation, change of address): the
    link carries a signed random token, this row its hash; `used_at` makes it single use."""

    PURPOSES = ("reset", "verify", "email")

    user = pw.ForeignKeyField(User, backref="mail_tokens", on_delete="CASCADE")
    purpose = pw.CharField(max_length=16)
    token_hash = pw.CharField(max_length=64, unique=True)
    new_email = pw.CharField(max_length=254, null=True)  # purpose "email": the address to confirm
    created_at = pw.DateTimeField(default=utcnow)
    expires_at = pw.DateTimeField()
    used_at = pw.DateTimeField(null=True)

    class Meta:
        indexes = ((("user", "purpose"), False),)


class DataExport(BaseModel):
    """A person's export (a zip in storage), built by a background job."""

    STATUSES = ("queued", "ready", "failed")

    id = pw.CharField(primary_key=True, max_length=32, default=new_id)
    user = pw.ForeignKeyField(User, backref="exports", on_delete="CASCADE")
    status = pw.CharField(max_length=16, default="queued")
    key = pw.CharField(max_length=300, null=True)
    size = pw.BigIntegerField(null=True)
    error = pw.CharField(max_length=255, default="")
    created_at = pw.DateTimeField(default=utcnow, index=True)
    finished_at = pw.DateTimeField(null=True)


class WebhookEndpoint(BaseModel):
    """An outbound webhook a person set up (/settings/webhooks): where to send which events,
    signed with `secret` (Standard Webhooks: `whsec_` + base64). Disabled after repeated failures."""

    EVENTS = ("song.processed", "song.failed", "generation.finished")

    user = pw.ForeignKeyField(User, backref="webhook_endpoints", on_delete="CASCADE")
    url = pw.CharField(max_length=2000)
    events = JSONField(default=list)  # a subset of EVENTS
    secret = pw.CharField(max_length=100)
    description = pw.CharField(max_length=200, default="")
    created_at = pw.DateTimeField(default=utcnow)
    disabled_at = pw.DateTimeField(null=True)
    disabled_reason = pw.CharField(max_length=255, default="")
    consecutive_failures = pw.IntegerField(default=0)  # failed attempts since the last success
    failing_since = pw.DateTimeField(null=True)  # the first of them
    last_success_at = pw.DateTimeField(null=True)


class WebhookDelivery(BaseModel):
    """One event for one endpoint (the outbox): written in the transaction that made the event,
    sent by the worker, retried with back-off until it succeeds or runs out of attempts."""

    STATUSES = ("pending", "delivered", "failed")

    id = pw.CharField(primary_key=True, max_length=40)  # the `webhook-id` header: msg_<hex>
    endpoint = pw.ForeignKeyField(WebhookEndpoint, backref="deliveries", on_delete="CASCADE")
    event_key = pw.CharField(max_length=120)  # what it is about, once per endpoint: song.processed:<id>
    type = pw.CharField(max_length=40)
    payload = pw.TextField()  # the exact JSON body, the same on every attempt
    status = pw.CharField(max_length=16, default="pending")
    attempts = pw.IntegerField(default=0)
    next_attempt_at = pw.DateTimeField(null=True, default=utcnow)
    last_status_code = pw.IntegerField(null=True)
    last_error = pw.CharField(max_length=255, default="")
    created_at = pw.DateTimeField(default=utcnow)
    finished_at = pw.DateTimeField(null=True)

    class Meta:
        indexes = ((("endpoint", "event_key"), True), (("status", "next_attempt_at"), False),
                   (("endpoint", "created_at"), False))


class WebhookAttempt(BaseModel):
    """One HTTP try of a delivery: the log a person reads (status code, error, timing) and the
    back-off it scheduled."""

    delivery = pw.ForeignKeyField(WebhookDelivery, backref="attempt_log", on_delete="CASCADE")
    number = pw.IntegerField()
    attempted_at = pw.DateTimeField(default=utcnow)
    status_code = pw.IntegerField(null=True)
    error = pw.CharField(max_length=255, default="")
    response_body = pw.CharField(max_length=500, default="")
    duration_ms = pw.IntegerField(default=0)
    retry_in = pw.FloatField(null=True)  # seconds until the next try; None: none (delivered or given up)

    class Meta:
        indexes = ((("delivery", "number"), False),)


class Report(BaseModel):
    """Someone's report of a song for the moderators (migration 0036). One open report per
    reporter and song: reporting again updates it. A moderator closes the song's open reports
    as `dismissed` (nothing wrong) or `actioned` (hidden, or its account suspended)."""

    STATUSES = ("open", "dismissed", "actioned")

    song = pw.ForeignKeyField(Song, backref="reports", on_delete="CASCADE")
    reporter = pw.ForeignKeyField(User, backref="reports", null=True, on_delete="SET NULL")
    reason = pw.CharField(max_length=20)
    details = pw.TextField(default="")
    status = pw.CharField(max_length=16, default="open")
    created_at = pw.DateTimeField(default=utcnow)
    resolved_at = pw.DateTimeField(null=True)
    resolved_by = pw.ForeignKeyField(User, backref="resolved_reports", null=True, on_delete="SET NULL")

    class Meta:
        indexes = ((("status", "song"), False), (("song", "reporter", "status"), False))


class ModerationAction(BaseModel):
    """The moderation log: who did what to which song or account, and when (migration 0036)."""

    ACTIONS = ("hide", "unhide", "dismiss", "suspend", "lift")

    actor = pw.ForeignKeyField(User, backref="moderation_actions", null=True, on_delete="SET NULL")
    action = pw.CharField(max_length=20)
    target_kind = pw.CharField(max_length=10)  # "song" | "user"
    target_id = pw.CharField(max_length=32)
    note = pw.CharField(max_length=255, default="")
    created_at = pw.DateTimeField(default=utcnow, index=True)


class Playlist(BaseModel):
    """A person's ordered list of songs; a public one can be opened by anyone (migration 0034).
    The rules (titles, who may add what, the order) are in core.playlists."""

    id = pw.CharField(primary_key=True, max_length=32, default=new_id)
    user = pw.ForeignKeyField(User, backref="playlists", on_delete="CASCADE")
    title = pw.CharField(max_length=120)
    description = pw.TextField(default="")
    public = pw.BooleanField(default=False)
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("user", "updated_at"), False),)

    def owned_by(self, user) -> bool:
        return user is not None and getattr(user, "is_authenticated", False) and user.id == self.user_id

    def visible_to(self, user) -> bool:
        """The owner always; anyone else while it is public and its owner's account is active."""
        return self.owned_by(user) or (self.public and self.user.is_active)


class PlaylistEntry(BaseModel):
    """One song in a playlist, at `position` (ascending); a song is in a playlist at most once.
    Deleting the song or the playlist deletes the entry (cascade)."""

    playlist = pw.ForeignKeyField(Playlist, backref="entries", on_delete="CASCADE")
    song = pw.ForeignKeyField(Song, backref="playlist_entries", on_delete="CASCADE")
    position = pw.IntegerField(default=0)
    added_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("playlist", "song"), True), (("playlist", "position"), False))


class Follow(BaseModel):
    """`follower` follows `followee` (migration 0035): the Following tab shows the songs of the
    people one follows. One row per pair (unique index); the rules are in core.profiles."""

    follower = pw.ForeignKeyField(User, backref="follows", on_delete="CASCADE")
    followee = pw.ForeignKeyField(User, backref="followed_by", on_delete="CASCADE")
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("follower", "followee"), True),)


class FeedRank(BaseModel):
    """A precomputed public ranking (migration 0038), written by `core.feed_rank.refresh` on the
    worker: `kind` is 'trending' or 'category:<slug>', its songs in `position` order (0 first)
    with their `score`; the one row of kind 'refresh' (no song) says that, and when, they were
    computed. Pages read these rows, then the songs through `Song.publicly_visible()`."""

    kind = pw.CharField(max_length=80)
    position = pw.IntegerField(default=0)
    song = pw.ForeignKeyField(Song, null=True, backref="+", on_delete="CASCADE")
    score = pw.FloatField(default=0.0)
    computed_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("kind", "position"), True),)


class StyleSample(BaseModel):
    """One song or upload a style learns from (migration 0039), in `position` order. An upload's
    audio lies at `upload_key` until the style is deleted."""

    style = pw.ForeignKeyField(Style, backref="samples", on_delete="CASCADE")
    song = pw.ForeignKeyField(Song, null=True, backref="style_samples", on_delete="SET NULL")
    upload_key = pw.CharField(max_length=300, null=True)
    upload_name = pw.CharField(max_length=120, default="")
    caption = pw.TextField(default="")
    lyrics = pw.TextField(default="")
    duration = pw.FloatField(default=0.0)
    position = pw.IntegerField(default=0)

    class Meta:
        indexes = ((("style", "position"), False),)


class SchemaMigration(BaseModel):
    name = pw.CharField(primary_key=True, max_length=120)
    applied_at = pw.DateTimeField(default=utcnow)


ALL_MODELS = [User, CreditEntry, Generation, Song, Category, SongCategory, Like, Listen,
              WebhookEvent, ApiToken, MailToken, DataExport,
              WebhookEndpoint, WebhookDelivery, WebhookAttempt, Report, ModerationAction,
              Playlist, PlaylistEntry, Follow, FeedRank, Style, StyleSample]
