"""Discover's precomputed rankings (core.feed_rank) and keyset paging: the refresh ranks Trending
from likes and listens and counts the categories; a page request reads the stored rows and runs
no aggregate; "Load more" walks every song exactly once while songs are published meanwhile; a
cursor that is not one we gave out is a 400, never a 500."""
from __future__ import annotations

import base64
import datetime as dt
import re

import pytest

import models
from core import feed_rank
from core.reconcile import refresh_feed
from models import Category, FeedRank, Follow, Listen, Song, utcnow
from tests import song_factory as make
from tests.helpers import connected
from tests.test_feed import HX, add, bulk_feed, ids_in, like_by, section, text, titles_in
from tests.test_profiles_pages import signed_in

pytestmark = pytest.mark.sqlite_only

AGGREGATE = re.compile(r"\b(GROUP BY|COUNT\s*\(|SUM\s*\(|AVG\s*\(|ROW_NUMBER|OVER\s*\()", re.I)
CARD = re.compile(r'data-song-id="([0-9a-f]{32})" data-status')  # a library card


@pytest.fixture
def owner(app):
    with connected(app):
        return make.user("maker@example.com", "Maker")


def refresh(app, now=None) -> feed_rank.Result:
    with connected(app):
        return feed_rank.refresh(now)


def sql_of(app, client, monkeypatch, path, headers=None):
    """(status, html, every SQL statement the request ran)."""
    database = models.db.obj
    seen = []
    real = database.execute_sql

    def counting(sql, params=None, *args, **kwargs):
        seen.append(sql)
        return real(sql, params, *args, **kwargs)

    monkeypatch.setattr(database, "execute_sql", counting)
    try:
        resp = client.get(path, headers=headers or {})
    finally:
        monkeypatch.undo()
    return resp.status_code, text(resp), seen


def more_link(html: str, target: str) -> str | None:
    """The "Load more" link's address (the same for HTMX and without JavaScript)."""
    m = re.search(rf'<li class="load-more" id="{target}">\s*<a class="btn" href="([^"]+)" hx-get="([^"]+)"', html)
    if not m:
        return None
    assert m.group(1) == m.group(2)
    return m.group(1).replace("&amp;", "&")


# ------------------------------------------------------------------------------ the refresh
@pytest.mark.both_backends
def test_refresh_ranks_trending_from_likes_and_listens_and_pages_read_the_result(app, client, owner):
    now = utcnow()
    loved = add(app, owner, "Older But Loved", published_at=now - dt.timedelta(days=3), categories=["Pop"])
    played = add(app, owner, "Brand New", published_at=now - dt.timedelta(hours=1), categories=["Pop", "Rock"])
    faded = add(app, owner, "Faded Glory", published_at=now - dt.timedelta(days=6, hours=20))
    add(app, owner, "Ancient Hit", published_at=now - dt.timedelta(days=30), categories=["Rock"])
    add(app, owner, "Kept Private", published=False, categories=["Pop"])
    like_by(app, loved, 3, now - dt.timedelta(hours=2))
    like_by(app, faded, 6, now - dt.timedelta(days=6, hours=12))  # many, but almost a week ago
    with connected(app):
        for i in range(2):
            Listen.create(song=played.id, listener=f"v:{i}", created_at=now - dt.timedelta(minutes=5))

    result = refresh(app, now)
    assert result.stored
    with connected(app):
        stored = [(r.song_id, round(r.score, 3)) for r in
                  FeedRank.select().where(FeedRank.kind == "trending").order_by(FeedRank.position)]
        counts = {c.slug: c.published_count for c in Category.select()}
    assert [sid for sid, _ in stored] == [loved.id, played.id, faded.id]  # Ancient Hit: outside the window
    assert stored[0][1] > stored[1][1] > stored[2][1] > 0
    assert counts == {"pop": 2, "rock": 2}  # the private song is not counted

    html = text(client.get("/"))
    assert titles_in(section(html, "trending")) == ["Older But Loved", "Brand New", "Faded Glory"]
    assert titles_in(section(html, "category-pop")) == ["Brand New", "Older But Loved"]
    assert '<option value="pop" >Pop</option>' in html

    # until the next refresh a new like does not move the ranking, but a song that stops being
    # public leaves at once (the songs are read fresh)
    like_by(app, faded, 20, utcnow())
    with connected(app):
        Song.get_by_id(loved.id).unpublish()
    html = text(client.get("/"))
    assert titles_in(section(html, "trending")) == ["Brand New", "Faded Glory"]
    assert "Older But Loved" not in html
    refresh(app)
    html = text(client.get("/"))
    assert titles_in(section(html, "trending")) == ["Faded Glory", "Brand New"]
    with connected(app):
        assert Category.get(Category.slug == "pop").published_count == 1


def test_before_the_first_refresh_the_first_request_computes_and_stores_the_rankings(app, client, owner,
                                                                                       monkeypatch):
    song = add(app, owner, "First Light", categories=["Ambient"])
    like_by(app, song, 1, utcnow())
    with connected(app):
        assert feed_rank.last_refresh() is None
    html = text(client.get("/"))
    assert titles_in(section(html, "trending")) == ["First Light"] and 'id="category-ambient"' in html
    with connected(app):
        assert feed_rank.last_refresh() is not None
    status, html, seen = sql_of(app, client, monkeypatch, "/")
    assert status == 200 and titles_in(section(html, "trending")) == ["First Light"]
    assert not [s for s in seen if AGGREGATE.search(s)]  # stored now: read, not computed

    # should that first computation fail, the page still shows Newest
    with connected(app):
        FeedRank.delete().execute()

    def broken(now=None):
        raise RuntimeError("the database said no")

    monkeypatch.setattr(feed_rank, "refresh", broken)
    resp = client.get("/")
    assert resp.status_code == 200 and titles_in(section(text(resp), "newest")) == ["First Light"]


def test_the_reconciler_refreshes_every_feed_refresh_seconds_and_the_cli_on_demand(app, owner):
    config = app.extensions["tunesmith_config"]
    add(app, owner, "Song", categories=["Pop"])
    with connected(app):
        refresh_feed(config)  # never refreshed: now
        first = feed_rank.last_refresh()
        assert first is not None
        refresh_feed(config)  # younger than FEED_REFRESH_SECONDS: left alone
        assert feed_rank.last_refresh() == first
        feed_rank.maybe_refresh(config, now=first + dt.timedelta(seconds=config.FEED_REFRESH_SECONDS + 1))
        assert feed_rank.last_refresh() > first
    out = app.test_cli_runner().invoke(args=["feed", "refresh"])
    assert out.exit_code == 0 and "feed refreshed: trending 1 song(s), 1 category with songs" in out.output


# ------------------------------------------------------------------------------ no aggregate per request
@pytest.mark.parametrize("who", ["visitor", "member"])
def test_a_discover_request_runs_no_aggregate_query(app, client, auth, monkeypatch, who):
    bulk_feed(app, 40)
    if who == "member":
        auth.register("reader@example.com")
        with connected(app):
            reader = models.User.get(models.User.email == "reader@example.com")
            Follow.create(follower=reader, followee=models.User.get(models.User.email == "bulk@example.com"))
    refresh(app)
    status, html, seen = sql_of(app, client, monkeypatch, "/")
    assert status == 200 and 'id="trending"' in html and len(re.findall(r'id="category-', html)) == 5
    assert not [s for s in seen if AGGREGATE.search(s)], [s for s in seen if AGGREGATE.search(s)]
    paths = ["/?category=pop", more_link(html, "feed-more")]
    if who == "member":
        paths.append("/?tab=following")
    for path in paths:
        status, page, seen = sql_of(app, client, monkeypatch, path)
        assert status == 200 and ids_in(page), path
        listed = [s for s in seen if s.startswith('SELECT "t1"."id", ') and 'FROM "song" AS "t1"' in s]  # song lists
        assert listed and not [s for s in listed if "OFFSET" in s], (path, listed)  # keyset: no OFFSET
        assert not [s for s in seen if AGGREGATE.search(s)], (path, seen)


# ------------------------------------------------------------------------------ keyset "Load more"
def walk(client, first: str, target: str, pattern=None, between=None, headers=None) -> list[str]:
    """Every song id listed from `first` on, following "Load more" (or "Older") to the end."""
    found, url, pages = [], first, 0
    while url:
        html = text(client.get(url, headers=headers or {}))
        listed = section(html, "newest") if 'id="newest"' in html else html  # Discover: not the shelves
        found += (pattern.findall(listed) if pattern else ids_in(listed))
        if target == "library":
            m = re.search(r'<a class="btn btn-ghost" data-next-cursor href="([^"]+)">Older', html)
            url = m and m.group(1).replace("&amp;", "&")
        else:
            url = more_link(html, target)
        pages += 1
        if between and pages == 1:
            between()
    return found


@pytest.mark.both_backends
def test_load_more_walks_every_song_once_while_new_songs_are_published(app, owner):
    now = utcnow()
    reader = signed_in(app, "reader@example.com", "Reader")
    with connected(app):
        mia = make.user("mia@example.com", "Mia")
        models.User.update(handle="mia").where(models.User.id == mia.id).execute()
        Follow.create(follower=models.User.get(models.User.email == "reader@example.com"), followee=mia)
        tie = now - dt.timedelta(hours=1)
        songs = [make.song(mia, f"Song {i:02d}", published_at=tie if i % 3 == 0 else now - dt.timedelta(minutes=i),
                           categories=["Pop"]) for i in range(30)]
        make.song(mia, "Private", published=False)
    expected = [s.id for s in sorted(songs, key=lambda s: (s.published_at, s.id), reverse=True)]
    late = []

    def publish_one():  # a song published after the first page was shown
        with connected(app):
            late.append(make.song(mia, f"Late {len(late)}", published_at=utcnow(), categories=["Pop"]).id)

    hx = {**HX, "HX-Target": "feed-more"}
    assert walk(reader, "/?category=pop", "feed-more", between=publish_one) == expected
    assert walk(reader, "/?category=pop", "feed-more", headers=hx) == [*late, *expected]  # HTMX fragments
    assert walk(reader, "/", "feed-more", between=publish_one) == [late[0], *expected]  # Discover's Newest
    following = walk(reader, "/?tab=following", "feed-more", between=publish_one)
    assert following == [*late[::-1][1:], *expected]
    profile = walk(reader, "/u/mia", "profile-more", between=publish_one)
    assert profile == [*late[::-1][1:], *expected] and len(set(profile)) == len(profile)


def test_the_library_pages_by_cursor_without_repeats_while_songs_are_made(app, client, auth):
    auth.register("alice@example.com")
    now = utcnow()
    with connected(app):
        alice = models.User.get(models.User.email == "alice@example.com")
        rows = []
        for i in range(15):  # two variants per generation: same created_at, variants 0 and 1
            at = now - dt.timedelta(minutes=i)
            for variant in (0, 1):
                rows.append(make.song(alice, f"Take {i}.{variant}", created_at=at, variant=variant,
                                      published=False, status="failed" if i == 4 else "processed"))
    expected = [s.id for s in sorted(rows, key=lambda s: (-s.created_at.timestamp(), s.variant, s.id))]

    def make_one():
        with connected(app):
            make.song(alice, "Made meanwhile", created_at=utcnow())

    assert walk(client, "/library", "library", CARD, between=make_one) == expected  # 24, then 6
    failed = walk(client, "/library?status=failed", "library", CARD)
    assert failed == [s.id for s in rows if s.status == "failed"]
    first = text(client.get("/library"))
    older = re.search(r'data-next-cursor href="([^"]+)"', first).group(1).replace("&amp;", "&")
    second = text(client.get(older))
    assert 'href="/library">← Newest</a>' in second
    assert CARD.findall(text(client.get("/library?page=2")))[:1] == CARD.findall(first)[:1]  # old link: page 1


# ------------------------------------------------------------------------------ bad cursors
def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


BAD_CURSORS = ["garbage", "!!!", "x" * 500, _b64(b"not json"), _b64(b'["2024-01-01T00:00:00", 0]'),
               _b64(b'["2024-01-01T00:00:00+02:00", 0, "abc"]'), _b64(b'["yesterday", 0, "abc"]'),
               _b64(b'["2024-01-01T00:00:00", 0, "../../etc"]'), _b64(b'[[], {}, null]'), "\u00e9t\u00e9",
               _b64(b'["2024-01-01T00:00:00", true, "abc"]')]


def test_a_cursor_we_did_not_give_out_is_a_400_never_a_500(app, client, auth, owner):
    add(app, owner, "Only Song")
    with connected(app):
        models.User.update(handle="maker").where(models.User.id == owner.id).execute()
    auth.register("reader@example.com")
    for cursor in BAD_CURSORS:
        for path in ("/", "/?category=", "/?tab=following", "/u/maker", "/library"):
            for headers in ({}, {**HX, "HX-Target": "feed-more"}):
                sep = "&" if "?" in path else "?"
                resp = client.get(f"{path}{sep}after={cursor}", headers=headers)
                assert resp.status_code == 400, (path, cursor, resp.status_code)
                assert "not one we gave out" in text(resp)
    # a well-formed cursor past the end is simply an empty page; a search ignores `after`
    end = _b64(b'["2000-01-01T00:00:00.000000",0,"0"]')
    resp = client.get(f"/?after={end}")
    assert resp.status_code == 200 and "No published songs match" in text(resp)
    resp = client.get("/?q=only&after=garbage")
    assert resp.status_code == 200 and titles_in(section(text(resp), "feed-body")) == ["Only Song"]
