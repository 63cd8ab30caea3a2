"""The public feed's queries: Trending, Newest, search, category sections, the Following tab.

Only publicly visible songs appear (`Song.publicly_visible`: published, processed, not hidden
by moderation, the account not suspended). Every function runs a fixed number of SQL queries
whatever the number of songs (authors are joined, categories and likes are fetched in bulk), so
the feed page costs the same with ten songs or a million.

No request runs an aggregate: Trending, the category sections and the category counts are
computed on the worker every FEED_REFRESH_SECONDS (`core.feed_rank`, which also says how Trending
is scored) and read here as rows (one indexed query each, kept FEED_CACHE_SECONDS per process as
ids only); the songs themselves are read fresh on every request (one query by primary key, still
filtered by `Song.publicly_visible`), so an unpublished, hidden or deleted song, or one whose
account was suspended, leaves the feed at once (in every process); `invalidate()` also drops this
process's cached rows. Before the first refresh (a fresh install) the first request that needs
the rankings computes and stores them once, inline.

Newest, a category's list and the Following tab page by keyset: `?after=<cursor>`, the opaque
cursor of the last song shown (its publication time and id, encoded as the API's cursors are,
`app.api.paging`), so a page costs the same however deep it is and a song published meanwhile
neither repeats nor hides one. Search results are ranked (the rank is not a stable key), so they
keep `?page=N`, an OFFSET bounded by MAX_PAGE.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from core import feed_rank, search
from core.errors import UserError
from core.feed_rank import SECTION_CATEGORIES, SECTION_SIZE, TRENDING_SIZE  # noqa: F401 (the feed's sizes)
from models import Category, Like, Song, SongCategory

from ..api import paging

log = logging.getLogger("tunesmith.feed")

PAGE_SIZE = 12
MAX_PAGE = 500  # search results only: they page by OFFSET, bounded


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


def public():
    """Publicly visible songs with their authors joined (no query per card), as tiles: only the
    columns a tile shows (`Song.public_tiles`)."""
    return Song.public_tiles()


def newest_first(query):
    return query.order_by(Song.published_at.desc(), Song.id.desc())


_refresh_lock = threading.Lock()


def _rankings(key: str, kinds: list[str]) -> dict[str, list[tuple[str, float]]]:
    """The stored rankings of these kinds (kept FEED_CACHE_SECONDS in this process). Never
    computed yet (a fresh install, before the worker's first refresh): computed and stored once,
    here; should that fail, the page shows what it can without them (Newest)."""
    def load():
        computed, rows = feed_rank.read(kinds)
        if computed:
            return rows
        with _refresh_lock:
            computed, rows = feed_rank.read(kinds)
            if computed:
                return rows
            try:
                feed_rank.refresh(tier_builds=0)  # never an index build inside a page request
            except Exception:  # the page still works from Newest; the worker's refresh will follow
                log.exception("the first feed refresh failed")
                return rows
            return feed_rank.read(kinds)[1]

    return cached(key, load)


def trending_ranked() -> list[tuple[str, float]]:
    """Trending's (id, score) rows; before the first refresh, this computes the rankings once."""
    return _rankings("trending", [feed_rank.TRENDING])[feed_rank.TRENDING]


def _trending_of(ranked, songs: dict[str, Song], limit: int) -> list[Song]:
    out = []
    for sid, score in ranked:
        if sid in songs and len(out) < limit:
            songs[sid].trend_score = score
            out.append(songs[sid])
    return out


def trending(limit: int = TRENDING_SIZE) -> list[Song]:
    """The most active songs of the window, best first (as last computed by `core.feed_rank`);
    each carries its `trend_score`."""
    ranked = trending_ranked()
    return _trending_of(ranked, Song.tiles_by_ids([sid for sid, _ in ranked]), limit)


@dataclass
class Page:
    songs: list[Song]
    page: int
    has_more: bool
    after: str | None = None  # the cursor this page starts after (keyset lists)
    next_cursor: str | None = None  # the cursor of the next page (keyset lists; None: the last)


# -- keyset cursors ----------------------------------------------------------------------------
BAD_CURSOR = ("This “Load more” link is not one we gave out (or it has expired). "
              "Start again from the top of the list.")


def read_cursor(after: str | None):
    """(time, variant, id) of a cursor from `app.api.paging`; None for none. One that does not
    decode is a 400 with a message for people (`after`)."""
    if not after:
        return None
    try:
        return paging.decode(after)
    except UserError:
        raise UserError(BAD_CURSOR, 400, "after", code="invalid_parameter") from None


def newest_cursor(song: Song) -> str:
    return paging.encode(song.published_at or song.created_at, 0, song.id)


def newest_page(query, after: str | None, per_page: int = PAGE_SIZE) -> Page:
    """`query` (public songs as tiles: a `public()` select) newest first, the page after the
    cursor `after`: a range of the (published_at, id) order, so the database starts in the
    index where the last page ended."""
    key = read_cursor(after)
    if key is not None:
        at, _, sid = key
        query = query.where((Song.published_at <= at) & ((Song.published_at < at) | (Song.id < sid)))
    songs = Song.tiles(newest_first(query).limit(per_page + 1))
    more = len(songs) > per_page
    songs = songs[:per_page]
    return Page(songs, 1, more, after=after, next_cursor=newest_cursor(songs[-1]) if more and songs else None)


def listing(q: str = "", category: Category | None = None, page: int = 1, per_page: int = PAGE_SIZE,
            after: str | None = None) -> Page:
    """Newest first (a page after the cursor `after`), or with `q` searched (title, tags,
    lyrics; every word must match; best match first, then newest: core.search; page `page`),
    and filtered by category; one page plus whether there is another."""
    query = public()
    among = Song.select().where(Song.publicly_visible_alone())  # the same songs, authors not joined
    if category is not None:
        in_category = Song.id.in_(SongCategory.select(SongCategory.song).where(SongCategory.category == category.id))
        query, among = query.where(in_category), among.where(in_category)
    if not q:
        return newest_page(query, after, per_page)
    page = max(1, min(MAX_PAGE, page))
    songs = search.page(query, q, (page - 1) * per_page, per_page + 1,  # ranked: a bounded OFFSET
                        newest=(Song.published_at.desc(), Song.id.desc()), windows=search_windows(), among=among)
    return Page(songs[:per_page], page, len(songs) > per_page)


def search_windows() -> search.Windows | None:
    """Where the newest 10,000, 20,000, 40,000, ... public songs start (as last computed by
    `core.feed_rank`, kept FEED_CACHE_SECONDS in this process): search looks for its candidates
    there first (`core.search.newest_ids`). None before the first refresh: search reads every
    match, as it does for a library too small to have windows."""
    return cached("search-windows", feed_rank.read_windows)


def top_categories(limit: int = SECTION_CATEGORIES) -> list[Category]:
    """The categories with the most published songs (their counts as last computed)."""
    rows = cached(f"categories:{limit}",
                  lambda: [(c.id, c.name, c.slug, c.n) for c in feed_rank.top_categories(limit)])
    out = []
    for cid, name, slug, n in rows:
        category = Category(id=cid, name=name, slug=slug)
        category.n = n
        out.append(category)
    return out


@dataclass
class Section:
    category: Category
    songs: list[Song] = field(default_factory=list)


def _sections_ranked(categories: list[Category]) -> tuple[list[str], dict[str, list[tuple[str, float]]]]:
    kinds = [feed_rank.section_kind(c.slug) for c in categories]
    return kinds, (_rankings("sections:" + ",".join(kinds), kinds) if kinds else {})


def _sections_of(categories, kinds, ranked, songs: dict[str, Song], per: int) -> list[Section]:
    out = [Section(c) for c in categories]
    for section, kind in zip(out, kinds):
        section.songs = [songs[sid] for sid, _ in ranked[kind] if sid in songs][:per]
    return [s for s in out if s.songs]


def sections(categories: list[Category], per: int = SECTION_SIZE) -> list[Section]:
    """The newest `per` songs of each category (as last computed), read in two queries."""
    kinds, ranked = _sections_ranked(categories)
    songs = Song.tiles_by_ids([sid for kind in kinds for sid, _ in ranked[kind]])
    return _sections_of(categories, kinds, ranked, songs, per)


def front(categories: list[Category], limit: int = TRENDING_SIZE,
          per: int = SECTION_SIZE) -> tuple[list[Song], list[Section]]:
    """Trending and the category sections of Discover's front page: `trending(limit)` and
    `sections(categories, per)` with the songs of both read in one query. A song in both is
    one object shown twice."""
    ranked_trending = trending_ranked()
    kinds, ranked = _sections_ranked(categories)
    songs = Song.tiles_by_ids([*(sid for sid, _ in ranked_trending),
                               *(sid for kind in kinds for sid, _ in ranked[kind])])  # a song in both: read once
    return (_trending_of(ranked_trending, songs, limit),
            _sections_of(categories, kinds, ranked, songs, per))


def following(user, page: int = 1, per_page: int = PAGE_SIZE, after: str | None = None) -> Page:
    """The Following tab: the public songs of the people `user` follows, newest first, a page at
    a time after the cursor `after` (one query; the follows are a subquery on their unique index).
    `page` is accepted for old links and ignored."""
    from models import Follow

    followed = Follow.select(Follow.followee).where(Follow.follower == user.id)
    return newest_page(public().where(Song.user.in_(followed)), after, per_page)


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
