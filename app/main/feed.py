"""The public feed's queries: Trending, Newest, search, category sections.

Only publicly visible songs appear (`Song.publicly_visible`: published, processed, not hidden
by moderation, the account not suspended). Every function runs a fixed number of SQL queries
whatever the number of songs (authors are joined, categories and likes are fetched in bulk), so
the feed page costs the same with ten songs or a million.

Trending: each like and each listen in the last TRENDING_WINDOW adds its weight divided by
(1 + age/TRENDING_HALF_LIFE)², so recent activity counts most and old activity fades out;
songs published inside the window with no activity yet follow, newest first.

The three aggregate rankings (Trending, the category sections and the category list) are kept
for FEED_CACHE_SECONDS per process as ids only; the songs themselves are read fresh on every
request (one query by primary key, still filtered by `Song.publicly_visible`), so an unpublished,
hidden or deleted song, or one whose account was suspended, leaves the feed at once (in every
process) and counts are never stale; `invalidate()` also drops this process's rankings.
"""
from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass, field

import peewee as pw

from core import search
from models import Category, Like, Listen, Song, SongCategory, User, is_sqlite, utcnow

TRENDING_WINDOW = dt.timedelta(days=7)
TRENDING_HALF_LIFE_HOURS = 24.0
LIKE_WEIGHT = 3.0
LISTEN_WEIGHT = 1.0
TRENDING_SIZE = 8
SECTION_CATEGORIES = 5
SECTION_SIZE = 8
PAGE_SIZE = 12
MAX_PAGE = 500


_cache: dict[str, tuple[float, object]] = {}
_cache_lock = threading.Lock()


def _cache_seconds() -> float:
    from flask import has_app_context

    from ..extensions import settings

    return float(settings().FEED_CACHE_SECONDS) if has_app_context() else 0.0


def cached(key: str, compute):
    """compute() once per FEED_CACHE_SECONDS in this process (0: every time)."""
    ttl = _cache_seconds()
    if ttl <= 0:
        return compute()
    now = time.monotonic()
    hit = _cache.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    value = compute()
    with _cache_lock:
        _cache[key] = (now + ttl, value)
    return value


def invalidate() -> None:
    """Forget this process's cached rankings (after a moderation step), so they are recomputed."""
    with _cache_lock:
        _cache.clear()


def _fresh(ids: list[str]) -> dict[str, Song]:
    """The public songs with these ids, read now (authors joined), by id."""
    return {s.id: s for s in public().where(Song.id.in_(ids))} if ids else {}


def public():
    """Publicly visible songs with their authors joined (no query per card)."""
    return Song.public()


def newest_first(query):
    return query.order_by(Song.published_at.desc(), Song.id.desc())


def _age_hours(column, now: dt.datetime):
    if is_sqlite():
        return (pw.fn.julianday(now.strftime("%Y-%m-%d %H:%M:%S.%f")) - pw.fn.julianday(column)) * 24.0
    return pw.fn.date_part("epoch", pw.Value(now, converter=False) - column) / 3600.0


def _decayed(weight: float, column, now: dt.datetime):
    x = 1.0 + _age_hours(column, now) / TRENDING_HALF_LIFE_HOURS
    return pw.Value(weight, converter=False) / (x * x)


def trending(limit: int = TRENDING_SIZE, now: dt.datetime | None = None) -> list[Song]:
    """The most active songs of the window, best first; each carries its `trend_score`."""
    ranked = cached(f"trending:{limit}", lambda: [(s.id, s.trend_score) for s in _trending(limit, now)])
    songs = _fresh([sid for sid, _ in ranked])
    out = []
    for sid, score in ranked:
        if sid in songs:
            songs[sid].trend_score = score
            out.append(songs[sid])
    return out


def _trending(limit: int, now: dt.datetime | None) -> list[Song]:
    now = now or utcnow()
    since = now - TRENDING_WINDOW
    likes = Like.select(Like.song.alias("sid"), _decayed(LIKE_WEIGHT, Like.created_at, now).alias("w")).where(
        Like.created_at > since)
    listens = Listen.select(Listen.song.alias("sid"), _decayed(LISTEN_WEIGHT, Listen.created_at, now).alias("w")
                            ).where(Listen.created_at > since)
    events = (likes + listens).alias("ev")  # UNION ALL
    scores = (events.select_from(events.c.sid.alias("sid"), pw.fn.SUM(events.c.w).alias("score"))
              .group_by(events.c.sid).alias("sc"))
    score = pw.fn.COALESCE(scores.c.score, 0)
    query = (public().select_extend(score.alias("trend_score"))
             .join(scores, pw.JOIN.LEFT_OUTER, on=(scores.c.sid == Song.id))
             .where(scores.c.score.is_null(False) | (Song.published_at > since))
             .order_by(score.desc(), Song.published_at.desc(), Song.id.desc())
             .limit(limit))
    return list(query)


@dataclass
class Page:
    songs: list[Song]
    page: int
    has_more: bool


def listing(q: str = "", category: Category | None = None, page: int = 1, per_page: int = PAGE_SIZE) -> Page:
    """Newest first, or with `q` searched (title, tags, lyrics; every word must match; best
    match first, then newest: core.search), and filtered by category; one page plus whether
    there is another."""
    page = max(1, min(MAX_PAGE, page))
    query = public()
    if category is not None:
        query = query.where(Song.id.in_(SongCategory.select(SongCategory.song).where(
            SongCategory.category == category.id)))
    query = search.songs(query, q, newest=(Song.published_at.desc(), Song.id.desc())) if q else newest_first(query)
    songs = list(query.limit(per_page + 1).offset((page - 1) * per_page))
    return Page(songs[:per_page], page, len(songs) > per_page)


def top_categories(limit: int = SECTION_CATEGORIES) -> list[Category]:
    """The categories with the most published songs."""
    rows = cached(f"categories:{limit}", lambda: [(c.id, c.name, c.slug, c.n) for c in _top_categories(limit)])
    out = []
    for cid, name, slug, n in rows:
        category = Category(id=cid, name=name, slug=slug)
        category.n = n
        out.append(category)
    return out


def _top_categories(limit: int) -> list[Category]:
    n = pw.fn.COUNT(SongCategory.id)
    return list(Category.select(Category, n.alias("n")).join(SongCategory).join(Song).join(User)
                .where(Song.publicly_visible())
                .group_by(Category.id).order_by(n.desc(), Category.name).limit(limit))


@dataclass
class Section:
    category: Category
    songs: list[Song] = field(default_factory=list)


def sections(categories: list[Category], per: int = SECTION_SIZE) -> list[Section]:
    """The newest `per` songs of each category, all in one query (ROW_NUMBER per category)."""
    out = [Section(c) for c in categories]
    if not categories:
        return out
    key = "sections:" + ",".join(str(c.id) for c in categories) + f":{per}"
    ranked = cached(key, lambda: [(s.category.id, [song.id for song in s.songs]) for s in _sections(categories, per)])
    songs = _fresh([sid for _, ids in ranked for sid in ids])
    by_id = {s.category.id: s for s in out}
    for cid, ids in ranked:
        by_id[cid].songs = [songs[sid] for sid in ids if sid in songs]
    return [s for s in out if s.songs]


def _sections(categories: list[Category], per: int) -> list[Section]:
    out = [Section(c) for c in categories]
    by_id = {s.category.id: s for s in out}
    rank = pw.fn.ROW_NUMBER().over(partition_by=[SongCategory.category],
                                   order_by=[Song.published_at.desc(), Song.id.desc()])
    ranked = (SongCategory.select(SongCategory.id.alias("scid"), rank.alias("rn"))
              .join(Song).join(User)
              .where(Song.publicly_visible() & SongCategory.category.in_(list(by_id))).alias("ranked"))
    query = (SongCategory.select(SongCategory, Song, User)
             .join(ranked, on=(ranked.c.scid == SongCategory.id)).switch(SongCategory)
             .join(Song).join(User)
             .where(ranked.c.rn <= per)
             .order_by(SongCategory.category, Song.published_at.desc(), Song.id.desc()))
    for row in query:
        by_id[row.category_id].songs.append(row.song)
    return [s for s in out if s.songs]


def following(user, page: int = 1, per_page: int = PAGE_SIZE) -> Page:
    """The Following tab: the public songs of the people `user` follows, newest first, a page at
    a time (one query; the follows are a subquery on their unique index)."""
    from models import Follow

    page = max(1, min(MAX_PAGE, page))
    followed = Follow.select(Follow.followee).where(Follow.follower == user.id)
    songs = list(newest_first(public().where(Song.user.in_(followed))).limit(per_page + 1)
                 .offset((page - 1) * per_page))
    return Page(songs[:per_page], page, len(songs) > per_page)


def annotate(songs, user) -> None:
    """Attach `categories` and `liked` to every song shown: two queries for all of them."""
    songs = list(songs)
    ids = [s.id for s in songs]
    cats = Song.categories_for(ids)
    liked = Like.song_ids_liked_by(user, ids)
    for song in songs:
        song.categories = cats.get(song.id, [])
        song.liked = song.id in liked


def category_by_slug(slug: str) -> Category | None:
    slug = (slug or "").strip().lower()[:60]
    return Category.get_or_none(Category.slug == slug) if slug else None


def all_categories(limit: int = 40) -> list[Category]:
    """Categories that have published songs, for the filter (most used first)."""
    return top_categories(limit)
