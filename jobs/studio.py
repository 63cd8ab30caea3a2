"""Studio operations inside the generation job: retake, extend, repaint, remix and stems.

`jobs.generate._generate` hands a generation whose `operation` is not "generate" to `run` here,
after its songs are marked processing; everything around it (idempotency, progress, cancel,
failures settling each song once with its credit released) is the generation job's.

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

from jobs import audio as audio_mod
from jobs.engines.base import EngineError, MusicRequest, SongSpec
from jobs.storage import song_prefix, with_retries
from models import Generation, Song

log = logging.getLogger("tunesmith.studio")

OPERATIONS = ("retake", "extend", "repaint", "remix", "stems")
STEM_NAMES = ("vocals", "drums", "bass", "other")
XFADE = 0.05  # seconds of crossfade at each seam
PURE_RENDERS = ("generate", "retake")  # operations whose audio is one engine render


def stem_key(song: Song, name: str) -> str:
    return song_prefix(song.user_id, song.id) + f"stems/{name}.wav"


def studio_engine(music):
    """The music engine with task support: the real engine has it; the offline arranger gets
    the offline studio around it."""
    if getattr(music, "offline", False) and not hasattr(music, "extract"):
        from jobs.engines.offline_studio import OfflineStudio

        return OfflineStudio(music)
    return music


def resample(x: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    if sr_from == sr_to or x.shape[0] == 0:
        return x
    n = int(round(x.shape[0] * sr_to / sr_from))
    t_new = np.arange(n) * (sr_from / sr_to)
    t_old = np.arange(x.shape[0])
    return np.stack([np.interp(t_new, t_old, x[:, c]) for c in range(x.shape[1])], axis=1).astype(np.float32)


def _stereo(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    if x.shape[1] == 1:
        x = np.repeat(x, 2, axis=1)
    return np.ascontiguousarray(x[:, :2])


def _fit(x: np.ndarray, frames: int) -> np.ndarray:
    if x.shape[0] >= frames:
        return x[:frames]
    return np.concatenate([x, np.zeros((frames - x.shape[0], x.shape[1]), dtype=x.dtype)])


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
    tail_source = _fit(tail_source, total)
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
    return resample(_stereo(samples), rate, sample_rate)


def original_request(parent: Song) -> MusicRequest | None:
    """The request a song was rendered from, when its audio is one plain render."""
    if parent.generation.operation not in PURE_RENDERS or parent.seed is None or not parent.duration:
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


def run(gen: Generation, todo: list[Song], timer, engines, storage) -> int:
    from jobs.generate import GUIDANCE_BY_VARIANT, PROGRESS, _set_stage, render_music

    params = dict(gen.params or {})
    op = gen.operation
    if op not in OPERATIONS:
        raise EngineError(f"unknown operation {op!r}")
    parent = Song.get_or_none(Song.id == gen.source_song_id) if gen.source_song_id else None
    if parent is None and not params.get("upload_key"):
        raise EngineError("the original song was deleted before this could start")
    music = studio_engine(engines.music)
    sr = int(music.sample_rate)
    _set_stage(todo, "composing", PROGRESS["composing"] - 2)
    with timer("source"):
        source = None if op == "retake" else load_source(gen, parent, storage, sr)
    if op == "stems":
        return _stems(gen, todo, parent, source, music, engines, storage, timer)

    tags = (params.get("tags") or (parent.tags if parent else "")).strip()
    lyrics = parent.lyrics if parent is not None else ""
    instrumental = parent.instrumental if parent is not None else not params.get("lyrics")
    if params.get("lyrics"):
        lyrics = params["lyrics"]
    xf = int(XFADE * sr)
    requests: list[MusicRequest] = []
    for song in todo:
        base = dict(tags=tags or "music", lyrics=lyrics, seed=_seed(params, song, parent.seed if parent else None),
                    instrumental=instrumental,
                    guidance=GUIDANCE_BY_VARIANT[song.variant % len(GUIDANCE_BY_VARIANT)],
                    steps=params.get("steps") or (parent.steps if parent else None))
        if op == "retake":
            requests.append(MusicRequest(duration=float(parent.duration), **base))
        elif op == "extend":
            at = float(params.get("from", source.shape[0] / sr))
            total = at + float(params["added"])
            src = _fit(source[:int(round(at * sr))], int(round(total * sr)))
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

    audios = render_music(music, requests, todo, timer)

    for req, rendered in zip(requests, audios):
        new = _stereo(rendered.samples)
        if op == "extend":
            at, total = int(round(req.repaint_start * sr)), int(round(req.repaint_end * sr))
            rendered.samples = join(req.source_audio, new, at, total, xf)
        elif op == "repaint":
            frames = source.shape[0]
            rendered.samples = splice(source, _fit(new, frames), int(round(req.repaint_start * sr)),
                                      int(round(req.repaint_end * sr)), xf)
        elif op == "remix":
            rendered.samples = _fit(new, source.shape[0])
        rendered.samples = np.clip(rendered.samples, -1.0, 1.0).astype(np.float32)
        rendered.sample_rate = sr

    title = _title(op, parent, params)
    if op == "extend" and params.get("lyrics") and parent is not None:
        lyrics = "\n\n".join(x for x in (parent.lyrics.strip(), params["lyrics"].strip()) if x)
    elif op == "repaint" and parent is not None:
        lyrics, tags = parent.lyrics, parent.tags  # the section's own words and tags stay in params
    spec = SongSpec(title=title, tags=tags, lyrics=lyrics,
                    categories=parent.category_names() if parent is not None else [])
    cover = _cover_bytes(op, parent, storage)
    return _store(gen, todo, requests, audios, spec, engines, storage, timer, cover)


def _title(op: str, parent: Song | None, params: dict) -> str:
    base = parent.title if parent is not None and parent.title else (params.get("upload_name") or "Uploaded audio")
    suffix = {"retake": "", "extend": " (extended)", "repaint": " (repainted)", "remix": " (remix)",
              "stems": " (stems)"}[op]
    return (base[:120 - len(suffix)] + suffix).strip()


def _cover_bytes(op: str, parent: Song | None, storage) -> bytes | None:
    if op == "remix" or parent is None or not parent.cover_key:
        return None
    try:
        return with_retries(lambda: storage.get(parent.cover_key))
    except Exception:  # no cover to copy: a new one is painted
        return None


def _store(gen, todo, requests, audios, spec: SongSpec, engines, storage, timer, cover: bytes | None,
           extra_files=None) -> int:
    from jobs.generate import store_songs

    return store_songs(gen, todo, requests, audios, title=spec.title, spec=spec, lyrics=spec.lyrics, engines=engines,
                       storage=storage, timer=timer, cover=cover, extra_files=extra_files)


def _stems(gen, todo, parent, source, music, engines, storage, timer) -> int:
    from jobs.generate import _set_stage
    from jobs.engines.base import RenderedAudio

    song = todo[0]
    sr = int(music.sample_rate)
    _set_stage(todo, "composing")
    with timer("music"):
        if hasattr(music, "extract"):  # the offline arranger: its own tracks when it can
            tracks = music.extract(source, original_request(parent) if parent is not None else None)
            method = getattr(music, "last_extract", "")
        else:
            reqs = [MusicRequest(tags=parent.tags if parent else "", lyrics=parent.lyrics if parent else "",
                                 duration=source.shape[0] / sr, seed=int(parent.seed or 0) if parent else 0,
                                 task="extract", track=name, source_audio=source) for name in STEM_NAMES]
            rendered = music.render(reqs)
            tracks = {name: _fit(_stereo(r.samples), source.shape[0]) for name, r in zip(STEM_NAMES, rendered)}
            method = "model extract"
    params = dict(gen.params or {})
    params["method"] = method
    Generation.update(params=params).where(Generation.id == gen.id).execute()
    stems = {name: np.clip(tracks[name], -1.0, 1.0).astype(np.float32) for name in STEM_NAMES}
    mix = source
    rendered = RenderedAudio(samples=mix, sample_rate=sr, seed=int(parent.seed or 0) if parent else 0,
                             steps=parent.steps if parent else None, guidance=parent.guidance if parent else None)
    spec = SongSpec(title=_title("stems", parent, params), tags=parent.tags if parent else "",
                    lyrics=parent.lyrics if parent else "",
                    categories=parent.category_names() if parent is not None else [])

    def files(s):
        return [(stem_key(s, name), audio_mod.encode_wav(stems[name], sr), "audio/wav") for name in STEM_NAMES]

    req = MusicRequest(tags=spec.tags, lyrics=spec.lyrics, duration=mix.shape[0] / sr, seed=rendered.seed)
    return _store(gen, [song], [req], [rendered], spec, engines, storage, timer,
                  _cover_bytes("stems", parent, storage), extra_files=files)
