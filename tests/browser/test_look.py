"""The look and feel, checked in Chromium at desktop (1280) and phone (390) width: titles, one
heading, nothing wider than the screen or cut off, labels on every control, visible keyboard
focus, a busy indicator on HTMX requests, empty states that say what to do, and forms that
work without JavaScript."""
from __future__ import annotations

import re
import secrets
from types import SimpleNamespace

import pytest

from tests.browser.conftest import DESKTOP, PHONE

pytestmark = pytest.mark.browser
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def seeded(stack):
    """Lena, with two finished songs (one request, two variants), the first one published."""
    email = f"lena-{secrets.token_hex(3)}@example.com"
    client = stack.client().register(email, PASSWORD, name="Lena")
    songs = client.create(mode="description", description="a warm acoustic folk song about an old friend",
                          variants=2)
    client.wait_processed(songs)
    song = songs[0]
    client.post(f"/songs/{song}/publish", {"view": "page"})
    return SimpleNamespace(client=client, email=email, song=song)


def signed_in(new_context, seeded, viewport=DESKTOP, **kw):
    ctx = new_context(viewport=viewport, **kw)
    ctx.add_cookies(seeded.client.cookies())
    return ctx.new_page()


# (path, signed in, the title starts with)
PAGES = {
    "feed": ("/", True, "Discover"),
    "create": ("/create", True, "Create"),
    "library": ("/library", True, "Library"),
    "song": ("/songs/{song}", True, None),
    "billing": ("/billing", True, "Credits"),
    "account": ("/auth/password", True, None),
    "api-tokens": ("/settings/tokens", True, None),
    "feed-visitor": ("/", False, "Discover"),
    "song-visitor": ("/songs/{song}", False, None),
    "login": ("/auth/login", False, "Log in"),
    "register": ("/auth/register", False, "Sign up"),
    "not-found": ("/songs/does-not-exist", False, None),
}

UNLABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button, a[href]')]
  .filter(el => !el.closest('[aria-hidden=true]'))
  .filter(el => {
    const name = (el.getAttribute('aria-label') || '').trim() || (el.getAttribute('title') || '').trim()
      || (el.labels && [...el.labels].map(l => l.textContent).join('').trim())
      || (el.getAttribute('aria-labelledby') || '').split(/\\s+/).filter(Boolean)
           .map(id => document.getElementById(id)?.textContent || '').join('').trim()
      || ((el.tagName === 'BUTTON' || el.tagName === 'A') && el.textContent.trim());
    return !name;
  }).map(el => el.outerHTML.slice(0, 160))"""

CUT_OFF = """() => [...document.querySelectorAll('.btn, button, .badge, h1, h2, label, .like-btn, .credits')]
  .filter(el => el.offsetParent !== null && !el.closest('.visually-hidden, details:not([open]) > :not(summary)')
                && getComputedStyle(el).textOverflow !== 'ellipsis')
  .filter(el => el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).overflowX !== 'visible')
  .map(el => el.outerHTML.slice(0, 160))"""

OVERFLOWING = """() => {
  const w = document.documentElement.clientWidth, out = [];
  for (const el of document.querySelectorAll('body *')) {
    if (el.offsetParent === null || el.closest('.song-row, .ledger-wrap, #player[hidden], .visually-hidden, .skip, details:not([open]) > :not(summary)')) continue;
    const r = el.getBoundingClientRect();
    if (r.width && (r.right > w + 1 || r.left < -1)) out.push(el.tagName + '.' + el.className + ' ' + Math.round(r.left) + '..' + Math.round(r.right));
  }
  return {scroll: document.documentElement.scrollWidth, width: w, out: out.slice(0, 8)};
}"""

HEADER_OVERLAPS = """() => {
  const parts = ['.brand', '.topbar nav', '.account'].map(s => document.querySelector(s).getBoundingClientRect());
  const hit = (a, b) => a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1;
  const out = [];
  for (let i = 0; i < parts.length; i++) for (let j = i + 1; j < parts.length; j++) if (hit(parts[i], parts[j])) out.push([i, j]);
  return out;
}"""


@pytest.mark.parametrize("width", ["desktop", "phone"])
@pytest.mark.parametrize("name", list(PAGES))
def test_page_fits_and_is_labelled(new_context, seeded, name, width):
    path, auth, title = PAGES[name]
    viewport = DESKTOP if width == "desktop" else PHONE
    page = signed_in(new_context, seeded, viewport) if auth else new_context(viewport=viewport).new_page()
    resp = page.goto(path.format(song=seeded.song))
    assert resp.status == (404 if name == "not-found" else 200)
    page.wait_for_load_state("networkidle")

    assert re.fullmatch(r".+ · Tunesmith", page.title()), page.title()
    if title:
        assert page.title().startswith(title), page.title()
    assert page.locator("h1").count() == 1
    assert page.locator("link[rel=icon]").count() == 1
    assert page.evaluate(UNLABELLED) == [], "controls without a label"
    geometry = page.evaluate(OVERFLOWING)
    assert geometry["scroll"] <= geometry["width"] and not geometry["out"], geometry
    assert page.evaluate(CUT_OFF) == [], "text cut off inside its box"
    assert page.evaluate(HEADER_OVERLAPS) == [], "top bar parts overlap"
    if auth:
        assert page.locator(".topbar [data-credits]").is_visible()


def test_keyboard_skip_link_focus_ring_and_play(new_context, seeded):
    page = signed_in(new_context, seeded)
    page.goto("/library")
    page.keyboard.press("Tab")
    skip = page.locator(":focus")
    assert skip.inner_text() == "Skip to content" and skip.is_visible()
    assert skip.bounding_box()["x"] >= 0, "the skip link stays off screen when focused"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"

    seen = []
    for _ in range(40):
        page.keyboard.press("Tab")
        info = page.evaluate("""() => { const el = document.activeElement, cs = getComputedStyle(el);
            return {tag: el.tagName, text: (el.getAttribute('aria-label') || el.textContent).trim().slice(0, 40),
                    ring: cs.boxShadow !== 'none' || (cs.outlineStyle !== 'none' && parseFloat(cs.outlineWidth) > 0),
                    cls: el.className}; }""")
        assert info["tag"] != "BODY", f"focus fell off the page after {seen}"
        assert info["ring"], f"no visible focus on {info}"
        seen.append(info["text"])
        if "play-overlay" in info["cls"]:
            page.wait_for_timeout(250)  # the reveal transition
            assert page.evaluate("getComputedStyle(document.activeElement).opacity") == "1", \
                "the play button is invisible while it has keyboard focus"
            page.keyboard.press("Enter")
            page.wait_for_function("() => { const a = document.querySelector('#player audio');"
                                   " return a && !a.paused && a.currentTime > 0.2; }")
            page.keyboard.press("Tab")  # focus moves on; the ring keeps showing on the next control
            break
    else:
        pytest.fail(f"no card play button reachable by keyboard; focus went through {seen}")


def test_busy_indicator_while_htmx_requests_run(new_context, seeded):
    page = signed_in(new_context, seeded)
    page.goto("/library")
    page.evaluate("""() => { window.__busy = [];
        new MutationObserver(() => window.__busy.push(document.body.classList.contains('is-busy')))
          .observe(document.body, {attributes: true, attributeFilter: ['class']}); }""")
    page.get_by_role("searchbox", name="Search your songs").fill("zzz-nothing")
    page.get_by_text("No songs match").wait_for()
    page.wait_for_function("() => !document.body.classList.contains('is-busy')")
    assert True in page.evaluate("window.__busy"), "no busy indicator during the request"
    assert page.get_by_role("link", name="Show all songs").is_visible()  # an empty state says what to do


def test_empty_library_says_what_to_do(new_context, stack):
    client = stack.client().register(f"new-{secrets.token_hex(3)}@example.com", PASSWORD)
    ctx = new_context(viewport=PHONE)
    ctx.add_cookies(client.cookies())
    page = ctx.new_page()
    page.goto("/library")
    empty = page.locator(".empty")
    assert "No songs yet" in empty.inner_text()
    empty.get_by_role("link", name="Create your first song").click()
    page.wait_for_url("**/create")
    assert page.get_by_role("heading", name="Create a song").is_visible()


@pytest.mark.parametrize("where", ["library", "song"])
def test_rename_box_fits_on_a_phone(new_context, seeded, where):
    page = signed_in(new_context, seeded, PHONE)
    page.goto("/library" if where == "library" else f"/songs/{seeded.song}")
    scopes = page.locator(".song-card[data-status=processed]") if where == "library" else page.locator("#song-main")
    assert scopes.count() >= (2 if where == "library" else 1)
    for i in range(scopes.count()):  # both columns of the phone grid
        scope = scopes.nth(i)
        scope.locator(".rename > summary").click()
        form = scope.locator(".rename-form")
        form.get_by_label("New title").wait_for()
        for el in (form, form.get_by_role("button", name="Save")):
            r = el.bounding_box()
            assert r["x"] >= 0 and r["x"] + r["width"] <= PHONE["width"], (i, r)
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        scope.locator(".rename > summary").click()


def test_works_without_javascript(new_context, seeded):
    page = new_context(java_script_enabled=False).new_page()
    page.goto("/auth/login")
    page.get_by_label("Email").fill(seeded.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/$"))
    assert page.get_by_text("Welcome back").is_visible()

    # The create form posts and redirects to the library, where the new card sits.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Create").click()
    page.get_by_role("radio", name=re.compile("^Describe the song")).check()
    page.get_by_label("Describe your song", exact=True).fill("a lo-fi hip-hop beat for late-night studying")
    page.get_by_label("Length (seconds)").fill("10")
    page.get_by_label("Variants").select_option("1")
    page.get_by_role("button", name=re.compile("^Create")).click()
    page.wait_for_url("**/library")
    assert page.get_by_text(re.compile("Making 1 song")).is_visible()
    assert page.locator(".song-card").count() >= 2

    # A bad form comes back with the message next to the field, with a 4xx.
    page.goto("/create")
    page.get_by_role("radio", name=re.compile("^Describe the song")).check()
    page.get_by_label("Length (seconds)").fill("10")
    with page.expect_response(lambda r: r.url.endswith("/create") and r.request.method == "POST") as info:
        page.get_by_role("button", name=re.compile("^Create")).click()
    assert 400 <= info.value.status < 500
    assert page.locator(".error[role=alert]").first.is_visible()

    # Owner actions are plain forms too.
    page.goto(f"/songs/{seeded.song}")
    page.get_by_role("button", name="Unpublish").click()
    page.get_by_text("private again").wait_for()
    page.get_by_role("button", name="Publish").click()
    page.get_by_text("is public").wait_for()


def test_form_errors_show_on_boosted_pages(new_context, seeded):
    """Login and register are boosted forms: their 401/422 answers must still be shown."""
    page = new_context(viewport=PHONE).new_page()
    page.goto("/auth/login")
    page.get_by_label("Email").fill(seeded.email)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("alert").filter(has_text="do not match").wait_for()
    assert page.get_by_label("Email").input_value() == seeded.email  # what was typed stays
    page.get_by_role("link", name="Create an account").click()
    page.wait_for_url("**/auth/register")
    page.get_by_label("Email").fill("not-an-email")
    page.get_by_role("button", name="Sign up").click()
    page.get_by_role("alert").filter(has_text="valid email").wait_for()
    assert page.get_by_label("Email").get_attribute("aria-invalid") == "true"
    # A boosted link to a page that is not there shows the 404 page (not nothing).
    page.evaluate("""() => { const a = document.createElement('a'); a.href = '/nowhere'; a.textContent = 'Old link';
        document.querySelector('main').append(a); htmx.process(a); }""")
    page.get_by_role("link", name="Old link").click()
    page.get_by_role("heading", name="Not Found").wait_for()
    assert page.title().startswith("Not Found")


BOOSTED = ["/", "/create", "/library", "/songs/{song}", "/billing", "/auth/password", "/settings/tokens"]


def test_boosted_navigation_gets_whole_pages(new_context, seeded):
    """Every page reached through an hx-boost link (no full load) comes with its top bar, its
    title and the player that keeps playing: a view must not answer a boosted request with a
    bare fragment."""
    page = signed_in(new_context, seeded)
    page.goto("/library")
    page.evaluate("window.__sameWindow = 1")
    for path in BOOSTED:
        path = path.format(song=seeded.song)
        page.evaluate("""path => { const a = document.createElement('a'); a.href = path; a.textContent = 'Go ' + path;
            document.querySelector('main').append(a); htmx.process(a); }""", path)
        page.get_by_role("link", name="Go " + path, exact=True).click()
        page.wait_for_url("**" + path)
        page.wait_for_function("() => !document.body.classList.contains('is-busy')")
        assert page.evaluate("window.__sameWindow") == 1, path
        assert page.locator("header.topbar").count() == 1, f"{path}: no top bar after a boosted navigation"
        assert page.locator("#player").count() == 1, f"{path}: the player is gone"
        assert page.locator("main h1").count() == 1, f"{path}: no page heading"
        assert re.fullmatch(r".+ · Tunesmith", page.title()), (path, page.title())
