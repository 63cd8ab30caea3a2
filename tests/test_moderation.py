"""Moderation: reporting a song, the admins' moderation page (hide, unhide, dismiss, suspend,
lift, the action log), what hidden songs and suspended accounts look like to others and to their
owner, and the LYRICS_BLOCKLIST word filter at submit (Create form and API)."""
from __future__ import annotations

import pytest

import models
from app.main import feed
from config import Config
from models import Generation, ModerationAction, Report, Song, User
from tests import song_factory as make
from tests.conftest import AuthActions
from tests.helpers import connected
from tests.test_feed import ids_in, like_by, section, text

pytestmark = pytest.mark.sqlite_only

HX = {"HX-Request": "true"}
THANKS = "Thanks — a moderator will look at it."


@pytest.fixture
def app_overrides():
    return {"LYRICS_BLOCKLIST": "forbiddenword, Bad Phrase"}


def person(app, email, name="", admin=False):
    """A signed-in client for a newly registered person (and the User row)."""
    client = app.test_client()
    auth = AuthActions(client)
    assert auth.register(email, name=name or email.split("@")[0].title()).status_code == 303
    with connected(app):
        if admin:
            User.update(is_admin=True).where(User.email == email).execute()
        return auth, User.get(User.email == email)


def add(app, owner, title, files=False, **kwargs):
    """A finished song (published unless told); with `files`, its audio and cover are stored."""
    with connected(app):
        return make.song(owner, title, app=app if files else None, **kwargs)


def reports(app, song_id=None):
    with connected(app):
        query = Report.select().order_by(Report.id)
        return list(query.where(Report.song == song_id) if song_id else query)


def log(app):
    with connected(app):
        return [(a.action, a.target_kind, a.target_id, a.actor.email if a.actor else None)
                for a in ModerationAction.select().order_by(ModerationAction.id)]


@pytest.fixture
def maker(app):
    return person(app, "maker@example.com", "Maker")


@pytest.fixture
def boss(app):
    return person(app, "boss@example.com", "Boss", admin=True)[0]


# ------------------------------------------------------------------------------------ reports
def test_reporting_a_song(app, client, maker):
    maker_auth, owner = maker
    song = add(app, owner, "Spammy Tune")
    private = add(app, owner, "Kept Private", published=False)
    alice, _ = person(app, "alice@example.com")

    page = text(alice.client.get(f"/songs/{song.id}"))
    assert 'data-report' in page and 'name="reason" value="spam"' in page
    assert "data-report" not in text(client.get(f"/songs/{song.id}"))  # visitors get no report form
    assert "data-report" not in text(maker_auth.client.get(f"/songs/{song.id}"))  # nor does its owner

    # no CSRF token: refused, nothing written
    assert alice.client.post(f"/songs/{song.id}/report", data={"reason": "spam"}).status_code == 400
    # a reason that is not on the list, or details over 1000 characters: 400, nothing written
    bad = alice.post(f"/songs/{song.id}/report", {"reason": "boring"})
    assert bad.status_code == 400 and "Choose what is wrong" in text(bad)
    assert alice.post(f"/songs/{song.id}/report", {"reason": "spam", "details": "x" * 1001}).status_code == 400
    assert reports(app) == []

    ok = alice.post(f"/songs/{song.id}/report", {"reason": "spam", "details": "Links to a scam site"})
    assert ok.status_code == 303 and ok.headers["Location"].endswith(f"/songs/{song.id}")
    assert THANKS in text(alice.client.get(ok.headers["Location"]))
    # reporting again is answered the same, and updates the one open report
    again = alice.post(f"/songs/{song.id}/report", {"reason": "hateful"})
    assert again.status_code == 303 and THANKS in text(alice.client.get(again.headers["Location"]))
    [row] = reports(app)
    assert (row.reason, row.status, row.details) == ("hateful", "open", "")
    # HTMX: the answer is the fragment
    frag = alice.post(f"/songs/{song.id}/report", {"reason": "spam"}, headers=HX)
    assert frag.status_code == 200 and "data-report-sent" in text(frag) and "<html" not in text(frag)
    assert len(reports(app)) == 1

    # songs the person cannot see are 404, reported or not; visitors are sent to log in
    assert alice.post(f"/songs/{private.id}/report", {"reason": "spam"}).status_code == 404
    assert alice.post(f"/songs/{'f' * 32}/report", {"reason": "spam"}).status_code == 404
    visitor = AuthActions(app.test_client())
    resp = visitor.post(f"/songs/{song.id}/report", {"reason": "spam"})
    assert resp.status_code == 303 and "/auth/login" in resp.headers["Location"]
    # one's own song cannot be reported (unpublish it instead)
    own = maker_auth.post(f"/songs/{song.id}/report", {"reason": "spam"})
    assert own.status_code == 400 and "your own song" in text(own)
    assert len(reports(app)) == 1


def test_reports_are_rate_limited(app, maker):
    app.extensions["tunesmith_config"].REPORT_RATE_LIMIT = "2 per minute"
    song = add(app, maker[1], "Some Song")
    alice, _ = person(app, "alice@example.com")
    codes = [alice.post(f"/songs/{song.id}/report", {"reason": "spam"}).status_code for _ in range(3)]
    assert codes == [303, 303, 429]


# ------------------------------------------------------------------------------- admin page
def test_moderation_page_is_for_admins_only(app, client, maker):
    song = add(app, maker[1], "Some Song")
    assert client.get("/admin/moderation").status_code == 302  # visitors log in first
    alice, _ = person(app, "alice@example.com")
    assert alice.client.get("/admin/moderation").status_code == 403  # the same guard as /admin/users
    assert alice.post(f"/admin/moderation/songs/{song.id}/hide", {"reason": "no"}).status_code == 403
    with connected(app):
        assert Song.get_by_id(song.id).hidden_at is None
    boss = person(app, "boss@example.com", admin=True)[0]
    resp = boss.client.get("/admin/moderation")
    assert resp.status_code == 200 and 'data-open-groups="0"' in text(resp)
    assert boss.client.post(f"/admin/moderation/songs/{song.id}/hide", data={"reason": "x"}).status_code == 400  # CSRF
    assert boss.post(f"/admin/moderation/songs/{'f' * 32}/hide", {"reason": "x"}).status_code == 404


def test_hide_takes_a_song_out_of_public_view_and_unhide_restores_it(app, client, maker, boss, monkeypatch):
    maker_auth, owner = maker
    song = add(app, owner, "Scam Anthem", files=True, lyrics="[verse]\nclick the link")
    add(app, owner, "Honest Song")
    like_by(app, song, 2, models.utcnow())
    alice, _ = person(app, "alice@example.com")
    alice.post(f"/songs/{song.id}/report", {"reason": "spam", "details": "Scam links in the lyrics"})

    page = text(boss.client.get("/admin/moderation"))
    assert f'data-report-song="{song.id}" data-report-count="1"' in page
    assert "Scam links in the lyrics" in page and "alice@example.com" in page and "Spam or misleading" in page

    monkeypatch.setattr(app.extensions["tunesmith_config"], "FEED_CACHE_SECONDS", 30.0)
    feed._cache.clear()
    home = text(client.get("/"))
    assert song.id in ids_in(section(home, "trending"))  # the ranking is cached now

    assert boss.post(f"/admin/moderation/songs/{song.id}/hide", {"reason": ""}).status_code == 422
    resp = boss.post(f"/admin/moderation/songs/{song.id}/hide", {"reason": "Links to a scam"})
    assert resp.status_code == 303
    for html in (text(client.get("/")), text(client.get("/?q=Scam")), text(alice.client.get("/"))):
        assert "Scam Anthem" not in html
    assert "Honest Song" in text(client.get("/"))
    for path in (f"/songs/{song.id}", f"/songs/{song.id}/audio", f"/songs/{song.id}/cover"):
        assert client.get(path).status_code == 404
        assert alice.client.get(path).status_code == 404
    assert alice.post(f"/songs/{song.id}/report", {"reason": "spam"}).status_code == 404
    # the owner still has it, and is told why it is hidden
    own = maker_auth.client.get(f"/songs/{song.id}")
    assert own.status_code == 200 and "Hidden by moderation: Links to a scam" in text(own)
    library = text(maker_auth.client.get("/library"))
    assert f'data-song-id="{song.id}"' in library and "Hidden by moderation" in library

    page = text(boss.client.get("/admin/moderation"))
    assert 'data-open-groups="0"' in page and f'data-hidden-song="{song.id}"' in page  # reports closed as actioned
    assert [r.status for r in reports(app, song.id)] == ["actioned"]

    assert boss.post(f"/admin/moderation/songs/{song.id}/unhide", headers=HX).status_code == 200
    assert client.get(f"/songs/{song.id}").status_code == 200
    assert "Scam Anthem" in text(client.get("/"))
    assert "Hidden by moderation" not in text(maker_auth.client.get(f"/songs/{song.id}"))
    assert boss.post(f"/admin/moderation/songs/{song.id}/unhide").status_code == 409  # not hidden any more
    assert log(app) == [("hide", "song", song.id, "boss@example.com"), ("unhide", "song", song.id, "boss@example.com")]
    page = text(boss.client.get("/admin/moderation"))
    assert 'data-moderation-action="hide"' in page and 'data-actor="boss@example.com"' in page


@pytest.mark.both_backends
def test_dismiss_closes_the_reports_and_keeps_the_song(app, client, maker, boss):
    song = add(app, maker[1], "Edgy But Fine")
    other = add(app, maker[1], "Also Reported")
    for email, reason in (("alice@example.com", "violent"), ("bob@example.com", "violent"),
                          ("carol@example.com", "other")):
        reporter, _ = person(app, email)
        assert reporter.post(f"/songs/{song.id}/report", {"reason": reason}).status_code == 303
    assert reporter.post(f"/songs/{other.id}/report", {"reason": "spam"}).status_code == 303

    page = text(boss.client.get("/admin/moderation"))
    assert 'data-open-groups="2"' in page
    assert page.index(f'data-report-song="{song.id}" data-report-count="3"') < page.index(
        f'data-report-song="{other.id}" data-report-count="1"')  # most reported first
    assert "Violent or dangerous × 2" in page

    frag = boss.post(f"/admin/moderation/songs/{song.id}/dismiss", headers=HX)
    assert frag.status_code == 200 and 'data-open-groups="1"' in text(frag) and "<html" not in text(frag)
    assert {r.status for r in reports(app, song.id)} == {"dismissed"}
    assert "Edgy But Fine" in text(client.get("/"))
    assert boss.post(f"/admin/moderation/songs/{song.id}/dismiss").status_code == 409  # nothing open
    assert log(app) == [("dismiss", "song", song.id, "boss@example.com")]


@pytest.mark.both_backends
def test_suspending_an_account_hides_its_songs_and_lifting_restores_them(app, client, maker, boss):
    maker_auth, owner = maker
    song = add(app, owner, "Bad Actor Hit", categories=["Pop"])
    second = add(app, owner, "Bad Actor B-Side", categories=["Pop"])
    with connected(app):
        other = make.user("fine@example.com")
    add(app, other, "Someone Else", categories=["Pop"])
    alice, _ = person(app, "alice@example.com")
    alice.post(f"/songs/{song.id}/report", {"reason": "hateful"})

    assert boss.post(f"/admin/moderation/users/{owner.id}/suspend", {"song_id": song.id}).status_code == 303
    home = text(client.get("/"))
    assert "Bad Actor" not in home and "Someone Else" in home
    assert "Bad Actor" not in text(client.get("/?category=pop"))
    assert "Bad Actor" not in text(client.get("/?q=bad+actor")) and "Someone Else" in text(client.get("/?q=someone"))
    with connected(app):  # search's candidates, read without the authors' join, leave them out too
        alone = {s.id for s in Song.select(Song.id).where(Song.publicly_visible_alone())}
        assert alone == {s.id for s in Song.public()} and song.id not in alone
    assert client.get(f"/songs/{second.id}").status_code == 404
    assert alice.client.get(f"/songs/{song.id}").status_code == 404
    assert "data-credits" not in text(maker_auth.client.get("/"))  # signed out
    assert maker_auth.login("maker@example.com").status_code == 403  # and cannot sign in
    assert [r.status for r in reports(app, song.id)] == ["actioned"]
    assert boss.post(f"/admin/moderation/users/{owner.id}/suspend",
                     {"song_id": second.id}).status_code == 303  # again: still suspended, logged

    with connected(app):  # an admin cannot suspend themself
        me = User.get(User.email == "boss@example.com")
    assert boss.post(f"/admin/moderation/users/{me.id}/suspend").status_code == 409

    assert boss.post(f"/admin/moderation/users/{owner.id}/lift").status_code == 303
    assert "Bad Actor Hit" in text(client.get("/")) and client.get(f"/songs/{second.id}").status_code == 200
    assert boss.post(f"/admin/moderation/users/{owner.id}/lift").status_code == 409
    assert maker_auth.login("maker@example.com").status_code == 303

    # the people page's suspend/restore is the same step, logged the same way
    assert boss.post(f"/admin/users/{owner.id}/suspend", {"suspended": "1"}).status_code == 303
    assert "Bad Actor Hit" not in text(client.get("/"))
    assert boss.post(f"/admin/users/{owner.id}/suspend", {"suspended": "0"}).status_code == 303
    assert [entry[0] for entry in log(app)] == ["suspend", "suspend", "lift", "suspend", "lift"]
    assert {entry[1:] for entry in log(app)} == {("user", str(owner.id), "boss@example.com")}


# ------------------------------------------------------------------------------- word filter
def balance(app, email):
    with connected(app):
        return User.get(User.email == email).balance()


def test_blocklist_refuses_a_submit_from_the_form_and_the_api(app):
    from tests.test_api import bearer, make_token

    alice, _ = person(app, "alice@example.com")
    before = balance(app, "alice@example.com")
    form = {"mode": "description", "description": "a ballad about FORBIDDENWORD nights", "duration": "12",
            "variants": "1"}
    resp = alice.post("/create", form)
    assert resp.status_code == 422 and "There is a blocked word in the description" in text(resp)
    resp = alice.post("/create", {"mode": "lyrics", "prompt": "pop", "lyrics": "[verse]\nsuch a bad\n  phrase",
                                  "duration": "12", "variants": "1"})
    assert resp.status_code == 422 and "blocked word in the lyrics" in text(resp)

    token = make_token(alice)
    api = alice.client.post("/api/v1/generate_with_lyrics", headers=bearer(token),
                            json={"prompt": "pop", "lyrics": "the forbiddenword chorus", "duration": 12})
    assert api.status_code == 422
    assert api.get_json()["error"]["code"] == "blocked_words" and api.get_json()["error"]["field"] == "lyrics"
    api = alice.client.post("/api/v1/generate_from_described_lyrics", headers=bearer(token),
                            json={"prompt": "Bad Phrase", "description": "a love song", "duration": 12})
    assert api.status_code == 422 and api.get_json()["error"]["field"] == "prompt"
    assert balance(app, "alice@example.com") == before
    with connected(app):
        assert Generation.select().count() == 0 and Song.select().count() == 0

    # whole words only: a longer word that contains a blocked one is fine
    ok = alice.post("/create", {"mode": "description", "description": "forbiddenwords are fine", "duration": "12",
                                "variants": "1"})
    assert ok.status_code == 303 and balance(app, "alice@example.com") == before - 1


def test_blocklist_setting_merges_the_list_and_the_file(tmp_path):
    path = tmp_path / "blocked.txt"
    path.write_text("# one a line\nSome  Phrase\nword\n\n", encoding="utf-8")
    assert Config(LYRICS_BLOCKLIST=" Word, other ,", LYRICS_BLOCKLIST_FILE=str(path)).LYRICS_BLOCKLIST == (
        "word", "other", "some phrase")
    assert Config(LYRICS_BLOCKLIST="").LYRICS_BLOCKLIST == ()
