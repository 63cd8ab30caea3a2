"""Figure 9: the pages as the library grows (10,000 -> 100,000 -> 1,000,000 songs).

One PostgreSQL database is grown from one size to the next (only the difference is inserted,
with `INSERT ... SELECT generate_series`, the app's indexes in place, then `VACUUM (ANALYZE)` and one
`core.feed_rank.refresh()`, which builds every search tier the size calls for), and at every size
each page is:

- loaded for a few seconds at 2 connections against gunicorn (2 workers x 4 threads, as the
  Procfile's `web` line), by `wrk` where it is installed, else `bench/loadgen.py`: req/s, p50,
  p99, errors, and how many requests each gunicorn worker served (its access log). Which worker
  accepts a keep-alive connection is a race; when one worker took both, their requests shared
  its interpreter lock (p50 about 1.7x) and the load is taken again on new connections, up to
  SPREAD_ATTEMPTS times; the table marks such a page with * and lists the one-worker figures;
- requested in this process through the Flask test client with every SQL statement it runs
  captured (a hook on the database handle): each SELECT is run again under
  `EXPLAIN (ANALYZE, BUFFERS)`, and the page's indexes, its sequential scans (a `Seq Scan on
  song` is flagged) and its dearest statement are reported;
- timed in this process, request by request: SQL, template rendering (less the SQL run from
  inside templates) and the rest (routing, the session cookie, the signed-in person's row,
  Python glue) — where a request's time goes.

The data: about 100 songs per person (one generation of two variants each), 90 % published,
spread over a year, 8 styles and categories (one or two per song), a skewed number of likes and
listens per published song (about 0.8 and 1.9 on average, in the last 30 days), titles and lyrics
drawn from a 50,000-word vocabulary with a Zipf-like law, so a word's share of the songs stays
the same as the library grows and full-text search has real selectivity: the rare word is in
about 0.04 % of the songs, the medium one in about 1 %, the common one in about half.

The pages: Discover `/` (visitor), a song page (visitor), the library (a signed-in person with
100 songs, its session cookie), the status fragment of a song being made (HX-Request), search
`/?q=` with a rare, a medium and a common word, a profile `/u/<handle>` (100 songs) and a public
playlist of 50 songs. The goals (issue "Pages that stay fast at 100,000 songs and beyond"), at
100,000 songs and 2 connections: Discover, the song page and the library p99 <= 25 ms, the status
fragment p99 <= 5 ms, search p99 <= 50 ms; from 100,000 to 1,000,000 no page's p99 grows more
than 1.5x.

After the last step, the pages are loaded side by side at the last two sizes: the database of
the step before the last was copied before growing (`CREATE DATABASE ... TEMPLATE`), a gunicorn
serves each, and every page is loaded at one size, then the other, SIDE_ROUNDS times; the growth
ratio is taken from those loads (the median p99 of the rounds whose two connections were served
by both gunicorn workers; a size none of whose rounds spread so is loaded again, up to SIDE_ROUNDS
more times, and marked ! if it never did), seconds apart, so a shared machine's speed drifting
over the minutes a step takes does not enter it.

At 100,000 songs (or the largest size measured), a mixed load: 50 connections at once, each
drawing its next page from a weighted mix (Discover, song pages, status polls, the library,
searches, profiles, playlists; `MIX_WEIGHTS`) and waiting a random 0.5-1.5 s after each answer
(`MIXED_THINK`: a person reading, about 50 requests/s in all), by bench/loadgen.py on the same
machine; goal p99 <= 250 ms and no 5xx.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from harness import ROOT, Row, Settings, free_port, median, ms, pct, say, stop, verdict, wait_for_port

from fig_web import CATEGORIES, PASSWORD, PEAKS, STYLES, check_page, load

DEFAULT_SIZES = [10_000, 100_000, 1_000_000]
QUICK_SIZES = [2_000, 5_000]
SONGS_PER_PERSON = 100
VOCABULARY_SIZE = 50_000
CONNECTIONS = 2
TARGET_SIZE, GROWTH_FROM, GROWTH_TO, GROWTH_LIMIT = 100_000, 100_000, 1_000_000, 1.5
SPREAD_ATTEMPTS = 3  # loads of a page while both connections land on one gunicorn worker (spread_load)
SIDE_ROUNDS = 2  # loads of each page at the last two sizes, one after the other, after the last step
ACCESS_FORMAT = 'served-by=%(p)s %(h)s "%(r)s" %(s)s %(b)s'  # the worker's pid first: spread_load counts them
MIXED_USERS, MIXED_GOAL = 50, 0.250  # the mixed load: people at once, and its p99 goal (no 5xx)
MIXED_THINK = (0.5, 1.5)  # seconds each person waits after a page before the next (mean 1 s)
MIX_WEIGHTS = {"discover": 30, "song page": 25, "status poll (304)": 10, "status fragment": 5, "library": 10,
               "search medium": 8,
               "search rare": 4, "search common": 2, "profile": 4, "playlist": 2}  # a crowd's clicks
GOALS = {"discover": 0.025, "song page": 0.025, "library": 0.025, "status fragment": 0.005,
         "search rare": 0.050, "search medium": 0.050, "search common": 0.050}
BIG_TABLES = {"song", "generation", "like", "listen", "song_category"}  # a sequential scan of these is flagged
# Ranks in the vocabulary (0 = most common) of the words searched: under the law used (rank =
# floor(V * u^3)), about 30 draws per song put word 0 in ~56 % of the songs, word 100 in ~1.3 %
# and word 20,000 in ~0.04 %.
SEARCH_RANKS = {"rare": 20_000, "medium": 100, "common": 0}

# The most common words first (rank 0, 1, ...): real words a song says, then made-up ones.
COMMON_WORDS = """love night heart baby time light fire dream rain home sky eyes fall run dance
away tonight never feel gone sun moon stars hold river city road wind alone song cold blue gold
soul free wild burn sweet slow fast high deep open lost found shadow ocean summer winter morning
midnight silver golden echo ghost neon velvet paper glass stone water storm thunder lightning
flower garden window mirror smile tears kiss touch voice name word story memory yesterday tomorrow
forever together hearts lights fires dreams rivers roads cities highway train station radio
static signal wave waves shore island mountain valley desert forest snow ice frost spring autumn
candle smoke ashes dust chains wings angel devil heaven paradise sunrise sunset twilight dawn dusk
echoes whisper scream silence thunderous breathe breaking broken falling rising shining burning
running dancing waiting calling holding""".split()
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"
SYLLABLES = [c + v for c in _CONSONANTS for v in _VOWELS]  # 70
REAL_WORDS = list(dict.fromkeys(COMMON_WORDS))
_SPREAD = 7919  # coprime with 70**3: rank -> syllables is one-to-one, in an order that looks random


def word(rank: int) -> str:
    """The word of this rank: a common word, else three syllables picked by the rank (six letters,
    none a prefix of another). The same arithmetic runs in SQL (`_word_sql`)."""
    if rank < len(REAL_WORDS):
        return REAL_WORDS[rank]
    x = ((rank - len(REAL_WORDS)) * _SPREAD) % len(SYLLABLES) ** 3
    n = len(SYLLABLES)
    return SYLLABLES[x % n] + SYLLABLES[(x // n) % n] + SYLLABLES[x // (n * n)]


def vocabulary(size: int = VOCABULARY_SIZE) -> list[str]:
    words = [word(r) for r in range(size)]
    assert len(set(words)) == size, "the vocabulary has a word twice"
    return words


def _word_sql(rank: str, params: dict) -> str:
    """SQL for word(rank) of an integer SQL expression (small arrays only: subscripting a long
    array of text walks it from the start)."""
    params.update(real_words=REAL_WORDS, syllables=SYLLABLES)
    n, r = len(SYLLABLES), len(REAL_WORDS)
    x = f"mod(({rank} - {r})::bigint * {_SPREAD}, {n ** 3})"
    syl = "(%(syllables)s::text[])"
    return (f"CASE WHEN {rank} < {r} THEN (%(real_words)s::text[])[{rank} + 1] ELSE "
            f"{syl}[1 + mod({x}, {n})] || {syl}[1 + mod({x} / {n}, {n})] || {syl}[1 + {x} / {n * n}] END")


# ------------------------------------------------------------------------------ growing the data
def _defaults(model, given: set[str], prefix: str) -> tuple[list[str], list[str], dict[str, Any]]:
    """(columns, placeholders, params) for every NOT NULL column of `model` that the INSERT does
    not name, filled with the field's default: a column added by a later migration still gets a
    value."""
    import peewee as pw

    cols, marks, params = [], [], {}
    for field in model._meta.sorted_fields:
        if field.column_name in given or isinstance(field, pw.AutoField) or field.null:
            continue
        if field.default is None:
            raise RuntimeError(f"{model.__name__}.{field.name}: NOT NULL without a default; the growth "
                               f"bench must fill it (bench/fig_growth.py)")
        value = field.default() if callable(field.default) else field.default
        key = f"{prefix}_{field.column_name}"
        cols.append(f'"{field.column_name}"')
        marks.append(f"%({key})s")
        params[key] = field.db_value(value)
    return cols, marks, params


def _insert(model, table: str, columns: dict[str, str], tail: str, params: dict[str, Any]) -> int:
    """INSERT INTO table (columns..., defaults...) SELECT exprs..., defaults... <tail>."""
    import models

    extra_cols, extra_marks, extra = _defaults(model, set(columns), table)
    cols = [f'"{c}"' for c in columns] + extra_cols
    exprs = list(columns.values()) + extra_marks
    sql = f'INSERT INTO "{table}" ({", ".join(cols)}) SELECT {", ".join(exprs)} {tail}'
    cur = models.db.execute_sql(sql, {**params, **extra})
    return cur.rowcount


class Library:
    """The bench database's content, grown step by step to a number of songs."""

    def __init__(self):
        self.songs = 0  # songs inserted by grow() (the status song aside)
        self.people = 0  # artists + the listener
        self.user_ids: list[int] = []  # by rank: 0 is the listener
        self.fixed: dict[str, Any] = {}
        self.words = vocabulary()

    # -- the first step: the listener, categories, the song being made, follows ------------------
    def _start(self) -> None:
        import models
        from models import Category, Generation, Song, User, new_id, utcnow

        now = utcnow()
        me = User.create(email="listener@bench.invalid", name="Bench Listener", handle="listener",
                         password_hash="!", created_at=now - dt.timedelta(days=400))
        me.set_password(PASSWORD)
        me.save()
        self.user_ids = [me.id]
        self.people = 1
        self.categories = [Category.named(name).id for name in CATEGORIES]
        gid, sid = new_id(), new_id()
        Generation.create(id=gid, user=me.id, mode="description", description="in the making", duration=60,
                          variants=1, created_at=now)
        Song.create(id=sid, generation=gid, user=me.id, variant=0, status="processing", stage="composing",
                    progress=40, duration=60.0, created_at=now, updated_at=now, started_at=now)
        self.fixed.update(email=me.email, status_song=sid, me=me.id)

    def _add_people(self, target: int) -> None:
        import models
        from models import User

        if target <= self.people:
            return
        _insert(User, "user", {
            "email": "'artist' || r || '@bench.invalid'", "name": "'Artist ' || r", "handle": "'artist' || r",
            "password_hash": "'!'", "created_at": "now() at time zone 'utc' - interval '400 days'",
        }, "FROM generate_series(%(r0)s, %(r1)s) r", {"r0": self.people, "r1": target - 1})
        rows = models.db.execute_sql(
            "SELECT id FROM \"user\" WHERE starts_with(email, 'artist') "
            "ORDER BY substring(email from 7 for position('@' in email) - 7)::int").fetchall()
        self.user_ids = [self.user_ids[0]] + [r[0] for r in rows]
        self.people = len(self.user_ids)
        assert self.people == target, (self.people, target)

    def grow(self, target: int) -> dict[str, Any]:
        """Insert songs `self.songs` .. `target - 1` (and their generations, categories, likes,
        listens; more people so each has about SONGS_PER_PERSON), then ANALYZE."""
        import models
        from models import Generation, Like, Listen, Song, SongCategory

        t0 = time.perf_counter()
        n0, n1 = self.songs, target
        counts: dict[str, int] = {}
        with models.db.atomic():
            if not self.user_ids:
                self._start()
            self._add_people(max(10, target // SONGS_PER_PERSON))  # > the most likes a song gets
            models.db.execute_sql("SELECT setseed(%s)", (0.5 - n0 / (2.0 * (n1 + 1)),))
            common = {"uids": self.user_ids, "nu": self.people, "n0": n0, "n1": n1 - 1}
            # One generation per two songs (its two variants); its owner and time are fixed by j.
            born = ("(now() at time zone 'utc') - make_interval(secs => 60 + mod(j::bigint * 2654435761, 31536000))")
            owner = "(%(uids)s::int[])[1 + mod(j, %(nu)s)]"
            counts["generations"] = _insert(Generation, "generation", {
                "id": "md5('gen' || j)", "user_id": owner, "mode": "'description'",
                "description": "'a song about ' || j", "duration": "60", "variants": "2", "created_at": born,
            }, "FROM generate_series((%(n0)s + 1) / 2, (%(n1)s + 1) / 2) j WHERE 2 * j <= %(n1)s", common)
            t_gen = time.perf_counter()
            song_params = dict(common, styles=STYLES, nstyles=len(STYLES), peaks=json.dumps(PEAKS))
            # Titles: 2 or 3 words of the first 2,000 ranks (rank floor(2000 * u^2)); lyrics: about
            # 30 words in lines of 8, from the whole vocabulary (rank floor(V * u^3)).
            title = (f"(SELECT string_agg(initcap({_word_sql('r', song_params)}), ' ') FROM "
                     f"(SELECT floor(2000 * power(random(), 2))::int AS r "
                     f"FROM generate_series(1, 2 + (mod(g, 3) = 0)::int) k) d)")
            lyrics = (f"'[verse]' || chr(10) || (SELECT string_agg({_word_sql('r', song_params)} || "
                      f"CASE WHEN mod(k, 8) = 0 THEN chr(10) ELSE ' ' END, '') FROM "
                      f"(SELECT k, floor({VOCABULARY_SIZE} * power(random(), 3))::int AS r "
                      f"FROM generate_series(1, 28 + mod(g, 5)) k) d)")
            j = "(g / 2)"
            created = born.replace("j::bigint", f"{j}::bigint")
            counts["songs"] = _insert(Song, "song", {
                "id": "md5('song' || g)", "generation_id": f"md5('gen' || {j})",
                "user_id": owner.replace("j,", f"{j},"), "variant": "mod(g, 2)", "title": title,
                "status": "'processed'", "stage": "'done'", "progress": "100",
                "tags": f"(%(styles)s::text[])[1 + mod({j}, %(nstyles)s)]", "lyrics": lyrics,
                "seed": "mod(g::bigint * 7919, 2147483647)", "guidance": "7.5", "steps": "8",
                "engine": "'offline-arranger'", "writer_engine": "'offline-writer'", "cover_engine": "'offline-cover'",
                "offline": "true", "duration": "60.0",
                "audio_key": "'users/' || g || '/master.wav'", "stream_key": "'users/' || g || '/stream.mp3'",
                "cover_key": "'users/' || g || '/cover.png'", "peaks": "%(peaks)s",
                "published": "pub", "published_at": f"CASE WHEN pub THEN {created} + interval '5 minutes' END",
                "like_count": "CASE WHEN pub THEN floor(power(random(), 8) * 10)::int ELSE 0 END",
                "listen_count": "CASE WHEN pub THEN floor(power(random(), 4) * 12)::int ELSE 0 END",
                "created_at": created, "updated_at": created, "started_at": created,
                "finished_at": f"{created} + interval '1 minute'",
            }, "FROM (SELECT g, random() < 0.9 AS pub FROM generate_series(%(n0)s, %(n1)s) g) s", song_params)
            t_song = time.perf_counter()
            cats = dict(common, cats=self.categories, nc=len(self.categories))
            counts["song_categories"] = _insert(SongCategory, "song_category", {
                "song_id": "md5('song' || g)", "category_id": "(%(cats)s::int[])[1 + mod(g / 2 + c, %(nc)s)]",
            }, "FROM generate_series(%(n0)s, %(n1)s) g, (VALUES (0), (3)) AS x(c) WHERE c = 0 OR mod(g, 4) < 2", cats)
            new = ("FROM generate_series(%(n0)s, %(n1)s) g JOIN song s ON s.id = md5('song' || g) "
                   "CROSS JOIN LATERAL generate_series(1, s.{col}) k")
            when = ("(now() at time zone 'utc') - make_interval(secs => mod(g::bigint * 40503 + k * 7777, 2592000))")
            counts["likes"] = _insert(Like, "like", {
                "user_id": "(%(uids)s::int[])[1 + mod(g * 7 + k, %(nu)s)]", "song_id": "s.id", "created_at": when,
            }, new.format(col="like_count"), common)
            counts["listens"] = _insert(Listen, "listen", {
                "song_id": "s.id", "listener": "'u:' || (%(uids)s::int[])[1 + mod(g * 11 + k, %(nu)s)]",
                "created_at": when,
            }, new.format(col="listen_count"), common)
            t_rest = time.perf_counter()
            if n0 == 0:
                self._extras()
        self.songs = target
        # The accounts' totals trigger (core.profiles) rewrote an account's row for each of its
        # songs inserted, all in the one transaction of the load: about 100 dead versions per
        # account (1,000 accounts in 1,570 pages, a sequential scan of them 1.7 ms, 17 ms at
        # 10,000), which a live database never holds: there each song is its own transaction
        # and the row is updated in place (HOT, its counters are not indexed). VACUUM FULL
        # rewrites the table as a live one is (1,000 accounts in about 20 pages).
        models.db.execute_sql('VACUUM FULL "user"')
        # VACUUM as well as ANALYZE: the visibility map is set (index-only scans work as on a
        # database that has lived a while) and autovacuum does not wake up during the load.
        models.db.execute_sql("VACUUM (ANALYZE)")
        t_end = time.perf_counter()
        return {"songs": target, "inserted": counts, "people": self.people,
                "seconds": round(t_end - t0, 1), "generations_s": round(t_gen - t0, 1),
                "songs_s": round(t_song - t_gen, 1), "links_likes_listens_s": round(t_rest - t_song, 1),
                "vacuum_analyze_s": round(t_end - t_rest, 1)}

    def _extras(self) -> None:
        """Follows, playlists, and the song page's song (first step only: they do not grow)."""
        from core import playlists
        from models import Follow, Playlist, PlaylistEntry, Song, User, utcnow

        me = self.user_ids[0]
        artist = self.user_ids[1]
        Follow.insert_many([{"follower": me, "followee": uid} for uid in self.user_ids[1:21]]).execute()
        public = [sid for (sid,) in Song.select(Song.id).where((Song.published == True) & (Song.user != me))  # noqa: E712
                  .order_by(Song.created_at.desc()).limit(200).tuples()]
        now = utcnow()
        made = []
        for owner, title, is_public, songs in ((artist, "Late night drive", True, public[:50]),
                                               (artist, "Rainy mornings", True, public[50:80]),
                                               (me, "Mine", False, public[80:100])):
            pid = Playlist.create(user=owner, title=title, public=is_public, created_at=now, updated_at=now).id
            PlaylistEntry.insert_many([{"playlist": pid, "song": sid, "position": i, "added_at": now}
                                       for i, sid in enumerate(songs)]).execute()
            made.append(pid)
        song = (Song.select(Song.id).where((Song.published == True) & (Song.user != me))  # noqa: E712
                .order_by(Song.like_count.desc(), Song.id).first())
        handle = User.get_by_id(artist).handle
        self.fixed.update(playlist=made[0], song=song.id, profile=handle)
        assert playlists.get(made[0]) is not None


def search_word_matches(words: dict[str, str]) -> dict[str, int]:
    """How many songs each searched word matches, as search reads it (the last term is a prefix)."""
    import models
    from core import search

    out = {}
    for name, word in words.items():
        out[name] = models.db.execute_sql(
            f'SELECT count(*) FROM "song" WHERE "{search.PG_COLUMN}" @@ to_tsquery(\'simple\', %s)',
            (search.tsquery([word]),)).fetchone()[0]
    return out


# ------------------------------------------------------------------------------ SQL capture
class SqlHook:
    """Wraps the database handle's execute_sql and Flask's template rendering: between start()
    and end() (in this thread) the seconds of SQL, of rendering and of the SQL run from inside
    templates are added up, and with `keep` every statement is kept with its parameters."""

    def __init__(self):
        import models

        self.db = models.db.obj
        self.original = self.db.execute_sql
        self.local = threading.local()
        hook = self

        def execute_sql(sql, params=None):
            rec = getattr(hook.local, "rec", None)
            if rec is None:
                return hook.original(sql, params)
            t0 = time.perf_counter()
            try:
                return hook.original(sql, params)
            finally:
                secs = time.perf_counter() - t0
                rec["sql_s"] += secs
                if getattr(hook.local, "rendering", 0):
                    rec["sql_in_render_s"] += secs
                if rec.get("keep") is not None:
                    rec["keep"].append((sql, params, secs))

        self.db.execute_sql = execute_sql
        import flask.templating as templating

        self.templating = templating
        self.render_original = templating._render

        def _render(*args, **kwargs):
            rec = getattr(hook.local, "rec", None)
            if rec is None:
                return hook.render_original(*args, **kwargs)
            hook.local.rendering = getattr(hook.local, "rendering", 0) + 1
            t0 = time.perf_counter()
            try:
                return hook.render_original(*args, **kwargs)
            finally:
                hook.local.rendering -= 1
                if not hook.local.rendering:
                    rec["render_s"] += time.perf_counter() - t0

        templating._render = _render

    def start(self, keep: bool = False) -> dict:
        rec = {"sql_s": 0.0, "sql_in_render_s": 0.0, "render_s": 0.0, "keep": [] if keep else None}
        self.local.rec = rec
        return rec

    def end(self) -> None:
        self.local.rec = None

    def close(self) -> None:
        self.db.execute_sql = self.original
        self.templating._render = self.render_original


def _walk(node: dict, depth: int, out: list) -> None:
    out.append((depth, node))
    for child in node.get("Plans", []) or []:
        _walk(child, depth + 1, out)


def _node_label(node: dict) -> str:
    label = node.get("Node Type", "?")
    if node.get("Index Name"):
        label += f" using {node['Index Name']}"
    if node.get("Relation Name"):
        label += f" on {node['Relation Name']}"
    rows = node.get("Actual Rows")
    loops = node.get("Actual Loops", 1)
    if rows is not None:
        label += f" (rows {rows}{f' x{loops}' if loops and loops > 1 else ''}, {node.get('Actual Total Time', 0):.2f} ms)"
    return label


def explain(sql: str, params) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of one SELECT: its time, indexes, sequential scans and plan."""
    import models

    row = models.db.execute_sql("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params).fetchone()[0]
    doc = row[0] if isinstance(row, list) else json.loads(row)[0]
    nodes: list = []
    _walk(doc["Plan"], 0, nodes)
    indexes = sorted({n["Index Name"] for _, n in nodes if n.get("Index Name")})
    seq = sorted({n.get("Relation Name", "?") for _, n in nodes if n.get("Node Type") == "Seq Scan"})
    top = doc["Plan"]
    return {"sql": sql if len(sql) <= 600 else sql[:600] + " ...", "ms": round(doc.get("Execution Time", 0.0), 3),
            "planning_ms": round(doc.get("Planning Time", 0.0), 3), "indexes": indexes, "seq_scans": seq,
            "buffers_hit": top.get("Shared Hit Blocks", 0), "buffers_read": top.get("Shared Read Blocks", 0),
            "plan": ["  " * d + _node_label(n) for d, n in nodes]}


def page_plans(captured: list) -> dict[str, Any]:
    """Every SELECT a request ran, explained; the page's summary and its dearest statement."""
    plans = []
    for sql, params, secs in captured:
        if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
            continue
        try:
            p = explain(sql, params)
        except Exception as exc:  # a statement that cannot be explained alone is reported, not fatal
            p = {"sql": sql[:600], "ms": math.nan, "error": str(exc).splitlines()[0], "indexes": [], "seq_scans": [],
                 "plan": []}
        p["request_ms"] = round(secs * 1000, 3)
        plans.append(p)
    indexes = sorted({i for p in plans for i in p["indexes"]})
    seq = sorted({t for p in plans for t in p["seq_scans"]})
    dearest = max(plans, key=lambda p: -1 if math.isnan(p["ms"]) else p["ms"]) if plans else None
    return {"statements": len(captured), "selects": len(plans),
            "explain_ms": round(sum(p["ms"] for p in plans if not math.isnan(p["ms"])), 3),
            "indexes": indexes, "seq_scans": seq, "seq_scan_song": "song" in seq,
            "seq_scans_big": [t for t in seq if t in BIG_TABLES], "main": dearest, "queries": plans}


# ------------------------------------------------------------------------------ the pages
def pages(fixed: dict[str, Any], words: dict[str, str]) -> list[dict[str, Any]]:
    """(name, path, who, extra headers, a string the page must contain)."""
    out = [
        dict(name="discover", path="/", who="visitor", headers={}, expect="data-song-id"),
        dict(name="song page", path=f"/songs/{fixed['song']}", who="visitor", headers={}, expect=fixed["song"]),
        dict(name="library", path="/library", who="listener", headers={}, expect="data-song-id"),
        dict(name="status fragment", path=f"/songs/{fixed['status_song']}/status", who="listener",
             headers={"HX-Request": "true"}, expect=f'data-song-id="{fixed["status_song"]}"'),
    ]
    for kind in ("rare", "medium", "common"):
        out.append(dict(name=f"search {kind}", path=f"/?q={words[kind]}", who="visitor", headers={}, expect=""))
    out += [dict(name="profile", path=f"/u/{fixed['profile']}", who="visitor", headers={}, expect="data-song-id"),
            dict(name="playlist", path=f"/playlists/{fixed['playlist']}", who="visitor", headers={},
                 expect="data-song-id")]
    return out


def mixed_load(base: str, plist: list[dict], cookie: str, seconds: int, log_dir: Path,
               users: int = MIXED_USERS) -> dict[str, Any]:
    """`users` connections at once, each drawing its next page from MIX_WEIGHTS (signed-in pages
    with the listener's cookie), by bench/loadgen.py in its own process on the same machine."""
    mix = [{"name": p["name"], "path": p["path"], "weight": MIX_WEIGHTS.get(p["name"], 1),
            "headers": dict(p["headers"], **({"Cookie": cookie} if p["who"] == "listener" else {}))} for p in plist]
    spec = log_dir / "mix.json"
    spec.write_text(json.dumps(mix))
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "loadgen.py"), base + "/", "--mix", str(spec),
           "--connections", str(users), "--duration", str(seconds), "--think", ",".join(map(str, MIXED_THINK))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr or out.stdout}")
    got = json.loads(out.stdout)
    got["users"], got["think"] = users, list(MIXED_THINK)
    return got


def revalidated_poll(client, status_page: dict) -> dict[str, Any]:
    """The status fragment as a browser polls it after its first answer: with the card's ETag in
    If-None-Match (the browser's cache revalidates the HTMX request), answered 304 unchanged."""
    resp = client.get(status_page["path"], headers=status_page["headers"])
    etag = resp.headers.get("ETag")
    if resp.status_code != 200 or not etag:
        raise RuntimeError(f"{status_page['path']}: no ETag on the status card ({resp.status_code})")
    return dict(status_page, name="status poll (304)", headers=dict(status_page["headers"], **{"If-None-Match": etag}),
                expect="", status=304)


def check_not_modified(url: str, headers: dict[str, str], times: int = 20) -> None:
    from urllib.error import HTTPError
    from urllib.request import ProxyHandler, Request, build_opener

    opener = build_opener(ProxyHandler({}))
    for _ in range(times):
        try:
            resp = opener.open(Request(url, headers=headers), timeout=30)
            code = resp.status
        except HTTPError as exc:
            code = exc.code
        if code != 304:
            raise RuntimeError(f"{url} did not answer 304 Not Modified to its own ETag ({code})")


def shown_path(page: dict) -> str:
    return {"song page": "/songs/<id>", "status fragment": "/songs/<id>/status",
            "status poll (304)": "/songs/<id>/status", "playlist": "/playlists/<id>"}.get(
        page["name"], page["path"])


def login_client(app, email: str):
    """A test client signed in through the real form (the flash of the welcome is consumed)."""
    client = app.test_client()
    html = client.get("/auth/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
    assert token, "the login page has no CSRF token"
    resp = client.post("/auth/login", data={"email": email, "password": PASSWORD, "csrf_token": token.group(1)},
                       follow_redirects=True)
    assert resp.status_code == 200, resp.status_code
    cookie = client.get_cookie("tunesmith_session")
    assert cookie is not None, "login did not set a session cookie"
    return client, f"tunesmith_session={cookie.value}"


def in_process(app, hook: SqlHook, clients: dict, page: dict, repeats: int, budget_s: float) -> dict[str, Any]:
    """One request captured and explained, then up to `repeats` timed ones (at most `budget_s`):
    total, SQL, template rendering (less its SQL) and the rest, per request, in this process."""
    client = clients[page["who"]]
    for _ in range(2):
        resp = client.get(page["path"], headers=page["headers"])
        if resp.status_code != page.get("status", 200):
            raise RuntimeError(f"{page['path']}: {resp.status_code} in process")
    rec = hook.start(keep=True)
    try:
        client.get(page["path"], headers=page["headers"])
    finally:
        hook.end()
    captured = rec["keep"]
    import models

    with models.db.connection_context():
        plans = page_plans(captured)
    totals, sqls, renders, rests = [], [], [], []
    began = time.perf_counter()
    while len(totals) < repeats and (time.perf_counter() - began < budget_s or len(totals) < 3):
        rec = hook.start()
        t0 = time.perf_counter()
        try:
            client.get(page["path"], headers=page["headers"])
        finally:
            total = time.perf_counter() - t0
            hook.end()
        render = rec["render_s"] - rec["sql_in_render_s"]
        totals.append(total)
        sqls.append(rec["sql_s"])
        renders.append(render)
        rests.append(total - rec["sql_s"] - render)
    return {"requests": len(totals), "total_median": median(totals), "total_p99": pct(totals, 99),
            "sql_median": median(sqls), "render_median": median(renders), "rest_median": median(rests),
            "plans": plans}


def profile(clients: dict, page: dict, requests: int = 200, budget_s: float = 10.0, top: int = 12) -> list[dict]:
    """cProfile of up to `requests` requests of a page (at most `budget_s`) through the test
    client: the functions with the most time of their own, and where they are."""
    import cProfile
    import pstats

    client = clients[page["who"]]
    prof = cProfile.Profile()
    began, n = time.perf_counter(), 0
    prof.enable()
    try:
        while n < requests and (time.perf_counter() - began < budget_s or n < 5):
            client.get(page["path"], headers=page["headers"])
            n += 1
    finally:
        prof.disable()
    stats = pstats.Stats(prof)
    rows = []
    for (filename, line, func), (cc, nc, tt, ct, _) in stats.stats.items():
        where = filename
        for marker in ("site-packages/", str(ROOT) + "/"):
            if marker in where:
                where = where.split(marker, 1)[1]
        rows.append({"function": f"{where}:{line}({func})", "calls": nc, "own_ms_per_request": tt * 1000 / n,
                     "cumulative_ms_per_request": ct * 1000 / n})
    rows.sort(key=lambda r: -r["own_ms_per_request"])
    return rows[:top]


# ------------------------------------------------------------------------------ the figure
def _gunicorn(settings: Settings, log_dir: Path, size: int):
    port = free_port()
    log = log_dir / f"gunicorn-growth-{size}.log"
    cmd = [sys.executable, "-m", "gunicorn", "app:create_app()", "--bind", f"127.0.0.1:{port}",
           "--workers", "2", "--threads", "4", "--graceful-timeout", "30", "--access-logfile", "-",
           "--access-logformat", ACCESS_FORMAT, "--forwarded-allow-ips", "127.0.0.1"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=settings.env(LOG_LEVEL="INFO"), stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=30.0, proc=proc)
    except Exception:
        stop(proc)
        raise
    return proc, f"http://127.0.0.1:{port}", log


def served_by(log: Path, since: int) -> list[int]:
    """Requests per gunicorn worker in the access log after byte `since`, most first."""
    with open(log, "rb") as fh:
        fh.seek(since)
        pids = re.findall(rb"^served-by=<?(\d+)>? ", fh.read(), re.M)  # gunicorn writes <pid>
    return sorted(Counter(pids).values(), reverse=True)


def spread_load(url: str, headers: dict[str, str], seconds: int, tool: str, log: Path) -> dict[str, Any]:
    """`load()` at CONNECTIONS connections, again (new connections) while one gunicorn worker
    served them all, at most SPREAD_ATTEMPTS times. Which worker accepts a keep-alive connection
    is a race: both connections on one worker share its interpreter lock and its requests take
    turns (p50 about 1.7x), which is the race's outcome, not the page's cost. The result says how
    each attempt spread (`workers`: requests per worker) and keeps the one-worker attempts."""
    spread = min(CONNECTIONS, 2)  # workers the connections can be on
    attempts = []
    for _ in range(SPREAD_ATTEMPTS):
        time.sleep(0.2)  # the last attempt's access lines written
        since = log.stat().st_size
        r = load(url, CONNECTIONS, seconds, headers, tool)
        time.sleep(0.2)
        r["workers"] = served_by(log, since)
        attempts.append(r)
        if len(r["workers"]) >= spread:
            break
    out = dict(attempts[-1])
    out["one_worker"] = [{k: a[k] for k in ("p50", "p99", "rps", "workers")} for a in attempts
                         if len(a["workers"]) < spread]
    return out


def _pg_bytes() -> int:
    import models

    return int(models.db.execute_sql("SELECT pg_database_size(current_database())").fetchone()[0])


def _keep_copy(settings: Settings, size: int) -> tuple[Settings, str]:
    """A copy of the bench database as it is now (`CREATE DATABASE ... TEMPLATE`), to be loaded
    side by side with the grown one after the last step; (its settings, its name)."""
    import models
    from harness import _pg_admin, _pg_url

    name = settings.database_url.rsplit("/", 1)[-1].split("?")[0]
    copy = f"{name}_at_{size}"
    if not models.db.is_closed():
        models.db.close()
    getattr(models.db.obj, "close_all", lambda: None)()  # a template has no other session
    _pg_admin(f'DROP DATABASE IF EXISTS "{copy}"')
    _pg_admin(f'CREATE DATABASE "{copy}" TEMPLATE "{name}"')
    return dataclasses.replace(settings, database_url=_pg_url(copy)), copy


def _drop_copy(copy: str) -> None:
    from harness import _pg_admin

    try:
        _pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{copy}'")
        _pg_admin(f'DROP DATABASE IF EXISTS "{copy}"')
    except Exception as exc:  # the next run drops it by name
        say(f"  (could not drop database {copy}: {exc})")


def _headers(page: dict, cookie: str) -> dict[str, str]:
    """The page's request headers, with the listener's session cookie where the listener asks."""
    return dict(page["headers"], **({"Cookie": cookie} if page["who"] == "listener" else {}))


def _warm(base: str, page: dict, headers: dict[str, str], warmup: int) -> None:
    """`warmup` requests of the page, each checked (a 304 for the revalidated poll)."""
    if page.get("status", 200) == 200:
        check_page(base + page["path"], headers, page["expect"], warmup)
    else:
        check_not_modified(base + page["path"], headers, warmup)


def _spread(load: dict) -> bool:
    """Whether a load's connections were served by both gunicorn workers (`spread_load`)."""
    return len(load["workers"]) >= min(CONNECTIONS, 2)


def _shown(load: dict) -> str:
    return ms(load["p99"]) + ("" if _spread(load) else " (one worker)")


def _side_row(rounds: list[dict]) -> dict[str, Any]:
    """A page's side-by-side figures at one size: the median p50 and p99 of its rounds that
    spread over both workers (a one-worker round measures the accept race, not the page: its
    p50 about 2x), of every round where none did (`one_worker_only`)."""
    kept = [r for r in rounds if _spread(r)] or rounds
    return {"p50": median([r["p50"] for r in kept]), "p99": median([r["p99"] for r in kept]),
            "one_worker_only": not any(_spread(r) for r in rounds),
            "rounds": [{k: r[k] for k in ("p50", "p99", "rps", "workers", "errors")} for r in rounds]}


def side_by_side(sized: dict[int, Settings], plist: list[dict], cookie: str, log_dir: Path, seconds: int,
                 tool: str, warmup: int) -> dict[str, Any]:
    """Each page loaded at both sizes one after the other, SIDE_ROUNDS times (a gunicorn per
    database, both started): on a shared machine whose speed drifts over the minutes a step
    takes, the ratio of two loads taken seconds apart is the library's, not the machine's. Per
    page and size: the median p50 and p99 of its rounds."""
    sizes = sorted(sized)
    servers, procs = {}, []
    try:
        for size in sizes:
            proc, base, log = _gunicorn(sized[size], log_dir, f"{size}-side")
            procs.append(proc)
            servers[size] = (base, log)
        for page in plist:
            for base, _ in servers.values():
                _warm(base, page, _headers(page, cookie), warmup)
        out: dict[str, Any] = {"sizes": sizes, "rounds": SIDE_ROUNDS, "pages": {}}
        for page in plist:
            headers = _headers(page, cookie)
            got: dict[int, list[dict]] = {size: [] for size in sizes}
            for _ in range(SIDE_ROUNDS):
                for size in sizes:
                    base, log = servers[size]
                    got[size].append(spread_load(base + page["path"], headers, seconds, tool, log))
            for _ in range(SIDE_ROUNDS):  # a size none of whose rounds spread is loaded again
                for size in sizes:
                    if not any(_spread(r) for r in got[size]):
                        base, log = servers[size]
                        got[size].append(spread_load(base + page["path"], headers, seconds, tool, log))
            row = {size: _side_row(rs) for size, rs in got.items()}
            out["pages"][page["name"]] = row
            a, b = sizes[0], sizes[-1]
            say(f"    {page['name']:<16} side by side: p99 {a:,} " + " / ".join(_shown(r) for r in got[a])
                + f", {b:,} " + " / ".join(_shown(r) for r in got[b])
                + (f"  -> {row[b]['p99'] / row[a]['p99']:.2f}x" if row[a]["p99"] else ""))
        return out
    finally:
        for proc in procs:
            stop(proc)


def growth(settings: Settings, log_dir: Path, sizes: list[int], seconds: int, tool: str, warmup: int = 20,
           repeats: int = 100, budget_s: float = 5.0) -> tuple[list[Row], dict]:
    import models
    from app import create_app
    from core import feed_rank

    sizes = sorted(set(sizes))
    say(f"figure 9: pages as the library grows: {' -> '.join(f'{n:,}' for n in sizes)} songs "
        f"({tool}, {CONNECTIONS} connections, {seconds} s per page)")
    app = create_app(settings.config())  # in this process: the captured SQL and the per-request split
    hook = SqlHook()
    library = Library()
    words = {kind: library.words[rank] for kind, rank in SEARCH_RANKS.items()}
    data: dict[str, Any] = {"tool": tool, "connections": CONNECTIONS, "seconds_per_page": seconds,
                            "search_words": words, "steps": [], "goals": GOALS, "growth_limit": GROWTH_LIMIT}
    cookie = None
    clients: dict[str, Any] = {}
    kept: dict[int, Settings] = {}  # the step before the last, copied, to load side by side with the last
    copies: list[str] = []
    try:
        for size in sizes:
            free = shutil.disk_usage("/").free
            if data["steps"]:
                last = data["steps"][-1]
                projected = last["database_bytes"] * size / last["songs"]
                if projected > free * 0.6:
                    say(f"  {size:,} songs skipped: the database would take about {projected / 2**30:.1f} GiB "
                        f"of {free / 2**30:.1f} GiB free")
                    data.setdefault("skipped", []).append({"songs": size, "why": "disk"})
                    continue
            if size == sizes[-1] and data["steps"]:
                kept_settings, copy = _keep_copy(settings, library.songs)
                copies.append(copy)
                kept[library.songs] = kept_settings
                say(f"  kept a copy of the {library.songs:,}-song database ({copy}), loaded side by side at the end")
            say(f"  growing to {size:,} songs (inserting {size - library.songs:,})")
            with models.db.connection_context():
                step = library.grow(size)
                t0 = time.perf_counter()
                ranked = feed_rank.refresh(tier_builds=100)  # and every search tier the feed calls for
                step["feed_refresh_s"] = round(time.perf_counter() - t0, 2)
                step["feed_refresh"] = ranked.summary()
                step["search_tiers"] = ranked.tiers
                step["database_bytes"] = _pg_bytes()
                step["search_matches"] = search_word_matches(words)
            say(f"  grown in {step['seconds']} s (generations {step['generations_s']} s, songs {step['songs_s']} s, "
                f"categories/likes/listens {step['links_likes_listens_s']} s, VACUUM ANALYZE {step['vacuum_analyze_s']} s); "
                f"feed refresh {step['feed_refresh_s']} s; database {step['database_bytes'] / 2**20:,.0f} MiB; "
                f"search matches {step['search_matches']}")
            if not clients:
                clients["visitor"] = app.test_client()
                clients["listener"], cookie = login_client(app, library.fixed["email"])
            step["pages"] = {}
            plist = pages(library.fixed, words)
            plist.append(revalidated_poll(clients["listener"], next(p for p in plist if p["name"] == "status fragment")))
            proc, base, access_log = _gunicorn(settings, log_dir, size)
            try:
                for page in plist:
                    _warm(base, page, _headers(page, cookie), warmup)
                for page in plist:
                    headers = _headers(page, cookie)
                    r = spread_load(base + page["path"], headers, seconds, tool, access_log)
                    step["pages"][page["name"]] = {"path": shown_path(page), "load": r}
                    one = "".join(f"  (one worker: p50 {ms(a['p50'])} p99 {ms(a['p99'])}, again)" for a in r["one_worker"])
                    say(f"    {page['name']:<16} {r['rps']:7.0f} req/s  p50 {ms(r['p50']):>9}  p99 {ms(r['p99']):>9}"
                        f"  workers {r['workers']}" + (f"  {r['errors']} errors" if r["errors"] else "") + one)
                if size == TARGET_SIZE or size == sizes[-1]:
                    m = step["mixed"] = mixed_load(base, plist, cookie, max(seconds * 3, 10), log_dir)
                    say(f"    mixed, {m['users']} users {m['rps']:5.0f} req/s  p50 {ms(m['p50']):>9}  "
                        f"p99 {ms(m['p99']):>9}  {m['server_errors']} 5xx, {m['errors']} errors")
            finally:
                stop(proc)
            for page in plist:
                got = in_process(app, hook, clients, page, repeats, budget_s)
                step["pages"][page["name"]]["in_process"] = got
                goal = GOALS.get(page["name"])
                if goal is not None and step["pages"][page["name"]]["load"]["p99"] > goal:
                    got["profile"] = profile(clients, page, requests=repeats * 2, budget_s=budget_s * 2)
                plans = got["plans"]
                flag = "  SEQ SCAN ON song" if plans["seq_scan_song"] else ""
                say(f"    {page['name']:<16} in process {ms(got['total_median'])}: SQL {ms(got['sql_median'])} "
                    f"({plans['statements']} statements), render {ms(got['render_median'])}, "
                    f"rest {ms(got['rest_median'])}{flag}")
            data["steps"].append(step)
        if kept and data["steps"]:
            last = data["steps"][-1]["songs"]
            say(f"  side by side: {' and '.join(f'{n:,}' for n in sorted([*kept, last]))} songs, "
                f"{SIDE_ROUNDS} rounds of each page")
            data["side_by_side"] = side_by_side({**kept, last: settings}, plist, cookie, log_dir, seconds, tool,
                                                warmup)
    finally:
        hook.close()
        for copy in copies:
            _drop_copy(copy)
    return summarise(data)


# ------------------------------------------------------------------------------ the report
def _ratio(steps: list[dict], name: str, a: int, b: int, side: dict | None = None) -> float | None:
    """p99 at b / p99 at a: side by side where both were loaded so (`side_by_side`), else the steps'."""
    if side and side.get("sizes") == [a, b] and name in side["pages"]:
        pa, pb = side["pages"][name][a]["p99"], side["pages"][name][b]["p99"]
        return pb / pa if pa else None
    by = {s["songs"]: s for s in steps}
    if a not in by or b not in by:
        return None
    pa, pb = by[a]["pages"][name]["load"]["p99"], by[b]["pages"][name]["load"]["p99"]
    return pb / pa if pa else None


def summarise(data: dict) -> tuple[list[Row], dict]:
    steps = data["steps"]
    if not steps:
        raise RuntimeError("no size was measured")
    sizes = [s["songs"] for s in steps]
    names = list(steps[0]["pages"])
    a, b = (GROWTH_FROM, GROWTH_TO) if {GROWTH_FROM, GROWTH_TO} <= set(sizes) else (
        (sizes[-2], sizes[-1]) if len(sizes) > 1 else (sizes[-1], sizes[-1]))
    judged_growth = {GROWTH_FROM, GROWTH_TO} <= set(sizes)
    target = next((s for s in steps if s["songs"] == TARGET_SIZE), None)
    side = data.get("side_by_side") if (data.get("side_by_side") or {}).get("sizes") == [a, b] else None
    heads = (["page"] + [f"{n:,}: p50 / p99" for n in sizes]
             + ([f"side by side p99 {a:,} / {b:,}"] if side else []) + [f"p99 {b:,}/{a:,}"])
    lines, rows = [], []
    data["summary"] = {}
    for name in names:
        cells = [f"{name} {steps[0]['pages'][name]['path']}"]
        for s in steps:
            r = s["pages"][name]["load"]
            cell = f"{r['p50'] * 1000:.1f} / {r['p99'] * 1000:.1f} ms"
            if r.get("one_worker"):
                cell += "*"
            if r["errors"]:
                cell += f" ({r['errors']} err)"
            cells.append(cell)
        if side:
            sp = side["pages"].get(name)
            cells.append(" / ".join(f"{sp[n]['p99'] * 1000:.1f}" + ("!" if sp[n].get("one_worker_only") else "")
                                    for n in (a, b)) + " ms" if sp else "n/a")
        ratio = _ratio(steps, name, a, b, data.get("side_by_side"))
        cells.append("n/a" if ratio is None else f"{ratio:.2f}x")
        lines.append(cells)
        goal = GOALS.get(name)
        at = target["pages"][name]["load"] if target else None
        meets = None if at is None or goal is None else (at["p99"] <= goal and not at["errors"])
        grows_ok = None if ratio is None or not judged_growth else ratio <= GROWTH_LIMIT
        ok = None if meets is None and grows_ok is None else (meets is not False and grows_ok is not False)
        data["summary"][name] = {"p99": {s["songs"]: s["pages"][name]["load"]["p99"] for s in steps},
                                 "p50": {s["songs"]: s["pages"][name]["load"]["p50"] for s in steps},
                                 "rps": {s["songs"]: s["pages"][name]["load"]["rps"] for s in steps},
                                 "errors": {s["songs"]: s["pages"][name]["load"]["errors"] for s in steps},
                                 "ratio": ratio, "ratio_sizes": [a, b], "goal_p99": goal,
                                 "meets_goal": meets, "growth_ok": grows_ok}
        value = " | ".join(cells[1:-1]) + (f" | p99 {b:,}/{a:,} {cells[-1]}" if ratio is not None else "")
        goal_text = (f"p99 <= {goal * 1000:.0f} ms at {TARGET_SIZE:,}" if goal else "") + (
            f"; <= {GROWTH_LIMIT}x" if judged_growth else "")
        rows.append(Row("9", f"{cells[0]}, p50 / p99 at {' / '.join(f'{n:,}' for n in sizes)} songs", value,
                        goal_text.strip("; "), verdict(ok)))
    for s in steps:
        m = s.get("mixed")
        if not m:
            continue
        ok = m["p99"] <= MIXED_GOAL and not m["server_errors"] and not m["errors"]
        data["summary"][f"mixed {s['songs']}"] = {"p99": m["p99"], "p50": m["p50"], "rps": m["rps"],
                                                 "server_errors": m["server_errors"], "errors": m["errors"],
                                                 "goal_p99": MIXED_GOAL, "meets_goal": ok}
        rows.append(Row("9", f"mixed load, {m['users']} people ({m['think'][0]:g}-{m['think'][1]:g} s between "
                             f"pages) at {s['songs']:,} songs (generator on the same machine)", f"p50 {m['p50'] * 1000:.1f} / p99 {m['p99'] * 1000:.1f} ms, "
                             f"{m['rps']:.0f} req/s, {m['server_errors']} 5xx, {m['errors']} errors",
                        f"p99 <= {MIXED_GOAL * 1000:.0f} ms, no 5xx", verdict(ok)))
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(heads)]
    out = [" | ".join(h.ljust(w) for h, w in zip(heads, widths)).rstrip()]
    out.append("-" * len(out[0]))
    out += [" | ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in lines]
    spread = [(s["songs"], name, a) for s in steps for name in names
              for a in s["pages"][name]["load"].get("one_worker", [])]
    if spread:
        out.append("* measured again: both connections of an earlier attempt went to one gunicorn worker ("
                   + "; ".join(f"{name} @ {n:,}: p50 {a['p50'] * 1000:.1f} / p99 {a['p99'] * 1000:.1f} ms"
                               for n, name, a in spread) + ")")
    if side and any(sp[n].get("one_worker_only") for sp in side["pages"].values() for n in (a, b)):
        out.append("! side by side: every round of this size went to one gunicorn worker (its figure is theirs)")
    for s in steps:
        m = s.get("mixed")
        if m:
            out.append("")
            out.append(f"mixed load at {s['songs']:,} songs, {m['users']} people ({m['think'][0]:g}-{m['think'][1]:g} s "
                       f"between pages), {m['seconds']:.0f} s: "
                       f"{m['requests']} requests, {m['rps']:.0f} req/s, p50 {m['p50'] * 1000:.1f} ms, "
                       f"p99 {m['p99'] * 1000:.1f} ms, {m['server_errors']} 5xx, {m['errors']} errors")
            out.append("  " + "; ".join(f"{n} {v['requests']} x p99 {v['p99'] * 1000:.0f} ms"
                                        for n, v in m.get("pages", {}).items()))
    out.append("")
    out.append("plans (EXPLAIN (ANALYZE, BUFFERS) of every SELECT a request runs; the dearest one shown):")
    for name in names:
        for s in steps:
            p = s["pages"][name]["in_process"]["plans"]
            ip = s["pages"][name]["in_process"]
            main = p["main"] or {}
            flag = " ** SEQ SCAN ON song **" if p["seq_scan_song"] else ""
            out.append(f"  {name} @ {s['songs']:,}: {p['selects']} SELECTs, {p['explain_ms']:.1f} ms in EXPLAIN; "
                       f"in process {ip['total_median'] * 1000:.1f} ms = SQL {ip['sql_median'] * 1000:.1f} + "
                       f"render {ip['render_median'] * 1000:.1f} + rest {ip['rest_median'] * 1000:.1f}{flag}")
            out.append(f"      indexes: {', '.join(p['indexes']) or 'none'}; seq scans: "
                       f"{', '.join(p['seq_scans']) or 'none'}")
            if main:
                out.append(f"      dearest ({main['ms']:.2f} ms): " + " > ".join(x.strip() for x in main["plan"][:6]))
            if ip.get("profile"):
                out.append("      profile (own ms per request): " + "; ".join(
                    f"{r['function'].rsplit('/', 1)[-1]} {r['own_ms_per_request']:.2f}" for r in ip["profile"][:5]))
    data["table"] = "\n".join(out)
    data["sizes"] = sizes
    return rows, data
