"""XSS: script and attribute payloads in titles, tags, lyrics, descriptions, names, categories,
token names and search terms are shown as text on every page and fragment that shows them,
including meta tags (Open Graph / Twitter) and the error re-renders of forms.

A page passes when no payload appears with its markup intact (`<script>`, `<img`, a quote that
closes an attribute), and the payload's marker text is still shown (escaped, not dropped).
"""
from __future__ import annotations

import re

import pytest

from models import Category, Song, User
from tests import song_factory
from tests.conftest import csrf_from
from tests.helpers import connected, run_worker
from tests.reliability import harness

pytestmark = [pytest.mark.reliability, pytest.mark.parametrize("backend", ["sqlite"])]

PAYLOADS = {
    "x1": '<script>alert("x1")</script>',
    "x2": '"><img src=x onerror=alert("x2")>',
    "x3": "'><svg onload=alert('x3')>",
    "x4": '</textarea><script>alert("x4")</script>',
    "x5": '</title><script>alert("x5")</script>',
    "x6": '" onmouseover="alert(\'x6\')" data-x="',
    "x7": "{{7*7}}<b>x7</b>",
}
# What must never appear raw: markup that would run or break out of an attribute or element.
RAW = re.compile(r'<script>alert|<img src=x|<svg onload|</textarea><script|</title><script|<b>x7</b>|'
                 r'"\s*onmouseover="alert|\'><svg', re.I)
TITLE = PAYLOADS["x1"] + PAYLOADS["x6"][:40]
TAGS = PAYLOADS["x2"] + ", " + PAYLOADS["x3"]
LYRICS = "[verse]\n" + "\n".join(PAYLOADS.values())
NAME = PAYLOADS["x6"][:30] + "<b>x7</b>"
CATEGORY = '<img src=x onerror=alert("x2")>'


def assert_safe(html: str, where: str, shown: tuple[str, ...] = ()) -> None:
    m = RAW.search(html)
    assert m is None, f"{where}: raw payload {m.group(0)!r} at …{html[max(0, m.start() - 200):m.end() + 100]}…"
    assert "49" not in re.findall(r">\s*(49)\s*<", html), f"{where}: a template expression was evaluated"
    for marker in shown:
        assert marker in html, f"{where}: {marker!r} is not shown at all (dropped instead of escaped?)"


@pytest.fixture
def stage(app, client, auth):
    """An owner (whose name is a payload) with a published and a private song full of payloads,
    a category named like a payload, a reservation note with a payload, and an API token."""
    auth.register("xss@example.com", "correct horse", name=NAME)
    with connected(app):
        user = User.get(User.email == "xss@example.com")
        public = song_factory.song(user, TITLE, published=True, tags=TAGS, lyrics=LYRICS, app=app,
                                   categories=[CATEGORY])
        private = song_factory.song(user, TITLE, published=False, tags=TAGS, lyrics=LYRICS, app=app)
    token = csrf_from(client.get("/create").get_data(as_text=True))
    return {"user": user, "public": public.id, "private": private.id, "csrf": token}


def test_payloads_are_text_on_every_page_and_fragment(app, client, auth, stage):
    pub, priv, csrf = stage["public"], stage["private"], stage["csrf"]
    hx = {"HX-Request": "true"}
    # a description with payloads goes through the real Create path (and the billing ledger)
    resp = auth.post("/create", data={"mode": "lyrics", "prompt": PAYLOADS["x2"], "lyrics": LYRICS,
                                      "duration": "10", "variants": "1"})
    assert resp.status_code == 303
    pages = {
        "library": client.get("/library"),
        "library fragment": client.get("/library", headers={**hx, "HX-Target": "library-list"}),
        "library search": client.get("/library", query_string={"q": PAYLOADS["x1"]}),
        "song page (private, owner)": client.get(f"/songs/{priv}"),
        "song page (public)": client.get(f"/songs/{pub}"),
        "status fragment": client.get(f"/songs/{pub}/status", headers=hx),
        "feed": client.get("/"),
        "feed search": client.get("/", query_string={"q": PAYLOADS["x4"]}),
        "feed fragment": client.get("/", query_string={"q": "x1"}, headers={**hx, "HX-Target": "feed-body"}),
        "feed more": client.get("/", query_string={"page": "1"}, headers={**hx, "HX-Target": "feed-more"}),
        "billing (ledger notes)": client.get("/billing"),
        "like fragment": client.post(f"/songs/{pub}/like", data={"csrf_token": csrf, "liked": "1",
                                                                  "next": PAYLOADS["x2"]}, headers=hx),
        "rename error fragment": client.post(f"/songs/{priv}/rename", data={
            "csrf_token": csrf, "title": PAYLOADS["x5"] * 10, "view": "card"}, headers=hx),
        "rename error page": client.post(f"/songs/{priv}/rename", data={"csrf_token": csrf,
                                                                         "title": PAYLOADS["x6"] * 10}),
        "rename ok fragment": client.post(f"/songs/{priv}/rename", data={
            "csrf_token": csrf, "title": PAYLOADS["x3"] + PAYLOADS["x7"], "view": "page"}, headers=hx),
        "create error page": client.post("/create", data={
            "csrf_token": csrf, "mode": "description", "description": PAYLOADS["x4"] + PAYLOADS["x1"],
            "duration": "9999"}),
        "create error fragment": client.post("/create", data={
            "csrf_token": csrf, "mode": "lyrics", "prompt": PAYLOADS["x2"], "lyrics": PAYLOADS["x4"],
            "duration": "abc"}, headers=hx),
        "token created": client.post("/settings/tokens", data={"csrf_token": csrf, "name": PAYLOADS["x2"]}),
        "token list": client.get("/settings/tokens"),
        "token error": client.post("/settings/tokens", data={"csrf_token": csrf, "name": PAYLOADS["x6"] * 10},
                                   headers=hx),
        "login next": client.get("/auth/login", query_string={"next": PAYLOADS["x2"]}),
        "not found": client.get("/songs/" + "%3Cscript%3Ealert(1)%3C%2Fscript%3E"),
    }
    visitor = app.test_client()
    pages.update({
        "song page (visitor)": visitor.get(f"/songs/{pub}"),
        "feed (visitor)": visitor.get("/"),
        "feed category": visitor.get("/", query_string={"category": _slug(app)}),
    })
    shown = {
        "library": ("x1", "x2"), "song page (public)": ("x1", "x2", "x3", "x4", "x5", "x7"),
        "song page (private, owner)": ("x1", "x2"), "status fragment": ("x1", "x2"), "feed": ("x1",),
        "billing (ledger notes)": ("x2",), "rename error fragment": ("x5",), "create error page": ("x4", "x1"),
        "create error fragment": ("x2", "x4"), "token created": ("x2",), "song page (visitor)": ("x1",),
        "feed category": ("x2",), "rename ok fragment": ("x3", "x7"), "feed search": ("x4",),
    }
    for where, resp in pages.items():
        assert resp.status_code < 500, (where, resp.status_code)
        assert_safe(resp.get_data(as_text=True), where, shown.get(where, ()))
    harness.record("security", check="XSS payloads in titles, tags, lyrics, descriptions, names, categories",
                   outcome=f"{len(pages)} pages and fragments (+ meta tags, JSON): shown as text, never as markup")
    # the song page's meta tags carry the title, the author and the tags, escaped
    meta = re.findall(r'<meta (?:property|name)="(?:og|twitter):(?:title|description)" content="([^"]*)"',
                      pages["song page (visitor)"].get_data(as_text=True))
    assert len(meta) == 4 and all("&lt;" in m or "&#" in m for m in meta), meta
    assert "x1" in meta[0]
    # JSON is JSON: the API never serves these as HTML
    from app.api import tokens

    with connected(app):
        _, raw = tokens.issue(User.get(User.email == "xss@example.com"), "json")
    api = client.get(f"/api/v1/songs/{pub}", headers={"Authorization": f"Bearer {raw}"})
    assert api.status_code == 200 and api.mimetype == "application/json"
    assert api.headers.get("X-Content-Type-Options") == "nosniff"
    assert api.get_json()["title"] == TITLE  # stored as typed, escaped only where shown


def test_payloads_through_the_worker_stay_text(app, client, auth):
    """Payloads typed into the Create form travel through the writer and the job into the
    title, tags and lyrics; the pages that show the finished songs still show them as text."""
    auth.register("xss2@example.com", "correct horse", name=NAME)
    for fields in ({"mode": "description", "description": " ".join(PAYLOADS.values())},
                   {"mode": "lyrics", "prompt": PAYLOADS["x2"] + " synthwave", "lyrics": LYRICS},
                   {"mode": "described_lyrics", "prompt": PAYLOADS["x3"], "described_lyrics": PAYLOADS["x1"]}):
        assert auth.post("/create", data={**fields, "duration": "10", "variants": "1"}).status_code == 303
    run_worker(app)
    csrf = csrf_from(client.get("/create").get_data(as_text=True))
    with connected(app):
        songs = list(Song.select())
        assert [s.status for s in songs] == ["processed"] * 3, [s.error for s in songs]
    for song in songs:
        auth.post(f"/songs/{song.id}/publish", data={"csrf_token": csrf})
        for where, resp in {"page": client.get(f"/songs/{song.id}"),
                            "card": client.get(f"/songs/{song.id}/status", headers={"HX-Request": "true"}),
                            "visitor": app.test_client().get(f"/songs/{song.id}")}.items():
            assert_safe(resp.get_data(as_text=True), f"{where} of {song.title[:40]!r}")
    for path in ("/library", "/", "/billing"):
        assert_safe(client.get(path).get_data(as_text=True), path)


def _slug(app) -> str:
    with connected(app):
        return Category.get(Category.name == CATEGORY).slug
