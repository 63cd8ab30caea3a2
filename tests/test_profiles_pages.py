"""Profiles and following as people see them: handles chosen at sign-up or in the profile
settings (and derived when none is chosen, also for the accounts that existed before), the
public page at /u/<handle> with its songs and totals, following and the Following tab on
Discover, avatar uploads, and CSRF on follow. The unique handle, the follow pair and the
migration run on SQLite and PostgreSQL."""
from __future__ import annotations

import datetime as dt
import importlib
import io
import re

import peewee as pw
import pytest
from PIL import Image

from app.migrate import migrator_for
from core.storage import get_storage
from models import Follow, Playlist, User, utcnow
from tests import song_factory as make
from tests.conftest import AuthActions, csrf_from
from tests.helpers import connected

pytestmark = pytest.mark.sqlite_only  # pages and forms; the SQL that differs runs on both (marked)

PASSWORD = "a quiet harbour at dawn"
HX = {"HX-Request": "true"}


def text(resp) -> str:
    return resp.get_data(as_text=True)


def register(client, email, name="", handle=""):
    token = csrf_from(text(client.get("/auth/register")))
    return client.post("/auth/register", data={"email": email, "password": PASSWORD, "name": name,
                                               "handle": handle, "csrf_token": token})


def signed_in(app, email, name="", handle=""):
    """A new client with a new account, signed in (registration signs in)."""
    client = app.test_client()
    resp = register(client, email, name, handle)
    assert resp.status_code == 303, text(resp)
    return client


def row(app, email) -> User | None:
    with connected(app):
        return User.get_or_none(User.email == email)


def song_ids(html: str) -> list[str]:
    return re.findall(r'data-song-id="([0-9a-f]{32})" data-status', html)


def meta(html, prop):
    m = re.search(rf'<meta (?:property|name)="{re.escape(prop)}" content="([^"]*)"', html)
    return m and m.group(1)


def png_bytes(size=(300, 200), color=(200, 40, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def post_profile(client, data, files=None):
    token = csrf_from(text(client.get("/settings/profile")))
    form = {"csrf_token": token, **data}
    for name, (content, filename) in (files or {}).items():
        form[name] = (io.BytesIO(content), filename)
    return client.post("/settings/profile", data=form, content_type="multipart/form-data")


def current_form(client) -> dict:
    html = text(client.get("/settings/profile"))
    name = re.search(r'name="name"[^>]*value="([^"]*)"', html)
    handle = re.search(r'name="handle"[^>]*value="([^"]*)"', html)
    return {"name": name.group(1) if name else "", "handle": handle.group(1) if handle else "",
            "bio": re.search(r'<textarea[^>]*name="bio"[^>]*>\s*(.*?)</textarea>', html, re.S).group(1)}


# ------------------------------------------------------------------------------ handles at sign-up
@pytest.mark.parametrize("handle, message", [
    ("ab", "at least 3 characters"),
    ("x" * 31, "at most 30 characters"),
    ("dj-night!", "Use only lower-case letters"),
    ("zoë", "Use only lower-case letters"),
    ("Admin", "is reserved"),
    ("settings", "is reserved"),
])
def test_sign_up_refuses_a_bad_handle_and_creates_nothing(app, client, handle, message):
    resp = register(client, "newcomer@example.com", "Newcomer", handle)
    assert resp.status_code == 422
    assert message in text(resp)
    assert 'name="handle"' in text(resp)  # the form, again
    assert row(app, "newcomer@example.com") is None


def test_sign_up_handle_is_lower_cased_and_a_taken_one_is_refused_case_insensitively(app, client):
    resp = register(client, "first@example.com", "First", "  Night_Owl ")
    assert resp.status_code == 303
    assert row(app, "first@example.com").handle == "night_owl"
    assert client.get("/u/night_owl").status_code == 200

    other = app.test_client()
    resp = register(other, "second@example.com", "Second", "NIGHT_OWL")
    assert resp.status_code == 422
    assert "That handle is taken" in text(resp)
    assert row(app, "second@example.com") is None


@pytest.mark.both_backends
def test_sign_ups_racing_for_a_handle_are_settled_by_the_unique_index(app, monkeypatch):
    """Two sign-ups at the same moment both see a handle free; the database refuses the second
    insert: a derived handle moves on to the next suffix, a chosen one is refused as taken."""
    from core import profiles

    signed_in(app, "dana@example.com", "Dana Lee", "dana_lee")
    monkeypatch.setattr(profiles, "_taken_near", lambda base: set())  # the other one not seen yet
    monkeypatch.setattr(profiles, "handle_taken", lambda handle, except_user_id=None: False)
    signed_in(app, "dana.two@example.com", "Dana Lee")
    assert row(app, "dana.two@example.com").handle == "dana_lee2"

    resp = register(app.test_client(), "dana.three@example.com", "Dana", "dana_lee")
    assert resp.status_code == 422 and "That handle is taken" in text(resp)
    assert row(app, "dana.three@example.com") is None
    with connected(app):
        assert User.select().where(User.handle.startswith("dana")).count() == 2


def test_sign_ups_without_a_handle_get_one_derived_from_name_or_address(app):
    signed_in(app, "dana@example.com", "Dana Lee")
    signed_in(app, "dana.two@example.com", "Dana Lee")
    signed_in(app, "zed.x+tunes@example.com")
    signed_in(app, "al@example.com", "Al")
    signed_in(app, "boss@example.com", "Admin")
    assert row(app, "dana@example.com").handle == "dana_lee"
    assert row(app, "dana.two@example.com").handle == "dana_lee2"
    assert row(app, "zed.x+tunes@example.com").handle == "zed_x_tunes"
    assert row(app, "al@example.com").handle == "al_"
    assert row(app, "boss@example.com").handle == "admin2"  # reserved words are never given


@pytest.mark.both_backends
def test_the_migration_gives_existing_accounts_unique_handles_in_account_order(app, db):
    with db.atomic():  # accounts from before handles: no handle, and the index not built yet
        db.execute_sql('DROP INDEX "user_handle"')
        first = make.user("alice@example.com", "Alice")
        second = make.user("alice.b@example.com", "Alice")
        make.user("bob.smith@example.com")
        make.user("z@example.com", "Zoë Ünal")
        kept = make.user("kept@example.com", "Kept")
        User.update(handle="already_mine").where(User.id == kept.id).execute()
    migration = importlib.import_module("app.migrations.0035_profiles")
    with db.atomic():
        migration.upgrade(db, migrator_for(db))

    handles = {u.email: u.handle for u in User.select()}
    assert handles["alice@example.com"] == "alice" and handles["alice.b@example.com"] == "alice2"
    assert handles["bob.smith@example.com"] == "bob_smith"
    assert handles["z@example.com"] == "zoe_unal"
    assert handles["kept@example.com"] == "already_mine"
    assert first.id < second.id  # the older account keeps the plain handle
    assert any(ix.unique and ix.columns == ["handle"] for ix in db.get_indexes("user"))
    with pytest.raises(pw.IntegrityError), db.atomic():
        User.update(handle="alice").where(User.id == second.id).execute()


# ------------------------------------------------------------------------------ the profile page
@pytest.fixture
def maker(app):
    """Mia, signed in, with songs in every state and a bio."""
    client = signed_in(app, "mia@example.com", "Mia Rivers", "mia")
    with connected(app):
        mia = User.get(User.email == "mia@example.com")
        User.update(bio="Synths at midnight.").where(User.id == mia.id).execute()
        now = utcnow()
        old = make.song(mia, "Old Tune", listen_count=5, like_count=2, published_at=now - dt.timedelta(days=2))
        new = make.song(mia, "New Tune", listen_count=3, like_count=1, published_at=now - dt.timedelta(hours=1))
        private = make.song(mia, "Private Tune", published=False, listen_count=100, like_count=50)
        failed = make.song(mia, "Failed Tune", status="failed", published=False)
        make.song(mia, "Hidden Tune", hidden_at=now, listen_count=40, like_count=40)  # hidden by a moderator
        Playlist.create(user=mia, title="Late Night Mix", public=True)
        Playlist.create(user=mia, title="Secret Drafts", public=False)
        stranger = make.song(make.user("stranger@example.com", "Stranger"), "Someone Else's")
    return {"client": client, "old": old.id, "new": new.id, "private": private.id, "failed": failed.id,
            "stranger": stranger.id}


def test_profile_page_shows_published_songs_newest_first_and_totals(app, client, maker):
    resp = client.get("/u/mia")
    assert resp.status_code == 200
    html = text(resp)
    assert song_ids(html) == [maker["new"], maker["old"]]  # not the private, failed, hidden or others' songs
    assert "Hidden Tune" not in html
    assert "Late Night Mix" in html and "Secret Drafts" not in html
    assert 'data-total-songs="2"' in html
    assert 'data-total-listens="8"' in html and 'data-total-likes="3"' in html
    assert 'data-followers="0"' in html
    assert "Mia Rivers" in html and "@mia" in html and "Synths at midnight." in html
    assert "Log in to follow" in html  # a visitor
    assert meta(html, "og:type") == "profile"
    assert meta(html, "og:title") == "Mia Rivers (@mia)"
    assert meta(html, "og:url").endswith("/u/mia")
    assert "Synths at midnight." in meta(html, "og:description")
    # the maker's name on a song links to the profile
    song_page = text(client.get(f"/songs/{maker['new']}"))
    assert 'href="/u/mia"' in song_page
    assert 'href="/u/mia"' in text(client.get("/"))
    # /u/MIA is the same page, at its canonical address
    resp = client.get("/u/MIA")
    assert resp.status_code == 301 and resp.headers["Location"].endswith("/u/mia")



@pytest.mark.both_backends
def test_profile_totals_follow_publishing_listens_likes_hiding_follows_and_deletes_at_once(app, client, maker):
    from core import moderation, profiles
    from models import Song, db

    def totals():
        html = text(client.get("/u/mia"))
        found = [re.search(rf'data-{key}="(\d+)"', html) for key in
                 ("total-songs", "total-listens", "total-likes", "followers")]
        return tuple(int(m.group(1)) for m in found)

    mia = AuthActions(maker["client"])
    assert totals() == (2, 8, 3, 0)
    assert mia.post(f"/songs/{maker['private']}/publish").status_code in (200, 303)  # 100 listens, 50 likes
    assert totals() == (3, 108, 53, 0)
    with connected(app):
        stranger = User.get(User.email == "stranger@example.com")
        new = Song.get_by_id(maker["new"])
        assert new.count_listen("v:visitor") and new.set_like(stranger, True)
        Follow.create(follower=stranger, followee=new.user_id)
    assert totals() == (3, 109, 54, 1)
    with connected(app):
        moderation.hide(new, make.user("mod@example.com", "Mod"), "spam")  # 4 listens, 2 likes
    assert totals() == (2, 105, 52, 1)
    with connected(app):
        moderation.unhide(new, User.get(User.email == "mod@example.com"))
        Follow.delete().execute()
    assert mia.post(f"/songs/{maker['private']}/unpublish").status_code in (200, 303)
    assert totals() == (2, 9, 4, 0)
    assert mia.post(f"/songs/{maker['new']}/delete").status_code in (200, 303)
    assert totals() == (1, 5, 2, 0)
    with connected(app):  # the migration's recount agrees with the counters
        profiles.install_totals(db.obj)
    assert totals() == (1, 5, 2, 0)


def test_unknown_suspended_and_deleted_profiles_are_404(app, client, maker):
    assert client.get("/u/nobody_here").status_code == 404
    assert client.get("/u/" + "x" * 200).status_code == 404
    with connected(app):
        User.update(suspended_at=utcnow()).where(User.email == "mia@example.com").execute()
    assert client.get("/u/mia").status_code == 404
    assert client.get("/u/mia/avatar").status_code == 404
    with connected(app):
        User.update(suspended_at=None, deleted_at=utcnow()).where(User.email == "mia@example.com").execute()
    assert client.get("/u/mia").status_code == 404


# ------------------------------------------------------------------------------ following
def test_follow_toggles_and_the_following_tab_lists_followed_makers_songs(app, maker):
    reader = signed_in(app, "reader@example.com", "Reader")
    auth = AuthActions(reader)
    html = text(reader.get("/u/mia"))
    assert 'data-following="false"' in html and re.search(r"data-following=\"false\">\s*Follow</button>", html)

    empty = text(reader.get("/?tab=following"))
    assert 'aria-current="page">Following' in empty and "You do not follow anyone yet" in empty
    assert song_ids(empty) == []

    resp = auth.post("/u/mia/follow", {"next": "/u/mia"})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/u/mia")
    html = text(reader.get("/u/mia"))
    assert 'data-followers="1"' in html and 'data-following="true"' in html and "Unfollow" in html
    with connected(app):
        assert Follow.select().count() == 1

    # asking to follow again (a double click) does not undo it
    auth.post("/u/mia/follow", {"follow": "1"})
    with connected(app):
        assert Follow.select().count() == 1

    tab = text(reader.get("/?tab=following"))
    assert song_ids(tab) == [maker["new"], maker["old"]]
    assert maker["private"] not in tab and maker["stranger"] not in tab
    more = reader.get("/?tab=following", headers={**HX, "HX-Target": "feed-body"})
    assert song_ids(text(more)) == [maker["new"], maker["old"]] and "<html" not in text(more)

    # HTMX: the button comes back alone, unfollowed
    resp = reader.post("/u/mia/follow", data={"follow": "0", "csrf_token": auth.csrf("/")}, headers=HX)
    assert resp.status_code == 200
    fragment = text(resp)
    assert 'id="follow-box"' in fragment
    assert 'data-followers="0"' in fragment and 'data-following="false"' in fragment
    assert "<html" not in fragment
    assert song_ids(text(reader.get("/?tab=following"))) == []

    # a suspended maker's songs leave the tab
    auth.post("/u/mia/follow", {"follow": "1"})
    with connected(app):
        User.update(suspended_at=utcnow()).where(User.email == "mia@example.com").execute()
    assert song_ids(text(reader.get("/?tab=following"))) == []


def test_following_tab_sends_visitors_to_log_in_and_nobody_follows_themselves(app, client, maker):
    resp = client.get("/?tab=following")
    assert resp.status_code == 302 and "/auth/login" in resp.headers["Location"]
    assert "tab%3Dfollowing" in resp.headers["Location"] or "tab=following" in resp.headers["Location"]

    mia = maker["client"]
    html = text(mia.get("/u/mia"))
    assert 'class="follow-form"' not in html and "Edit profile" in html
    resp = AuthActions(mia).post("/u/mia/follow", {"follow": "1"}, headers=HX)
    assert resp.status_code == 422 and "cannot follow yourself" in text(resp)
    with connected(app):
        assert Follow.select().count() == 0


def test_follow_requires_the_csrf_token(app, maker):
    reader = signed_in(app, "reader@example.com", "Reader")
    resp = reader.post("/u/mia/follow", data={"follow": "1"})
    assert resp.status_code == 400
    resp = reader.post("/u/mia/follow", data={"follow": "1", "csrf_token": "not-the-token"}, headers=HX)
    assert resp.status_code == 400
    with connected(app):
        assert Follow.select().count() == 0
    assert 'data-followers="0"' in text(reader.get("/u/mia"))


# ------------------------------------------------------------------------------ profile settings
def test_profile_settings_refuse_bad_or_taken_handles_and_change_nothing(app, maker):
    signed_in(app, "bob@example.com", "Bob", "bob")
    mia = maker["client"]
    assert current_form(mia) == {"name": "Mia Rivers", "handle": "mia", "bio": "Synths at midnight."}
    for handle, status, message in [("no", 422, "at least 3 characters"), ("mia rivers", 422, "Use only"),
                                    ("playlists", 422, "is reserved"), ("BOB", 422, "That handle is taken"),
                                    ("", 422, "at least 3 characters")]:
        resp = post_profile(mia, {"name": "Changed Name", "handle": handle, "bio": "Changed bio"})
        assert resp.status_code == status, handle
        assert message in text(resp), handle
        assert current_form(mia) == {"name": "Mia Rivers", "handle": "mia", "bio": "Synths at midnight."}

    resp = post_profile(mia, {"name": "Mia", "handle": "mia", "bio": "x" * 501})
    assert resp.status_code == 422 and "Keep the bio to 500 characters" in text(resp)
    assert row(app, "mia@example.com").bio == "Synths at midnight."

    resp = post_profile(mia, {"name": "  Mia   R. ", "handle": " Mia_R ", "bio": "New bio\r\nline two"})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/settings/profile")
    user = row(app, "mia@example.com")
    assert (user.name, user.handle, user.bio) == ("Mia R.", "mia_r", "New bio\nline two")
    assert mia.get("/u/mia").status_code == 404
    assert "New bio" in text(mia.get("/u/mia_r"))


def test_settings_give_an_account_without_a_handle_one(app):
    client = signed_in(app, "scripted@example.com", "Scripted Person")
    with connected(app):
        User.update(handle=None).where(User.email == "scripted@example.com").execute()
    assert current_form(client)["handle"] == "scripted_person"
    assert row(app, "scripted@example.com").handle == "scripted_person"


def test_avatar_upload_is_converted_and_bad_uploads_store_nothing(app, maker):
    mia = maker["client"]
    uid = row(app, "mia@example.com").id
    storage = get_storage(app.extensions["tunesmith_config"])
    prefix = f"users/{uid}/avatar/"
    same = {"name": "Mia Rivers", "handle": "mia", "bio": "Synths at midnight."}

    resp = post_profile(mia, same, {"avatar": (png_bytes(), "me.png")})
    assert resp.status_code == 303
    keys = storage.list(prefix)
    assert len(keys) == 1 and row(app, "mia@example.com").avatar_key == keys[0]
    with Image.open(io.BytesIO(storage.get(keys[0]))) as img:
        assert img.format == "WEBP" and img.size == (256, 256)
    html = text(mia.get("/u/mia"))
    src = re.search(r'<img src="([^"]+)"[^>]*data-avatar', html).group(1)
    assert src.startswith("/u/mia/avatar")
    assert meta(html, "og:image")
    resp = mia.get(src)
    assert resp.status_code == 302
    served = mia.get(resp.headers["Location"])
    assert served.status_code == 200 and served.data == storage.get(keys[0])

    text_file = b"this is not a picture at all\n" * 20
    too_large = png_bytes()[:64] + b"\0" * (5 * 1024 * 1024)
    bomb = io.BytesIO()
    Image.new("1", (9000, 5000)).save(bomb, "PNG")  # 45 megapixels in a few kilobytes
    for content, status, message in [(text_file, 422, "not an image we can read"),
                                     (too_large, 413, "larger than 5 MB"),
                                     (bomb.getvalue(), 413, "too many pixels")]:
        resp = post_profile(mia, {**same, "name": "Not Saved"}, {"avatar": (content, "me.png")})
        assert resp.status_code == status
        assert message in text(resp)
        assert storage.list(prefix) == keys  # nothing stored, the old picture kept
        user = row(app, "mia@example.com")
        assert user.avatar_key == keys[0] and user.name == "Mia Rivers"

    # a new picture replaces the old one; removing it leaves none
    assert post_profile(mia, same, {"avatar": (png_bytes((64, 640)), "tall.png")}).status_code == 303
    new_keys = storage.list(prefix)
    assert len(new_keys) == 1 and new_keys != keys
    assert post_profile(mia, {**same, "remove_avatar": "y"}).status_code == 303
    assert storage.list(prefix) == [] and row(app, "mia@example.com").avatar_key is None
    assert mia.get("/u/mia/avatar").status_code == 404
