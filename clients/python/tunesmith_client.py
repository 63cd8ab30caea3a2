"""A small typed client for the Tunesmith API (/api/v1), standard library only.

    from tunesmith_client import Tunesmith

    api = Tunesmith("https://tunes.example.com", "ts_...")
    accepted = api.generate_from_description("a dreamy synthwave track", duration=60)
    for event in api.events(accepted.generation_id):      # server-sent events
        print(event.name, event.data["progress"])
    song = api.song(accepted.songs[0].id)
    print(song.title, song.audio_url)

Every method raises `ApiError` (status, code, message, field) for an error answer.
"""
from __future__ import annotations

import json
import mimetypes
import secrets
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

__all__ = ["Accepted", "ApiError", "CancelResult", "Event", "Generation", "Me", "Song", "SongPage", "Tunesmith"]
__version__ = "1.0.0"


class ApiError(Exception):
    """An error answer: `status` (HTTP), `code` (stable word), `message` (for a person), `field`."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None, body: dict | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.field, self.body = status, code, message, field, body or {}


def _build(cls, data: dict):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Song:
    id: str
    generation_id: str
    status: str
    stage: str = ""
    progress: int = 0
    error: str | None = None
    title: str = ""
    tags: str = ""
    lyrics: str = ""
    categories: list[str] = field(default_factory=list)
    instrumental: bool = False
    language: str | None = None
    seed: int | None = None
    guidance: float | None = None
    steps: int | None = None
    duration: float | None = None
    engine: str = ""
    offline: bool = False
    published: bool = False
    like_count: int = 0
    listen_count: int = 0
    created_at: str | None = None
    updated_at: str | None = None
    finished_at: str | None = None
    audio_url: str | None = None
    download_url: str | None = None
    cover_url: str | None = None
    urls_expire_in: int | None = None


@dataclass
class SongRef:
    id: str
    status: str


@dataclass
class Accepted:
    generation_id: str
    songs: list[SongRef]


@dataclass
class SongPage:
    songs: list[Song]
    limit: int
    next_cursor: str | None


@dataclass
class Generation:
    id: str
    operation: str
    status: str
    finished: bool
    songs: list[Song]
    mode: str = ""
    source_song_id: str | None = None
    params: dict = field(default_factory=dict)
    variants: int = 0
    duration: int = 0
    created_at: str | None = None
    progress: int = 0
    processed: int = 0
    failed: int = 0


@dataclass
class Me:
    id: int
    email: str
    credits: int
    name: str = ""
    display_name: str = ""
    has_purchased: bool = False
    created_at: str | None = None


@dataclass
class CancelResult:
    outcome: str  # finished | cancelled | stopping
    message: str
    song: Song


@dataclass
class Event:
    name: str  # progress | done | timeout | gone
    data: dict
    id: str | None = None


class Tunesmith:
    """The API at `base_url` (the site's address; /api/v1 is added) as the owner of `token`."""

    def __init__(self, base_url: str, token: str, timeout: float = 30.0):
        self.base = base_url.rstrip("/") + "/api/v1"
        self.token = token
        self.timeout = timeout

    # -- transport -------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None, *, query: dict | None = None,
                 headers: dict | None = None, raw: bytes | None = None, content_type: str | None = None,
                 stream: bool = False, timeout: float | None = None):
        url = self.base + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        h = {"Authorization": f"Bearer {self.token}", "Accept": "application/json", **(headers or {})}
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            content_type = "application/json"
        if content_type:
            h["Content-Type"] = content_type
        req = urllib.request.Request(url, data=data, method=method, headers=h)
        try:
            resp = urllib.request.urlopen(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            try:
                payload = json.loads(exc.read() or b"{}")
            except ValueError:
                payload = {}
            err = payload.get("error") or {}
            raise ApiError(exc.code, err.get("code", "http_error"), err.get("message", exc.reason or ""),
                           err.get("field"), payload) from None
        if stream:
            return resp
        with resp:
            content = resp.read()
        return json.loads(content) if content else None

    def _studio(self, song_id: str, op: str, fields: dict, idempotency_key: str | None) -> Accepted:
        body = {k: v for k, v in fields.items() if v is not None}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return _accepted(self._request("POST", f"/songs/{_q(song_id)}/{op}", body, headers=headers))

    # -- make songs ------------------------------------------------------------------------
    def generate_from_description(self, description: str, *, duration: int | None = None,
                                  instrumental: bool | None = None, variants: int | None = None,
                                  idempotency_key: str | None = None) -> Accepted:
        return self._generate("generate_from_description", dict(description=description, duration=duration,
                              instrumental=instrumental, variants=variants), idempotency_key)

    def generate_with_lyrics(self, prompt: str, lyrics: str = "", *, duration: int | None = None,
                             instrumental: bool | None = None, variants: int | None = None,
                             idempotency_key: str | None = None) -> Accepted:
        return self._generate("generate_with_lyrics", dict(prompt=prompt, lyrics=lyrics or None, duration=duration,
                              instrumental=instrumental, variants=variants), idempotency_key)

    def generate_from_described_lyrics(self, description: str, prompt: str, *, duration: int | None = None,
                                       instrumental: bool | None = None, variants: int | None = None,
                                       idempotency_key: str | None = None) -> Accepted:
        return self._generate("generate_from_described_lyrics", dict(
            description=description, prompt=prompt, duration=duration, instrumental=instrumental,
            variants=variants), idempotency_key)

    def _generate(self, endpoint: str, fields: dict, idempotency_key: str | None) -> Accepted:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        body = {k: v for k, v in fields.items() if v is not None}
        return _accepted(self._request("POST", f"/{endpoint}", body, headers=headers))

    # -- studio ----------------------------------------------------------------------------
    def retake(self, song_id: str, *, variants: int | None = None, seed: int | None = None,
               idempotency_key: str | None = None) -> Accepted:
        return self._studio(song_id, "retake", dict(variants=variants, seed=seed), idempotency_key)

    def extend(self, song_id: str, added: float, *, start_from: float | None = None, lyrics: str | None = None,
               variants: int | None = None, idempotency_key: str | None = None) -> Accepted:
        fields = {"added": added, "from": start_from, "lyrics": lyrics, "variants": variants}
        return self._studio(song_id, "extend", fields, idempotency_key)

    def repaint(self, song_id: str, start: float, end: float, *, tags: str | None = None,
                lyrics: str | None = None, variants: int | None = None,
                idempotency_key: str | None = None) -> Accepted:
        return self._studio(song_id, "repaint", dict(start=start, end=end, tags=tags, lyrics=lyrics,
                                                     variants=variants), idempotency_key)

    def remix(self, song_id: str, tags: str, *, strength: float | None = None, variants: int | None = None,
              audio: str | Path | bytes | None = None, filename: str = "upload.wav",
              idempotency_key: str | None = None) -> Accepted:
        """Remix the song, or with `audio` (a path or bytes) your upload, in the style `tags`."""
        fields = {"tags": tags, "strength": strength, "variants": variants}
        if audio is None:
            return self._studio(song_id, "remix", fields, idempotency_key)
        if not isinstance(audio, bytes):
            filename = Path(audio).name
            audio = Path(audio).read_bytes()
        raw, content_type = _multipart({k: str(v) for k, v in fields.items() if v is not None},
                                       {"audio": (filename, audio)})
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return _accepted(self._request("POST", f"/songs/{_q(song_id)}/remix", raw=raw, content_type=content_type,
                                       headers=headers))

    def stems(self, song_id: str, *, idempotency_key: str | None = None) -> Accepted:
        return self._studio(song_id, "stems", {}, idempotency_key)

    # -- library ---------------------------------------------------------------------------
    def song(self, song_id: str) -> Song:
        return _build(Song, self._request("GET", f"/songs/{_q(song_id)}"))

    def songs(self, *, limit: int | None = None, cursor: str | None = None, status: str | None = None,
              generation_id: str | None = None) -> SongPage:
        page = self._request("GET", "/songs", query=dict(limit=limit, cursor=cursor, status=status,
                                                        generation_id=generation_id))
        return SongPage([_build(Song, s) for s in page["songs"]], page["limit"], page["next_cursor"])

    def iter_songs(self, **filters) -> Iterator[Song]:
        """Every song (newest first), following `next_cursor` page by page."""
        cursor = None
        while True:
            page = self.songs(cursor=cursor, **filters)
            yield from page.songs
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def publish(self, song_id: str) -> Song:
        return _build(Song, self._request("POST", f"/songs/{_q(song_id)}/publish"))

    def unpublish(self, song_id: str) -> Song:
        return _build(Song, self._request("POST", f"/songs/{_q(song_id)}/unpublish"))

    def rename(self, song_id: str, title: str) -> Song:
        return _build(Song, self._request("PATCH", f"/songs/{_q(song_id)}", {"title": title}))

    def cancel(self, song_id: str) -> CancelResult:
        out = self._request("POST", f"/songs/{_q(song_id)}/cancel")
        return CancelResult(out["outcome"], out["message"], _build(Song, out["song"]))

    def delete(self, song_id: str) -> None:
        self._request("DELETE", f"/songs/{_q(song_id)}")

    # -- account, generations, events ------------------------------------------------------
    def me(self) -> Me:
        return _build(Me, self._request("GET", "/me"))

    def generation(self, generation_id: str) -> Generation:
        data = self._request("GET", f"/generations/{_q(generation_id)}")
        data["songs"] = [_build(Song, s) for s in data["songs"]]
        return _build(Generation, data)

    def events(self, generation_id: str, timeout: float = 330.0) -> Iterator[Event]:
        """The generation's server-sent events until the server ends the stream (after `done`,
        `timeout` or `gone`)."""
        resp = self._request("GET", f"/generations/{_q(generation_id)}/events", stream=True, timeout=timeout,
                             headers={"Accept": "text/event-stream"})
        with resp:
            name, data, event_id = None, [], None
            for raw in resp:
                line = raw.decode("utf-8").rstrip("\r\n")
                if not line:
                    if name and data:
                        yield Event(name, json.loads("\n".join(data)), event_id)
                    name, data, event_id = None, [], None
                elif line.startswith(":"):
                    continue
                elif line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line.startswith("id:"):
                    event_id = line[3:].strip()

    def wait(self, generation_id: str) -> Generation:
        """Follow the events until the generation is finished (reconnecting after a `timeout`)."""
        while True:
            last = None
            for event in self.events(generation_id):
                last = event.name
                if event.name in ("done", "gone"):
                    return self.generation(generation_id)
            if last != "timeout":
                return self.generation(generation_id)


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _accepted(data: dict) -> Accepted:
    return Accepted(data["generation_id"], [SongRef(s["id"], s["status"]) for s in data["songs"]])


def _multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "tunesmith-" + secrets.token_hex(12)
    out = bytearray()
    for name, value in fields.items():
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n').encode()
    for name, (filename, content) in files.items():
        kind = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        safe = filename.replace('"', "").replace("\r", "").replace("\n", "")
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{safe}"\r\n'
                f"Content-Type: {kind}\r\n\r\n").encode()
        out += content + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"
