"""How a song looks in the API (the OpenAPI `Song` schema mirrors this)."""
from __future__ import annotations

from ..extensions import settings


def _iso(value):
    return value.isoformat(timespec="seconds") + "Z" if value else None


def generation_state(songs) -> dict:
    """A generation's state from its songs: `status` is queued (none started), processing (some
    not final) or finished (every song processed or failed); `progress` the songs' mean percent."""
    statuses = [s.status for s in songs]
    finished = all(st in ("processed", "failed") for st in statuses)
    status = "finished" if finished else ("queued" if all(st == "queued" for st in statuses) else "processing")
    return {"status": status, "finished": finished,
            "progress": round(sum(s.progress or 0 for s in songs) / len(songs)) if songs else 0,
            "processed": statuses.count("processed"), "failed": statuses.count("failed")}


def song_progress_json(song) -> dict:
    """The few fields of a song that change while it is made (the events stream sends these)."""
    return {"id": song.id, "status": song.status, "stage": song.stage, "progress": song.progress,
            "error": song.error or None, "title": song.title}


def generation_json(gen, songs, categories) -> dict:
    params = {k: v for k, v in (gen.params or {}).items() if k not in ("upload_key",)}
    return {
        "id": gen.id,
        "operation": gen.operation,
        "mode": gen.mode,
        "source_song_id": gen.source_song_id,
        "params": params,
        "variants": gen.variants,
        "duration": gen.duration,
        "created_at": _iso(gen.created_at),
        **generation_state(songs),
        "songs": [song_json(s, categories.get(s.id, [])) for s in songs],
    }


def user_json(user) -> dict:
    return {"id": user.id, "email": user.email, "name": user.name, "display_name": user.display_name,
            "credits": user.balance(), "has_purchased": bool(user.has_purchased),
            "created_at": _iso(user.created_at)}


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
        "style_id": song.style_id,
        "style_hash": song.style_hash or None,
    }
