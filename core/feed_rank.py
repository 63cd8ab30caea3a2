"""Precomputed public rankings: Trending, the category sections and the category counts.

    refresh(now)            recompute them all (the aggregates) and store them in one transaction
    maybe_refresh(config)   refresh when the stored ones are FEED_REFRESH_SECONDS old (or missing);
                            the worker's reconciler calls it on every pass, so across the fleet
                            the aggregates run about once per FEED_REFRESH_SECONDS
    read(kinds)             the stored rankings of these kinds: one query on (kind, position)
    top_categories(limit)   the categories with the most public songs, by their stored count

Pages never run the aggregates: Discover reads the rows (`read`) and then the songs they name
through `Song.publicly_visible()`, so a song unpublished, hidden, deleted or whose account was
suspended leaves the feed at once, and the rankings themselves are at most FEED_REFRESH_SECONDS
(plus one reconciler interval) old. Before the first refresh (a fresh install, the worker not
started yet) there is no row of kind 'refresh': the first Discover request then refreshes once,
inline, and stores the result (`app.main.feed`).

Every refresh is a full recompute: two aggregates (Trending's window of likes and listens, the
count per category) and one short indexed query per section: about half a second on PostgreSQL
at 100,000 songs with 100,000 likes and listens in the window, once a minute, on the worker. It
is not incremental on purpose: Trending decays with time, so its order changes even when
nothing new happened.

Trending: each like and each listen in the last TRENDING_WINDOW adds its weight divided by
(1 + age/TRENDING_HALF_LIFE)², so recent activity counts most and old activity fades out;
songs published inside the window with no activity yet follow, newest first. Rankings keep a
few more songs than a page shows, so one that leaves the feed between refreshes is replaced.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field

import peewee as pw

import models
from core import search
from core.search import Windows
from models import (Category, FeedRank, Like, Listen, Song, SongCategory, User, is_sqlite, utcnow,
                    write_transaction)

log = logging.getLogger("tunesmith.feed")

TRENDING_WINDOW = dt.timedelta(days=7)
TRENDING_HALF_LIFE_HOURS = 24.0
LIKE_WEIGHT = 3.0
LISTEN_WEIGHT = 1.0
TRENDING_SIZE = 8  # shown
SECTION_CATEGORIES = 5
SECTION_SIZE = 8  # shown per category
SPARE = 8  # stored beyond what is shown, to fill in for songs that leave between refreshes

REFRESH = "refresh"  # the one row (no song) that says when the rankings were computed
TRENDING = "trending"
SEARCH_WINDOWS = "search-windows"  # (k, the k-th newest public song), k = WINDOW_START * WINDOW_STEP**i; last: (all, none)
WINDOW_START, WINDOW_STEP = 10_000, 2 ** 0.5


def section_kind(slug: str) -> str:
    return f"category:{slug}"


@dataclass
class Result:
    computed_at: dt.datetime
    trending: list[tuple[str, float]] = field(default_factory=list)  # (song id, score), best first
    counts: dict[int, int] = field(default_factory=dict)  # category id -> public songs
    sections: dict[str, list[str]] = field(default_factory=dict)  # category slug -> song ids, newest first
    windows: list[tuple[int, str]] = field(default_factory=list)  # (k, the k-th newest public song's id)
    public: int = 0  # published songs (search's windows count these)
    seconds: float = 0.0
    stored: bool = False
    tiers: list[str] = field(default_factory=list)  # what `core.search.maintain_tiers` did

    def summary(self) -> str:
        cats = f"{len(self.counts)} categor{'y' if len(self.counts) == 1 else 'ies'}"
        return (f"trending {len(self.trending)} song(s), {cats} with songs, {len(self.sections)} section(s); "
                f"computed in {self.seconds * 1000:.0f} ms"
                + (f"; search tiers: {', '.join(self.tiers)}" if self.tiers else "")
                + ("" if self.stored else " (not stored: another refresh stored its own at the same time)"))


# -- the aggregates ---------------------------------------------------------------------------
def _age_hours(column, now: dt.datetime):
    if is_sqlite():
        return (pw.fn.julianday(now.strftime("%Y-%m-%d %H:%M:%S.%f")) - pw.fn.julianday(column)) * 24.0
    return pw.fn.date_part("epoch", pw.Value(now, converter=False) - column) / 3600.0


def _decayed(weight: float, column, now: dt.datetime):
    x = 1.0 + _age_hours(column, now) / TRENDING_HALF_LIFE_HOURS
    return pw.Value(weight, converter=False) / (x * x)


def trending(limit: int, now: dt.datetime) -> list[tuple[str, float]]:
    """The most active public songs of the window, best first, with their scores."""
    since = now - TRENDING_WINDOW
    likes = Like.select(Like.song.alias("sid"), _decayed(LIKE_WEIGHT, Like.created_at, now).alias("w")).where(
        Like.created_at > since)
    listens = Listen.select(Listen.song.alias("sid"), _decayed(LISTEN_WEIGHT, Listen.created_at, now).alias("w")
                            ).where(Listen.created_at > since)
    events = (likes + listens).alias("ev")  # UNION ALL
    scores = (events.select_from(events.c.sid.alias("sid"), pw.fn.SUM(events.c.w).alias("score"))
              .group_by(events.c.sid).alias("sc"))
    score = pw.fn.COALESCE(scores.c.score, 0)
    query = (Song.select(Song.id, score.alias("trend_score")).join(User).switch(Song)
             .join(scores, pw.JOIN.LEFT_OUTER, on=(scores.c.sid == Song.id))
             .where(Song.publicly_visible() & (scores.c.score.is_null(False) | (Song.published_at > since)))
             .order_by(score.desc(), Song.published_at.desc(), Song.id.desc())
             .limit(limit))
    return [(sid, float(s or 0.0)) for sid, s in query.tuples()]


def category_counts() -> list[tuple[int, str, int]]:
    """(category id, slug, public songs) of every category that has some, most songs first
    (then by name)."""
    n = pw.fn.COUNT(SongCategory.id)
    query = (Category.select(Category.id, Category.slug, n.alias("n")).join(SongCategory).join(Song).join(User)
             .where(Song.publicly_visible())
             .group_by(Category.id).order_by(n.desc(), Category.name))
    return [(cid, slug, int(count)) for cid, slug, count in query.tuples()]


def newest_per_category(category_ids: list[int], per: int) -> dict[int, list[str]]:
    """The newest `per` public songs of each category: one short query per category, each
    walking the Newest index (song (published, status, published_at, id)) until it has `per`."""
    out: dict[int, list[str]] = {}
    for cid in category_ids:
        members = SongCategory.select(SongCategory.song).where(SongCategory.category == cid)
        query = (Song.select(Song.id).join(User).where(Song.publicly_visible() & Song.id.in_(members))
                 .order_by(Song.published_at.desc(), Song.id.desc()).limit(per))
        out[cid] = [sid for (sid,) in query.tuples()]
    return out


def search_windows(start: int | None = None, step: float | None = None) -> tuple[int, list[tuple[int, str]]]:
    """(published songs, [(k, the id of the k-th newest)] for k = start, start * step, start *
    step**2, ... short of them all): where search's windows begin (`core.search.Windows`). Read from the
    Newest index alone (published, processed; hidden songs and suspended accounts are counted,
    which a window's size may be off by): two index-only scans."""
    start, step = start or WINDOW_START, step or WINDOW_STEP
    published = Song.published & (Song.status == "processed")
    total = Song.select().where(published).count()
    ks, i = [], 0
    while round(start * step ** i) < total:
        ks.append(round(start * step ** i))
        i += 1
    if not ks:
        return total, []
    order = pw.fn.row_number().over(order_by=[Song.published_at.desc(), Song.id.desc()])
    numbered = Song.select(Song.id, order.alias("k")).where(published).alias("numbered")
    rows = (pw.Select(from_list=[numbered], columns=[numbered.c.k, numbered.c.id])
            .where(numbered.c.k.in_(ks)).order_by(numbered.c.k).bind(models.db).tuples())
    return total, [(int(k), sid) for k, sid in rows]


def compute(now: dt.datetime | None = None) -> Result:
    """Every ranking, computed now (nothing is written)."""
    t0 = time.perf_counter()
    now = now or utcnow()
    result = Result(computed_at=now)
    result.trending = trending(TRENDING_SIZE + SPARE, now)
    counted = category_counts()
    result.counts = {cid: n for cid, _, n in counted}
    top = counted[:SECTION_CATEGORIES]
    newest = newest_per_category([cid for cid, _, _ in top], SECTION_SIZE + SPARE)
    result.sections = {slug: newest[cid] for cid, slug, _ in top if newest[cid]}
    result.public, result.windows = search_windows()
    result.seconds = time.perf_counter() - t0
    return result


# -- storing and reading ----------------------------------------------------------------------
ADVISORY_KEY = 0x7475_6E65_6665_6564 & 0x7FFF_FFFF_FFFF_FFFF  # "tunefeed": PostgreSQL's lock for store()

def store(result: Result) -> bool:
    """Replace the stored rankings and counts with `result`, in one transaction. False when a
    concurrent refresh stored its own first (the unique (kind, position) index refuses the second)."""
    at = result.computed_at
    rows = [dict(kind=REFRESH, position=0, song=None, score=result.seconds, computed_at=at)]  # score: seconds taken
    rows += [dict(kind=TRENDING, position=i, song=sid, score=score, computed_at=at)
             for i, (sid, score) in enumerate(result.trending)]
    for slug, ids in result.sections.items():
        rows += [dict(kind=section_kind(slug), position=i, song=sid, score=0.0, computed_at=at)
                 for i, sid in enumerate(ids)]
    rows += [dict(kind=SEARCH_WINDOWS, position=i, song=sid, score=k, computed_at=at)
             for i, (k, sid) in enumerate(result.windows)]
    rows.append(dict(kind=SEARCH_WINDOWS, position=len(result.windows), song=None, score=result.public,
                     computed_at=at))
    try:
        with write_transaction():
            if not is_sqlite():
                # One refresher at a time, and never waiting on a lock: a worker stopped (SIGSTOP,
                # a stuck disk) inside this transaction must not stall the rest of the fleet's
                # reconciler passes behind it. The loser skips; a lock wait over 3 s fails.
                models.db.execute_sql("SET LOCAL lock_timeout = '3s'")
                if not models.db.execute_sql("SELECT pg_try_advisory_xact_lock(%s)", (ADVISORY_KEY,)).fetchone()[0]:
                    return False
            FeedRank.delete().execute()
            for start in range(0, len(rows), 100):
                FeedRank.insert_many(rows[start:start + 100]).execute()
            stored = dict(Category.select(Category.id, Category.published_count).tuples())
            for cid, old in stored.items():
                new = result.counts.get(cid, 0)
                if new != old:
                    Category.update(published_count=new).where(Category.id == cid).execute()
    except pw.IntegrityError:
        return False
    return True


def refresh(now: dt.datetime | None = None, tier_builds: int = 1, tier_start: int | None = None) -> Result:
    """Recompute every ranking and store it; then keep search's tiers (PostgreSQL: at most
    `tier_builds` of them built, `core.search.maintain_tiers`; a failure there is logged, the
    rankings stay stored)."""
    result = compute(now)
    result.stored = store(result)
    if result.stored and not is_sqlite():
        try:
            result.tiers = search.maintain_tiers(result.public, tier_builds, tier_start) if tier_builds > 0 else []
        except pw.DatabaseError:
            log.exception("search tiers: not kept this time")
    return result


def last_refresh() -> dt.datetime | None:
    """When the stored rankings were computed (None: never)."""
    return (FeedRank.select(FeedRank.computed_at)
            .where((FeedRank.kind == REFRESH) & (FeedRank.position == 0)).scalar())


def maybe_refresh(config, now: dt.datetime | None = None) -> Result | None:
    """Refresh when the stored rankings are FEED_REFRESH_SECONDS old or missing (0: never here;
    only `flask feed refresh` and the first Discover request then refresh)."""
    every = float(getattr(config, "FEED_REFRESH_SECONDS", 60) or 0)
    if every <= 0:
        return None
    now = now or utcnow()
    last = last_refresh()
    if last is not None and last > now - dt.timedelta(seconds=every):
        return None
    result = refresh(now, tier_start=getattr(config, "SEARCH_TIER_START", None))
    log.info("feed refresh: %s", result.summary())
    return result


def read(kinds: list[str]) -> tuple[bool, dict[str, list[tuple[str, float]]]]:
    """(whether the rankings were ever computed, {kind: [(song id, score), ...] in order}) for
    these kinds: one query on the (kind, position) index."""
    rows = (FeedRank.select(FeedRank.kind, FeedRank.song, FeedRank.score)
            .where(FeedRank.kind.in_([REFRESH, *kinds]))
            .order_by(FeedRank.kind, FeedRank.position).tuples())
    computed, out = False, {k: [] for k in kinds}
    for kind, sid, score in rows:
        if kind == REFRESH:
            computed = True
        elif sid is not None:
            out[kind].append((sid, score))
    return computed, out


def read_windows():
    """The public feed's search windows as last computed (`core.search.Windows`); None before
    the first refresh. One query on (kind, position), the boundary songs joined."""
    rows = list(FeedRank.select(FeedRank.score, FeedRank.song, Song.published_at)
                .join(Song, pw.JOIN.LEFT_OUTER, on=(FeedRank.song == Song.id))
                .where(FeedRank.kind == SEARCH_WINDOWS).order_by(FeedRank.position).tuples())
    if not rows:
        return None
    total = int(rows[-1][0])
    return Windows(tuple((int(k), at) for k, sid, at in rows[:-1] if sid is not None and at is not None), total,
                   search.read_tiers())


def top_categories(limit: int) -> list[Category]:
    """The categories with public songs, most first (then by name), each with `n`, from the
    stored counts (one query on category (published_count, name))."""
    rows = list(Category.select().where(Category.published_count > 0)
                .order_by(Category.published_count.desc(), Category.name).limit(limit))
    for category in rows:
        category.n = category.published_count
    return rows
