"""Finished songs made directly through the models (rows plus their objects in storage), for
tests of the feed and the song page that do not need the worker to render audio."""
from __future__ import annotations

import datetime as dt
import io
import math
import struct
import wave

from core.catalogue import song_prefix
from core.storage import get_storage
from models import Category, Generation, Song, SongCategory, User, utcnow

PEAKS = [round(abs(math.sin(i / 9.0)) * 0.9 + 0.05, 3) for i in range(160)]


def tiny_wav(seconds: float = 0.2, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 5.0))) for i in range(int(rate * seconds))))
    return buf.getvalue()


PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360f8cfc0f01f0005000201e2263fd90000000049454e44ae426082")


def user(email: str, name: str = "") -> User:
    """A person who never logs in (no password hashing: fast); tests that log in register."""
    existing = User.get_or_none(User.email == email.lower())
    return existing or User.create(email=email.lower(), name=name, password_hash="!")


def song(owner: User, title: str = "A song", *, published: bool = True, status: str = "processed",
         tags: str = "synthwave, dreamy, 120 bpm", lyrics: str = "[verse]\nNeon rain on the boulevard",
         categories=(), app=None, published_at: dt.datetime | None = None,
         created_at: dt.datetime | None = None, **fields) -> Song:
    """A song row; with `app`, its master, stream and cover are put in the app's storage."""
    gen = Generation.create(user=owner, mode="description", description=title, duration=12, variants=1)
    now = utcnow()
    created_at = created_at or now
    finished = status == "processed"
    values = dict(generation=gen, user=owner, title=title, status=status, stage="done" if finished else status,
                  progress=100 if status == "processed" else 0, tags=tags, lyrics=lyrics, seed=1234, guidance=7.5,
                  steps=8, engine="offline-arranger", writer_engine="offline-writer", cover_engine="offline-cover",
                  offline=True, duration=12.0, peaks=PEAKS if status == "processed" else None,
                  published=published, published_at=(published_at or created_at) if published else None,
                  created_at=created_at, updated_at=created_at)
    values.update(fields)
    row = Song.create(**values)
    if status == "processed":
        prefix = song_prefix(owner.id, row.id)
        keys = {"audio_key": prefix + "master.wav", "stream_key": prefix + "stream.wav",
                "cover_key": prefix + "cover.png"}
        Song.update(**keys).where(Song.id == row.id).execute()
        for k, v in keys.items():
            setattr(row, k, v)
        if app is not None:
            storage = get_storage(app.extensions["tunesmith_config"])
            wav = tiny_wav()
            storage.put(keys["audio_key"], wav, "audio/wav")
            storage.put(keys["stream_key"], wav, "audio/wav")
            storage.put(keys["cover_key"], PNG_1PX, "image/png")
    for name in categories:
        SongCategory.get_or_create(song=row.id, category=Category.named(name))
    return row
