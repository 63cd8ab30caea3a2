"""Full-text search (core.search): Discover's search and the library's find a song by a word of
its title, tags or lyrics (every word, the last one also as a prefix), put a title match above a
tags match above a lyrics match, follow renames and edits and deletions at once (the index is
kept by the database), show others only public songs, answer any text a person types without an
error, and the migration indexes the songs that were there before it. The index differs by
database (an FTS5 table on SQLite, a tsvector column with a GIN index on PostgreSQL), so the
tests of matching and ranking run on both."""
from __future__ import annotations

import datetime as dt
import logging
import re

import pytest

import models
from core import search
from models import SchemaMigration, Song, User, utcnow
from tests import song_factory as make
from tests.helpers import connected

pytestmark = pytest.mark.sqlite_only

HX = {"HX-Request": "true"}
CARD_ID = re.compile(r'<li class="song-card[^"]*"[^>]*?data-song-id="([0-9a-f]+)"')


def text(resp):
    return resp.get_data(as_text=True)


def feed_ids(client, q) -> list[str]:
    resp = client.get("/", query_string={"q": q})
    assert resp.status_code == 200, (q, resp.status_code)
    return CARD_ID.findall(text(resp))


def library_ids(client, q) -> list[str]:
    resp = client.get("/library", query_string={"q": q})
    assert resp.status_code == 200, (q, resp.status_code)
    return CARD_ID.findall(text(resp))


@pytest.fixture
def maker(app, auth):
    """The signed-in person whose songs these are (so the library shows them too)."""
    auth.register("maker@example.com", name="Maker")
    with connected(app):
        return User.get(User.email == "maker@example.com")


def add(app, owner, title, *, ago_minutes=0, **kwargs):
    when = utcnow() - dt.timedelta(minutes=ago_minutes)
    kwargs.setdefault("categories", [])
    with connected(app):
        return make.song(owner, title, created_at=when, published_at=when, **kwargs)


@pytest.mark.both_backends
def test_search_finds_words_of_title_tags_and_lyrics_and_every_word_must_match(app, client, maker):
    harbor = add(app, maker, "Harbor Lights", tags="ambient, calm", lyrics="[verse]\nships sleep in the bay")
    city = add(app, maker, "City Run", tags="drum and bass, energetic", lyrics="[verse]\nconcrete and neon")
    cafe = add(app, maker, "Café Ü-Bahn 東京", tags="chanson", lyrics="[verse]\nrain in the old town")
    for ids in (lambda q: feed_ids(client, q), lambda q: library_ids(client, q)):
        assert ids("harbor") == [harbor.id]            # a title word, any case
        assert ids("ENERGETIC") == [city.id]           # a tag
        assert ids("bay") == [harbor.id]               # a lyrics word
        assert ids("neon concrete") == [city.id]       # every word, in any order and field
        assert ids("neon bay") == []                   # ... all of them
        assert ids("harb") == [harbor.id]              # the last word is also a prefix (live search)
        assert ids("harb lights") == []                # ... only the last
        assert ids("café 東京") == [cafe.id]           # any script
        assert sorted(ids("the")) == sorted([harbor.id, cafe.id])  # no stop words dropped
    html = text(client.get("/", query_string={"q": "zeppelin"}))
    assert "No published songs match “zeppelin”" in html
    live = client.get("/", query_string={"q": "harbor"}, headers={**HX, "HX-Target": "feed-body"})
    assert "<html" not in text(live) and CARD_ID.findall(text(live)) == [harbor.id]


@pytest.mark.both_backends
def test_a_title_match_ranks_above_a_tags_match_above_a_lyrics_match(app, client, maker):
    lyrics = add(app, maker, "Night Bus", tags="lofi", lyrics="[chorus]\n" + "lantern light, " * 8)  # newest
    tags = add(app, maker, "Paper Boats", tags="lantern, folk", lyrics="[verse]\nriver", ago_minutes=10)
    title = add(app, maker, "Lantern", tags="pop", lyrics="[verse]\nglow", ago_minutes=20)  # oldest
    add(app, maker, "Unrelated", tags="rock", lyrics="[verse]\nnothing here", ago_minutes=5)
    assert feed_ids(client, "lantern") == [title.id, tags.id, lyrics.id]
    assert library_ids(client, "lantern") == [title.id, tags.id, lyrics.id]
    # alike matches keep the page's order: newest first
    twin = add(app, maker, "Lantern", tags="pop", lyrics="[verse]\nglow", ago_minutes=1)
    assert feed_ids(client, "lantern")[:2] == [twin.id, title.id]
    assert library_ids(client, "lantern")[:2] == [twin.id, title.id]
    # no search: the pages are as they were, newest first
    assert CARD_ID.findall(text(client.get("/library", query_string={"q": "   "})))[:2] == [lyrics.id, twin.id]


@pytest.mark.both_backends
def test_renames_edits_and_deletions_are_searchable_at_once(app, client, auth, maker):
    song = add(app, maker, "Old Name", tags="polka", lyrics="[verse]\nyesterday words")
    resp = auth.post(f"/songs/{song.id}/rename", data={"title": "Brand Title"})
    assert resp.status_code in (200, 303)
    with connected(app):
        Song.update(lyrics="[verse]\ntomorrow words", tags="tango").where(Song.id == song.id).execute()
        Song.update(listen_count=Song.listen_count + 1).where(Song.id == song.id).execute()  # no text change
    assert feed_ids(client, "brand") == [song.id] and library_ids(client, "tomorrow") == [song.id]
    assert feed_ids(client, "tango") == [song.id]
    for gone in ("old", "yesterday", "polka"):
        assert feed_ids(client, gone) == [] and library_ids(client, gone) == [], gone

    # a deleted song leaves the index: the next song (which may take its row's place) does not
    # inherit its words
    doomed = add(app, maker, "Zeppelin Ride", tags="rock", lyrics="[verse]\nairship")
    assert library_ids(client, "zeppelin") == [doomed.id]
    resp = auth.post(f"/songs/{doomed.id}/delete")
    assert resp.status_code in (200, 303)
    after = add(app, maker, "Quiet Field", tags="ambient", lyrics="[verse]\ngrass")
    assert library_ids(client, "zeppelin") == [] and feed_ids(client, "airship") == []
    assert library_ids(client, "grass") == [after.id]


HOSTILE = ['"', '""', "AND (", "OR", "*", "-", "- -x", "NEAR(", "NEAR(a b", "title:x", "a:*", "'", "\\",
           "&|!()<->", "^a", "a'b", "%", "_", "\x00", "x\x00y", "🎵", "日本語", "ǅ̸̢͎", "a" * 5000,
           " ".join(["word"] * 300), '"unclosed phrase', "col : (a OR b) NOT c"]


@pytest.mark.both_backends
def test_hostile_text_never_errors(app, client, maker):
    song = add(app, maker, "Plain Song", tags="pop", lyrics="[verse]\nnear the water, and or not")
    for q in HOSTILE:
        for path in ("/", "/library"):
            resp = client.get(path, query_string={"q": q})
            assert resp.status_code in (200, 400), (path, q, resp.status_code)
        live = client.get("/", query_string={"q": q}, headers={**HX, "HX-Target": "feed-body"})
        assert live.status_code in (200, 400), (q, live.status_code)
    # operators are words like any other
    assert feed_ids(client, "NEAR(") == [song.id] and feed_ids(client, "AND (") == []
    assert feed_ids(client, "and or") == [song.id] and library_ids(client, '"water"') == [song.id]


def test_others_find_only_public_songs(app, client, auth, maker):
    public = add(app, maker, "Moonlight Public")
    private = add(app, maker, "Moonlight Private", published=False)
    unfinished = add(app, maker, "Moonlight Cooking", status="processing", published=False)
    hidden = add(app, maker, "Moonlight Hidden", hidden_at=utcnow(), hidden_reason="spam")
    assert sorted(library_ids(client, "moonlight")) == sorted([public.id, private.id, unfinished.id, hidden.id])
    assert feed_ids(client, "moonlight") == [public.id]
    auth.logout()
    assert feed_ids(client, "moonlight") == [public.id]
    auth.register("other@example.com", name="Other")
    assert feed_ids(client, "moonlight private") == [] and library_ids(client, "moonlight") == []


def _unmigrate(database):
    """Undo migration 0037 on this database, as if it were created before it."""
    if isinstance(database, models.pw.SqliteDatabase):
        for trigger in ("insert", "delete", "update"):
            database.execute_sql(f"DROP TRIGGER IF EXISTS song_fts_{trigger}")
        database.execute_sql("DROP TABLE IF EXISTS song_fts")
        database.__dict__.pop("_song_fts_ready", None)
    else:
        database.execute_sql('DROP INDEX IF EXISTS "song_search_vector"')
        database.execute_sql('ALTER TABLE "song" DROP COLUMN IF EXISTS "search_vector"')
    SchemaMigration.delete().where(SchemaMigration.name == "0037_search").execute()


@pytest.mark.both_backends
def test_the_migration_indexes_the_songs_already_there_and_can_run_again(app, client, maker):
    from app.migrate import upgrade

    with connected(app):
        _unmigrate(models.db.obj)
        old = [make.song(maker, f"Before {i}", tags="vintage", categories=[]) for i in range(3)]
        try:
            assert upgrade() == ["0037_search"]
        finally:
            search.install(models.db.obj)  # the next tests on this database need the index either way
        assert upgrade() == []
        search.install(models.db.obj)  # once more by hand: no duplicates in the index
    assert sorted(feed_ids(client, "vintage")) == sorted(s.id for s in old)
    assert feed_ids(client, "before") and len(feed_ids(client, "vintage before")) == 3


def test_without_fts5_search_falls_back_to_like_and_says_so(app, client, maker, monkeypatch, caplog):
    monkeypatch.setattr(search, "fts5_compiled", lambda: False)
    monkeypatch.setattr(search, "_warned", set())
    song = add(app, maker, "Fallback Tune", tags="jazz", lyrics="[verse]\nsubstring")
    with caplog.at_level(logging.WARNING, logger="tunesmith.search"):
        assert feed_ids(client, "string") == [song.id]  # LIKE: any part of a word, as before
        assert library_ids(client, "FALLBACK jazz") == [song.id]
        with connected(app):
            assert search.install(models.db.obj) == "like"
    assert "no FTS5" in caplog.text



@pytest.mark.both_backends
def test_a_common_word_lists_its_title_matches_first_even_beyond_the_candidate_window(app, client, maker,
                                                                                     monkeypatch):
    monkeypatch.setattr(search, "CANDIDATES", 3)  # SEARCH_CANDIDATES: a window of three, for the test
    title = add(app, maker, "Ember", tags="pop", lyrics="[verse]\nglow", ago_minutes=60)  # the oldest
    tags = add(app, maker, "Paper Boats", tags="ember, folk", lyrics="[verse]\nriver", ago_minutes=50)
    lyrics = [add(app, maker, f"Night Bus {i}", tags="lofi", lyrics="[chorus]\nan ember in the dark",
                  ago_minutes=40 - i) for i in range(5)]  # newest last
    newest_three = [s.id for s in reversed(lyrics[-3:])]
    for ids in (lambda q: feed_ids(client, q), lambda q: library_ids(client, q)):
        # seven songs match, more than the window: the title match (older than all of them)
        # still comes first, then the three newest matches, best first, then newest
        assert ids("ember") == [title.id, *newest_three]
        assert ids("emb") == [title.id, *newest_three]  # the prefix of the word being typed, too
        assert ids("EMBER dark") == newest_three  # every word must still match
    # the older tags and lyrics matches are beyond the window: a wider one lists them, best first
    monkeypatch.setattr(search, "CANDIDATES", 10)
    assert feed_ids(client, "ember") == [title.id, tags.id, *[s.id for s in reversed(lyrics)]]


@pytest.mark.both_backends
def test_a_word_in_no_more_songs_than_the_window_keeps_the_full_ranking(app, client, maker, monkeypatch):
    monkeypatch.setattr(search, "CANDIDATES", 3)
    lyrics = add(app, maker, "Night Bus", tags="lofi", lyrics="[chorus]\n" + "lantern light, " * 8)  # newest
    tags = add(app, maker, "Paper Boats", tags="lantern, folk", lyrics="[verse]\nriver", ago_minutes=10)
    title = add(app, maker, "Lantern", tags="pop", lyrics="[verse]\nglow", ago_minutes=20)  # oldest
    for i in range(4):  # other songs, newer and older, that do not match
        add(app, maker, f"Unrelated {i}", tags="rock", lyrics="[verse]\nnothing here", ago_minutes=15 * i + 5)
    ranked = [title.id, tags.id, lyrics.id]
    assert feed_ids(client, "lantern") == ranked and library_ids(client, "lantern") == ranked
    monkeypatch.setattr(search, "CANDIDATES", 1000)  # the default window: the same answer
    assert feed_ids(client, "lantern") == ranked and library_ids(client, "lant") == ranked


def bulk(app, owner, rows: list[tuple[str, str]]) -> list[str]:
    """Published songs (title, lyrics), the first the newest, a minute apart; their ids."""
    now = utcnow()
    with connected(app):
        gen = models.Generation.create(user=owner, mode="description", duration=12, variants=1)
        songs = [dict(id=models.new_id(), generation=gen.id, user=owner.id, title=title, status="processed",
                      stage="done", progress=100, tags="test", lyrics=lyrics, duration=12.0, audio_key=f"k/{i}.wav",
                      stream_key=f"k/{i}.mp3", cover_key=f"k/{i}.png", peaks=make.PEAKS, published=True,
                      published_at=now - dt.timedelta(minutes=i), created_at=now, updated_at=now,
                      engine="offline-arranger")
                 for i, (title, lyrics) in enumerate(rows)]
        with models.db.atomic():
            for start in range(0, len(songs), 50):
                Song.insert_many(songs[start:start + 50]).execute()
        if not models.is_sqlite():
            models.db.execute_sql("ANALYZE song")  # the planner's estimates, which pick a search's path
    return [s["id"] for s in songs]


@pytest.mark.both_backends
def test_search_through_the_feeds_windows_finds_what_reading_every_match_finds(app, client, maker, monkeypatch):
    from app.main import feed
    from core import feed_rank

    monkeypatch.setattr(search, "CANDIDATES", 4)
    monkeypatch.setattr(search, "FREQUENT", 0.5)  # amber (every song) is walked along the date order
    monkeypatch.setattr(feed_rank, "WINDOW_START", 5)
    monkeypatch.setattr(feed_rank, "WINDOW_STEP", 2)
    rows = []
    for i in range(200):
        title = f"Ember {i}" if i % 5 == 3 else f"Song {i}"
        words = (["amber"] + (["cobalt"] if i % 4 == 1 else []) + (["dune"] if i in (7, 120, 190) else [])
                 + (["sienna"] if i in (30, 35) or (i >= 60 and i % 3 == 0) else []))  # 2 in the first window
        rows.append((title, "[verse]\n" + " ".join(words)))
    bulk(app, maker, rows)
    with connected(app):
        feed_rank.refresh()
        windows = feed_rank.read_windows()
    assert windows.total == 200 and [k for k, _ in windows.bounds] == [5, 10, 20, 40, 80, 160]
    feed.invalidate()

    def sql(q):
        database, seen, real = models.db.obj, [], models.db.obj.execute_sql
        monkeypatch.setattr(database, "execute_sql", lambda s, p=None, *a, **k: seen.append(s) or real(s, p, *a, **k))
        try:
            first, second = feed_ids(client, q), client.get("/", query_string={"q": q, "page": 2})
        finally:
            monkeypatch.setattr(database, "execute_sql", real)
        return first + CARD_ID.findall(text(second)), seen

    queries = ["amber", "cobalt", "dune", "sienna", "ember", "emb", "amber cobalt", "cobalt ember"]
    windowed = {q: sql(q) for q in queries}
    monkeypatch.setattr(feed, "search_windows", lambda: None)  # every match read, as without windows
    for q in queries:
        assert windowed[q][0] == sql(q)[0] and windowed[q][0], q
    # the title matches first, then the newest: "ember" lists titles only, the newest first
    assert windowed["ember"][0][:3] == feed_ids(client, "Ember")[:3]
    if not models.is_sqlite():  # and the windows were used: cobalt within one, amber walked, dune read whole
        assert any('"published_at" >=' in s for s in windowed["cobalt"][1])
        assert any("enable_bitmapscan = off" in s for s in windowed["amber"][1])
        assert not any('"published_at" >=' in s for s in windowed["dune"][1])


@pytest.mark.both_backends
def test_tiers_are_built_used_rebuilt_as_the_feed_grows_and_find_what_reading_every_match_finds(
        backend, app, client, maker, monkeypatch):
    """PostgreSQL: the feed refresh builds the tiers (text indexes of the newest 10, 20, 40
    public songs here), a search looks among the newest songs through them and lists what
    reading every match lists, and a tier that grew past twice its size is built again from a
    newer song and the old one dropped. SQLite: none is built (FTS5 answers without them)."""
    from app.main import feed
    from core import feed_rank

    monkeypatch.setattr(search, "CANDIDATES", 4)
    monkeypatch.setattr(search, "TIER_START", 10)
    monkeypatch.setattr(search, "FREQUENT", 2.0)  # nothing walked: every word through its index
    monkeypatch.setattr(feed_rank, "WINDOW_START", 5)
    monkeypatch.setattr(feed_rank, "WINDOW_STEP", 2)

    def rows(n):
        return [(f"Ember {i}" if i % 5 == 3 else f"Song {i}",
                 "[verse]\n" + " ".join(["amber"] + (["cobalt"] if i % 4 == 1 else []))) for i in range(n)]

    if backend == "sqlite":
        ids = bulk(app, maker, rows(100))
        with connected(app):
            assert feed_rank.refresh(tier_builds=100).tiers == [] and search.read_tiers() == ()
        assert feed_ids(client, "cobalt") == [sid for i, sid in enumerate(ids) if i % 4 == 1][:4]
        return

    def tiers():
        with connected(app):
            return {name for (name,) in models.db.execute_sql(
                "SELECT relname FROM pg_class WHERE relname ~ '^song_(search|title)_t[0-9]+_'").fetchall()}

    bulk(app, maker, rows(100))
    with connected(app):  # published two hours ago and before: the songs added below are newer
        Song.update(published_at=Song.published_at - dt.timedelta(hours=2)).execute()
        done = feed_rank.refresh(tier_builds=100).tiers
        windows = feed_rank.read_windows()
    assert done == ["built t10", "built t20", "built t40"]  # up to three quarters of the 100
    assert [k for k, _ in windows.tiers] == [10, 20, 40] and len(tiers()) == 6
    with connected(app):  # each tier starts at its k-th newest song's second: it holds those k
        for k, cutoff in windows.tiers:
            assert search._public_since(cutoff, 1000) >= k
    feed.invalidate()

    def sql(q):
        database, seen, real = models.db.obj, [], models.db.obj.execute_sql
        monkeypatch.setattr(database, "execute_sql", lambda s, p=None, *a, **k: seen.append((s, p)) or real(s, p, *a, **k))
        try:
            return feed_ids(client, q) + CARD_ID.findall(text(client.get("/", query_string={"q": q, "page": 2}))), seen
        finally:
            monkeypatch.setattr(database, "execute_sql", real)

    cutoffs = {cutoff for _, cutoff in windows.tiers}
    tiered = {q: sql(q) for q in ("cobalt", "ember", "amber cobalt")}
    # cobalt (a quarter of the songs) was looked for from a tier's own cutoff: its index answers
    assert any(p and cutoffs & set(p) for s, p in tiered["cobalt"][1] if '"published_at" >=' in s)
    monkeypatch.setattr(feed, "search_windows", lambda: None)  # every match read, as without windows
    for q, (ids, _) in tiered.items():
        assert ids == sql(q)[0] and ids, q

    # 61 newer songs: the tier of 10 now holds 71 (> 20) and is built again; so are 20 and 40, and
    # a tier of 80 is called for by 161 songs
    before = tiers()
    now = utcnow()
    bulk(app, maker, rows(61))
    with connected(app):
        done = feed_rank.refresh(tier_builds=100).tiers
        after = feed_rank.read_windows().tiers
    assert {"built t10", "built t20", "built t40", "built t80"} <= set(done)
    assert [k for k, _ in after] == [10, 20, 40, 80] and len(tiers()) == 8 and not (before & tiers())
    assert all(cutoff >= now - dt.timedelta(minutes=60) for k, cutoff in after if k <= 40)  # among the new songs

    with connected(app):  # a library that shrinks calls for fewer: the refresh drops the rest
        Song.update(published=False).where(Song.title.startswith("Song 1")).execute()
        search.maintain_tiers(public=30, max_builds=0)
    assert {int(search.TIER_NAME.match(n).group(2)) for n in tiers()} == {10, 20}  # 20 <= 3/4 of 30
