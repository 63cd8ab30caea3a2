"""The Content-Security-Policy holds in a real Chromium: over a whole journey (register, create,
library, song page, playing, Discover search, account settings with an export, tokens, billing)
the browser reports no CSP violation and htmx never needs eval."""
from __future__ import annotations

import re
import secrets

import pytest

from tests.browser.conftest import DESKTOP

pytestmark = pytest.mark.browser

# Runs in every document before its own scripts; sessionStorage keeps the record across full loads.
RECORDER = """
(() => {
  const keep = (kind, text) => {
    const all = JSON.parse(sessionStorage.getItem('__csp') || '[]');
    all.push(kind + ': ' + text);
    sessionStorage.setItem('__csp', JSON.stringify(all));
  };
  document.addEventListener('securitypolicyviolation', e =>
    keep('violation', `${e.violatedDirective} blocked ${e.blockedURI} at ${e.sourceFile}:${e.lineNumber}`));
  document.addEventListener('htmx:evalDisallowedError', e => keep('htmx-eval', String(e.target && e.target.outerHTML).slice(0, 200)));
})();
"""


def test_whole_journey_has_no_csp_violations(new_context, stack):
    ctx = new_context(viewport=DESKTOP)
    ctx.add_init_script(RECORDER)
    page = ctx.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))

    def problems() -> list[str]:
        recorded = page.evaluate("JSON.parse(sessionStorage.getItem('__csp') || '[]')")
        return recorded + [c for c in console if "Content Security Policy" in c or "eval" in c.lower()]

    first = page.goto("/")
    csp = first.headers.get("content-security-policy", "")
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src", 1)[1].split(";")[0]
    assert "permissions-policy" in first.headers

    email = f"csp-{secrets.token_hex(3)}@example.com"
    page.get_by_role("banner").get_by_role("link", name="Sign up").click()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("a tune for every season")
    page.locator("[data-strength-for]").filter(has_text="Strength").wait_for()  # the meter runs under the CSP
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url(stack.url + "/")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Create", exact=True).click()
    page.wait_for_url("**/create")
    page.get_by_role("radio", name=re.compile("^Describe the song")).check()
    page.get_by_label("Describe your song", exact=True).fill("a calm piano piece for a rainy morning")
    page.get_by_label("Length (seconds)").fill("10")
    page.get_by_label("Variants").select_option("1")
    page.get_by_role("button", name=re.compile("^Create")).click()
    page.wait_for_url("**/library")
    card = page.locator("#library-list .song-card[data-song-id]").first
    song_id = card.get_attribute("data-song-id")
    page.wait_for_function(
        "id => document.querySelector(`#library-list .song-card[data-song-id='${id}']`)?.dataset.status === 'processed'",
        arg=song_id, timeout=90_000)
    card = page.locator(f"#library-list .song-card[data-song-id='{song_id}']")
    card.get_by_role("button", name=re.compile("^Play ")).click()
    page.wait_for_function("() => { const a = document.querySelector('#player audio'); return a && a.currentTime > 0.2; }",
                           timeout=10_000)
    page.goto(f"/songs/{song_id}")
    if page.locator("[data-select-on-click]").count():
        page.locator("[data-select-on-click]").first.click()

    page.goto("/")
    search = page.get_by_role("searchbox").first
    if search.count():
        search.fill("piano")
        page.wait_for_timeout(600)  # the debounced htmx search runs

    page.get_by_role("banner").locator("a.who").click()
    page.wait_for_url("**/settings/account")
    page.get_by_role("button", name="Export my data").click()
    page.locator("[data-export-link]").wait_for(timeout=60_000)  # htmx polls until the worker is done
    page.get_by_role("button", name="Set up two-factor sign-in").click()
    page.locator("[data-totp-secret]").wait_for()
    for path in ("/settings/tokens", "/billing", "/auth/password", "/library"):
        page.goto(path)
        page.wait_for_load_state("networkidle")
    assert problems() == []
    # The recorder does see a violation when there is one: an inline script is refused.
    page.evaluate("() => { const s = document.createElement('script'); s.textContent = 'window.__ran = 1';"
                  " document.body.appendChild(s); }")
    page.wait_for_function("() => JSON.parse(sessionStorage.getItem('__csp') || '[]').length > 0")
    assert page.evaluate("window.__ran") is None
    assert any("script-src" in p for p in problems())
