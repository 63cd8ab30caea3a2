"""Listening and sharing in a real browser against gunicorn + the GPU worker: a playlist plays
through its songs with the play queue (Next, the n key, then shuffle) and a reload resumes it at
the same song; a listener's report reaches the moderation page, and hiding the song there takes it
out of Discover for everyone while its owner is told why."""
from __future__ import annotations

import re
import secrets
import subprocess

import pytest

from tests.browser.conftest import DESKTOP
from tests.browser.stack import ROOT, _bin

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def maker(stack):
    """A maker with four published songs and a public playlist of three of them, seeded over HTTP."""
    c = stack.client().register(f"maker-{secrets.token_hex(3)}@example.com", name="Maker")
    ids = c.create(description="a bright folk song about the harbour", variants="2", duration="10")
    ids += c.create(description="a slow piano piece for rainy evenings", variants="2", duration="10")
    c.wait_processed(ids)
    for sid in ids:
        c.post(f"/songs/{sid}/publish")
    made = c.post("/playlists", {"title": "Harbour evenings", "description": "three for the road", "public": "1"})
    playlist = made.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
    for sid in ids[:3]:
        c.post(f"/playlists/{playlist}/add", {"song_id": sid})
    return {"client": c, "songs": ids, "playlist": playlist}


def signed_in(new_context, client):
    ctx = new_context(DESKTOP)
    ctx.add_cookies(client.cookies())
    return ctx.new_page()


def playing(page) -> str:
    page.wait_for_function("() => { const a = document.querySelector('#player audio');"
                           " return a && !a.paused && a.currentTime > 0.05; }", timeout=10_000)
    return page.locator("#player").get_attribute("data-song-id")


def test_a_playlist_plays_through_with_next_then_shuffle_and_a_reload_resumes_it(new_context, maker):
    page = new_context(DESKTOP).new_page()  # a visitor: the playlist is public
    page.goto(f"/playlists/{maker['playlist']}")
    order = page.locator("ol[data-playlist-id] > li[data-song-id]").evaluate_all(
        "els => els.map(e => e.dataset.songId)")
    assert order == maker["songs"][:3]
    page.locator(f"li[data-song-id='{order[0]}']").get_by_role("button", name=re.compile("^Play ")).click()
    player = page.locator("#player")
    assert playing(page) == order[0]
    assert player.get_attribute("data-queue-length") == "3"
    player.get_by_role("button", name="Next").click()
    assert playing(page) == order[1]
    page.locator("body").press("n")
    assert playing(page) == order[2]

    player.get_by_role("button", name="Shuffle").click()
    assert player.get_attribute("data-shuffle") == "on"
    queued = page.evaluate("window.TunesmithQueue.state.items.map(i => i.songId)")
    assert sorted(queued) == sorted(order) and queued[0] == order[2]  # the song playing stays first
    player.get_by_role("button", name="Next").click()
    now = playing(page)
    assert now == queued[1]

    page.reload()
    player.wait_for(state="visible")
    assert player.get_attribute("data-song-id") == now and player.get_attribute("data-queue-index") == "1"
    player.get_by_role("button", name="Play").click()
    assert playing(page) == now
    assert page.evaluate("window.TunesmithQueue.state.items.map(i => i.songId)") == queued


def test_a_report_reaches_the_moderators_and_hiding_takes_the_song_out_of_discover(new_context, stack, maker):
    target = maker["songs"][3]
    visitor = new_context(DESKTOP).new_page()
    visitor.goto("/")
    assert visitor.locator(f"[data-song-id='{target}']").count() > 0, "the song is not on Discover to begin with"

    reporter = stack.client().register(f"listener-{secrets.token_hex(3)}@example.com", name="Listener")
    page = signed_in(new_context, reporter)
    page.goto(f"/songs/{target}")
    page.get_by_text("⚑ Report").click()
    page.get_by_label("Spam or misleading").check()
    page.get_by_label("Details for the moderators (optional)").fill("the same clip posted again and again")
    page.get_by_role("button", name="Send report").click()
    page.locator("[data-report-sent]").wait_for()

    email = f"mod-{secrets.token_hex(3)}@example.com"
    admin_client = stack.client().register(email, name="Moderator")
    subprocess.run([_bin("flask"), "--app", "app:create_app", "users", "make-admin", email], cwd=ROOT,
                   env=stack.env, check=True, capture_output=True, timeout=60)
    admin = signed_in(new_context, admin_client)
    admin.goto("/admin/moderation")
    group = admin.locator(f"[data-report-song='{target}']")
    assert "the same clip posted again and again" in group.inner_text()
    group.get_by_label("Reason shown to the owner").fill("Posted many times over")
    group.get_by_role("button", name="Hide song").click()
    admin.locator(f"[data-report-song='{target}'] [data-hidden]").or_(
        admin.get_by_text("Posted many times over")).first.wait_for()

    visitor.goto("/")
    assert visitor.locator(f"[data-song-id='{target}']").count() == 0, "the hidden song is still on Discover"
    assert visitor.goto(f"/songs/{target}").status == 404
    owner = signed_in(new_context, maker["client"])
    owner.goto(f"/songs/{target}")
    assert owner.get_by_text(re.compile("Hidden by moderation")).first.is_visible()
    assert "Posted many times over" in owner.locator("main").inner_text()
