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
- stems: vocals, drums, bass and other (Demucs; guitar and piano too on its six-source model),
  level-matched to the mix, stored next to a copy of it on one new song (see `_stems`).
"""
from __future__ import annotations

import logging
import secrets

import numpy as np

from core import catalogue
from core.storage import with_retries
from jobs import audio as audio_mod
from jobs import language
from jobs import styles as job_styles
from jobs.audio import fit, resample, stereo
from jobs.engines.base import EngineError, MusicRequest, RenderedAudio, SongSpec
from jobs.pipeline import PROGRESS, Job, guidance_for
from models import Generation, Song

log = logging.getLogger("tunesmith.studio")

XFADE = 0.05  # seconds of crossfade at each seam


def stem_key(song: Song, name: str, attempt: int = 1) -> str:
    return catalogue.stem_key(song.user_id, song.id, name, attempt)


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

    style = job_styles.style_ref(params.get("style"), job.config, storage)  # a trained style, on local disk
    job_styles.check_engine(style, engines.music)
    tags = (params.get("tags") or (parent.tags if parent else "")).strip()
    lyrics = parent.lyrics if parent is not None else ""
    instrumental = parent.instrumental if parent is not None else not params.get("lyrics")
    if params.get("lyrics"):
        lyrics = params["lyrics"]
    xf = int(XFADE * sr)
    # The parent's language, else that of the new words (an upload's remix, a section's lyrics).
    sung = language.choose(parent.language if parent is not None and parent.language != language.UNKNOWN else None,
                           None, params.get("lyrics") or "", lyrics, instrumental=instrumental)
    requests: list[MusicRequest] = []
    for song in todo:
        base = dict(tags=tags or "music", lyrics=lyrics, seed=_seed(params, song, parent.seed if parent else None),
                    instrumental=instrumental, vocal_language=sung,
                    guidance=guidance_for(song.variant) if params.get("guidance_pair") else None,
                    steps=params.get("steps") or (parent.steps if parent else None), style=style)
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
    """One stems song: a copy of the mix and one WAV per stem, level-matched (the stems add up
    to the mix), made by the first of these that the worker has:

    - the stems engine (Demucs, `job.engines.stems`): vocals, drums, bass, other (and guitar and
      piano on a six-source model); "other" also holds the separation residual;
    - the music engine's extract task, only where it says it has one (``"extract" in
      music.tasks``: ACE-Step base checkpoints, not turbo): vocals, drums and bass, each scaled
      by the gain that best fits the mix (the pipeline peak-normalises every output), and
      "other" the rest;
    - the offline split (the offline twin): the arranger's own tracks when the song re-renders
      exactly, else a spectral split.

    The method and the stem names go into the generation's params ("method", "stems"); the
    stems page lists and serves the names stored there. Stem files are per attempt, 16-bit WAV
    unless a stem peaks over full scale (then 32-bit float for all: `stem_format`).
    """
    import time

    gen, storage, timer = job.gen, job.storage, job.timer
    sr = int(music.sample_rate)
    frames = source.shape[0]
    separator = getattr(job.engines, "stems", None)
    tasks = getattr(music, "tasks", None)
    seed = int(parent.seed or 0) if parent else 0
    job.stage("composing")
    last = {"t": 0.0, "p": -1}
    low, high = PROGRESS["composing"], PROGRESS["painting"]

    def progress(fraction: float) -> None:  # throttled, and sees a cancel (as Job.render)
        pct = low + int((high - low) * max(0.0, min(1.0, fraction)))
        now_t = time.monotonic()
        if pct != last["p"] and (now_t - last["t"] > 0.5 or fraction >= 1.0):
            last.update(t=now_t, p=pct)
            job.stage("composing", pct)

    params = dict(gen.params or {})
    with timer("music"):
        if separator is not None:
            tracks = separator.separate(source, sr, progress=progress, seed=seed)
            method = "demucs"
            params["stems_model"] = getattr(separator, "name", "demucs")
        elif hasattr(music, "extract"):  # the offline arranger: its own tracks when it can
            tracks = music.extract(source, original_request(parent) if parent is not None else None)
            method = getattr(music, "last_extract", "") or "offline split"
        elif tasks is not None and "extract" in tasks:
            named = [n for n in catalogue.STEMS if n != "other"]
            reqs = [MusicRequest(tags=parent.tags if parent else "", lyrics=parent.lyrics if parent else "",
                                 duration=frames / sr, seed=seed, task="extract", track=name, source_audio=source)
                    for name in named]
            rendered = music.render(reqs, progress=progress)
            tracks = _fit_levels(source, {name: fit(stereo(r.samples), frames) for name, r in zip(named, rendered)})
            method = "model extract"
        else:
            from jobs.engines.offline_studio import spectral_split

            tracks = spectral_split(source, sr)
            method = "spectral split"
    names = list(tracks)
    fmt = stem_format(tracks)
    params.update(method=method, stems=names, stem_format=fmt)
    Generation.update(params=params).where(Generation.id == gen.id).execute()
    mix = source
    rendered = RenderedAudio(samples=mix, sample_rate=sr, seed=seed,
                             steps=parent.steps if parent else None, guidance=parent.guidance if parent else None)
    spec = SongSpec(title=_title("stems", parent, params), tags=parent.tags if parent else "",
                    lyrics=parent.lyrics if parent else "",
                    categories=parent.category_names() if parent is not None else [])

    def files(s):
        return [(stem_key(s, name, job.attempt), encode_stem(tracks[name], sr, fmt), "audio/wav") for name in names]

    req = MusicRequest(tags=spec.tags, lyrics=spec.lyrics, duration=mix.shape[0] / sr, seed=rendered.seed)
    job.songs = job.songs[:1]  # stems make one song
    return job.store([req], [rendered], spec, cover=_cover_bytes("stems", parent, storage), extra_files=files)


def stem_format(tracks: dict[str, np.ndarray]) -> str:
    """How a song's stems are stored: 16-bit PCM WAV ("pcm16") when every stem fits in full
    scale, else 32-bit float WAV ("float32", as Demucs's ``--float32``) for all of them, so no
    stem is clipped and they still add up to the mix (a loud master's parts can peak over it)."""
    peak = max((float(np.abs(t).max()) for t in tracks.values() if t.size), default=0.0)
    return "pcm16" if peak <= 1.0 else "float32"


def encode_stem(track: np.ndarray, sr: int, fmt: str) -> bytes:
    """One stem as a WAV file in the `stem_format` of its song."""
    import io

    import soundfile as sf

    if fmt == "pcm16":
        return audio_mod.encode_wav(np.clip(track, -1.0, 1.0), sr)
    buf = io.BytesIO()
    sf.write(buf, stereo(track), int(sr), format="WAV", subtype="FLOAT")
    return buf.getvalue()


def _fit_levels(mix: np.ndarray, tracks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`tracks` (each peak-normalised by the engine) scaled by the non-negative gains that best
    fit `mix` (least squares), plus "other": the mix minus them, so all of them sum to the mix."""
    names = list(tracks)
    basis = np.stack([tracks[n].astype(np.float64).ravel() for n in names], axis=1)
    gains = np.clip(np.linalg.lstsq(basis, mix.astype(np.float64).ravel(), rcond=None)[0], 0.0, None)
    out = {n: (tracks[n] * np.float32(g)).astype(np.float32) for n, g in zip(names, gains)}
    out["other"] = (mix - sum(out.values())).astype(np.float32)
    return {n: out[n] for n in catalogue.STEMS if n in out}
