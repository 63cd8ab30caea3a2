"""Studio operations inside the generation job: retake, extend, repaint, remix and stems.

`jobs.generate` hands a generation whose `operation` is not "generate" to `run` here, as a
`jobs.pipeline.Job` whose songs are marked processing; everything around it (idempotency,
cancel, failures settling each song once with its credit released) is the generation job's.

The engine renders new material (`MusicRequest.task`); this module decodes the source, builds
the requests from the parent song and the operation's params, and assembles the result so the
guarantees hold on every engine:

- retake: the parent's settings with a new seed (N variants in one batched call);
- extend: the source up to the chosen point (default its end) followed by `added` new seconds,
  crossfaded over XFADE seconds before the point: the whole longer song;
- repaint: the source with [start, end] replaced (crossfades inside the section), so the audio
  outside the section is the source's, sample for sample;
- remix: a cover of the source (or an uploaded file) in a new style at the asked strength;
- stems: vocals, drums, bass and other, stored next to a copy of the mix on one new song.
"""
from __future__ import annotations

import logging
import secrets

import numpy as np

from core import catalogue
from core.storage import with_retries
from jobs import audio as audio_mod
from jobs.audio import fit, resample, stereo
from jobs import language
from jobs.engines.base import EngineError, MusicRequest, RenderedAudio, SongSpec
from jobs.pipeline import PROGRESS, Job, guidance_for
from models import Generation, Song

log = logging.getLogger("tunesmith.studio")

XFADE = 0.05  # seconds of crossfade at each seam


def stem_key(song: Song, name: str) -> str:
    return catalogue.stem_key(song.user_id, song.id, name)


def studio_engine(music):
    """The music engine with task support: the real engine has it; the offline arranger gets
    the offline studio around it."""
    if getattr(music, "offline", False) and not hasattr(music, "extract"):
        from jobs.engines.offline_studio import OfflineStudio

        return OfflineStudio(music)
    return music


def splice(base: np.ndarray, new: np.ndarray, start: int, end: int, xfade: int) -> np.ndarray:
    """`base` with frames [start, end) taken from `new`; linear crossfades of `xfade` frames lie
    inside the section, so every frame outside it is `base`'s."""
    out = base.copy()
    out[start:end] = new[start:end]
    xf = max(0, min(xfade, (end - start) // 4))
    if xf:
        ramp = np.linspace(0.0, 1.0, xf, dtype=np.float32)[:, None]
        if start > 0:
            out[start:start + xf] = base[start:start + xf] * (1 - ramp) + new[start:start + xf] * ramp
        if end < base.shape[0]:
            out[end - xf:end] = new[end - xf:end] * (1 - ramp) + base[end - xf:end] * ramp
    return out


def join(head: np.ndarray, tail_source: np.ndarray, at: int, total: int, xfade: int) -> np.ndarray:
    """`head[:at]` then `tail_source[at:total]`, crossfaded over the `xfade` frames before `at`."""
    tail_source = fit(tail_source, total)
    out = np.concatenate([head[:at], tail_source[at:total]]).astype(np.float32)
    xf = max(0, min(xfade, at))
    if xf:
        ramp = np.linspace(0.0, 1.0, xf, dtype=np.float32)[:, None]
        out[at - xf:at] = head[at - xf:at] * (1 - ramp) + tail_source[at - xf:at] * ramp
    return out


def load_source(gen: Generation, parent: Song | None, storage, sample_rate: int) -> np.ndarray:
    params = gen.params or {}
    key = params.get("upload_key") or (parent.audio_key if parent is not None else None)
    if not key:
        raise EngineError("the original song's audio is gone")
    data = with_retries(lambda: storage.get(key))
    samples, rate = audio_mod.decode(data)
    return resample(stereo(samples), rate, sample_rate)


def original_request(parent: Song) -> MusicRequest | None:
    """The request a song was rendered from, when its audio is one plain render."""
    if parent.generation.operation not in catalogue.PURE_RENDERS or parent.seed is None or not parent.duration:
        return None
    duration = float(parent.generation.duration) if parent.generation.operation == "generate" else parent.duration
    return MusicRequest(tags=parent.tags, lyrics=parent.lyrics, duration=duration, seed=int(parent.seed),
                        instrumental=parent.instrumental, guidance=parent.guidance, steps=parent.steps)


def _seed(params: dict, song: Song, avoid: int | None) -> int:
    if song.seed is not None:
        return int(song.seed)
    if params.get("seed") is not None:
        return int(params["seed"]) + song.variant
    while True:
        seed = secrets.randbelow(2**31 - 1)
        if seed != avoid:
            return seed


def run(job: Job) -> int:
    gen, todo, engines, storage, timer = job.gen, job.songs, job.engines, job.storage, job.timer
    params = dict(gen.params or {})
    op = gen.operation
    if op not in catalogue.STUDIO_OPERATIONS:
        raise EngineError(f"unknown operation {op!r}")
    parent = Song.get_or_none(Song.id == gen.source_song_id) if gen.source_song_id else None
    if parent is None and not params.get("upload_key"):
        raise EngineError("the original song was deleted before this could start")
    music = studio_engine(engines.music)
    sr = int(music.sample_rate)
    job.stage("composing", PROGRESS["composing"] - 2)
    with timer("source"):
        source = None if op == "retake" else load_source(gen, parent, storage, sr)
    if op == "stems":
        return _stems(job, parent, source, music)

    tags = (params.get("tags") or (parent.tags if parent else "")).strip()
    lyrics = parent.lyrics if parent is not None else ""
    instrumental = parent.instrumental if parent is not None else not params.get("lyrics")
    if params.get("lyrics"):
        lyrics = params["lyrics"]
    xf = int(XFADE * sr)
    requests: list[MusicRequest] = []
    # The parent's language, else that of the new words (an upload's remix, a section's lyrics).
    sung = language.choose(parent.language if parent is not None and parent.language != language.UNKNOWN else None,
                           None, params.get("lyrics") or "", lyrics, instrumental=instrumental)
    for song in todo:
        base = dict(tags=tags or "music", lyrics=lyrics, seed=_seed(params, song, parent.seed if parent else None),
                    instrumental=instrumental, vocal_language=sung,
                    guidance=guidance_for(song.variant) if params.get("guidance_pair") else None,
                    steps=params.get("steps") or (parent.steps if parent else None))
        if op == "retake":
            requests.append(MusicRequest(duration=float(parent.duration), **base))
        elif op == "extend":
            at = float(params.get("from", source.shape[0] / sr))
            total = at + float(params["added"])
            src = fit(source[:int(round(at * sr))], int(round(total * sr)))
            requests.append(MusicRequest(duration=total, task="repaint", source_audio=src, repaint_start=at,
                                         repaint_end=total, **base))
        elif op == "repaint":
            start, end = float(params["start"]), float(params["end"])
            if not 0 <= start < end <= source.shape[0] / sr + 1e-3:
                raise EngineError(f"the section {start:.1f}-{end:.1f}s is outside the song")
            requests.append(MusicRequest(duration=source.shape[0] / sr, task="repaint", source_audio=source,
                                         repaint_start=start, repaint_end=end, **base))
        elif op == "remix":
            requests.append(MusicRequest(duration=source.shape[0] / sr, task="cover", source_audio=source,
                                         strength=float(params.get("strength", 0.5)), **base))

    audios = job.render(music, requests)

    for req, rendered in zip(requests, audios):
        new = stereo(rendered.samples)
        if op == "extend":
            at, total = int(round(req.repaint_start * sr)), int(round(req.repaint_end * sr))
            rendered.samples = join(req.source_audio, new, at, total, xf)
        elif op == "repaint":
            frames = source.shape[0]
            rendered.samples = splice(source, fit(new, frames), int(round(req.repaint_start * sr)),
                                      int(round(req.repaint_end * sr)), xf)
        elif op == "remix":
            rendered.samples = fit(new, source.shape[0])
        rendered.samples = np.clip(rendered.samples, -1.0, 1.0).astype(np.float32)
        rendered.sample_rate = sr

    title = _title(op, parent, params)
    if op == "extend" and params.get("lyrics") and parent is not None:
        lyrics = "\n\n".join(x for x in (parent.lyrics.strip(), params["lyrics"].strip()) if x)
    elif op == "repaint" and parent is not None:
        lyrics, tags = parent.lyrics, parent.tags  # the section's own words and tags stay in params
    spec = SongSpec(title=title, tags=tags, lyrics=lyrics, language=sung,
                    categories=parent.category_names() if parent is not None else [])
    cover = _cover_bytes(op, parent, storage)
    return job.store(requests, audios, spec, cover=cover)


def _title(op: str, parent: Song | None, params: dict) -> str:
    base = parent.title if parent is not None and parent.title else (params.get("upload_name") or "Uploaded audio")
    return catalogue.derived_title(op, base)


def _cover_bytes(op: str, parent: Song | None, storage) -> bytes | None:
    if op == "remix" or parent is None or not parent.cover_key:
        return None
    try:
        return with_retries(lambda: storage.get(parent.cover_key))
    except Exception:  # no cover to copy: a new one is painted
        return None


def _stems(job: Job, parent: Song | None, source: np.ndarray, music) -> int:
    gen, storage, timer = job.gen, job.storage, job.timer
    sr = int(music.sample_rate)
    job.stage("composing")
    with timer("music"):
        if hasattr(music, "extract"):  # the offline arranger: its own tracks when it can
            tracks = music.extract(source, original_request(parent) if parent is not None else None)
            method = getattr(music, "last_extract", "")
        else:
            reqs = [MusicRequest(tags=parent.tags if parent else "", lyrics=parent.lyrics if parent else "",
                                 duration=source.shape[0] / sr, seed=int(parent.seed or 0) if parent else 0,
                                 task="extract", track=name, source_audio=source) for name in catalogue.STEMS]
            rendered = music.render(reqs)
            tracks = {name: fit(stereo(r.samples), source.shape[0]) for name, r in zip(catalogue.STEMS, rendered)}
            method = "model extract"
    params = dict(gen.params or {})
    params["method"] = method
    Generation.update(params=params).where(Generation.id == gen.id).execute()
    stems = {name: np.clip(tracks[name], -1.0, 1.0).astype(np.float32) for name in catalogue.STEMS}
    mix = source
    rendered = RenderedAudio(samples=mix, sample_rate=sr, seed=int(parent.seed or 0) if parent else 0,
                             steps=parent.steps if parent else None, guidance=parent.guidance if parent else None)
    spec = SongSpec(title=_title("stems", parent, params), tags=parent.tags if parent else "",
                    lyrics=parent.lyrics if parent else "",
                    categories=parent.category_names() if parent is not None else [])

    def files(s):
        return [(stem_key(s, name), audio_mod.encode_wav(stems[name], sr), "audio/wav") for name in catalogue.STEMS]

    req = MusicRequest(tags=spec.tags, lyrics=spec.lyrics, duration=mix.shape[0] / sr, seed=rendered.seed)
    job.songs = job.songs[:1]  # stems make one song
    return job.store([req], [rendered], spec, cover=_cover_bytes("stems", parent, storage), extra_files=files)
