"""The feed keeps its aggregate rankings for FEED_CACHE_SECONDS, but never shows a song that is
no longer public: songs are read fresh on every request."""
import datetime as dt

import pytest

import models
from app.main import feed
from models import Song
from tests.helpers import connected
from tests.test_feed import add, count_queries, like_by, section, text, titles_in


@pytest.fixture
def app_overrides():
    return {"FEED_CACHE_SECONDS": 30.0}


@pytest.fixture(autouse=True)
def _empty_cache():
    feed._cache.clear()
    yield
    feed._cache.clear()


@pytest.fixture
def owner(app):
    from tests import song_factory as make

    with connected(app):
        return make.user("maker@example.com", "Maker")


def test_cached_rankings_cost_fewer_queries_and_drop_unpublished_songs_at_once(app, client, monkeypatch, owner):
    now = models.utcnow()
    hot = add(app, owner, "Hot Song", published_at=now - dt.timedelta(hours=3))
    add(app, owner, "Quiet Song", published_at=now - dt.timedelta(hours=1))
    like_by(app, hot, 3, now - dt.timedelta(hours=1))
    cold, html = count_queries(app, client, monkeypatch)
    assert titles_in(section(html, "trending"))[0] == "Hot Song"
    warm, html = count_queries(app, client, monkeypatch)
    assert warm < cold and titles_in(section(html, "trending"))[0] == "Hot Song"
    with connected(app):
        Song.get_by_id(hot.id).unpublish()
    html = text(client.get("/"))
    assert "Hot Song" not in html  # the cached ranking still names it; the fresh read drops it
    # a rename shows at once too: the cache holds ids, not songs
    with connected(app):
        Song.update(title="Renamed Quiet").where(Song.title == "Quiet Song").execute()
    assert "Renamed Quiet" in text(client.get("/"))
