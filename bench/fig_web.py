"""Figure 1: the web app under load, with N songs in PostgreSQL.

Seeds a fresh database with songs (published and finished, spread over 30 days, in categories,
with likes and listens inside the trending window), starts gunicorn exactly as the Procfile's
`web` line does (2 workers x 4 threads) on a loopback port, logs one person in, and loads four
pages from a separate process: `wrk` where it is installed, else `bench/loadgen.py`.

- feed: `GET /` as a visitor (Trending, Newest and five category sections);
- search: `GET /?q=midnight` as a visitor (Discover's search: the full-text index, best match
  first; about one song in ten has the word in its title);
- library: `GET /library` as the person (24 songs of theirs, newest first);
- status fragment: `GET /songs/<id>/status` with `HX-Request: true` as the person, for a song
  of theirs being made (the fragment the library polls).

Each page is loaded at 2 connections (one request in flight per gunicorn worker: the latency a
person sees when the server is not saturated; the goals are judged here) and at 8 (saturated:
the requests/s the two workers can serve).
"""
from __future__ import annotations

import datetime as dt
import json
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from urllib.request import HTTPCookieProcessor, ProxyHandler, Request, build_opener

from harness import HERE, ROOT, Row, Settings, free_port, ms, say, stop, verdict, wait_for_port

CATEGORIES = ["Synthwave", "Lofi", "Rock", "Ambient", "House", "Cinematic", "Pop", "Jazz"]
STYLES = ["synthwave, 118 bpm, A minor, female vocals", "lofi hip hop, chill, rhodes, 85 bpm",
          "rock, energetic, electric guitar", "ambient, calm, pads", "house, edm, 124 bpm",
          "cinematic, epic, strings", "pop, upbeat, male vocals", "jazz, smooth, saxophone"]
WORDS = ["Neon", "Rain", "Midnight", "Drive", "Silver", "River", "Echo", "Summer", "Ghost", "Light",
         "Ocean", "City", "Dream", "Fire", "Paper", "Moon", "Velvet", "Static", "Golden", "Hour"]
LYRICS = ("[verse]\nCity lights are fading out tonight\nI can hear you calling out my name\n"
          "[chorus]\nOh oh neon rain\nWashing all the pain away")
PEAKS = [round(0.05 + 0.9 * abs(((i * 37) % 100) / 100.0 - 0.5) * 2, 3) for i in range(160)]
PASSWORD = "bench password 1"
CONNECTIONS = (2, 8)
GOALS = {"feed": 0.050, "status fragment": 0.010}
SEARCH_WORD = "midnight"  # one of WORDS: in the titles of about one song in ten


def _chunks(rows: list, n: int = 1000):
    for i in range(0, len(rows), n):
        yield rows[i:i + n]


def seed(n_songs: int, rng: random.Random) -> dict[str, Any]:
    """Bulk-insert `n_songs` songs and their owners, categories, likes and listens."""
    import models
    from models import Category, Generation, Like, Listen, Song, SongCategory, User, new_id, utcnow

    now = utcnow()
    n_users = max(5, n_songs // 100)
    email = "listener@bench.invalid"
    with models.db.atomic():
        me = User.create(email=email, name="Bench Listener", password_hash="!")
        me.set_password(PASSWORD)
        me.save()
        User.insert_many([{"email": f"artist{i}@bench.invalid", "name": f"Artist {i}", "password_hash": "!",
                           "created_at": now - dt.timedelta(days=60)} for i in range(1, n_users)]).execute()
        user_ids = [me.id] + [u.id for u in User.select(User.id).where(User.id != me.id).order_by(User.id)]
        cats = [Category.named(name).id for name in CATEGORIES]
        gens, songs, links = [], [], []
        for i in range(n_songs):
            owner = user_ids[i % n_users]
            created = now - dt.timedelta(seconds=rng.uniform(60, 30 * 86400))
            style = rng.randrange(len(STYLES))
            gid, sid = new_id(), new_id()
            title = f"{rng.choice(WORDS)} {rng.choice(WORDS)}"
            gens.append({"id": gid, "user": owner, "mode": "description", "description": f"a song called {title}",
                         "duration": 60, "variants": 2, "created_at": created})
            published = rng.random() < 0.9
            songs.append({"id": sid, "generation": gid, "user": owner, "variant": 0, "title": title,
                          "status": "processed", "stage": "done", "progress": 100, "tags": STYLES[style],
                          "lyrics": LYRICS, "seed": rng.randrange(2**31), "guidance": 7.5, "steps": 8,
                          "engine": "offline-arranger", "writer_engine": "offline-writer",
                          "cover_engine": "offline-cover", "offline": True, "duration": 60.0,
                          "audio_key": f"users/{owner}/songs/{sid}/master.wav",
                          "stream_key": f"users/{owner}/songs/{sid}/stream.mp3",
                          "cover_key": f"users/{owner}/songs/{sid}/cover.png", "peaks": PEAKS,
                          "published": published,
                          "published_at": created + dt.timedelta(minutes=5) if published else None,
                          "created_at": created, "updated_at": created, "started_at": created,
                          "finished_at": created + dt.timedelta(minutes=1)})
            links.append({"song": sid, "category": cats[style % len(cats)]})
            if rng.random() < 0.5:
                links.append({"song": sid, "category": cats[(style + 3) % len(cats)]})
        # One of the listener's songs is being made: the status fragment polls it.
        gid, status_id = new_id(), new_id()
        gens.append({"id": gid, "user": me.id, "mode": "description", "description": "in the making",
                     "duration": 60, "variants": 1, "created_at": now})
        for chunk in _chunks(gens):
            Generation.insert_many(chunk).execute()
        for chunk in _chunks(songs, 500):
            Song.insert_many(chunk).execute()
        Song.create(id=status_id, generation=gid, user=me.id, variant=0, status="processing", stage="composing",
                    progress=40, duration=60.0, created_at=now, updated_at=now, started_at=now)
        for chunk in _chunks(links):
            SongCategory.insert_many(chunk).execute()
        public = [s["id"] for s in songs if s.get("published")]
        pairs: set[tuple[int, str]] = set()
        while len(pairs) < n_songs // 2:
            pairs.add((rng.choice(user_ids), rng.choice(public)))
        likes = [{"user": u, "song": s, "created_at": now - dt.timedelta(seconds=rng.uniform(0, 10 * 86400))}
                 for u, s in pairs]
        for chunk in _chunks(likes):
            Like.insert_many(chunk).execute()
        listens = [{"song": rng.choice(public), "listener": f"u:{rng.choice(user_ids)}",
                    "created_at": now - dt.timedelta(seconds=rng.uniform(0, 10 * 86400))} for _ in range(2 * n_songs)]
        for chunk in _chunks(listens):
            Listen.insert_many(chunk).execute()
        models.db.execute_sql('UPDATE "song" SET '
                              'like_count = (SELECT COUNT(*) FROM "like" l WHERE l.song_id = "song".id), '
                              'listen_count = (SELECT COUNT(*) FROM "listen" t WHERE t.song_id = "song".id)')
    models.db.execute_sql("ANALYZE")
    return {"email": email, "status_song": status_id, "users": n_users, "songs": len(songs),
            "likes": len(likes), "listens": len(listens)}


# ------------------------------------------------------------------------------ load
_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _dur(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"unreadable wrk duration {text!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    dist = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", out, re.M))
    done = re.search(r"(\d+) requests in ([\d.]+\w+)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if not (dist and done and rps):
        raise RuntimeError("could not read wrk's output:\n" + out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(x) for x in sock.groups()) if sock else 0)
    return {"tool": "wrk", "requests": int(done.group(1)), "seconds": _dur(done.group(2)), "rps": float(rps.group(1)),
            "p50": _dur(dist["50"]), "p90": _dur(dist["90"]), "p99": _dur(dist["99"]), "errors": errors}


def load(url: str, connections: int, duration: int, headers: dict[str, str], tool: str) -> dict[str, Any]:
    hdr = [f"{k}: {v}" for k, v in headers.items()]
    if tool == "wrk":
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
        for h in hdr:
            cmd += ["-H", h]
        out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=duration + 60)
        if out.returncode != 0:
            raise RuntimeError(f"wrk failed: {out.stderr or out.stdout}")
        return parse_wrk(out.stdout)
    cmd = [sys.executable, str(HERE / "loadgen.py"), url, "--connections", str(connections),
           "--duration", str(duration)]
    for h in hdr:
        cmd += ["--header", h]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr or out.stdout}")
    return json.loads(out.stdout)


def login(base: str, email: str) -> str:
    """Log in through the real form; returns the Cookie header value."""
    from http.cookiejar import CookieJar

    jar = CookieJar()
    opener = build_opener(ProxyHandler({}), HTTPCookieProcessor(jar))
    html = opener.open(base + "/auth/login", timeout=30).read().decode()
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
    assert token, "the login page has no CSRF token"
    data = urlencode({"email": email, "password": PASSWORD, "csrf_token": token.group(1)}).encode()
    opener.open(base + "/auth/login", data, timeout=30).read()
    cookie = "; ".join(f"{c.name}={c.value}" for c in jar)
    assert "tunesmith_session" in cookie, "login did not set a session cookie"
    return cookie


def check_page(url: str, headers: dict[str, str], expect: str, times: int = 20) -> None:
    """Fetch a page a few times (warm-up) and make sure it is the page and not a redirect."""
    opener = build_opener(ProxyHandler({}))
    for _ in range(times):
        resp = opener.open(Request(url, headers=headers), timeout=30)
        body = resp.read().decode()
        if resp.status != 200 or resp.geturl() != url or expect not in body:
            raise RuntimeError(f"{url} did not answer with the page ({resp.status} {resp.geturl()})")


def pick_tool(wanted: str) -> str:
    if wanted == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if wanted == "wrk" and not shutil.which("wrk"):
        raise SystemExit("--loadgen wrk: wrk is not installed (apt-get install wrk)")
    return wanted


def feed_queries(repeats: int) -> dict[str, float]:
    """Seconds per call of each query the feed page runs (in this process, median of `repeats`):
    where a feed request's time goes, next to its latency under load."""
    from app.main import feed

    from harness import median

    cats = feed.all_categories()
    parts = {"trending": feed.trending, "category sections": lambda: feed.sections(cats[:feed.SECTION_CATEGORIES]),
             "category list": feed.all_categories, "newest": lambda: feed.listing("", None, 1),
             "search": lambda: feed.listing(SEARCH_WORD, None, 1)}
    out = {}
    for name, fn in parts.items():
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = median(times)
    return out


def web(settings: Settings, log_dir: Path, n_songs: int, duration: int, tool: str,
        warmup: int = 20) -> tuple[list[Row], dict]:
    import models

    say(f"figure 1: seeding {n_songs:,} songs into PostgreSQL")
    t0 = time.perf_counter()
    models.init_db(settings.database_url, 4)
    models.db.connect(reuse_if_open=True)
    try:
        seeded = seed(n_songs, random.Random(1234))
        queries = feed_queries(max(3, warmup))
    finally:
        models.db.close()
    seeded["seconds"] = round(time.perf_counter() - t0, 1)
    say(f"  seeded in {seeded['seconds']} s: {seeded['songs']:,} songs, {seeded['users']} people, "
        f"{seeded['likes']:,} likes, {seeded['listens']:,} listens")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = log_dir / "gunicorn.log"
    cmd = [sys.executable, "-m", "gunicorn", "app:create_app()", "--bind", f"127.0.0.1:{port}",
           "--workers", "2", "--threads", "4", "--graceful-timeout", "30", "--access-logfile", "-",
           "--forwarded-allow-ips", "127.0.0.1"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=settings.env(LOG_LEVEL="INFO"), stdout=fh, stderr=subprocess.STDOUT)
    results: dict[str, Any] = {"tool": tool, "songs": n_songs, "seed": seeded, "runs": [], "feed_queries": queries}
    rows: list[Row] = []
    try:
        wait_for_port(port, timeout=30.0, proc=proc)
        cookie = login(base, seeded["email"])
        pages = [("feed", "/", {}, "data-song-id"),
                 ("search", f"/?q={SEARCH_WORD}", {}, "data-song-id"),
                 ("library", "/library", {"Cookie": cookie}, "data-song-id"),
                 ("status fragment", f"/songs/{seeded['status_song']}/status",
                  {"Cookie": cookie, "HX-Request": "true"}, f'data-song-id="{seeded["status_song"]}"')]
        for name, path, headers, expect in pages:
            check_page(base + path, headers, expect, warmup)
        for name, path, headers, _ in pages:
            for conns in CONNECTIONS:
                say(f"  {name} at {conns} connections for {duration} s ({tool})")
                r = load(base + path, conns, duration, headers, tool)
                r.update(page=name, path=path if name != "status fragment" else "/songs/<id>/status",
                         connections=conns)
                results["runs"].append(r)
                goal = GOALS.get(name)
                judged = conns == CONNECTIONS[0] and goal is not None
                value = f"{r['rps']:.0f} req/s, p50 {ms(r['p50'])}, p99 {ms(r['p99'])}"
                if r["errors"]:
                    value += f", {r['errors']} errors"
                rows.append(Row("1", f"{name} {results['runs'][-1]['path']}, {conns} conns", value,
                                f"p99 < {goal * 1000:.0f} ms" if judged else "",
                                verdict(r["p99"] < goal and not r["errors"]) if judged else ""))
    finally:
        stop(proc)
    rows.append(Row("1", "  feed SQL, in-process median: " + " / ".join(queries),
                    " / ".join(ms(v) for v in queries.values())))
    return rows, results
