"""How a song looks in the API (the OpenAPI `Song` schema mirrors this)."""
from __future__ import annotations

from ..extensions import settings


def _iso(value):
    return value.isoformat(timespec="seconds") + "Z" if value else None


def song_json(song, categories) -> dict:
    from ..songs.media import signed_url

    ready = song.status == "processed"
    audio = cover = download = None
    if ready and (song.stream_key or song.audio_key):
        audio = signed_url(song.stream_key or song.audio_key, external=True)
    if ready and song.audio_key:
        download = signed_url(song.audio_key, song.download_name(), external=True)
    if song.cover_key:
        cover = signed_url(song.cover_key, external=True)
    return {
        "id": song.id,
        "generation_id": song.generation_id,
        "status": song.status,
        "stage": song.stage,
        "progress": song.progress,
        "error": song.error or None,
        "title": song.title,
        "tags": song.tags,
        "lyrics": song.lyrics,
        "categories": [c.name for c in categories],
        "instrumental": song.instrumental,
        "language": song.language or None,
        "seed": song.seed,
        "guidance": song.guidance,
        "steps": song.steps,
        "duration": song.duration,
        "engine": song.engine,
        "offline": song.offline,
        "published": song.published,
        "like_count": song.like_count,
        "listen_count": song.listen_count,
        "created_at": _iso(song.created_at),
        "updated_at": _iso(song.updated_at),
        "finished_at": _iso(song.finished_at),
        "audio_url": audio,
        "download_url": download,
        "cover_url": cover,
        "urls_expire_in": settings().SIGNED_URL_TTL if (audio or cover) else None,
    }
