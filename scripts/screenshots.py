#!/usr/bin/env python3
"""Screenshots of Tunesmith for the README: starts the real stack (gunicorn + the GPU worker with
the offline engines, SQLite and local files in a temporary folder), seeds a realistic studio,
and writes viewport PNGs of the feed, create page, library, song page, billing page, a public
playlist, a profile and the moderation page at desktop (1280) and phone (390) width into
docs/screenshots/.

    .venv/bin/python scripts/screenshots.py            # needs Redis and /usr/bin/chromium
    .venv/bin/python scripts/screenshots.py --out shots --only library

The stack helpers are shared with the browser tests (tests/browser/stack.py).
"""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser.stack import Stack, launch_browser  # noqa: E402

WIDTHS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
PAGES = ["feed", "create", "library", "song", "billing", "playlist", "profile", "moderation"]

SONGS_MAYA = [
    dict(mode="description", description="a dreamy synthwave track about driving through a neon city at night",
         duration=32, publish=True),
    dict(mode="lyrics", prompt="acoustic folk, warm, 92 bpm, G major, male vocals", duration=28, publish=True,
         lyrics="[verse]\nThe river knows my name, it hums it soft and low\nIt carried every promise "
                "that I made a year ago\n[chorus]\nCarry me home, carry me home\nOver the stones "
                "where the willows have grown\n[verse]\nThe lantern on the porch is burning like before\n"
                "And someone left the key beneath the mat outside the door\n[chorus]\nCarry me home, "
                "carry me home\n[outro]\nThe river knows my name"),
    dict(mode="described_lyrics", prompt="lo-fi hip-hop, chill, 80 bpm, rhodes, vinyl crackle",
         described_lyrics="a rainy afternoon in a small cafe, writing letters nobody will read", duration=24),
    dict(mode="description", description="an energetic rock anthem about never giving up", instrumental=1,
         duration=20),
    dict(mode="description", description="a melancholic piano ballad about leaving home", duration=26),
]
SONGS_JONAS = [
    dict(mode="description", description="an upbeat pop anthem about a summer road trip", duration=22, publish=True),
    dict(mode="lyrics", prompt="ambient, calm, piano, strings", instrumental=1, duration=30, publish=True),
]
DEMO_ENV = {"BASE_URL": "https://tunesmith.example.com",  # share links as a deployment shows them
            "POLAR_ACCESS_TOKEN": "demo", "POLAR_WEBHOOK_SECRET": "demo",
            "POLAR_PRODUCTS": "pack-starter=20,pack-studio=100,pack-label=500"}


def seed(stack: Stack) -> dict:
    """Two people, seven finished songs (four public, with likes and listens), one in progress."""
    maya = stack.client().register("maya@example.com", name="Maya Lind")
    jonas = stack.client().register("jonas@example.com", name="Jonas Berg")
    made: dict[str, list[tuple[str, dict]]] = {"maya": [], "jonas": []}
    for who, client, songs in (("maya", maya, SONGS_MAYA), ("jonas", jonas, SONGS_JONAS)):
        for spec in songs:
            fields = {k: v for k, v in spec.items() if k != "publish"}
            for sid in client.create(**fields):
                made[who].append((sid, spec))
    maya.wait_processed([s for s, _ in made["maya"]])
    jonas.wait_processed([s for s, _ in made["jonas"]])
    for who, client in (("maya", maya), ("jonas", jonas)):
        for sid, spec in made[who]:
            if spec.get("publish"):
                client.post(f"/songs/{sid}/publish", {"view": "page"})
    star = made["maya"][0][0]
    for client, sid in ((jonas, star), (maya, made["jonas"][0][0]), (jonas, made["maya"][1][0])):
        client.post(f"/songs/{sid}/like", {"liked": "1"})
    for client in (maya, jonas, stack.client()):  # a few listens
        for sid, spec in made["maya"][:2] + made["jonas"][:1]:
            client.get(f"/songs/{sid}/audio", allow_redirects=False)

    # A profile, a public playlist, a report the moderators (Maya is an admin) have to look at.
    maya.post("/settings/profile", {"name": "Maya Lind", "handle": "maya",
                                    "bio": "Synthwave at night, folk in the morning. Berlin."})
    jonas.post("/settings/profile", {"name": "Jonas Berg", "handle": "jonas", "bio": ""})
    jonas.post("/u/maya/follow", {"follow": "1"})
    made_list = maya.post("/playlists", {"title": "Night drive", "public": "1",
                                          "description": "Neon, rain and a long road home."})
    playlist = made_list.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
    for sid in [s for s, _ in made["maya"][:3]] + [made["jonas"][0][0]]:
        maya.post(f"/playlists/{playlist}/add", {"song_id": sid})
    sam = stack.client().register("sam@example.com", name="Sam")
    sam.post(f"/songs/{made['jonas'][1][0]}/report", {"reason": "copyright",
                                                      "details": "This sounds exactly like a film score."})
    subprocess.run([str(ROOT / ".venv" / "bin" / "flask"), "--app", "app:create_app", "users", "make-admin",
                    "maya@example.com"], cwd=ROOT, env=stack.env, check=True, capture_output=True)

    # One song in progress: with the worker stopped it stays where we put it.
    stack.stop_worker()
    [busy] = maya.create(mode="description", description="a jazzy late-night saxophone tune", duration=40)
    models = stack.models()
    with models.db.connection_context():
        models.Song.update(status="processing", stage="composing", progress=45).where(
            models.Song.id == busy).execute()
    return {"maya": maya, "jonas": jonas, "star": star, "busy": busy, "playlist": playlist}


def shoot(stack: Stack, data: dict, out: Path, only: list[str]) -> list[Path]:
    from playwright.sync_api import sync_playwright

    paths = {"feed": "/", "create": "/create", "library": "/library", "song": f"/songs/{data['star']}",
             "billing": "/billing", "playlist": f"/playlists/{data['playlist']}", "profile": "/u/maya",
             "moderation": "/admin/moderation"}
    written = []
    with sync_playwright() as p:
        browser = launch_browser(p)
        for label, viewport in WIDTHS.items():
            ctx = browser.new_context(viewport=viewport, base_url=stack.url, device_scale_factor=1,
                                      reduced_motion="reduce")
            ctx.add_cookies(data["maya"].cookies())
            page = ctx.new_page()
            for name in only:
                page.goto(paths[name])
                page.wait_for_load_state("networkidle")
                if name == "song":
                    page.get_by_role("button", name="Play", exact=False).first.click()
                    page.wait_for_function("() => { const a = document.querySelector('#player audio');"
                                           " return a && a.currentTime > 1.2; }")
                    page.evaluate("document.querySelector('#player audio').pause()")
                page.evaluate("document.querySelectorAll('.flash').forEach(f => f.remove())")
                page.wait_for_function("[...document.images].filter(i => i.loading !== 'lazy')"
                                       ".every(i => i.complete)")
                time.sleep(0.3)
                target = out / f"{name}-{label}.png"
                _save(page.screenshot(), target)
                written.append(target)
                print(f"wrote {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}")
            ctx.close()
        browser.close()
    return written


def _save(png: bytes, target: Path, budget: int = 250_000) -> None:
    """Store the screenshot as it is, or as a 256-colour PNG when it is over `budget` bytes."""
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    img = Image.open(io.BytesIO(png)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    if buf.tell() > budget:
        buf = io.BytesIO()
        img.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(buf, "PNG", optimize=True)
    target.write_bytes(buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    ap.add_argument("--only", action="append", choices=PAGES, help="just these pages (repeatable)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tunesmith-shots-") as tmp:
        with Stack(Path(tmp), extra_env=DEMO_ENV) as stack:
            data = seed(stack)
            shoot(stack, data, args.out, args.only or PAGES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
