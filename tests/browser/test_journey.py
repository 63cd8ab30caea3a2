"""A person's first session with Tunesmith, in a real browser against gunicorn + the GPU worker:
register -> create in each mode -> watch the cards finish without reloading -> play in the
player bar and keep playing across a boosted navigation -> publish -> a visitor sees it in the
feed -> likes it -> rename -> delete.

The steps are tests in order (run with `-p no:randomly`), sharing one signed-in browser
context; a step whose precondition failed is skipped with the name of that precondition."""
from __future__ import annotations

import re
import secrets

import pytest

from tests.browser.conftest import DESKTOP

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery staple"
MODES = [
    # (id, radio label, fields to fill by label, instrumental)
    ("description", "Describe the song",
     {"Describe your song": "a dreamy synthwave song about neon city nights"}, False),
    ("lyrics", "Your own lyrics",
     {"Style tags": "acoustic folk, 90 bpm, G major, male vocals",
      "Lyrics": "[verse]\nThe river knows my name\n[chorus]\nCarry me home"}, False),
    ("described_lyrics", "Describe the lyrics",
     {"Style tags": "rock, energetic, 140 bpm",
      "What should the lyrics be about?": "two friends meeting again after ten years"}, False),
    ("instrumental", "Your own lyrics", {"Style tags": "ambient, calm, piano"}, True),
]


class Journey:
    """What the steps hand on to each other."""

    def __init__(self):
        self.email = f"ada-{secrets.token_hex(3)}@example.com"
        self.song_ids: dict[str, str] = {}   # mode -> song id
        self.done: set[str] = set()          # names of steps that passed
        self.star: str | None = None         # the song that gets published, liked, renamed, deleted

    def need(self, *steps: str) -> None:
        missing = [s for s in steps if s not in self.done]
        if missing:
            pytest.skip(f"needs the earlier step(s) {', '.join(missing)}, which did not pass")


@pytest.fixture(scope="module")
def journey():
    return Journey()


@pytest.fixture(scope="module")
def owner(browser, stack):
    """The signed-in owner's browser tab, kept across the steps."""
    ctx = browser.new_context(viewport=DESKTOP, base_url=stack.url)
    ctx.set_default_timeout(15_000)
    page = ctx.new_page()
    yield page
    ctx.close()


def nav(page, name: str, url_pattern: str) -> None:
    """Follow a top-bar link (hx-boost: no full page load) and wait for the new page."""
    page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True).click()
    page.wait_for_url(url_pattern)


def card(page, song_id: str):
    return page.locator(f"#library-list .song-card[data-song-id='{song_id}']")


# ---------------------------------------------------------------------------------- steps
def test_register(owner, journey, stack):
    page = owner
    page.goto("/")
    page.get_by_role("banner").get_by_role("link", name="Sign up").click()
    page.wait_for_url("**/auth/register")
    page.get_by_label("Email").fill(journey.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Name (optional)").fill("Ada")
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url(stack.url + "/")
    assert page.locator(".flash").filter(has_text="Welcome to Tunesmith").is_visible()
    assert page.locator(".topbar [data-credits]").get_attribute("data-credits") == "100"
    journey.done.add("register")


def test_create_in_each_mode(owner, journey):
    journey.need("register")
    page = owner
    for mode, radio, fields, instrumental in MODES:
        nav(page, "Create", "**/create")
        before = set(_ids(page, "/library"))
        page.get_by_role("radio", name=re.compile("^" + re.escape(radio))).check()
        for label, value in fields.items():
            page.get_by_label(label, exact=True).fill(value)
        if instrumental:
            page.get_by_role("checkbox", name=re.compile("Instrumental")).check()
        page.get_by_label("Length (seconds)").fill("10")
        page.get_by_label("Variants").select_option("1")
        page.get_by_role("button", name=re.compile("^Create")).click()
        page.wait_for_url("**/library")
        new = [i for i in page.locator("#library-list .song-card[data-song-id]").evaluate_all(
            "els => els.map(e => e.dataset.songId)") if i not in before]
        assert len(new) == 1, f"{mode}: expected one new card, got {new}"
        journey.song_ids[mode] = new[0]
    # Four generations, one credit each.
    assert page.locator(".topbar [data-credits]").get_attribute("data-credits") == "96"
    journey.done.add("create")


def _ids(page, path: str) -> list[str]:
    html = page.evaluate(f"fetch({path!r}).then(r => r.text())")
    return re.findall(r'data-song-id="([0-9a-f]{32})"', html)


def test_cards_go_from_queued_to_processed_without_reloading(owner, journey):
    """The library page stays the same document (no reload: a marker on window and on the list
    container survives) while each card polls its status fragment and swaps itself in place."""
    journey.need("create")
    page = owner
    page.evaluate("""() => {
        window.__journeyMarker = 'still-here';
        document.getElementById('library-list').dataset.marker = 'same-node';
        window.__seen = {};
        const record = () => document.querySelectorAll('#library-list .song-card[data-song-id]').forEach(el => {
            const seen = (window.__seen[el.dataset.songId] ||= []);
            if (seen[seen.length - 1] !== el.dataset.status) seen.push(el.dataset.status);
        });
        record();
        new MutationObserver(record).observe(document.getElementById('library-list'),
            {subtree: true, childList: true, attributes: true, attributeFilter: ['data-status']});
    }""")
    flash = page.locator(".flash").filter(has_text=re.compile("Making 1 song"))
    assert flash.is_visible(), "the create form's confirmation is not shown"
    first = page.evaluate("window.__seen")
    waiting = [m for m, sid in journey.song_ids.items() if first[sid][0] in ("queued", "processing")]
    assert waiting, f"every card was already finished when the library opened: {first}"

    ids = list(journey.song_ids.values())
    page.wait_for_function(
        "ids => ids.every(id => document.querySelector(`#library-list .song-card[data-song-id='${id}']`)"
        "?.dataset.status === 'processed')", arg=ids, timeout=90_000)

    flash.wait_for(state="detached", timeout=8_000)  # flash messages go away by themselves
    assert page.evaluate("window.__journeyMarker") == "still-here", "the page reloaded"
    assert page.evaluate("document.getElementById('library-list').dataset.marker") == "same-node"
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    seen = page.evaluate("window.__seen")
    for mode in waiting:
        history = seen[journey.song_ids[mode]]
        assert history[0] in ("queued", "processing") and history[-1] == "processed", (mode, history)
        assert "failed" not in history, (mode, history)
    # Finished cards stop polling and show what a person can do with the song.
    for mode, sid in journey.song_ids.items():
        c = card(page, sid)
        assert c.get_attribute("hx-trigger") is None, mode
        assert c.get_by_role("button", name=re.compile("^Play ")).is_visible(), mode
        assert c.locator("img").evaluate("img => img.complete && img.naturalWidth > 0"), f"{mode}: no cover"
    assert card(page, journey.song_ids["instrumental"]).get_by_text("Instrumental", exact=True).is_visible()
    journey.star = journey.song_ids["description"]
    journey.done.add("processed")


def test_player_keeps_playing_across_navigation(owner, journey, stack):
    journey.need("processed")
    page = owner
    sid = journey.song_ids["lyrics"]
    card(page, sid).get_by_role("button", name=re.compile("^Play ")).click()
    player = page.locator("#player")
    player.wait_for(state="visible")
    page.wait_for_function("() => { const a = document.querySelector('#player audio');"
                           " return a && !a.paused && a.currentTime > 0.3; }", timeout=10_000)
    assert player.get_attribute("data-song-id") == sid
    assert player.get_by_role("button", name="Pause").is_visible()
    page.evaluate("() => { window.__audioEl = document.querySelector('#player audio');"
                  " window.__navMarker = 'same-window'; }")
    t0 = page.evaluate("document.querySelector('#player audio').currentTime")

    nav(page, "Discover", stack.url + "/")
    page.get_by_role("heading", name="Discover", level=1).wait_for()
    assert page.evaluate("window.__navMarker") == "same-window", "navigation reloaded the page"
    assert page.evaluate("document.querySelector('#player audio') === window.__audioEl"), \
        "the player's audio element was replaced"
    page.wait_for_function(f"() => {{ const a = document.querySelector('#player audio');"
                           f" return !a.paused && a.currentTime > {t0} + 0.3; }}", timeout=5_000)
    assert page.title().startswith("Discover")
    page.locator("#player").get_by_role("button", name="Pause").click()
    page.wait_for_function("() => document.querySelector('#player audio').paused")
    journey.done.add("player")


def _playing(page) -> str:
    page.wait_for_function("() => { const a = document.querySelector('#player audio');"
                           " return a && !a.paused && a.currentTime > 0.05; }", timeout=10_000)
    return page.locator("#player").get_attribute("data-song-id")


def test_queue_plays_the_list_with_next_shuffle_and_survives_a_reload(owner, journey, stack):
    """A Play button plays its whole list: Next (button, then the n key) walks it in order,
    shuffle keeps the song playing and the same songs queued, a reload resumes at the same song."""
    journey.need("player")
    page = owner
    nav(page, "Library", "**/library")
    ids = page.locator("#library-list .song-card").evaluate_all("els => els.map(e => e.dataset.songId)")
    assert len(ids) >= 3, ids
    card(page, ids[0]).get_by_role("button", name=re.compile("^Play ")).click()
    player = page.locator("#player")
    assert _playing(page) == ids[0]
    assert player.get_attribute("data-queue-length") == str(len(ids))
    player.get_by_role("button", name="Next").click()
    assert _playing(page) == ids[1]
    page.locator("body").press("n")
    assert _playing(page) == ids[2]
    assert player.get_attribute("data-queue-index") == "2"
    player.get_by_role("button", name="Previous").click()
    assert _playing(page) == ids[1]

    player.get_by_role("button", name="Shuffle").click()
    assert player.get_attribute("data-shuffle") == "on"
    assert player.get_attribute("data-song-id") == ids[1] and player.get_attribute("data-queue-index") == "0"
    queued = page.evaluate("window.TunesmithQueue.state.items.map(i => i.songId)")
    assert sorted(queued) == sorted(ids) and queued[0] == ids[1]
    player.get_by_role("button", name="Next").click()
    after_shuffle = _playing(page)
    assert after_shuffle == queued[1]

    page.wait_for_function("() => document.querySelector('#player audio').currentTime > 2.5", timeout=10_000)
    at = page.evaluate("document.querySelector('#player audio').currentTime")
    page.reload()
    page.get_by_role("heading", name="Library", level=1).wait_for()
    player.wait_for(state="visible")
    assert player.get_attribute("data-song-id") == after_shuffle, "the reload lost the queue's song"
    assert player.get_attribute("data-queue-index") == "1" and player.get_attribute("data-shuffle") == "on"
    player.get_by_role("button", name="Play").click()
    assert _playing(page) == after_shuffle
    resumed = page.evaluate("document.querySelector('#player audio').currentTime")
    assert resumed >= at - 0.5, f"the reload resumed at {resumed:.1f} s, not where it was ({at:.1f} s)"
    player.get_by_role("button", name="Pause").click()
    page.wait_for_function("() => document.querySelector('#player audio').paused")
    page.evaluate("localStorage.removeItem('tunesmith.queue.v1')")


def test_publish(owner, journey):
    journey.need("processed")
    page = owner
    nav(page, "Library", "**/library")
    c = card(page, journey.star)
    title_link = c.get_by_role("link").filter(has_text=re.compile(r"\S")).first
    assert c.get_by_role("button", name="Publish").count() > 0, \
        "the library card has no Publish button (POST /songs/<id>/publish, songs/_owner_actions.html)"
    href = title_link.get_attribute("href")
    assert href not in (None, "#"), \
        f"the library card's title does not link to the song page GET /songs/<id> (href={href!r})"
    title_link.click()
    page.wait_for_url(f"**/songs/{journey.star}")
    main = page.locator("#song-main")
    assert main.get_attribute("data-published") == "false"
    page.get_by_role("button", name="Publish").click()
    page.wait_for_function("() => document.querySelector('#song-main').dataset.published === 'true'")
    assert page.locator("#song-main").get_by_text("Public", exact=True).is_visible()
    assert page.get_by_role("button", name="Unpublish").is_visible()
    journey.title = page.locator("h1.song-title").inner_text().strip()
    journey.done.add("publish")


def test_visitor_sees_it_in_the_feed_and_likes_it(new_context, journey, stack):
    journey.need("publish")
    page = new_context().new_page()
    page.goto("/")
    tile = page.locator(f"#feed-body [data-song-id='{journey.star}']").first
    tile.wait_for()
    assert journey.title in tile.inner_text()
    assert page.get_by_role("banner").get_by_role("link", name="Log in").is_visible()
    # A visitor's heart leads to logging in, and they come back to like it.
    tile.get_by_role("link", name=re.compile("^Log in to like")).click()
    page.wait_for_url(re.compile(r"/auth/login\?next="))
    page.get_by_role("link", name="Create an account").click()
    page.wait_for_url("**/auth/register")
    page.get_by_label("Email").fill(f"fan-{secrets.token_hex(3)}@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url(stack.url + "/")
    tile = page.locator(f"#feed-body [data-song-id='{journey.star}']").first
    like = tile.get_by_role("button", name=re.compile("^Like "))
    assert like.get_attribute("aria-pressed") == "false"
    assert tile.locator(".like-count").inner_text().strip() == "0"
    page.evaluate("window.__likeMarker = 1")
    like.click()
    liked = tile.get_by_role("button", name=re.compile("^Unlike "))
    liked.wait_for()
    assert liked.get_attribute("aria-pressed") == "true"
    assert tile.locator(".like-count").inner_text().strip() == "1"
    assert page.evaluate("window.__likeMarker") == 1, "liking reloaded the page"
    page.reload()  # it is stored, not just drawn
    tile = page.locator(f"#feed-body [data-song-id='{journey.star}']").first
    assert tile.get_by_role("button", name=re.compile("^Unlike ")).get_attribute("aria-pressed") == "true"
    journey.done.add("like")


def test_rename(owner, journey):
    journey.need("publish")
    page = owner
    page.goto(f"/songs/{journey.star}")
    new_title = f"Midnight Drive {secrets.token_hex(2)}"
    page.locator("#song-main .rename > summary").click()
    box = page.get_by_label("New title")
    box.fill(new_title)
    box.press("Enter")
    page.locator("h1.song-title").filter(has_text=new_title).wait_for()
    nav(page, "Library", "**/library")
    assert card(page, journey.star).get_by_role("link", name=new_title).is_visible()
    journey.title = new_title
    journey.done.add("rename")


def test_delete(owner, journey, new_context):
    journey.need("publish")
    page = owner
    page.goto("/library")
    page.once("dialog", lambda d: d.accept())
    c = card(page, journey.star)
    c.get_by_role("button", name="Delete").click()
    c.wait_for(state="detached")
    page.locator(".flash").filter(has_text="Deleted").wait_for()
    assert page.request.get(f"/songs/{journey.star}").status == 404
    visitor = new_context().new_page()
    visitor.goto("/")
    assert visitor.locator(f"[data-song-id='{journey.star}']").count() == 0
    # The other songs are untouched.
    others = [s for m, s in journey.song_ids.items() if s != journey.star]
    page.reload()
    for sid in others:
        assert card(page, sid).get_attribute("data-status") == "processed"
    journey.done.add("delete")
