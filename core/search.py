"""Full-text search over songs: title, tags and lyrics, ranked, served by an index on both databases.

    songs(query, q, newest)   the Song query narrowed to the songs matching `q`, best match first
                              (then `newest`, the page's own order, breaks ties)
    page(query, q, offset, limit, newest, windows)
                              one page of it, as a list (on PostgreSQL the candidates are ranked
                              as they are found, and only the page's songs are read whole)
    terms(q)                  how a person's text is read: words, at most MAX_TERMS
    install(database)         create (or re-create) the index and fill it (migration 0037)
    maintain_tiers(public)    PostgreSQL: build and drop the tiers, text indexes of the newest
                              public songs (the worker's feed refresh calls it)
    read_tiers()              the tiers built, (k, cutoff), for `Windows.tiers`

What a search means, the same on SQLite and PostgreSQL: the text is cut into terms at white
space; every term must match (AND). A term with a letter or digit in it is looked up in the
index as words: "neon" matches the word neon in the title, the tags or the lyrics, in any case,
and the last term, from three characters on, is also a prefix ("mid" finds "Midnight"), so the
live search answers while a word is being typed. A term with no letter or digit ("%", "&") is
matched literally (LIKE, `%` and `_` not wildcards) among the songs the words selected. A match
in the title ranks above one in the tags, which ranks above one in the lyrics; songs that rank
alike keep the page's order (newest first). Nothing a person types is passed on as query
syntax: each term is quoted, so `"`, `AND (`, `NEAR(`, `*` or `-` are plain text, never an error.

The index:
- PostgreSQL (12 or later): `song.search_vector`, a stored generated tsvector column,
  setweight(to_tsvector('simple', title), 'A') || tags 'B' || lyrics 'C', with a GIN index
  (`song_search_vector`); matched with `@@ to_tsquery('simple', …)` built from quoted terms, ranked
  by ts_rank with the weights {D 0.1, C 0.2, B 0.4, A 1.0}. The 'simple' configuration lower-cases
  and neither stems nor drops stop words: songs are written in some fifty languages, and an
  English stemmer would mangle the others. PostgreSQL keeps the column itself; it is recomputed
  only when title, tags or lyrics change. Title matches have their own GIN index over the
  title's tsvector (`song_title_search`, migration 0041), so finding them does not read every
  song whose lyrics say the word.
- SQLite: `song_fts`, an FTS5 table over the song table's own rows (external content keyed by
  the song table's implicit rowid, so the text is not stored twice), tokenizer unicode61 with
  diacritics folded, kept by three triggers on the song table (insert; delete; update of title,
  tags or lyrics), ranked by bm25 with the column weights title 10, tags 4, lyrics 1. A migration
  that rebuilds the song table on SQLite (a copy-and-rename) drops its triggers and renumbers its
  rows: it must call `install(database)` afterwards, which re-creates the triggers and refills
  the index.

Both split words where the text has spaces or punctuation: a run of Chinese or Japanese without
spaces is one word (found whole or by its start, not by a word inside it). SQLite also folds
accents ("cafe" finds "Café"), PostgreSQL's 'simple' does not.

What a search reads: the candidates ranked are the newest CANDIDATES matches and the newest
CANDIDATES title matches (a title match older than every other match still comes first). On
PostgreSQL the public feed's search finds them without reading every match (`newest_rows`),
so its cost follows the size of the candidate window, not of the library: the planner's
estimate of a word's matches picks the path. A word expected in at most 2 x CANDIDATES songs
is read whole from its index (cheap however big the library). A word expected in FREQUENT of
the songs or more is tested song by song along the date order, which stops after CANDIDATES
matches. In between, the search looks among the newest songs only: the smallest tier (a text
index of the newest 20,000, 40,000, ... public songs alone, `maintain_tiers`) or else the
smallest of the feed's windows (where the newest 10,000, 14,142, 20,000, ... public songs
start, kept by `core.feed_rank`) expected to hold 1.5 x CANDIDATES matches, a wider one if it
holds too few, the whole feed last. The candidates are found in `among` (the feed's songs
without their authors joined) and only the page's songs are read through the page's query. Every path gives the same songs: a window that holds CANDIDATES matches
holds the newest ones. A library's search (one person's songs) reads its matches whole. On
SQLite, FTS5 tells cheaply whether a word has more than CANDIDATES matches and then tests them
along the date order.

Without the index (an SQLite library built without FTS5, PostgreSQL before 12) search falls back
to the literal LIKE match of every term (`Song.search_expression`), unranked, and says so once in
the log.
"""
from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import re
import sqlite3
import unicodedata
from dataclasses import dataclass

import peewee as pw

import models
from models import Song

log = logging.getLogger("tunesmith.search")

MAX_CHARS = 100  # what the search boxes accept (the pages cut longer text to this)
MAX_TERMS = Song.SEARCH_MAX_TERMS
PREFIX_MIN = 3  # the last term is also a prefix from this many characters ("mid", not "mi")
SQLITE_WEIGHTS = (10.0, 4.0, 1.0)  # bm25 column weights: title, tags, lyrics
PG_WEIGHTS = "{0.1, 0.2, 0.4, 1.0}"  # ts_rank weights of D, C, B, A (lyrics C, tags B, title A)
PG_MIN_VERSION = 120000  # generated columns
CANDIDATES = 1000  # ranked at most, of the newest matches (and as many title matches): SEARCH_CANDIDATES
FREQUENT = 0.05  # a word the planner expects in this share of the songs is tested along the date order

FTS_TABLE = "song_fts"
PG_COLUMN = "search_vector"
PG_INDEX = "song_search_vector"
PG_TITLE_INDEX = "song_title_search"  # GIN over the title's own tsvector: title matches without the rest
PG_WINDOW_INDEX = "song_public_published_at"  # published_at of published songs alone: a window's songs, narrow
# Tiers: partial copies of the two GIN indexes over the newest public songs (`maintain_tiers`).
TIER_START, TIER_STEP = 20_000, 2  # SEARCH_TIER_START: tiers of the newest 20,000, 40,000, ... public songs
TIER_NAME = re.compile(r"^song_(search|title)_t([0-9]+)_([0-9]+)$")  # song_search_t<k>_<cutoff, unix seconds>
TIER_LOCK = 0x7475_6E65_7469_6572 & 0x7FFF_FFFF_FFFF_FFFF  # "tunetier": one builder at a time


@dataclass(frozen=True)
class Windows:
    """Where a scope's newest songs start in its `newest` order: `bounds`, (k, t) with k
    ascending, t the time in the order's first column from which the newest k songs of the
    scope lie; `total`, the scope's songs. Approximate is fine (they only decide where to look
    first; `newest_ids` checks what it finds): `core.feed_rank` keeps the public feed's."""
    bounds: tuple[tuple[int, object], ...]
    total: int
    tiers: tuple[tuple[int, object], ...] = ()  # (k, cutoff) of the tiers built (`read_tiers`), k ascending

    def first(self, at_least: int, also=lambda k: True):
        """The smallest window of at least `at_least` songs (and for which `also` holds), short
        of the whole scope; None when there is none."""
        return next(((k, t) for k, t in self.bounds if k >= at_least and k < self.total and also(k)), None)

    def place(self, at_least: float, bigger_than: int = 0, tiers: bool = True):
        """Where to look for matches among at least `at_least` of the newest songs (more than
        `bigger_than`): the smallest tier that holds them (its own index answers), else the
        smallest window; None when only the whole scope does. A tier's k is what it held when it
        was built: it holds at least that many."""
        if tiers:
            tier = next(((k, t) for k, t in self.tiers if k >= at_least and bigger_than < k < self.total), None)
            if tier is not None:
                return tier
        return self.first(at_least, lambda k: k > bigger_than)


# -- reading a person's text ------------------------------------------------------------------
def terms(q: str | None) -> list[str]:
    """The terms of `q`: control characters dropped, cut at white space, the first MAX_CHARS
    characters and MAX_TERMS terms."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(q or ""))[:MAX_CHARS]
    return text.split()[:MAX_TERMS]


def is_word(term: str) -> bool:
    """Whether the index can look `term` up: it has a letter or a digit."""
    return any(unicodedata.category(ch)[0] in "LN" for ch in term)


def fts5_query(words: list[str], column: str = "") -> str:
    """An FTS5 MATCH expression: every word as a quoted string (an implicit AND), the last one
    also as a prefix. Quoting turns any FTS5 syntax a person types into plain text."""
    parts = ['"' + w.replace('"', '""') + '"' for w in words]
    if words and len(words[-1]) >= PREFIX_MIN:
        parts[-1] += "*"
    if column:  # each phrase only in that column
        parts = [f"{column} : {p}" for p in parts]
    return " ".join(parts)


def tsquery(words: list[str], weight: str = "") -> str:
    """A to_tsquery text: every word as a quoted lexeme, joined by &, the last one also as a
    prefix (:*). Quoting turns any tsquery syntax a person types into plain text (the quote and
    the backslash are escaped); a word the parser finds no lexeme in is dropped by PostgreSQL."""
    parts = ["'" + w.replace("\\", "\\\\").replace("'", "''") + "'" for w in words]
    last = ":*" if words and len(words[-1]) >= PREFIX_MIN else ""
    if weight:  # only lexemes of that weight (A: the title)
        parts = [p + ":" + weight for p in parts[:-1]] + [p + (last or ":") + weight for p in parts[-1:]]
    elif last:
        parts[-1] += last
    return " & ".join(parts)


# -- which index this database has --------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def fts5_compiled() -> bool:
    """Whether this process's SQLite library has FTS5."""
    conn = sqlite3.connect(":memory:")
    try:
        return any(row[0] == "ENABLE_FTS5" for row in conn.execute("PRAGMA compile_options"))
    finally:
        conn.close()


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def mode(database: pw.Database | None = None) -> str:
    """"fts5", "postgres" or "like" (no index: the literal scan)."""
    database = database or models.db.obj
    if isinstance(database, pw.SqliteDatabase):
        if not fts5_compiled():
            _warn_once("fts5", "this SQLite library has no FTS5: search scans titles, tags and lyrics with LIKE")
            return "like"
        ready = getattr(database, "_song_fts_ready", None)
        if ready is None:  # once per database handle (install() sets it when it builds the index)
            ready = database.table_exists(FTS_TABLE)
            if ready:
                database._song_fts_ready = True
        if not ready:
            _warn_once("fts5-table", f"the search index ({FTS_TABLE}) is missing: search scans with LIKE "
                                     "until the migrations are applied")
            return "like"
        return "fts5"
    version = getattr(database, "server_version", None)
    if version and version < PG_MIN_VERSION:  # peewee reads the version when it first connects
        _warn_once("pg", "PostgreSQL before 12 has no generated columns: search scans with LIKE")
        return "like"
    return "postgres"


# -- the query ----------------------------------------------------------------------------------
def configure(candidates: int, tier_start: int | None = None) -> None:
    """Set how many candidates a search ranks (the SEARCH_CANDIDATES setting) and the smallest
    tier (SEARCH_TIER_START; 0: no tiers); the app and the worker call it."""
    global CANDIDATES, TIER_START
    CANDIDATES = max(1, int(candidates))
    if tier_start is not None:
        TIER_START = max(0, int(tier_start))


def _read(q: str | None):
    """(words, literal terms, mode) of a person's text."""
    found = terms(q)
    words = [t for t in found if is_word(t)]
    literal = [t for t in found if not is_word(t)]
    return words, literal, (mode() if words else "like")


def songs(query, q: str | None, newest=(Song.created_at.desc(), Song.id.desc()), candidates: int | None = None,
          windows: Windows | None = None):
    """`query` (a Song select, already limited to what the reader may see) narrowed to the songs
    that match `q` and ordered best match first, then by `newest`; for a word in more than
    `candidates` (CANDIDATES) of those songs, only the candidates (see the module's text). No
    terms: `query` in the `newest` order. `windows` (PostgreSQL): where the scope's newest
    songs start in the first `newest` column, so the candidates are found without reading
    every match (`newest_rows`). A page of it is cheaper through `page()`."""
    words, literal, how = _read(q)
    if how == "like":
        expr = Song.search_expression(" ".join(terms(q)))
        return (query.where(expr) if expr is not None else query).order_by(*newest)
    if literal:
        query = query.where(Song.search_expression(" ".join(literal)))
    n = max(1, CANDIDATES if candidates is None else int(candidates))
    if how == "fts5":
        return _fts5_songs(query, words, newest, n)
    ranked = _postgres_ranked(query, words, newest, n, windows)
    return query.where(Song.id.in_(sorted(ranked))).order_by(_pg_rank(words).desc(), *newest)


def page(query, q: str | None, offset: int, limit: int, newest=(Song.created_at.desc(), Song.id.desc()),
         candidates: int | None = None, windows: Windows | None = None, among=None) -> list:
    """The songs `offset` .. `offset + limit - 1` of `songs(...)`, in its order. On PostgreSQL the
    candidates are ranked as they are found (their rank and their `newest` keys read with their
    ids) and only the page's songs are then read whole. `among` (PostgreSQL): the same songs as
    `query` without what only showing them needs (the authors' join: `query` joins each song's
    author, a look-up per candidate, up to 2 x CANDIDATES of them), where the candidates are
    looked for; `query` then reads the page's songs."""
    words, literal, how = _read(q)
    if how != "postgres":
        return list(songs(query, q, newest, candidates, windows).limit(limit).offset(offset))
    among = query if among is None else among
    if literal:
        query = query.where(Song.search_expression(" ".join(literal)))
        among = among.where(Song.search_expression(" ".join(literal)))
    n = max(1, CANDIDATES if candidates is None else int(candidates))
    ranked = _postgres_ranked(among, words, newest, n, windows)
    rows = list(ranked.values())
    if all(_descending(o) for o in newest):  # the usual case: best rank, then newest, in one sort
        rows.sort(key=lambda r: r[1:2 + len(newest)], reverse=True)
    else:
        for i in reversed(range(len(newest))):  # stable sorts, the last key first: rank, then newest
            rows.sort(key=lambda r: r[2 + i], reverse=_descending(newest[i]))
        rows.sort(key=lambda r: r[1], reverse=True)
    ids = [r[0] for r in rows[offset:offset + limit]]
    got = {s.id: s for s in query.where(Song.id.in_(ids))} if ids else {}
    return [got[sid] for sid in ids if sid in got]


def _newest(query, match, newest, n: int, key=Song.id):
    """The `key` of the newest `n` songs of `query` that `match`."""
    return query.select(key).where(match).order_by(*newest).limit(n)


def _descending(ordering) -> bool:
    return str(getattr(ordering, "direction", "ASC")).upper() == "DESC"


def _node(ordering):
    return getattr(ordering, "node", ordering)


def _rows(query, match, newest, n: int, columns, walk: bool = False) -> list[tuple]:
    """(id, *columns) of the newest `n` songs of `query` that `match`; `walk`: along the index
    of the `newest` order, testing song by song until n match (PostgreSQL's bitmap and
    sequential scans off for this query: the planner cannot tell how soon a test without an
    index stops)."""
    select = query.select(Song.id, *columns).where(match).order_by(*newest).limit(n)
    # psycopg2's own tuples (ids, ranks and times already of their types): up to 2 x CANDIDATES
    # rows a search, which peewee's row wrapper took longer to hand over than the query to run.
    if not walk:
        return models.db.execute_sql(*select.sql()).fetchall()
    with models.db.atomic():
        models.db.execute_sql("SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off")
        try:
            return models.db.execute_sql(*select.sql()).fetchall()
        finally:
            models.db.execute_sql("SET LOCAL enable_bitmapscan TO DEFAULT; SET LOCAL enable_seqscan TO DEFAULT")


def estimate(match) -> int:
    """How many songs PostgreSQL's planner expects to `match` (its statistics, no rows read:
    one EXPLAIN)."""
    sql, params = Song.select(pw.SQL("1")).where(match).sql()
    plan = models.db.execute_sql("EXPLAIN (FORMAT JSON) " + sql, params).fetchone()[0]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    return int(plan[0]["Plan"]["Plan Rows"])


def newest_rows(query, match, newest, n: int, windows: Windows | None = None, columns=(), scan=None) -> list[tuple]:
    """(id, *columns) of the newest `n` songs of `query` that `match`, as one unbounded query
    would find them, reading no more than it must. With `windows` and a word the planner
    expects in more than 2n songs: among the songs of the smallest window expected to hold
    1.5n matches; a word expected in FREQUENT of the songs or more is tested song by song
    along the `newest` order (`scan`: the same test without the index, which would hand over
    most of the library), a rarer one is looked up in its index within the window. Should the
    window hold fewer than n, the number it holds picks a wider one, then the unbounded query.
    A window that holds n matches holds the newest n, so every path gives the same songs."""
    if windows and windows.total > 0:
        expected = estimate(match)
        if expected > 2 * n:
            walk = scan is not None and expected >= FREQUENT * windows.total
            if walk:  # the walk stops after n matches: no window needed
                return _rows(query, match, newest, n, columns, walk=True)
            column = _node(newest[0])
            tiers = getattr(column, "name", "") == "published_at"  # the tiers' own column
            place = windows.place(1.5 * n * windows.total / expected, tiers=tiers)
            for _ in range(2):  # the place expected to hold 1.5n matches, then one wider
                if place is None:
                    break
                k, at = place
                rows = _rows(query, match & (column >= at), newest, n, columns)
                if len(rows) >= n:
                    return rows
                place = windows.place(1.5 * n * k / len(rows), k, tiers) if rows else None
    return _rows(query, match, newest, n, columns)


def _pg_rank(words):
    ts = pw.fn.to_tsquery(pw.SQL("'simple'::regconfig"), tsquery(words))
    return pw.fn.ts_rank(pw.SQL(f"'{PG_WEIGHTS}'::float4[]"), pw.Column(Song, PG_COLUMN), ts)


def _postgres_ranked(query, words, newest, n: int, windows: Windows | None) -> dict[str, tuple]:
    """{id: (id, rank, *newest keys)} of the candidates: the newest n matches and the newest n
    title matches (the title's own index)."""
    simple = pw.SQL("'simple'::regconfig")
    ts = pw.fn.to_tsquery(simple, tsquery(words))
    title = pw.fn.to_tsvector(simple, pw.fn.coalesce(Song.title, pw.SQL("''")))  # PG_TITLE_INDEX's expression
    columns = [_pg_rank(words), *(_node(o) for o in newest)]
    out: dict[str, tuple] = {}
    vector = pw.Column(Song, PG_COLUMN)
    unindexed = pw.fn.coalesce(vector, pw.SQL("''::tsvector"))  # the same test, which no index answers
    halves = ((pw.Expression(vector, "@@", ts), pw.Expression(unindexed, "@@", ts)),
              (pw.Expression(title, "@@", ts), None))  # titles are short: their own index always
    for match, scan in halves:
        for row in newest_rows(query, match, newest, n, windows, columns, scan):
            out[row[0]] = row
    return out


def _fts_match(expression: str):
    return pw.NodeList((pw.SQL(f"{FTS_TABLE} MATCH"), pw.Value(expression)))


def _fts_more_than(expression: str, n: int) -> bool:
    """Whether more than `n` songs match (reads at most n + 1 entries of the index)."""
    sql = f"SELECT count(*) FROM (SELECT 1 FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH ? LIMIT ?)"
    return models.db.execute_sql(sql, (expression, n + 1)).fetchone()[0] > n


def _fts5_songs(query, words, newest, n: int):
    every = fts5_query(words)
    rowid = pw.Column(Song, "rowid")
    weights = ", ".join(str(w) for w in SQLITE_WEIGHTS)
    fts = pw.Table(FTS_TABLE)
    if not _fts_more_than(every, n):  # a word in at most n songs: every match ranked, as it always was
        hits = (fts.select(pw.SQL("rowid").alias("rid"), pw.SQL(f"bm25({FTS_TABLE}, {weights})").alias("score"))
                .where(_fts_match(every)).alias("hits"))
        return query.switch(Song).join(hits, on=(hits.c.rid == rowid)).order_by(hits.c.score, *newest)

    def newest_matching(expression: str):
        """The rowids of the newest n songs of `query` that match `expression`: few matches are
        looked up one by one; many are tested along the `newest` order, which stops after n (the
        unary + keeps SQLite from looking them up one by one)."""
        matched = fts.select(pw.SQL("rowid")).where(_fts_match(expression))
        test = rowid if not _fts_more_than(expression, n) else pw.NodeList((pw.SQL("+"), rowid), glue="")
        return _newest(query, pw.Expression(test, "IN", matched), newest, n, key=rowid)

    candidates = newest_matching(every) | newest_matching(fts5_query(words, column="title"))
    # bm25 for the candidates only: the index's matches are walked once and only the candidates
    # are scored (`+rowid`: tested row by row, not looked up one by one, which would count the
    # matches again for each); LIMIT keeps the subquery apart, so it drives the join
    hits = (fts.select(pw.SQL("rowid").alias("rid"), pw.SQL(f"bm25({FTS_TABLE}, {weights})").alias("score"))
            .where(_fts_match(every) & pw.Expression(pw.SQL("+rowid"), "IN", candidates))
            .limit(2 * n).alias("hits"))
    return query.switch(Song).join(hits, on=(hits.c.rid == rowid)).order_by(hits.c.score, *newest)


# -- building the index -----------------------------------------------------------------------
_PG_TITLE_VECTOR = "to_tsvector('simple'::regconfig, coalesce(title, ''))"  # PG_TITLE_INDEX's, and each tier's
_PG_PUBLIC = "published AND status = 'processed'"  # the songs the window index and the tiers hold
_PG_VECTOR = ("setweight(to_tsvector('simple'::regconfig, coalesce(title, '')), 'A') || "
              "setweight(to_tsvector('simple'::regconfig, coalesce(tags, '')), 'B') || "
              "setweight(to_tsvector('simple'::regconfig, coalesce(lyrics, '')), 'C')")

_FTS_ADD = f"INSERT INTO {FTS_TABLE}(rowid, title, tags, lyrics) VALUES (new.rowid, new.title, new.tags, new.lyrics);"
_FTS_DEL = (f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, title, tags, lyrics) "
            "VALUES ('delete', old.rowid, old.title, old.tags, old.lyrics);")
SQLITE_SCHEMA = (
    f"CREATE VIRTUAL TABLE IF NOT EXISTS {FTS_TABLE} USING fts5(title, tags, lyrics, content='song', "
    "content_rowid='rowid', tokenize='unicode61 remove_diacritics 2')",
    f"DROP TRIGGER IF EXISTS {FTS_TABLE}_insert",
    f"DROP TRIGGER IF EXISTS {FTS_TABLE}_delete",
    f"DROP TRIGGER IF EXISTS {FTS_TABLE}_update",
    f"CREATE TRIGGER {FTS_TABLE}_insert AFTER INSERT ON song BEGIN {_FTS_ADD} END",
    f"CREATE TRIGGER {FTS_TABLE}_delete AFTER DELETE ON song BEGIN {_FTS_DEL} END",
    f"CREATE TRIGGER {FTS_TABLE}_update AFTER UPDATE OF title, tags, lyrics ON song "
    "WHEN old.title IS NOT new.title OR old.tags IS NOT new.tags OR old.lyrics IS NOT new.lyrics "
    f"BEGIN {_FTS_DEL} {_FTS_ADD} END",
    f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('rebuild')",  # index every song there is now
)
PG_SCHEMA = (
    f'ALTER TABLE "song" ADD COLUMN IF NOT EXISTS "{PG_COLUMN}" tsvector GENERATED ALWAYS AS ({_PG_VECTOR}) STORED',
    f'CREATE INDEX IF NOT EXISTS "{PG_INDEX}" ON "song" USING GIN ("{PG_COLUMN}")',
    f'CREATE INDEX IF NOT EXISTS "{PG_TITLE_INDEX}" ON "song" USING GIN '
    f"({_PG_TITLE_VECTOR})",
    f'CREATE INDEX IF NOT EXISTS "{PG_WINDOW_INDEX}" ON "song" ("published_at") '
    f"WHERE {_PG_PUBLIC}",
)


def install(database: pw.Database) -> str:
    """Create the index where it is missing and fill it; safe to run again (on SQLite it
    re-creates the triggers and refills the index from the songs). Returns the mode."""
    if isinstance(database, pw.SqliteDatabase):
        if not fts5_compiled():
            log.warning("this SQLite library has no FTS5: no search index; search scans with LIKE")
            return "like"
        for sql in SQLITE_SCHEMA:
            database.execute_sql(sql)
        database._song_fts_ready = True
        return "fts5"
    version = int(database.execute_sql("SHOW server_version_num").fetchone()[0])
    if version < PG_MIN_VERSION:
        log.warning("PostgreSQL %s has no generated columns: no search index; search scans with LIKE", version)
        return "like"
    for sql in PG_SCHEMA:  # ADD COLUMN computes the column for every song there is
        database.execute_sql(sql)
    return "postgres"


# -- tiers: the newest songs' own text indexes (PostgreSQL) ------------------------------------
# A GIN index hands over every song that says a word, in no order, so finding the newest 1,000
# of a word's 15,000 matches in a million songs read all 15,000 (and ANDed them with the
# window's 113,000 newest songs): a cost that grows with the library. A tier is a partial copy
# of the two GIN indexes (every field; the title) over the newest public songs only, from a
# fixed publication time on (`published_at >= cutoff`, in the index's own predicate), so a
# search that looks among the newest k songs asks an index of about k songs: its cost follows
# the window, not the library. Tiers hold the newest TIER_START, 2 x TIER_START, 4 x ... public
# songs, up to three quarters of them all; new songs join every tier (their predicate
# holds), so a tier grows, and once it holds more than twice its k it is built again from the
# k-th newest song on and the old one dropped. The worker's feed refresh keeps them
# (`maintain_tiers`, one tier built per refresh, CONCURRENTLY: songs keep being written); a page
# reads which ones exist from the catalogue (`read_tiers`, with the feed's windows). An index
# name carries its k and its cutoff, so nothing else has to be kept in step with the catalogue.

def _tier_names(k: int, cutoff: int) -> tuple[str, str]:
    return f"song_search_t{k}_{cutoff}", f"song_title_t{k}_{cutoff}"


def _tier_time(cutoff: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(cutoff, dt.timezone.utc).replace(tzinfo=None)  # published_at is naive UTC


def _tier_catalogue() -> tuple[dict[tuple[int, int], set[str]], list[str]]:
    """({(k, cutoff): the names of its valid indexes}, the names of invalid ones: a build that
    failed half way)."""
    rows = models.db.execute_sql(
        "SELECT c.relname, i.indisvalid AND i.indisready FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = 'song'::regclass AND c.relname ~ '^song_(search|title)_t[0-9]+_[0-9]+$'").fetchall()
    valid: dict[tuple[int, int], set[str]] = {}
    invalid = []
    for name, ok in rows:
        kind, k, cutoff = TIER_NAME.match(name).groups()
        if ok:
            valid.setdefault((int(k), int(cutoff)), set()).add(name)
        else:
            invalid.append(name)
    return valid, invalid


def read_tiers() -> tuple[tuple[int, dt.datetime], ...]:
    """(k, cutoff) of every tier whose two indexes are built, k ascending (the newest cutoff of
    a k first); () on SQLite. One catalogue query."""
    if mode() != "postgres":
        return ()
    valid, _ = _tier_catalogue()
    whole = sorted((kc for kc, names in valid.items() if len(names) == 2), key=lambda kc: (kc[0], -kc[1]))
    return tuple((k, _tier_time(cutoff)) for k, cutoff in whole)


def _public_since(cutoff: dt.datetime, at_most: int) -> int:
    """How many public songs were published from `cutoff` on, counting at most `at_most`."""
    return models.db.execute_sql(
        f"SELECT count(*) FROM (SELECT 1 FROM song WHERE {_PG_PUBLIC} "
        "AND published_at >= %s LIMIT %s) s", (cutoff, at_most)).fetchone()[0]


def _kth_newest(k: int) -> dt.datetime | None:
    row = models.db.execute_sql(
        f"SELECT published_at FROM song WHERE {_PG_PUBLIC} "
        "ORDER BY published_at DESC, id DESC OFFSET %s LIMIT 1", (k - 1,)).fetchone()
    return row[0] if row else None


def _build_tier(k: int, cutoff: int) -> None:
    where = (f"WHERE {_PG_PUBLIC} AND published_at >= "
             f"'{_tier_time(cutoff):%Y-%m-%d %H:%M:%S}'::timestamp")
    search_name, title_name = _tier_names(k, cutoff)
    models.db.execute_sql(f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{search_name}" ON "song" '
                          f'USING GIN ("{PG_COLUMN}") {where}')
    models.db.execute_sql(f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{title_name}" ON "song" USING GIN '
                          f"({_PG_TITLE_VECTOR}) {where}")


def _drop(names) -> None:
    for name in sorted(names):
        models.db.execute_sql(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')


def maintain_tiers(public: int, max_builds: int = 1, start: int | None = None) -> list[str]:
    """Build the tiers the feed's `public` songs call for and drop the rest (PostgreSQL; a no-op
    on SQLite, or while another process does it): a tier missing, or holding more than twice
    its k, is built from the k-th newest song's publication time on (at most `max_builds` of
    them), then the one it replaces is dropped; tiers the feed no longer calls for and failed
    builds are dropped. Outside any transaction (CREATE INDEX CONCURRENTLY). Returns what was
    done, e.g. ["built t20000", "dropped t20000 (replaced)"]."""
    start = TIER_START if start is None else start
    if mode() != "postgres" or models.db.in_transaction():
        return []
    if not models.db.execute_sql("SELECT pg_try_advisory_lock(%s)", (TIER_LOCK,)).fetchone()[0]:
        return []
    done: list[str] = []
    try:
        valid, invalid = _tier_catalogue()
        if invalid:
            _drop(invalid)
            done.append(f"dropped {len(invalid)} unfinished")
        wanted, k = [], start
        while start > 0 and 4 * k <= 3 * public:  # a tier short of the whole feed by a quarter at least
            wanted.append(k)
            k *= TIER_STEP
        for (k, cutoff), names in sorted(valid.items()):
            if k not in wanted:
                _drop(names)
                done.append(f"dropped t{k} (not called for)")
        builds = 0
        for k in wanted:
            mine = sorted((cutoff, names) for (kk, cutoff), names in valid.items() if kk == k)
            whole = [(cutoff, names) for cutoff, names in mine if len(names) == 2]
            fresh = bool(whole) and _public_since(_tier_time(whole[-1][0]), 2 * k + 1) <= 2 * k
            if fresh:
                stale = [names for cutoff, names in mine if cutoff != whole[-1][0]]
            elif builds < max_builds and (at := _kth_newest(k)) is not None:
                cutoff = int(at.replace(tzinfo=dt.timezone.utc).timestamp())  # whole seconds, down
                _build_tier(k, cutoff)
                builds += 1
                done.append(f"built t{k}")
                stale = [names for c, names in mine if c != cutoff]
            else:
                continue
            for names in stale:
                _drop(names)
                done.append(f"dropped t{k} (replaced)")
    finally:
        models.db.execute_sql("SELECT pg_advisory_unlock(%s)", (TIER_LOCK,))
    return done
