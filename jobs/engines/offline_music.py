"""Offline music engine: a procedural arranger that needs no weights and no GPU.

It reads the style tags the writer produced (genre, mood, tempo, key, time signature) and the
lyrics' section structure, plans a song (intro / verse / pre-chorus / chorus / bridge / outro),
and renders four stems: drums (synthesised kick, snare, clap, hats, ride, crash, toms, shaker),
bass, "other" (chords as pads, stabs, electric piano, power chords or arpeggios, plus a lead
melody) and vocals (a formant "vocal-like" line, one note per syllable of the lyrics, when the
song is not instrumental). The mix is loudness-normalised, never clips, and lasts exactly the
requested duration. The same request and seed always give the same samples; another seed
gives another arrangement (rhythms, melody, sounds) in the same style, tempo and key.

Speed: notes are rendered once per (instrument, pitch, length) from band-limited wavetables and
then added into the stem buffers at their onsets, so the cost is a few thousand slice additions
and a few dozen whole-buffer passes; a song renders well over 50x faster than real time on one
CPU core.
"""
from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .base import (Cancelled, EngineError, MusicRequest, Progress, RenderedAudio, StyleRef, TrainedStyle,
                   TrainingSample)
from .text import normalise_lyrics, parse_musical_hints

__all__ = ["OfflineMusic", "TRACKS"]

TRACKS = ("drums", "bass", "other", "vocals")  # the arranger's tracks, in the order of its balance profiles

_TARGET_RMS = 0.16  # about -16 dBFS
_PEAK_CEILING = 0.89  # -1 dBFS: room for the overshoot of lossy encoders
_TABLE_N = 2048
_NOTE_NAMES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}


def _h(*parts: object) -> int:
    """A stable 32-bit hash (Python's hash() is salted per process)."""
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode("utf-8"))


def _hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


# ============================================================================================
# Styles: genre profiles and mood words
# ============================================================================================


@dataclass(frozen=True)
class _Profile:
    name: str
    bpm: tuple[int, int]
    mode: str | None  # preferred mode when nothing else decides
    drums: str  # pattern family
    kit: str  # drum sound family
    swing: float  # 0 straight .. 0.33 heavy swing of the off 16ths (or 8ths, see swing8)
    swing8: bool
    bass: str  # bass style
    bass_voice: str
    layers: tuple[str, ...]  # chord layers in "other"
    lead: str  # lead voice
    lead_density: float  # 0 sparse .. 1 busy
    chord_bars: int  # bars per chord
    sevenths: bool
    energy: float  # base energy 0..1
    balance: tuple[float, float, float, float]  # relative loudness: drums, bass, other, vocals
    extras: tuple[str, ...] = ()
    lead_mix: float = 0.85  # lead level against the chords inside "other"


_PROFILES: dict[str, _Profile] = {
    "pop": _Profile(name='pop', bpm=(98, 124), mode=None, drums='pop', kit='pop', swing=0.0,
        swing8=False, bass='pulse8', bass_voice='bass_round', layers=('pad', 'stab'),
        lead='lead_square', lead_density=0.6, chord_bars=1, sevenths=False, energy=0.6,
        balance=(1.0, 0.8, 0.8, 0.95), extras=('crash',), lead_mix=0.91),
    "rock": _Profile(name='rock', bpm=(112, 150), mode=None, drums='rock', kit='rock', swing=0.0,
        swing8=False, bass='pulse8', bass_voice='bass_pick', layers=('power',),
        lead='lead_guitar', lead_density=0.65, chord_bars=1, sevenths=False, energy=0.8,
        balance=(1.0, 0.75, 0.85, 0.9), extras=('crash',), lead_mix=0.9),
    "electronic": _Profile(name='electronic', bpm=(120, 128), mode='minor', drums='four',
        kit='electro', swing=0.0, swing8=False, bass='offbeat', bass_voice='bass_saw',
        layers=('supersaw', 'stab'), lead='lead_pluck', lead_density=0.7, chord_bars=1,
        sevenths=False, energy=0.75, balance=(1.0, 0.75, 0.7, 0.85),
        extras=('sidechain', 'crash'), lead_mix=0.9),
    "hiphop": _Profile(name='hiphop', bpm=(82, 96), mode='minor', drums='boombap', kit='boombap',
        swing=0.12, swing8=False, bass='kick', bass_voice='bass_sub', layers=('ep',),
        lead='lead_bell', lead_density=0.35, chord_bars=1, sevenths=True, energy=0.6,
        balance=(1.0, 0.95, 0.6, 1.0), extras=(), lead_mix=0.8),
    "trap": _Profile(name='trap', bpm=(130, 150), mode='minor', drums='trap', kit='trap',
        swing=0.0, swing8=False, bass='kick', bass_voice='bass_808', layers=('pad',),
        lead='lead_bell', lead_density=0.35, chord_bars=2, sevenths=False, energy=0.7,
        balance=(1.0, 1.0, 0.55, 0.95), extras=(), lead_mix=0.89),
    "lofi": _Profile(name='lofi', bpm=(70, 88), mode=None, drums='lofi', kit='lofi', swing=0.16,
        swing8=False, bass='root', bass_voice='bass_round', layers=('ep',), lead='lead_soft',
        lead_density=0.3, chord_bars=1, sevenths=True, energy=0.35, balance=(0.9, 0.8, 0.9, 0.85),
        extras=('vinyl', 'wow'), lead_mix=0.67),
    "ambient": _Profile(name='ambient', bpm=(60, 80), mode=None, drums='ambient', kit='soft',
        swing=0.0, swing8=False, bass='drone', bass_voice='bass_sine', layers=('pad', 'bells'),
        lead='lead_bell', lead_density=0.15, chord_bars=2, sevenths=True, energy=0.15,
        balance=(0.25, 0.6, 1.0, 0.8), extras=(), lead_mix=0.57),
    "jazz": _Profile(name='jazz', bpm=(96, 140), mode=None, drums='jazz', kit='jazz', swing=0.2,
        swing8=True, bass='walk', bass_voice='bass_upright', layers=('ep',), lead='lead_soft',
        lead_density=0.5, chord_bars=1, sevenths=True, energy=0.5, balance=(0.55, 0.8, 0.9, 0.9),
        extras=(), lead_mix=0.82),
    "synthwave": _Profile(name='synthwave', bpm=(88, 118), mode='minor', drums='synthwave',
        kit='synthwave', swing=0.0, swing8=False, bass='arp16', bass_voice='bass_saw',
        layers=('supersaw', 'arp'), lead='lead_saw', lead_density=0.5, chord_bars=1,
        sevenths=False, energy=0.65, balance=(1.0, 0.75, 0.85, 0.9), extras=('crash',),
        lead_mix=0.9),
    "cinematic": _Profile(name='cinematic', bpm=(64, 96), mode='minor', drums='cinematic',
        kit='cinematic', swing=0.0, swing8=False, bass='drone', bass_voice='bass_sine',
        layers=('strings', 'piano_arp'), lead='lead_soft', lead_density=0.3, chord_bars=2,
        sevenths=False, energy=0.45, balance=(0.7, 0.6, 1.0, 0.85), extras=('crash',),
        lead_mix=0.69),
    "folk": _Profile(name='folk', bpm=(84, 118), mode='major', drums='folk', kit='soft',
        swing=0.0, swing8=False, bass='root', bass_voice='bass_upright',
        layers=('pluck_arp', 'pad'), lead='lead_soft', lead_density=0.45, chord_bars=1,
        sevenths=False, energy=0.45, balance=(0.6, 0.65, 1.0, 1.0), extras=(), lead_mix=0.75),
}

# Genre words, looked up in the tags; the earliest-mentioned genre wins.
_GENRE_WORDS: dict[str, tuple[str, ...]] = {
    "lofi": ("lofi", "lo-fi", "lo fi", "chillhop", "study beats", "chill beats"),
    "trap": ("trap", "drill", "phonk"),
    "hiphop": ("hip hop", "hip-hop", "hiphop", "rap", "boom bap", "boom-bap", "r&b", "rnb",
               "grime", "neo soul", "neo-soul", "soul"),
    "ambient": ("ambient", "drone", "new age", "meditation", "meditative", "soundscape", "sleep",
                "atmospheric"),
    "synthwave": ("synthwave", "retrowave", "outrun", "vaporwave", "80s", "eighties", "darkwave",
                  "new wave", "synth-pop", "synthpop", "chillwave"),
    "electronic": ("edm", "house", "techno", "trance", "electronic", "electronica", "electro",
                   "dance", "club", "disco", "dubstep", "drum and bass", "dnb", "garage",
                   "future bass", "eurodance", "hyperpop", "idm", "breakbeat", "big room"),
    "rock": ("rock", "metal", "punk", "grunge", "emo", "hardcore", "alt-rock", "garage rock",
             "shoegaze", "post-rock", "surf"),
    "jazz": ("jazz", "swing", "bossa", "bebop", "blues", "lounge", "big band", "smooth jazz",
             "funk", "latin"),
    "cinematic": ("cinematic", "orchestral", "epic", "soundtrack", "score", "classical",
                  "film", "trailer", "piano solo", "symphonic", "strings"),
    "folk": ("folk", "acoustic", "country", "singer-songwriter", "bluegrass", "americana",
             "indie folk", "ballad", "gospel", "celtic", "reggae"),
    "pop": ("pop", "k-pop", "j-pop", "indie", "dream pop", "bedroom pop", "anthem"),
}

_ENERGY_UP = ("energetic", "upbeat", "aggressive", "intense", "powerful", "fast", "driving",
              "epic", "party", "hype", "dance", "heavy", "loud", "anthemic", "explosive",
              "high energy", "high-energy", "uptempo", "banger", "fierce", "euphoric", "frantic")
_ENERGY_DOWN = ("calm", "chill", "relaxed", "relaxing", "soft", "mellow", "peaceful", "slow",
                "sleepy", "dreamy", "gentle", "quiet", "ambient", "meditative", "soothing",
                "laid-back", "laid back", "tranquil", "serene", "lullaby", "downtempo", "minimal",
                "sparse", "intimate", "tender", "hazy")
_BRIGHT = ("happy", "bright", "uplifting", "joyful", "cheerful", "sunny", "hopeful", "playful",
           "fun", "summer", "feel-good", "feel good", "triumphant", "romantic", "sweet", "warm")
_DARK = ("sad", "melancholic", "melancholy", "dark", "moody", "somber", "sombre", "lonely",
         "haunting", "eerie", "gloomy", "tragic", "mysterious", "ominous", "heartbreak",
         "nostalgic", "bittersweet", "tense", "sinister", "angry", "brooding", "rainy")


def _has(text: str, word: str) -> int:
    m = re.search(r"(?<![a-z0-9])" + re.escape(word) + r"(?![a-z0-9])", text)
    return m.start() if m else -1


@dataclass
class _Style:
    profile: _Profile
    bpm: int
    tonic: int  # pitch class 0..11
    mode: str  # major | minor
    beats_num: int
    beats_den: int
    energy: float  # 0..1
    brightness: float  # 0..1
    groups: tuple[int, ...]  # 16th-step groups that make a bar (beats)

    @property
    def steps_per_bar(self) -> int:
        return sum(self.groups)

    @property
    def key_name(self) -> str:
        names = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
        return f"{names[self.tonic]} {self.mode}"


def _parse_key(text: str | None) -> tuple[int, str] | None:
    if not text:
        return None
    k = parse_musical_hints(text)["key"]
    if not k:
        return None
    m = re.match(r"^([A-G])([#b]?) (major|minor)$", k)
    if not m:
        return None
    pc = _NOTE_NAMES[m.group(1)] + (1 if m.group(2) == "#" else -1 if m.group(2) == "b" else 0)
    return pc % 12, m.group(3)


def _parse_meter(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    m = re.match(r"^\s*(\d{1,2})\s*/\s*(\d{1,2})\s*$", text)
    if m:
        num, den = int(m.group(1)), int(m.group(2))
    else:
        ts = parse_musical_hints(text)["time_signature"]
        if not ts:
            return None
        num, den = (int(x) for x in ts.split("/"))
    if den not in (2, 4, 8, 16) or not 2 <= num <= 15:
        return None
    return num, den


def _groups(num: int, den: int) -> tuple[int, ...]:
    """The bar as beat groups counted in 16th steps: 4/4 -> (4,4,4,4), 6/8 -> (6,6)."""
    if den == 2:
        return (8,) * num
    if den == 4:
        return (4,) * num
    if den == 16:
        return (num,)
    # den == 8
    if num % 3 == 0 and num >= 6:
        return (6,) * (num // 3)
    if num == 3:
        return (6,)
    twos, rest = divmod(num, 2)
    return (4,) * (twos - 1) + (6,) if rest else (4,) * twos


def _style(req: MusicRequest) -> _Style:
    """The arrangement's style from the request's tags, leaning toward its trained style, if any."""
    style = _tag_style(req)
    if req.style is not None:
        style = _biased(style, req.style)
    return style


def _tag_style(req: MusicRequest) -> _Style:
    tags = (req.tags or "").lower()
    hints = parse_musical_hints(req.tags or "")
    profile = _PROFILES[_genre_of(tags) or "pop"]  # the earliest genre mentioned; pop when none
    up = sum(1 for w in _ENERGY_UP if _has(tags, w) >= 0)
    down = sum(1 for w in _ENERGY_DOWN if _has(tags, w) >= 0)
    energy = float(np.clip(profile.energy + 0.18 * up - 0.15 * down, 0.05, 1.0))
    bright = sum(1 for w in _BRIGHT if _has(tags, w) >= 0)
    dark = sum(1 for w in _DARK if _has(tags, w) >= 0)
    brightness = float(np.clip(0.55 + 0.12 * bright - 0.12 * dark + 0.15 * (energy - 0.5), 0.1, 1.0))

    style_hash = _h("style", tags)
    bpm = req.bpm or hints["bpm"]
    if not bpm:
        lo, hi = profile.bpm
        t = float(np.clip(0.5 + 0.5 * (energy - profile.energy) + ((style_hash % 100) / 100 - 0.5) * 0.5, 0, 1))
        bpm = int(round(lo + t * (hi - lo)))
    bpm = int(np.clip(bpm, 40, 240))

    key = _parse_key(req.key) or _parse_key(req.tags)
    if key is None:
        mode = profile.mode
        if bright > dark:
            mode = "major"
        elif dark > bright:
            mode = "minor"
        if mode is None:
            mode = "minor" if (style_hash >> 8) % 2 else "major"
        tonic = (0, 2, 4, 5, 7, 9, 10, 1, 3, 6, 8, 11)[(style_hash >> 12) % 7]  # common keys
        key = (tonic, mode)
    meter = _parse_meter(req.time_signature) or _parse_meter(req.tags or "")
    if meter is None:
        meter = (4, 4)
    return _Style(profile, bpm, key[0], key[1], meter[0], meter[1], energy, brightness,
                  _groups(*meter))


# ============================================================================================
# Offline styles: a JSON bias learned from a person's songs (no weights, no GPU)
# ============================================================================================

OFFLINE_STYLE_KIND = "offline-style"
_STYLE_WORD_MIN = 0.5  # a tag word shared by at least half of the songs is one of the style's words


def _genre_of(tags: str) -> str | None:
    """The genre whose word comes first in `tags` (lower case), None when none does."""
    best: tuple[int, str] | None = None
    for name, words in _GENRE_WORDS.items():
        for w in words:
            pos = _has(tags, w)
            if pos >= 0 and (best is None or pos < best[0]):
                best = (pos, name)
    return best[1] if best else None


def _audio_tempo(audio: np.ndarray, sr: int) -> int | None:
    """Tempo (bpm, 60..180) by autocorrelation of an onset envelope (positive log-energy
    changes), over at most the first minute; None for silence or no clear beat."""
    mono = np.asarray(audio, dtype=np.float32)
    mono = mono.mean(axis=1) if mono.ndim == 2 else mono
    mono = mono[: int(60 * sr)]
    hop = max(1, sr // 100)  # about 100 envelope frames per second
    n = mono.shape[0] // hop
    if n < 400:  # under about 4 seconds: nothing to measure
        return None
    energy = np.sqrt(np.mean(mono[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    onset = np.maximum(0.0, np.diff(np.log(energy + 1e-4)))
    onset = onset - onset.mean()
    if not np.any(onset):
        return None
    spec = np.fft.rfft(onset, 2 * onset.shape[0])
    ac = np.fft.irfft(spec * np.conj(spec))[: onset.shape[0]]
    rate = sr / float(hop)
    lags = np.arange(int(rate * 60 / 180), int(rate * 60 / 60) + 1)
    lags = lags[lags < ac.shape[0]]
    if lags.size == 0 or ac[0] <= 0:
        return None
    best = lags[int(np.argmax(ac[lags]))]
    if ac[best] / ac[0] < 0.05:
        return None
    return int(round(60.0 * rate / best))


def _audio_brightness(audio: np.ndarray, sr: int) -> float | None:
    """0..1 from the spectral centroid of a few seconds (dark pads ~0.2, bright mixes ~0.8)."""
    mono = np.asarray(audio, dtype=np.float32)
    mono = mono.mean(axis=1) if mono.ndim == 2 else mono
    size = 4096
    if mono.shape[0] < size:
        return None
    starts = np.linspace(0, mono.shape[0] - size, num=min(16, max(1, mono.shape[0] // size))).astype(int)
    window = np.hanning(size).astype(np.float32)
    freqs = np.fft.rfftfreq(size, 1.0 / sr)
    cents = []
    for st in starts:
        mag = np.abs(np.fft.rfft(mono[st:st + size] * window))
        if mag.sum() > 1e-6:
            cents.append(float((mag * freqs).sum() / mag.sum()))
    if not cents:
        return None
    return float(np.clip((np.median(cents) - 500.0) / 7500.0, 0.0, 1.0))


def _analyse(sample: TrainingSample) -> dict:
    tags = (sample.caption or "").lower()
    hints = parse_musical_hints(sample.caption or "")
    genre = _genre_of(tags)
    profile = _PROFILES[genre or "pop"]
    up = sum(1 for w in _ENERGY_UP if _has(tags, w) >= 0)
    down = sum(1 for w in _ENERGY_DOWN if _has(tags, w) >= 0)
    bright = sum(1 for w in _BRIGHT if _has(tags, w) >= 0)
    dark = sum(1 for w in _DARK if _has(tags, w) >= 0)
    energy = float(np.clip(profile.energy + 0.18 * up - 0.15 * down, 0.05, 1.0))
    brightness = float(np.clip(0.55 + 0.12 * bright - 0.12 * dark + 0.15 * (energy - 0.5), 0.1, 1.0))
    sound = _audio_brightness(sample.audio, sample.sample_rate) if sample.audio is not None else None
    if sound is not None:
        brightness = float(np.clip(0.7 * brightness + 0.3 * sound, 0.1, 1.0))
    bpm = hints["bpm"] or (_audio_tempo(sample.audio, sample.sample_rate) if sample.audio is not None else None)
    key = _parse_key(sample.caption)
    words = sorted({w.strip() for w in tags.split(",") if w.strip() and len(w.strip()) <= 40
                    and not re.search(r"\d", w)})
    return {"genre": genre, "bpm": int(bpm) if bpm else None, "key": list(key) if key else None,
            "energy": energy, "brightness": brightness, "words": words}


def _combine(parts: list[dict]) -> dict:
    """The style of a set of analysed songs: the most common genre and key, the median tempo,
    the mean energy and brightness, and the tag words at least half of them share."""
    def common(values):
        counts: dict = {}
        for v in values:
            if v is not None:
                counts[v] = counts.get(v, 0) + 1
        return max(counts, key=lambda v: (counts[v], -values.index(v))) if counts else None

    genre = common([p["genre"] for p in parts])
    key = common([tuple(p["key"]) if p["key"] else None for p in parts])
    bpms = [p["bpm"] for p in parts if p["bpm"]]
    word_counts: dict[str, int] = {}
    for p in parts:
        for w in p["words"]:
            word_counts[w] = word_counts.get(w, 0) + 1
    need = max(1, math.ceil(_STYLE_WORD_MIN * len(parts)))
    return {"profile": genre, "bpm": int(np.median(bpms)) if bpms else None,
            "key": [int(key[0]), str(key[1])] if key else None,
            "energy": round(float(np.mean([p["energy"] for p in parts])), 4),
            "brightness": round(float(np.mean([p["brightness"] for p in parts])), 4),
            "words": sorted(w for w, c in word_counts.items() if c >= need)[:24]}


def _distance(a: dict, b: dict) -> float:
    """How far one estimate of a style is from another (the analysis's "loss")."""
    d = abs((a["bpm"] or 0) - (b["bpm"] or 0)) / 60.0
    d += abs(a["energy"] - b["energy"]) + abs(a["brightness"] - b["brightness"])
    d += 0.0 if a["profile"] == b["profile"] else 1.0
    d += 0.0 if a["key"] == b["key"] else 0.5
    return round(d, 5)


def _load_bias(ref: StyleRef) -> dict:
    if ref.path is None:
        raise EngineError("the style's adapter file is not on this worker")
    return _read_bias(str(ref.path), ref.hash)


_BIAS_CACHE: dict[tuple[str, str], dict] = {}


def _read_bias(path: str, digest: str) -> dict:
    cached = _BIAS_CACHE.get((path, digest))
    if cached is not None:
        return cached
    try:
        with open(path, "rb") as f:
            bias = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise EngineError("this style is not an offline style (the offline arranger reads only its own)") from None
    if not isinstance(bias, dict) or bias.get("kind") != OFFLINE_STYLE_KIND:
        raise EngineError("this style is not an offline style (the offline arranger reads only its own)")
    if len(_BIAS_CACHE) > 64:
        _BIAS_CACHE.clear()
    _BIAS_CACHE[(path, digest)] = bias
    return bias


def _biased(style: _Style, ref: StyleRef) -> _Style:
    """`style` leaned toward the trained style by its weight (0..2): tempo, energy and
    brightness move part of the way (half at weight 1, all of it at 2); from weight 0.5 the
    style's genre profile (the instruments, drums and bass) and key are used."""
    bias = _load_bias(ref)
    w = float(np.clip(ref.weight, 0.0, 2.0))
    t = w / 2.0
    profile, tonic, mode = style.profile, style.tonic, style.mode
    if w >= 0.5:
        if bias.get("profile") in _PROFILES:
            profile = _PROFILES[bias["profile"]]
        key = bias.get("key")
        if isinstance(key, list) and len(key) == 2 and key[1] in _SCALES:
            tonic, mode = int(key[0]) % 12, str(key[1])
    bpm = style.bpm
    if bias.get("bpm"):
        bpm = int(np.clip(round(style.bpm + t * (float(bias["bpm"]) - style.bpm)), 40, 240))
    energy = float(np.clip(style.energy + t * (float(bias.get("energy", style.energy)) - style.energy), 0.05, 1.0))
    bright = float(np.clip(style.brightness + t * (float(bias.get("brightness", style.brightness)) - style.brightness),
                           0.1, 1.0))
    return _Style(profile, bpm, tonic, mode, style.beats_num, style.beats_den, energy, bright, style.groups)


# ============================================================================================
# Synthesis primitives
# ============================================================================================

_VOWELS = {  # formant frequencies (Hz) and bandwidths
    "a": ((800, 1150, 2900), (80, 90, 120)),
    "e": ((450, 1900, 2600), (70, 80, 100)),
    "i": ((300, 2250, 3000), (60, 90, 100)),
    "o": ((480, 820, 2800), (70, 80, 100)),
    "u": ((340, 700, 2500), (60, 70, 100)),
}

_TABLES: dict[tuple, np.ndarray] = {}


def _harmonics(shape: str, k: np.ndarray, f0: float) -> np.ndarray:
    if shape == "sine":
        return (k == 1).astype(np.float64)
    if shape == "tri":
        a = np.where(k % 2 == 1, 1.0 / k**2, 0.0)
        return a * np.where(((k - 1) // 2) % 2 == 0, 1.0, -1.0)
    if shape == "square":
        return np.where(k % 2 == 1, 1.0 / k, 0.0)
    if shape == "pulse":
        return np.abs(np.sin(np.pi * k * 0.25)) / k
    if shape == "saw":
        return 1.0 / k
    if shape == "organ":
        d = {1: 1.0, 2: 0.55, 3: 0.4, 4: 0.25, 6: 0.15, 8: 0.1}
        return np.array([d.get(int(i), 0.0) for i in k])
    if shape == "ep":
        d = {1: 1.0, 2: 0.3, 3: 0.12, 4: 0.06, 5: 0.03, 7: 0.04}
        return np.array([d.get(int(i), 0.0) for i in k])
    if shape == "reed":
        return np.where(k % 2 == 1, 1.0 / k, 0.35 / k)
    if shape.startswith("vowel_"):
        (f1, f2, f3), (b1, b2, b3) = _VOWELS[shape[-1]]
        f = k * f0
        env = (1.0 / (1 + ((f - f1) / b1) ** 2) + 0.5 / (1 + ((f - f2) / b2) ** 2)
               + 0.22 / (1 + ((f - f3) / b3) ** 2))
        return (k ** -0.7) * (0.08 + env)
    raise ValueError(shape)


def _table(shape: str, midi: float, cutoff: float, sr: int) -> np.ndarray:
    """A band-limited single cycle for `shape` at `midi`, low-passed at `cutoff` Hz, peak 1."""
    key = (shape, round(midi * 2) / 2, int(cutoff), sr)
    t = _TABLES.get(key)
    if t is not None:
        return t
    f0 = _hz(key[1])
    kmax = int(min(_TABLE_N // 2 - 1, (0.45 * sr) // f0))
    kmax = max(kmax, 1)
    k = np.arange(1, kmax + 1, dtype=np.float64)
    amp = _harmonics(shape, k, f0) / np.sqrt(1.0 + (k * f0 / max(cutoff, 50.0)) ** 4)
    spec = np.zeros(_TABLE_N // 2 + 1, dtype=np.complex128)
    spec[1 : kmax + 1] = -1j * amp * (_TABLE_N / 2)
    t = np.fft.irfft(spec, _TABLE_N)
    peak = float(np.max(np.abs(t))) or 1.0
    t = (t / peak).astype(np.float32)
    if len(_TABLES) > 4096:
        _TABLES.clear()
    _TABLES[key] = t
    return t


_RAMP = np.arange(0, dtype=np.uint32)
_PHASE_BITS = 32 - 11  # the table index is the top 11 bits of a 32-bit phase (2048 entries)
_FRAC_MASK = np.uint32((1 << _PHASE_BITS) - 1)
_FRAC_SCALE = np.float32(1.0 / (1 << _PHASE_BITS))


def _ramp(n: int) -> np.ndarray:
    global _RAMP
    if _RAMP.shape[0] < n:
        _RAMP = np.arange(max(n, 2 * _RAMP.shape[0]), dtype=np.uint32)
    return _RAMP[:n]


def _osc(tables: list[np.ndarray], freq: float, n: int, sr: int, phase0: float = 0.0,
         mod: np.ndarray | None = None) -> list[np.ndarray]:
    """Read each table at `freq` for `n` samples with one shared phase (linear interpolation).

    The phase is a wrapping 32-bit fixed-point accumulator; `mod` is an optional per-sample
    frequency multiplier (vibrato, pitch drops).
    """
    assert _TABLE_N == 2048
    if mod is None:
        inc = np.uint32(int(round(freq / sr * 2.0**32)) & 0xFFFFFFFF)
        ph = _ramp(n) * inc
    else:
        ph = np.cumsum((mod * (freq / sr * 2.0**32)).astype(np.uint32), dtype=np.uint32)
    ph += np.uint32(int(phase0 * 2.0**32) & 0xFFFFFFFF)
    idx = ph >> np.uint32(_PHASE_BITS)
    ph &= _FRAC_MASK
    frac = ph.astype(np.float32)
    frac *= _FRAC_SCALE
    out = []
    for table in tables:
        diff = np.diff(np.append(table, table[0])).astype(np.float32)
        y = np.take(diff, idx)
        y *= frac
        y += np.take(table, idx)
        out.append(y)
    return out


def _vibrato_mod(n: int, sr: int, vibrato: tuple[float, float, float]) -> np.ndarray:
    rate, depth, delay = vibrato
    t = np.arange(n, dtype=np.float64) / sr
    dep = depth * np.clip((t - delay) / 0.25, 0.0, 1.0)
    return np.exp2(dep * np.sin(2 * np.pi * rate * t) / 12.0)


def _box(x: np.ndarray, m: int) -> np.ndarray:
    """Moving average over `m` samples along the last axis (a cheap low-pass), causal."""
    if m <= 1:
        return x
    c = np.cumsum(x, axis=-1, dtype=np.float64)
    out = np.empty_like(c)
    out[..., :m] = c[..., :m] / np.arange(1, m + 1)
    out[..., m:] = (c[..., m:] - c[..., :-m]) / m
    return out.astype(np.float32)


def _hp(x: np.ndarray, m: int) -> np.ndarray:
    return (x - _box(x, m)).astype(np.float32)


_IRS: dict[tuple, tuple[np.ndarray, dict[int, np.ndarray]]] = {}
_REVERB_DECIMATE = 4  # reverb tails are dark: convolve at a quarter of the sample rate


def _ir(sr: int, seconds: float, dark: int, seed: int) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """A stereo reverb impulse response at sr / 4 (decorrelated decaying noise), shape (2, n),
    and a cache for its spectra by FFT size."""
    key = (sr, round(seconds, 2), dark, seed)
    hit = _IRS.get(key)
    if hit is not None:
        return hit
    rate = sr / _REVERB_DECIMATE
    n = int(rate * seconds)
    rng = np.random.default_rng(_h("ir", *key))
    t = np.arange(n) / rate
    env = np.exp(-6.9 * t / seconds) * np.clip(t / 0.01, 0, 1)
    ir = np.stack([_box(rng.standard_normal(n).astype(np.float32), dark) * env for _ in range(2)])
    ir /= np.sqrt(np.sum(ir**2, axis=1, keepdims=True)) + 1e-9
    pre = int(0.012 * rate)
    ir = np.concatenate([np.zeros((2, pre), np.float32), ir.astype(np.float32)], axis=1)
    if len(_IRS) > 64:
        _IRS.clear()
    _IRS[key] = (ir, {})
    return _IRS[key]


def _reverb(x: np.ndarray, sr: int, seconds: float, seed: int, amount: float, dark: int = 2) -> np.ndarray:
    """`x` (2, n) or (n,) plus a stereo reverb tail: returns (2, n + tail).

    The wet path runs on the mono sum at a quarter of the sample rate (one forward FFT, two
    inverse ones), then is brought back up with a linear-interpolating upsampler.
    """
    d = _REVERB_DECIMATE
    ir, spectra = _ir(sr, seconds, dark, seed)
    mono = x if x.ndim == 1 else 0.5 * (x[0] + x[1])
    n = mono.shape[0]
    nd = -(-n // d)
    padded = np.zeros(nd * d, np.float32)
    padded[:n] = mono
    low = padded.reshape(nd, d).mean(axis=1)
    m = low.shape[0] + ir.shape[1] - 1
    nfft = 1 << (m - 1).bit_length()
    spec = spectra.get(nfft)
    if spec is None:
        spec = np.fft.rfft(ir, nfft, axis=-1)
        if len(spectra) > 8:
            spectra.clear()
        spectra[nfft] = spec
    wet_low = np.fft.irfft(np.fft.rfft(low, nfft)[None, :] * spec, nfft, axis=-1)[:, :m]
    wet_low = wet_low.astype(np.float32) * np.float32(amount)
    total = max(n, wet_low.shape[1] * d)
    out = np.zeros((2, total), np.float32)
    out[:, :n] += x if x.ndim == 2 else x[None, :]
    slope = np.zeros_like(wet_low)  # linear interpolation back to the full rate
    slope[:, :-1] = wet_low[:, 1:] - wet_low[:, :-1]
    for j in range(d):
        dst = out[:, j::d]
        dst += wet_low[:, : dst.shape[1]]
        dst += slope[:, : dst.shape[1]] * np.float32(j / d)
    return out


def _convolve_blocks(x: np.ndarray, ir: np.ndarray, spectra: dict[int, np.ndarray],
                     block: int = 1 << 17) -> np.ndarray:
    """Mono `x` convolved with stereo `ir` (2, m): (2, len(x) + m - 1), float32.

    One FFT for short inputs; overlap-add in blocks for long ones (cheaper than one huge FFT).
    """
    m = ir.shape[1]
    n = x.shape[0]
    seg = n if n + m - 1 <= 2 * block else block
    nfft = 1 << (seg + m - 2).bit_length()
    spec = spectra.get(nfft)
    if spec is None:
        spec = np.fft.rfft(ir, nfft, axis=-1)
        if len(spectra) > 8:
            spectra.clear()
        spectra[nfft] = spec
    out = np.zeros((2, n + m - 1), dtype=np.float32)
    for start in range(0, n, seg):
        chunk = x[start : start + seg]
        y = np.fft.irfft(np.fft.rfft(chunk, nfft)[None, :] * spec, nfft, axis=-1)
        k = min(chunk.shape[0] + m - 1, out.shape[1] - start)
        out[:, start : start + k] += y[:, :k]
    return out


def _pan_gains(pan: float) -> tuple[float, float]:
    a = (pan + 1) * np.pi / 4
    return float(np.cos(a) * np.sqrt(2)), float(np.sin(a) * np.sqrt(2))


# ----------------------------------------------------------------------------- melodic voices


@dataclass(frozen=True)
class _Voice:
    name: str
    shape: str
    cutoff: float = 6000.0
    detune: tuple[float, ...] = (0.0,)  # cents per oscillator
    width: float = 0.0  # oscillators spread across the stereo field
    pan: float = 0.0
    attack: float = 0.005
    decay: float = 0.3
    sustain: float = 0.7
    release: float = 0.12
    pluck: float = 0.0  # > 0: brightness falls from `cutoff` to a darker tone with this time
    vibrato: tuple[float, float, float] | None = None
    drive: float = 0.0
    reverb: float = 0.0  # send to the stem's reverb
    sub: float = 0.0  # a sine an octave below
    octave: float = 0.0  # the same shape an octave above
    glide_from: float = 0.0  # semitones above the target the pitch starts at (808 drop)


def _voices(style: _Style, seed: int) -> dict[str, _Voice]:
    """Instrument sounds for this song; the seed nudges timbres so variants sound different."""
    rng = np.random.default_rng(_h("voices", seed))
    b = style.brightness
    j = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    dark = 1.0 - 0.5 * ("wow" in style.profile.extras)
    return {
        "bass_round": _Voice("bass_round", "saw", cutoff=j(350, 550) * (0.7 + 0.6 * b), decay=0.4,
                             sustain=0.6, release=0.06, sub=0.5),
        "bass_pick": _Voice("bass_pick", "saw", cutoff=j(900, 1600), pluck=0.12, decay=0.3,
                            sustain=0.55, release=0.05, drive=1.2, sub=0.4),
        "bass_saw": _Voice("bass_saw", "saw", cutoff=j(600, 1400) * (0.6 + 0.8 * b), pluck=0.09,
                           decay=0.25, sustain=0.5, release=0.04, sub=0.6),
        "bass_sub": _Voice("bass_sub", "organ", cutoff=160, decay=0.6, sustain=0.7, release=0.08,
                           sub=0.3, drive=0.8),
        "bass_808": _Voice("bass_808", "sine", cutoff=400, decay=1.2, sustain=0.5, release=0.1,
                           drive=1.6, glide_from=j(3, 7)),
        "bass_sine": _Voice("bass_sine", "organ", cutoff=220, attack=0.08, decay=1.0, sustain=0.8,
                            release=0.5, sub=0.4),
        "bass_upright": _Voice("bass_upright", "saw", cutoff=j(450, 700), pluck=0.15, decay=0.35,
                               sustain=0.25, release=0.08, sub=0.3),
        "pad": _Voice("pad", str(rng.choice(["saw", "tri", "organ"])),
                      cutoff=j(1200, 2600) * (0.5 + b) * dark, detune=(-9, 7, -4, 11), width=0.9,
                      attack=j(0.25, 0.6), decay=1.5, sustain=0.85, release=0.7, reverb=0.35),
        "supersaw": _Voice("supersaw", "saw", cutoff=j(2500, 4500) * (0.6 + 0.6 * b),
                           detune=(-14, 12, -6, 7, -21, 19), width=1.0, attack=0.04, decay=0.8,
                           sustain=0.75, release=0.35, reverb=0.3),
        "strings": _Voice("strings", "saw", cutoff=j(1400, 2400) * (0.6 + 0.6 * b),
                          detune=(-8, 6, -3, 9), width=0.9, attack=j(0.35, 0.7), decay=2.0,
                          sustain=0.9, release=0.8, reverb=0.45,
                          vibrato=(5.0, 0.08, 0.3)),
        "stab": _Voice("stab", str(rng.choice(["saw", "square", "pulse"])),
                       cutoff=j(1800, 3500) * (0.6 + 0.6 * b), detune=(-6, 6), width=0.6,
                       pluck=0.08, decay=0.15, sustain=0.2, release=0.08, reverb=0.25),
        "power": _Voice("power", "saw", cutoff=j(2200, 3600), detune=(-5, 5), width=0.8,
                        decay=0.6, sustain=0.8, release=0.06, drive=3.0, pluck=0.3),
        "ep": _Voice("ep", "ep", cutoff=j(1800, 3200) * (0.6 + 0.6 * b) * dark, detune=(-3, 3),
                     width=0.4, pluck=0.4, decay=0.9, sustain=0.35, release=0.25, reverb=0.25,
                     vibrato=(0.7, 0.12, 0.0) if "wow" in style.profile.extras else None),
        "arp": _Voice("arp", str(rng.choice(["saw", "square"])), cutoff=j(2000, 4000) * (0.6 + 0.5 * b),
                      pluck=0.07, decay=0.15, sustain=0.15, release=0.08, width=0.0,
                      pan=j(-0.35, 0.35), reverb=0.3),
        "piano_arp": _Voice("piano_arp", "ep", cutoff=j(2500, 4000), pluck=0.5, decay=0.8,
                            sustain=0.2, release=0.3, reverb=0.4, pan=-0.15),
        "pluck_arp": _Voice("pluck_arp", str(rng.choice(["saw", "tri"])), cutoff=j(2500, 4000),
                            pluck=0.06, decay=0.5, sustain=0.05, release=0.3, reverb=0.2,
                            pan=j(-0.3, 0.3)),
        "bells": _Voice("bells", "sine", cutoff=4000, octave=0.45, pluck=0.0, decay=0.9,
                        sustain=0.0, release=1.0, reverb=0.55, pan=j(-0.4, 0.4)),
        "lead_square": _Voice("lead_square", str(rng.choice(["square", "pulse"])),
                              cutoff=j(2500, 4500) * (0.6 + 0.5 * b), detune=(-4, 4), width=0.3,
                              decay=0.3, sustain=0.7, release=0.1, vibrato=(5.5, 0.15, 0.18),
                              reverb=0.25, pan=j(-0.15, 0.15)),
        "lead_saw": _Voice("lead_saw", "saw", cutoff=j(2500, 5000) * (0.6 + 0.5 * b),
                           detune=(-7, 7), width=0.4, attack=0.01, decay=0.4, sustain=0.75,
                           release=0.15, vibrato=(5.2, 0.18, 0.2), reverb=0.3),
        "lead_guitar": _Voice("lead_guitar", "saw", cutoff=j(2500, 3800), drive=4.0,
                              decay=0.5, sustain=0.7, release=0.1, vibrato=(5.5, 0.25, 0.15),
                              reverb=0.25, pan=0.1),
        "lead_pluck": _Voice("lead_pluck", "saw", cutoff=j(3000, 6000), pluck=0.1, decay=0.25,
                             sustain=0.2, release=0.1, detune=(-5, 5), width=0.5, reverb=0.3),
        "lead_bell": _Voice("lead_bell", "sine", cutoff=4000, octave=0.35, decay=0.6, sustain=0.1,
                            release=0.5, reverb=0.4, pan=j(-0.25, 0.25)),
        "lead_soft": _Voice("lead_soft", str(rng.choice(["tri", "sine", "reed"])),
                            cutoff=j(1800, 3000), attack=0.03, decay=0.5, sustain=0.7, release=0.2,
                            vibrato=(5.0, 0.2, 0.25), reverb=0.35, pan=j(-0.2, 0.2)),
    }


def _adsr(n: int, hold: int, sr: int, attack: float, decay: float, sustain: float,
          release: float) -> np.ndarray:
    """Attack ramp, exponential decay to the sustain level until `hold`, exponential release."""
    env = np.empty(n, dtype=np.float32)
    na = min(max(1, int(max(attack, 0.002) * sr)), n)
    nh = min(max(hold, 0), n)
    env[:na] = np.arange(1, na + 1, dtype=np.float32) / na
    if nh > na:
        t = np.arange(nh - na, dtype=np.float32) / np.float32(sr * max(decay, 1e-3))
        env[na:nh] = sustain + (1 - sustain) * np.exp(-t)
    level = float(env[nh - 1]) if nh > 0 else 0.0
    if n > nh:
        start = max(nh, na)
        t = np.arange(n - start, dtype=np.float32) / np.float32(sr * max(release, 1e-3))
        env[start:] = level * np.exp(-t)
    return env


class _Notes:
    """Renders and caches notes (one array per voice, pitch and held length)."""

    def __init__(self, sr: int, seed: int):
        self.sr = sr
        self.seed = seed
        self.cache: dict[tuple, np.ndarray] = {}

    def note(self, v: _Voice, midi: int, hold: int, vowel: str | None = None) -> np.ndarray:
        """The note as (2, n) float32 (attack, hold, release)."""
        key = (v, midi, hold, vowel)
        x = self.cache.get(key)
        if x is None:
            x = self._render(v, midi, hold, vowel)
            self.cache[key] = x
        return x

    def mono(self, v: _Voice, midi: int, hold: int, vowel: str | None = None) -> np.ndarray:
        """The note's mono sum (for echoes)."""
        key = ("mono", v, midi, hold, vowel)
        x = self.cache.get(key)
        if x is None:
            stereo = self.note(v, midi, hold, vowel)
            x = self.cache[key] = (stereo[0] + stereo[1]) * np.float32(0.5)
        return x

    def low(self, v: _Voice, midi: int, hold: int, vowel: str | None = None) -> np.ndarray:
        """The note's mono sum at a quarter of the sample rate (for the reverb send)."""
        key = ("low", v, midi, hold, vowel)
        x = self.cache.get(key)
        if x is None:
            m = self.mono(v, midi, hold, vowel)
            d = _REVERB_DECIMATE
            nd = -(-m.shape[0] // d)
            padded = np.zeros(nd * d, np.float32)
            padded[: m.shape[0]] = m
            x = self.cache[key] = padded.reshape(nd, d).mean(axis=1)
        return x

    def _render(self, v: _Voice, midi: int, hold: int, vowel: str | None) -> np.ndarray:
        sr = self.sr
        rel = int(min(v.release * 3.0, 1.5) * sr)
        n = hold + rel
        t = np.arange(n, dtype=np.float32) / sr
        f = _hz(midi)
        shape = f"vowel_{vowel}" if vowel else v.shape
        rng = np.random.default_rng(_h("note", v.name, midi, hold, vowel, self.seed))
        bright = _table(shape, midi, v.cutoff, sr)
        dark = _table(shape, midi, v.cutoff * 0.18, sr) if v.pluck > 0 else None
        vib = v.vibrato
        chans = [np.zeros(n, np.float32), np.zeros(n, np.float32)]
        nosc = len(v.detune)
        mod = _vibrato_mod(n, sr, vib) if vib else None
        if v.glide_from:
            glide = np.exp2(v.glide_from * np.exp(-t.astype(np.float64) / 0.035) / 12.0)
            mod = glide if mod is None else mod * glide
        mixc = np.exp(-t / v.pluck).astype(np.float32) if dark is not None else None
        for i, cents in enumerate(v.detune):
            fi = f * 2.0 ** (cents / 1200.0)
            ph0 = float(rng.random())
            if dark is not None:
                x, xd = _osc([bright, dark], fi, n, sr, ph0, mod)
                x -= xd
                x *= mixc
                x += xd
            else:
                (x,) = _osc([bright], fi, n, sr, ph0, mod)
            if nosc == 1:
                side = 0.0
            else:
                side = v.width * (1 if i % 2 == 0 else -1) * (0.5 + 0.5 * (i // 2) / max(1, (nosc - 1) // 2))
            gl, gr = _pan_gains(float(np.clip(v.pan + side, -1, 1)))
            chans[0] += x * gl
            chans[1] += x * gr
        out = np.stack(chans)
        if nosc > 1:
            out *= np.float32(1 / math.sqrt(nosc))
        if v.sub:
            (s,) = _osc([_table("sine", midi - 12, 400, sr)], f / 2, n, sr, 0.0, mod)
            out += v.sub * s
        if v.octave:
            (o,) = _osc([_table(v.shape if not vowel else "sine", midi + 12, v.cutoff, sr)], f * 2, n, sr, 0.0, mod)
            out += v.octave * o * np.exp(-t / 0.4).astype(np.float32)
        if v.drive:
            out = np.tanh(out * np.float32(v.drive)) * np.float32(1 / math.tanh(v.drive))
        out *= _adsr(n, hold, sr, v.attack, v.decay, v.sustain, v.release)
        return out


# ----------------------------------------------------------------------------- drum sounds


def _kit(style: _Style, seed: int, sr: int) -> dict[str, np.ndarray]:
    """One-shot drum samples (2, n) for this song's kit; the seed nudges the sounds."""
    rng = np.random.default_rng(_h("kit", style.profile.kit, seed))
    j = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    k = style.profile.kit
    noise = lambda n: rng.standard_normal(n).astype(np.float32)  # noqa: E731

    def env(n: int, tau: float, attack: float = 0.001) -> np.ndarray:
        t = np.arange(n, dtype=np.float32) / sr
        return (np.exp(-t / tau) * np.clip(t / attack, 0, 1)).astype(np.float32)

    def kick(f0: float, f1: float, ptau: float, atau: float, click: float, drive: float) -> np.ndarray:
        n = int(sr * min(1.2, atau * 5))
        t = np.arange(n, dtype=np.float64) / sr
        f = f1 + (f0 - f1) * np.exp(-t / ptau)
        x = np.sin(2 * np.pi * np.cumsum(f) / sr).astype(np.float32) * env(n, atau, 0.0015)
        x += click * _hp(noise(n), 3) * env(n, 0.004)
        return np.tanh(drive * x) / math.tanh(drive)

    def snare(tone: float, ntau: float, tone_lvl: float, room: float, hp: int) -> np.ndarray:
        n = int(sr * 0.5)
        t = np.arange(n, dtype=np.float32) / sr
        body = (np.sin(2 * np.pi * tone * t) * env(n, 0.05) + 0.5 * np.sin(2 * np.pi * tone * 1.62 * t) * env(n, 0.03))
        x = tone_lvl * body + _hp(noise(n), hp) * env(n, ntau)
        x = x / (np.max(np.abs(x)) + 1e-9)
        return _roomify(x, room)

    def clap(room: float) -> np.ndarray:
        n = int(sr * 0.45)
        t = np.arange(n, dtype=np.float32) / sr
        e = np.zeros(n, np.float32)
        for d in (0.0, 0.011, 0.022):
            e += np.where(t >= d, np.exp(-np.maximum(t - d, 0) / 0.005), 0).astype(np.float32)
        e += 0.6 * np.where(t >= 0.03, np.exp(-np.maximum(t - 0.03, 0) / 0.08), 0).astype(np.float32)
        x = _box(_hp(noise(n), 6), 2) * e
        x = x / (np.max(np.abs(x)) + 1e-9)
        return _roomify(x, room)

    def metal(n: int, scale: float) -> np.ndarray:
        t = np.arange(n, dtype=np.float32) / sr
        freqs = np.array([205.3, 304.4, 369.6, 522.7, 540.0, 800.0]) * scale
        x = sum(np.sign(np.sin(2 * np.pi * fr * t + j(0, 6.28))) for fr in freqs).astype(np.float32)
        return _hp(_hp(x, 3), 3)

    def hat(tau: float, tone: float, bright: int) -> np.ndarray:
        n = int(sr * min(1.0, tau * 6 + 0.02))
        x = (0.6 * metal(n, tone) / 6 + _hp(_hp(noise(n), bright), bright)) * env(n, tau, 0.0008)
        x = x / (np.max(np.abs(x)) + 1e-9)
        return x

    def tom(f0: float) -> np.ndarray:
        return kick(f0 * 1.6, f0, 0.05, 0.22, 0.1, 1.2)

    def shaker() -> np.ndarray:
        n = int(sr * 0.12)
        x = _hp(_hp(noise(n), 2), 2) * env(n, 0.035, 0.012)
        return x / (np.max(np.abs(x)) + 1e-9)

    def crash() -> np.ndarray:
        n = int(sr * 2.2)
        e = env(n, 0.7, 0.002)
        x = np.stack([(_hp(noise(n), 2) + 0.4 * metal(n, 1.7) / 6) * e for _ in range(2)])
        return x / (np.max(np.abs(x)) + 1e-9)

    def _roomify(x: np.ndarray, room: float) -> np.ndarray:
        return _reverb(x.astype(np.float32), sr, 0.7, 11, room, dark=1)

    def mono(x: np.ndarray, pan: float = 0.0) -> np.ndarray:
        if x.ndim == 2:
            return x.astype(np.float32)
        gl, gr = _pan_gains(pan)
        return np.stack([x * gl, x * gr]).astype(np.float32)

    kit: dict[str, np.ndarray] = {}
    if k in ("electro", "trap"):
        kit["kick"] = mono(kick(j(150, 190), j(42, 52), j(0.025, 0.04), j(0.25, 0.4), 0.4, 2.0))
        kit["snare"] = mono(clap(0.3))
        kit["hat"] = mono(hat(j(0.025, 0.04), j(1.4, 1.9), 2), 0.25)
        kit["open"] = mono(hat(j(0.16, 0.25), j(1.4, 1.9), 2), 0.25)
    elif k in ("rock", "pop", "synthwave"):
        big = k == "synthwave"
        kit["kick"] = mono(kick(j(120, 160), j(48, 60), j(0.03, 0.05), j(0.22, 0.3), 0.35, 1.8))
        kit["snare"] = mono(snare(j(170, 230), j(0.12, 0.2), 0.6, 0.6 if big else 0.3, 2))
        kit["hat"] = mono(hat(j(0.03, 0.05), j(1.2, 1.6), 3), 0.3)
        kit["open"] = mono(hat(j(0.2, 0.3), j(1.2, 1.6), 3), 0.3)
    elif k in ("boombap", "lofi"):
        soft = k == "lofi"
        kit["kick"] = mono(kick(j(110, 140), j(45, 55), j(0.03, 0.05), j(0.18, 0.28), 0.2, 1.4))
        kit["snare"] = mono(snare(j(180, 220), j(0.08, 0.14), 0.8, 0.2, 4 if soft else 3))
        kit["hat"] = mono(hat(j(0.02, 0.035), j(1.0, 1.3), 5 if soft else 3), 0.2)
        kit["open"] = mono(hat(j(0.12, 0.2), j(1.0, 1.3), 5 if soft else 3), 0.2)
    elif k == "jazz":
        kit["kick"] = mono(kick(j(90, 110), j(50, 60), 0.04, 0.2, 0.1, 1.0))
        kit["snare"] = mono(snare(j(190, 230), j(0.1, 0.18), 0.3, 0.35, 2))
        kit["hat"] = mono(hat(0.04, 1.1, 3), 0.35)
        kit["open"] = mono(hat(0.12, 1.1, 3), 0.35)
    elif k == "cinematic":
        kit["kick"] = mono(kick(j(80, 100), j(38, 46), 0.06, j(0.5, 0.8), 0.15, 1.5))
        kit["snare"] = mono(snare(j(150, 180), 0.25, 0.9, 0.8, 3))
        kit["hat"] = mono(shaker(), 0.3)
        kit["open"] = mono(hat(0.3, 1.3, 3), 0.3)
    else:  # soft: folk, ambient
        kit["kick"] = mono(kick(j(100, 130), j(48, 58), 0.04, 0.2, 0.1, 1.1))
        kit["snare"] = mono(snare(j(180, 220), j(0.1, 0.16), 0.35, 0.4, 3))
        kit["hat"] = mono(shaker(), -0.25)
        kit["open"] = mono(hat(0.15, 1.2, 4), 0.25)
    kit["ride"] = mono(hat(0.45, j(2.0, 2.6), 2) * 0.8, 0.45)
    kit["crash"] = crash()
    kit["tom_hi"] = mono(tom(j(150, 180)), -0.3)
    kit["tom_lo"] = mono(tom(j(90, 110)), 0.3)
    kit["shaker"] = mono(shaker(), -0.3)
    return kit


# ============================================================================================
# The plan: sections, chords, patterns, melody
# ============================================================================================


@dataclass
class _Section:
    kind: str  # intro | verse | pre | chorus | bridge | break | outro
    start: int  # first bar
    bars: int
    lines: list[str]
    energy: float


_SECTION_ENERGY = {"intro": 0.35, "verse": 0.6, "pre": 0.75, "chorus": 1.0, "bridge": 0.5,
                   "break": 0.7, "outro": 0.4}
_TAG_KIND = {"[intro]": "intro", "[verse]": "verse", "[pre-chorus]": "pre", "[chorus]": "chorus",
             "[bridge]": "bridge", "[outro]": "outro"}


def _lyric_sections(lyrics: str) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for block in normalise_lyrics(lyrics).split("\n\n"):
        lines = [ln.strip() for ln in block.split("\n") if ln.strip()]
        if not lines:
            continue
        kind = _TAG_KIND.get(lines[0], "verse")
        body = lines[1:] if lines[0] in _TAG_KIND else lines
        if body:
            out.append((kind, body))
    return out


def _fit(kinds: list[tuple[str, int, list[str]]], n_bars: int) -> list[tuple[str, int, list[str]]]:
    """Make section lengths add up to exactly n_bars (dropping or extending at the end)."""
    total = sum(b for _, b, _ in kinds)
    if total > n_bars:
        scale = n_bars / total
        if scale >= 0.5 or len(kinds) <= 3:
            kinds = [(k, max(1, int(round(b * scale))), ln) for k, b, ln in kinds]
        else:  # a long structure in a short song: keep the first sections whole
            kept, acc = [], 0
            for k, b, ln in kinds:
                if acc + b > n_bars and kept:
                    break
                kept.append((k, b, ln))
                acc += b
            kinds = kept
    total = sum(b for _, b, _ in kinds)
    # Trim or extend the last section to land exactly on n_bars.
    while total > n_bars and kinds:
        k, b, ln = kinds[-1]
        cut = min(b - 1, total - n_bars) if b > 1 else 0
        if cut <= 0:
            kinds.pop()
        else:
            kinds[-1] = (k, b - cut, ln)
        total = sum(b for _, b, _ in kinds)
    if total < n_bars:
        if kinds:
            k, b, ln = kinds[-1]
            kinds[-1] = (k, b + (n_bars - total), ln)
        else:
            kinds = [("verse", n_bars, [])]
    return kinds


def _structure(n_bars: int, lyrics: list[tuple[str, list[str]]], line_bars: int,
               rng: np.random.Generator) -> list[_Section]:
    plan: list[tuple[str, int, list[str]]] = []
    intro = 4 if n_bars >= 24 else 2 if n_bars >= 8 else 0
    outro = 4 if n_bars >= 32 else 2 if n_bars >= 12 else 0
    if lyrics:
        if intro and lyrics[0][0] != "intro":
            plan.append(("intro", intro, []))
        for kind, lines in lyrics:
            if kind in ("intro", "outro"):
                bars = max(2, min(8, line_bars * len(lines)))
            else:
                bars = max(4, min(16, line_bars * len(lines)))
                bars += bars % 2
            plan.append((kind, bars, lines))
        body = sum(b for _, b, _ in plan)
        if body + outro < n_bars:
            # Longer than the lyrics: an instrumental break and the last chorus again.
            last_chorus = next((s for s in reversed(plan) if s[0] == "chorus"), None)
            extra: list[tuple[str, int, list[str]]] = []
            room = n_bars - body - outro
            while room >= 4:
                if last_chorus and extra and extra[-1][0] == "break" and room >= last_chorus[1]:
                    extra.append(last_chorus)
                    room -= last_chorus[1]
                else:
                    b = min(8, room)
                    extra.append(("break", b, []))
                    room -= b
            insert_at = len(plan) if plan[-1][0] != "outro" else len(plan) - 1
            plan[insert_at:insert_at] = extra
        if plan[-1][0] != "outro" and outro:
            plan.append(("outro", outro, []))
    else:
        core = [("verse", 8), ("chorus", 8), ("verse", 8), ("chorus", 8), ("bridge", 8),
                ("chorus", 8)]
        if rng.random() < 0.5:
            core.insert(2, ("break", 4))
        body_bars = n_bars - intro - outro
        seq: list[tuple[str, int]] = []
        i = 0
        while sum(b for _, b in seq) < body_bars:
            seq.append(core[i % len(core)] if i < len(core) else [("verse", 8), ("chorus", 8)][i % 2])
            i += 1
        if intro:
            plan.append(("intro", intro, []))
        plan.extend((k, b, []) for k, b in seq)
        if outro:
            plan.append(("outro", outro, []))
    plan = _fit(plan, n_bars)
    out: list[_Section] = []
    bar = 0
    for kind, bars, lines in plan:
        out.append(_Section(kind, bar, bars, list(lines), _SECTION_ENERGY[kind]))
        bar += bars
    return out


# Progressions as scale degrees (0 = tonic), one chord per slot; the tonic is always strong.
_PROGRESSIONS = {
    "major": {
        "main": [(0, 4, 0, 3), (0, 3, 0, 4), (0, 3, 4, 0), (0, 1, 4, 0), (0, 5, 0, 4), (0, 5, 3, 0)],
        "chorus": [(0, 4, 5, 3, 0, 4, 3, 0), (3, 0, 4, 0), (0, 3, 4, 0), (0, 5, 3, 4, 0, 5, 4, 0)],
        "bridge": [(3, 4, 5, 4), (5, 3, 0, 4), (1, 4, 3, 4), (5, 4, 3, 4)],
    },
    "minor": {
        "main": [(0, 5, 0, 6), (0, 3, 0, 4), (0, 5, 6, 0), (0, 6, 5, 0), (0, 3, 6, 0), (0, 2, 6, 0)],
        "chorus": [(0, 5, 2, 6, 0, 5, 6, 0), (5, 6, 0, 0), (0, 3, 6, 0), (0, 5, 6, 0)],
        "bridge": [(5, 6, 2, 4), (3, 5, 6, 6), (5, 2, 6, 4), (3, 6, 2, 5)],
    },
}


@dataclass
class _Plan:
    style: _Style
    sections: list[_Section]
    chords: list[tuple[int, ...]]  # per bar: chord pitch classes, root first
    roots: list[int]  # per bar: chord root pitch class
    degrees: list[int]  # per bar: scale degree of the chord
    bar_frames: float
    step_frames: float
    n_bars: int


def _chord_pcs(style: _Style, degree: int, seventh: bool) -> tuple[int, ...]:
    scale = _SCALES[style.mode]
    idx = [degree, degree + 2, degree + 4] + ([degree + 6] if seventh else [])
    return tuple((style.tonic + scale[i % 7]) % 12 for i in idx)


def _plan(req: MusicRequest, style: _Style, sr: int, n_frames: int, rng: np.random.Generator) -> _Plan:
    step_s = 60.0 / style.bpm / 4.0
    step_frames = step_s * sr
    bar_frames = step_frames * style.steps_per_bar
    n_bars = max(1, int(math.ceil(n_frames / bar_frames)))
    lyrics = _lyric_sections(req.lyrics) if (req.lyrics and not req.instrumental) else []
    line_bars = 2 if style.steps_per_bar <= 16 else 1
    if style.bpm >= 150 and style.steps_per_bar <= 16:
        line_bars = 4 if style.bpm >= 170 else 2
    sections = _structure(n_bars, lyrics, line_bars, rng)
    p = style.profile
    progs = _PROGRESSIONS[style.mode]
    pick = {kind: progs[kind][int(rng.integers(len(progs[kind])))] for kind in progs}
    chords: list[tuple[int, ...]] = []
    roots: list[int] = []
    degrees: list[int] = []
    for s in sections:
        prog = pick["chorus"] if s.kind in ("chorus", "break") else pick["bridge"] if s.kind == "bridge" else pick["main"]
        rate = p.chord_bars if s.bars >= 2 * p.chord_bars else 1
        for b in range(s.bars):
            if s.kind in ("intro", "outro") and (b >= s.bars - 1 or s.kind == "outro" and b >= s.bars - 2):
                d = 0  # land on the tonic
            else:
                d = prog[(b // rate) % len(prog)]
            degrees.append(d)
            pcs = _chord_pcs(style, d, p.sevenths)
            chords.append(pcs)
            roots.append(pcs[0])
    # The song ends on the tonic.
    if degrees:
        degrees[-1] = 0
        chords[-1] = _chord_pcs(style, 0, p.sevenths)
        roots[-1] = chords[-1][0]
    return _Plan(style, sections, chords, roots, degrees, bar_frames, step_frames, n_bars)


# ----------------------------------------------------------------------------- drum patterns

# 16-step bars for 4/4: kick, snare, hat, open hat. "x" accent, "o" normal, "." ghost.
_PATTERNS = {
    "pop": [("x-------x-o-----", "----x-------x---", "x-o-x-o-x-o-x-o-", "--------------o-"),
            ("x-----o-x-------", "----x-------x---", "x-o-x-o-x-o-x-o-", "------o---------"),
            ("x--o----x-o-----", "----x-------x--.", "xoxoxoxoxoxoxoxo", "")],
    "rock": [("x-------x-x-----", "----x-------x---", "x-x-x-x-x-x-x-x-", ""),
             ("x-x-----x-x-----", "----x-------x---", "x-x-x-x-x-x-x-x-", ""),
             ("x-------x-x--o--", "----x-------x-o-", "x-x-x-x-x-x-x-x-", "")],
    "four": [("x---x---x---x---", "----x-------x---", "o-o-o-o-o-o-o-o-", "--x---x---x---x-"),
             ("x---x---x---x---", "----x-------x---", "oooooooooooooooo", "--x---x---x---x-")],
    "boombap": [("x------x--x-----", "----x-------x---", "x-x-x-x-x-x-x-x-", ""),
                ("x-----x-x-------", "----x-------x--.", "x-x-x-x-x-x-x-x-", ""),
                ("x------xx-----o-", "----x-------x---", "x-x-x-x-x-x-x-x-", "")],
    "trap": [("x------x-x------", "--------x-------", "xoxoxoxoxoxoxoxo", ""),
             ("x-------x--x----", "--------x-------", "xoxoxoxoxxxoxoxo", "")],
    "lofi": [("x------x--x-----", "----o-------o---", "o-oo-oo-o-oo-oo-", ""),
             ("x-----x---x-----", "----o-------o---", "o-o-o-o-o-o-o-o-", "")],
    "jazz": [("o---------o-----", "------.-----.---", "", ""),
             ("o-------o-------", "---.------.-----", "", "")],
    "synthwave": [("x---x---x---x---", "----x-------x---", "oxoxoxoxoxoxoxox", ""),
                  ("x-------x-x-----", "----x-------x---", "xoxoxoxoxoxoxoxo", "")],
    "cinematic": [("x-------x-------", "------------x---", "", ""),
                  ("x-----x---x-----", "--------x-------", "", "")],
    "folk": [("x-------x-------", "----o-------o---", "o-o-o-o-o-o-o-o-", ""),
             ("x-----o-x-------", "----o-------o---", "o-o-o-o-o-o-o-o-", "")],
    "ambient": [("x---------------", "", "", ""), ("x-------o-------", "", "", "")],
}
_JAZZ_RIDE = "x---x-ox---x-o-x"  # swung 8ths: ding, ding-da ding, ding-da


def _generic_pattern(groups: tuple[int, ...], family: str, rng: np.random.Generator) -> tuple[str, str, str, str]:
    """Patterns for other meters: kick on the first beat (and strong beats), backbeat snare."""
    steps = sum(groups)
    kick = ["-"] * steps
    snare = ["-"] * steps
    hat = ["-"] * steps
    pos = 0
    for gi, g in enumerate(groups):
        if gi == 0:
            kick[pos] = "x"
        elif len(groups) >= 4 and gi == len(groups) // 2:
            kick[pos] = "o"
        elif len(groups) == 3 and family not in ("ambient", "cinematic"):
            snare[pos] = "o"  # waltz: boom, chick, chick
        elif len(groups) == 2:
            snare[pos] = "x"
        elif gi % 2 == 1:
            snare[pos] = "x"
        sub = 3 if g == 6 else 2
        for s in range(0, g, sub):
            hat[pos + s] = "o" if s else "x"
        pos += g
    if family == "ambient":
        snare = ["-"] * steps
        hat = ["-"] * steps
    if rng.random() < 0.4 and steps > 6:
        kick[steps - sum(groups[-1:]) - 2] = "o"
    return "".join(kick), "".join(snare), "".join(hat), ""


# ----------------------------------------------------------------------------- melody

_VEL = {"x": 1.0, "o": 0.72, ".": 0.35}


def _motif(rng: np.random.Generator, slots: int, density: float) -> list[tuple[int, int, int]]:
    """A rhythm-and-contour cell over `slots` 8th notes: (onset, length, scale step)."""
    notes: list[tuple[int, int, int]] = []
    i = 0
    w_short = 0.15 + 0.55 * density
    durs = np.array([1, 2, 3, 4])
    p = np.array([w_short, 0.35, 0.12 + 0.1 * (1 - density), 0.2 * (1 - density) + 0.05])
    p = p / p.sum()
    while i < slots - 1:
        if notes and rng.random() < 0.12 + 0.2 * (1 - density):
            i += int(rng.choice([1, 2]))
            continue
        d = int(rng.choice(durs, p=p))
        d = max(1, min(d, slots - 1 - i))
        step = int(rng.choice([-3, -2, -1, -1, 0, 1, 1, 2, 2, 3, 4, -4],
                              p=[0.04, 0.12, 0.16, 0.1, 0.08, 0.16, 0.1, 0.1, 0.06, 0.03, 0.02, 0.03]))
        notes.append((i, d, step))
        i += d
    if notes:
        on, _, st = notes[-1]
        notes[-1] = (on, max(1, slots - 1 - on), st)
    return notes


def _realise(cells: list[tuple[int, int, int]], bar_of: Callable[[int], int], plan: _Plan, center: int,
             strong_every: int) -> list[tuple[int, int, int]]:
    """Turn (onset, length, step) cells into (onset, length, midi) on the song's scale and chords.

    Strong-beat notes snap to a tone of the chord underneath; others move by scale steps.
    """
    style = plan.style
    scale = _SCALES[style.mode]
    lo, hi = center - 9, center + 10
    pitches = [m for m in range(lo - 12, hi + 13) if (m - style.tonic) % 12 in scale]
    cur = min(range(len(pitches)), key=lambda i: abs(pitches[i] - center))
    out: list[tuple[int, int, int]] = []
    for onset, length, step in cells:
        bar = bar_of(onset)
        chord = plan.chords[min(bar, len(plan.chords) - 1)]
        cur += step
        while pitches[cur] > hi:
            cur -= 2
        while pitches[cur] < lo:
            cur += 2
        if onset % strong_every == 0 or length >= 3:
            best = min(
                (i for i in range(len(pitches)) if pitches[i] % 12 in chord),
                key=lambda i: (abs(i - cur), pitches[i] > hi or pitches[i] < lo),
            )
            cur = best
        out.append((onset, length, pitches[cur]))
    return out


_SYL_RE = re.compile(r"[aeiouy]+", re.I)


def _syllables(line: str) -> list[tuple[str, bool]]:
    """(vowel, starts-with-hard-consonant) per sung syllable of a lyric line."""
    out: list[tuple[str, bool]] = []
    for word in re.findall(r"[A-Za-z']+", line):
        w = word.lower().strip("'")
        groups = list(_SYL_RE.finditer(w))
        if len(groups) > 1 and w.endswith("e") and not w.endswith(("le", "ee", "ie", "ye")):
            groups = groups[:-1]
        if not groups:
            groups = []
            out.append(("u", True))
            continue
        for gi, g in enumerate(groups):
            v = g.group(0)[0]
            vowel = {"y": "i"}.get(v, v)
            prev = w[g.start() - 1] if g.start() > 0 else ""
            hard = prev in "ptkbdgcqsfhxzj" or (gi == 0 and w[:1] in "ptkbdgcqsfhxzj")
            out.append((vowel, hard))
    return out


# ============================================================================================
# Rendering
# ============================================================================================


class _Renderer:
    def __init__(self, req: MusicRequest, sr: int, progress: Progress | None = None):
        self.req = req
        self.sr = sr
        self.progress = progress or (lambda f: None)
        self.n = int(round(req.duration * sr))
        self.style = _style(req)
        self.rng = np.random.default_rng(_h("plan", req.seed))
        self.plan = _plan(req, self.style, sr, self.n, self.rng)
        self.length = int(self.plan.n_bars * self.plan.bar_frames) + int(4.5 * sr)
        self.notes = _Notes(sr, req.seed)
        self.out: dict[str, np.ndarray] = {}
        self.sends: dict[str, np.ndarray] = {}
        self.echo_frames = int(round(self.plan.step_frames * 3))  # a dotted 8th
        self._voicings: dict[int, list[list[int]]] = {}
        self.voices = _voices(self.style, req.seed)
        p = self.style.profile
        family = p.drums
        if self.style.steps_per_bar == 16 and self.style.groups == (4, 4, 4, 4):
            pats = _PATTERNS[family]
            self.pattern = pats[int(self.rng.integers(len(pats)))]
        else:
            self.pattern = _generic_pattern(self.style.groups, family, self.rng)

    # -------------------------------------------------------------- timing

    def at(self, bar: int, step: float) -> int:
        """Frame of a 16th step inside a bar, with swing applied."""
        p = self.style.profile
        sw = 0.0
        if p.swing:
            unit = 2 if p.swing8 else 1
            if int(step) % (2 * unit) == unit and float(step).is_integer():
                sw = p.swing * unit
        return int(round((bar * self.style.steps_per_bar + step + sw) * self.plan.step_frames))

    def buf(self) -> np.ndarray:
        return np.zeros((2, self.length), dtype=np.float32)

    @staticmethod
    def add(buf: np.ndarray, start: int, x: np.ndarray, gain: float) -> None:
        if start >= buf.shape[1]:
            return
        s = max(start, 0)
        e = min(start + x.shape[1], buf.shape[1])
        if e <= s:
            return
        buf[:, s:e] += x[:, s - start : e - start] * np.float32(gain)

    def play(self, stem: str, start: int, v: _Voice, midi: int, hold: int, gain: float,
             vowel: str | None = None, echo: float = 0.0) -> None:
        """Add one note to a stem, feed its reverb send, and add ping-pong echoes if asked."""
        x = self.notes.note(v, midi, hold, vowel)
        buf = self.out[stem]
        self.add(buf, start, x, gain)
        if v.reverb > 0:
            low = self.notes.low(v, midi, hold, vowel)
            send = self.sends.get(stem)
            if send is None:
                send = self.sends[stem] = np.zeros(buf.shape[1] // _REVERB_DECIMATE + 1, np.float32)
            s0 = max(0, start) // _REVERB_DECIMATE
            e0 = min(send.shape[0], s0 + low.shape[0])
            if e0 > s0:
                send[s0:e0] += low[: e0 - s0] * np.float32(gain * v.reverb)
        if echo > 0:
            mono = self.notes.mono(v, midi, hold, vowel)
            g = gain * echo
            for k in range(1, 4):
                s0 = start + k * self.echo_frames
                if s0 >= buf.shape[1]:
                    break
                e0 = min(buf.shape[1], s0 + mono.shape[0])
                buf[(k + 1) % 2, s0:e0] += mono[: e0 - s0] * np.float32(g)
                g *= 0.5

    # -------------------------------------------------------------- drums

    def drums(self) -> None:
        out = self.out["drums"] = self.buf()
        style, plan, p = self.style, self.plan, self.style.profile
        kit = _kit(style, self.req.seed, self.sr)
        rng = np.random.default_rng(_h("drums", self.req.seed))
        kick_p, snare_p, hat_p, open_p = self.pattern
        steps = style.steps_per_bar
        jitter = 0.004 * self.sr
        e0 = style.energy
        for s in plan.sections:
            energy = s.energy * (0.5 + e0)
            for b in range(s.bars):
                bar = s.start + b
                last_bar = b == s.bars - 1
                first_bar = b == 0
                if s.kind == "outro" and b >= s.bars - 1 and bar == plan.n_bars - 1:
                    # final bar: one kick and a crash
                    self.add(out, self.at(bar, 0), kit["kick"], 0.9)
                    if "crash" in p.extras:
                        self.add(out, self.at(bar, 0), kit["crash"], 0.35)
                    continue
                if energy < 0.3 and p.drums != "ambient":
                    # intros in quiet songs: hats/shaker only
                    for st in range(0, steps, 4 if energy < 0.2 else 2):
                        self.add(out, self.at(bar, st), kit["shaker" if energy < 0.2 else "hat"], 0.35)
                    continue
                if s.kind == "intro" and b < s.bars // 2 and e0 < 0.7:
                    continue  # let the intro breathe
                fill = last_bar and s.kind != "outro" and energy > 0.45 and rng.random() < 0.7
                fill_from = steps - (4 if steps >= 8 else 2)
                for st in range(steps):
                    t = self.at(bar, st) + int(rng.normal(0, jitter * 0.3))
                    if fill and st >= fill_from:
                        if p.drums in ("rock", "cinematic") or rng.random() < 0.4:
                            tom = "tom_hi" if st < fill_from + 2 else "tom_lo"
                            self.add(out, t, kit[tom], 0.7 + 0.1 * (st - fill_from))
                        else:
                            self.add(out, t, kit["snare"], 0.35 + 0.15 * (st - fill_from))
                        continue
                    c = kick_p[st] if st < len(kick_p) else "-"
                    if c != "-" and (energy >= 0.45 or st == 0 or c == "x"):
                        self.add(out, t, kit["kick"], _VEL[c] * (0.8 + 0.2 * energy))
                    c = snare_p[st] if st < len(snare_p) else "-"
                    if c != "-" and (energy >= 0.4 or c == "x") and not (s.kind == "bridge" and b % 2 == 0 and c != "x"):
                        self.add(out, t, kit["snare"], _VEL[c] * (0.75 + 0.2 * energy) * rng.uniform(0.92, 1.0))
                    c = hat_p[st] if st < len(hat_p) else "-"
                    if p.drums == "jazz":
                        c = _JAZZ_RIDE[st] if st < len(_JAZZ_RIDE) else "-"
                        if c != "-":
                            self.add(out, t, kit["ride"], _VEL[c] * 0.55)
                        if st in (4, 12):
                            self.add(out, t, kit["hat"], 0.35)
                        continue
                    if c == "-" and energy > 0.95 and st % 2 == 1 and p.drums in ("pop", "rock", "boombap"):
                        c = "."  # choruses get busier hats
                    if c != "-":
                        if energy < 0.5 and st % 4 != 0 and st % 2 == 1:
                            continue
                        vel = _VEL[c] * rng.uniform(0.85, 1.0) * (0.6 + 0.3 * energy)
                        self.add(out, t, kit["hat"], vel * 0.55)
                    c = open_p[st] if st < len(open_p) else "-"
                    if c != "-" and energy >= 0.55:
                        self.add(out, t, kit["open"], _VEL[c] * 0.4)
                if first_bar and s.kind in ("chorus", "break") and "crash" in p.extras:
                    self.add(out, self.at(bar, 0), kit["crash"], 0.4)
                if p.kit in ("soft",) and energy >= 0.5 and p.drums == "folk":
                    for st in range(0, steps, 2):
                        self.add(out, self.at(bar, st) + 40, kit["shaker"], 0.25 if st % 4 else 0.35)

    # -------------------------------------------------------------- bass

    def bass(self) -> None:
        self.out["bass"] = self.buf()
        style, plan, p = self.style, self.plan, self.style.profile
        v = self.voices[p.bass_voice]
        rng = np.random.default_rng(_h("bass", self.req.seed))
        steps = style.steps_per_bar
        sf = plan.step_frames
        kick_p = self.pattern[0]
        for s in plan.sections:
            energy = s.energy * (0.5 + style.energy)
            for b in range(s.bars):
                bar = s.start + b
                if s.kind == "intro" and b < s.bars // 2 and p.bass not in ("drone",):
                    continue
                root = plan.roots[bar]
                midi = 28 + (root - 4) % 12  # E1 .. D#2
                fifth = midi + 7
                nxt = plan.roots[bar + 1] if bar + 1 < plan.n_bars else root
                final = bar == plan.n_bars - 1
                hits: list[tuple[float, float, int, float]] = []  # step, length(steps), midi, vel
                style_b = p.bass if not final else "drone"
                if style_b == "drone" or energy < 0.3:
                    hits.append((0, steps, midi, 0.9))
                elif style_b == "root":
                    half = steps // 2 if steps % 2 == 0 else steps
                    hits.append((0, half - 0.5, midi, 0.95))
                    if half < steps:
                        hits.append((half, steps - half - 0.5, midi if rng.random() < 0.7 else fifth, 0.8))
                elif style_b == "pulse8":
                    for st in range(0, steps, 2):
                        m = midi
                        if energy > 0.8 and st == steps - 2 and rng.random() < 0.5:
                            m = midi + 12
                        elif st == steps // 2 + 2 and rng.random() < 0.3:
                            m = fifth
                        hits.append((st, 1.7, m, 1.0 if st % 4 == 0 else 0.8))
                elif style_b == "offbeat":
                    for st in range(2, steps, 4):
                        hits.append((st, 1.6, midi, 0.95))
                    if energy > 0.9:
                        hits.append((0, 0.8, midi + 12, 0.5))
                elif style_b == "kick":
                    ks = [i for i, c in enumerate(kick_p) if c != "-" and i < steps] or [0]
                    for i, st in enumerate(ks):
                        end = ks[i + 1] if i + 1 < len(ks) else steps
                        hits.append((st, max(1, end - st) - 0.3, midi, 1.0 if st == 0 else 0.85))
                elif style_b == "walk":
                    beats = [g for g in np.cumsum((0,) + style.groups[:-1])]
                    chord = plan.chords[bar]
                    tones = [midi, midi + (chord[1] - root) % 12, fifth, midi + (chord[-1] - root) % 12]
                    for i, st in enumerate(beats):
                        if i == 0:
                            m = midi
                        elif i == len(beats) - 1:
                            target = 28 + (nxt - 4) % 12
                            m = target + (1 if rng.random() < 0.5 else -1)  # chromatic approach
                        else:
                            m = tones[int(rng.integers(1, len(tones)))]
                        hits.append((float(st), style.groups[i] - 0.4, m, 0.9))
                elif style_b == "arp16":
                    for st in range(steps):
                        m = midi + (12 if st % 4 == 2 else 0)
                        hits.append((st, 0.8, m, 0.9 if st % 4 == 0 else 0.7))
                for st, length, m, vel in hits:
                    hold = int(round(length * sf))
                    self.play("bass", self.at(bar, st), v, int(m), max(hold, 64), vel * 0.8)

    # -------------------------------------------------------------- chords

    def voicing(self, bar: int, low: int = 53) -> list[int]:
        """The bar's chord in close position around `low`, inverted to move as little as possible
        from the previous bar's voicing (smooth voice leading). The same for every layer."""
        table = self._voicings.get(low)
        if table is None:
            table = self._voicings[low] = []
            prev: list[int] | None = None
            for pcs in self.plan.chords:
                base = sorted(low + (pc - low) % 12 for pc in pcs)
                options = [base]
                for k in range(1, len(base)):  # inversions, kept within about an octave and a half
                    up = sorted(base[k:] + [m + 12 for m in base[:k]])
                    if up[-1] <= low + 19:
                        options.append(up)
                    down = sorted([m - 12 for m in base[len(base) - k :]] + base[: len(base) - k])
                    if down[0] >= low - 5:
                        options.append(down)
                if prev is not None and len(prev) == len(base):
                    base = min(options, key=lambda o: sum(abs(a - b) for a, b in zip(o, prev)))
                table.append(base)
                prev = base
        return table[bar]

    def chords(self) -> None:
        self.out["other"] = self.buf()
        style, plan, p = self.style, self.plan, self.style.profile
        rng = np.random.default_rng(_h("chords", self.req.seed))
        steps = style.steps_per_bar
        sf = plan.step_frames
        for layer in p.layers:
            v = self.voices[layer]
            for s in plan.sections:
                energy = s.energy * (0.5 + style.energy)
                for b in range(s.bars):
                    bar = s.start + b
                    final = bar == plan.n_bars - 1
                    notes = self.voicing(bar, 53 if layer not in ("bells",) else 72)
                    rate = p.chord_bars if s.bars >= 2 * p.chord_bars else 1
                    if layer in ("pad", "strings", "supersaw") or final:
                        if layer == "supersaw" and energy < 0.6 and not final:
                            continue
                        if b % rate:
                            continue
                        if final:
                            hold = int(self.length - self.at(bar, 0) - self.sr * 4.4)
                        else:
                            hold = int(round(min(rate, s.bars - b) * steps * sf)) - 200
                        gain = 0.5 if layer != "supersaw" else 0.38
                        if layer == "pad" and "ep" in p.layers:
                            gain *= 0.5
                        if layer == "pad" and "stab" in p.layers and energy > 0.7:
                            gain *= 0.7
                        for m in notes:
                            self.play("other", self.at(bar, 0), v, m, max(hold, 256), gain / len(notes) * 1.6)
                        if layer in ("strings", "pad") and energy > 0.7 and p.name in ("cinematic", "ambient"):
                            low_root = 41 + (plan.roots[bar] - 41) % 12
                            self.play("other", self.at(bar, 0), v, low_root, max(hold, 256), gain * 0.4)
                    elif layer == "stab":
                        if energy < 0.55:
                            continue
                        offs = [st for st in range(2, steps, 4)] if p.drums == "four" else [0, 6, 10] if steps == 16 else [0]
                        for st in offs:
                            for m in notes:
                                self.play("other", self.at(bar, st), v, m + 12, int(1.2 * sf), 0.28 / len(notes) * 1.6)
                    elif layer == "power":
                        root = 40 + (plan.roots[bar] - 40) % 12  # E2 .. D#3
                        shape = [root, root + 7, root + 12]
                        if energy < 0.45:
                            hold = int(steps * sf) - 300
                            for m in shape:
                                self.play("other", self.at(bar, 0), v, m, hold, 0.25)
                            continue
                        for st in range(0, steps, 2):
                            for m in shape:
                                self.play("other", self.at(bar, st), v, m, int(1.7 * sf), 0.22 if st % 4 else 0.27)
                    elif layer == "ep":
                        comp = [(0, 6), (6, 4), (10, 5)] if steps == 16 else [(0, steps)]
                        if energy < 0.4:
                            comp = [(0, steps)]
                        for st, length in comp:
                            vel = 0.5 if st == 0 else 0.38
                            for i, m in enumerate(notes):
                                strum = int(i * 0.012 * self.sr)
                                self.play("other", self.at(bar, st) + strum, v, m, int(length * sf) - 200, vel / len(notes) * 1.8)
                    elif layer in ("arp", "piano_arp", "pluck_arp"):
                        if energy < 0.3 and layer == "arp":
                            continue
                        unit = 1 if (layer == "arp" and energy > 0.6) else 2
                        seq = notes + [notes[0] + 12, notes[1] + 12] if len(notes) >= 2 else notes
                        order = seq + seq[-2:0:-1]
                        for k, st in enumerate(range(0, steps, unit)):
                            m = order[k % len(order)] + (12 if layer == "arp" else 0)
                            self.play("other", self.at(bar, st), v, m, int(unit * sf * 1.5), 0.3 if st % 4 == 0 else 0.22)
                    elif layer == "bells":
                        if rng.random() < 0.5:
                            m = notes[int(rng.integers(len(notes)))] + 12
                            self.play("other", self.at(bar, int(rng.integers(0, steps // 2)) * 2), v, m, int(2 * sf), 0.18)

    # -------------------------------------------------------------- lead and vocals

    def lead(self, vocal_sections: set[int]) -> None:
        style, plan, p = self.style, self.plan, self.style.profile
        v = self.voices[p.lead]
        echo = 0.22 if p.lead in ("lead_square", "lead_saw", "lead_pluck", "lead_bell", "lead_guitar") else 0.0
        steps = style.steps_per_bar
        slots_per_bar = max(1, steps // 2)
        strong = max(1, style.groups[0] // 2) * (2 if len(style.groups) >= 4 else 1)
        sf = plan.step_frames
        center = 72 + (style.tonic - 0) % 12 - (12 if style.tonic > 5 else 0)
        for si, s in enumerate(plan.sections):
            if si in vocal_sections:
                continue
            play = s.kind in ("chorus", "break") or (s.kind in ("verse", "bridge") and p.lead_density > 0.3)
            if s.kind in ("intro", "outro") and s.bars >= 4:
                play = True
            if not play:
                continue
            density = float(np.clip(p.lead_density * (0.6 + 0.5 * s.energy), 0.05, 1))
            lift = 5 if s.kind == "chorus" else 0
            phrase_bars = 2 if s.bars >= 2 else 1
            # Same seed + section kind -> the same motif: choruses repeat their hook.
            mrng = np.random.default_rng(_h("motif", self.req.seed, s.kind))
            cells = _motif(mrng, phrase_bars * slots_per_bar, density)
            answer = [(o, d, st if o < phrase_bars * slots_per_bar // 2 else int(mrng.integers(-2, 3))) for o, d, st in cells]
            for pb in range(0, s.bars, phrase_bars):
                if s.kind in ("intro", "outro") and pb < s.bars // 2 and s.bars >= 4:
                    continue
                use = cells if (pb // phrase_bars) % 2 == 0 else answer
                bar0 = s.start + pb
                notes = _realise(use, lambda o, b0=bar0: b0 + o // slots_per_bar, plan, center + lift, strong)
                for onset, length, m in notes:
                    bar = bar0 + onset // slots_per_bar
                    if bar >= s.start + s.bars:
                        break
                    st = (onset % slots_per_bar) * 2
                    hold = int(length * 2 * sf * 0.92)
                    vel = 0.55 if s.kind != "chorus" else 0.65
                    self.play("other", self.at(bar, st), v, m, max(hold, 256), vel * p.lead_mix, echo=echo)

    def vocals(self) -> set[int]:
        """Sing the lyrics (when there are any); returns the sections that have a vocal."""
        style, plan = self.style, self.plan
        if self.req.instrumental or not any(s.lines for s in plan.sections):
            return set()
        out = self.out["vocals"] = self.buf()
        voice = _Voice("vocal", "sine", cutoff=6000, attack=0.025, decay=0.4, sustain=0.85,
                       release=0.07, vibrato=(5.4, 0.3, 0.16), reverb=0.22)
        hard = self._consonant()
        steps = style.steps_per_bar
        sf = plan.step_frames
        line_bars = 2 if steps <= 16 else 1
        if style.bpm >= 150 and steps <= 16:
            line_bars = 4 if style.bpm >= 170 else 2
        strong = max(1, style.groups[0])
        # female/male register from the tags
        tags = (self.req.tags or "").lower()
        center = 67 if re.search(r"\b(female|woman|girl|soprano|alto)\b", tags) else 57
        if re.search(r"\b(male|man|baritone|bass vocals?)\b", tags) and center == 67 and "female" not in tags:
            center = 57
        center += (style.tonic + 12 - center % 12) % 12 - (12 if (style.tonic + 12 - center % 12) % 12 > 6 else 0)
        used: set[int] = set()
        for si, s in enumerate(plan.sections):
            if not s.lines:
                continue
            used.add(si)
            lift = 4 if s.kind == "chorus" else 2 if s.kind == "pre" else 0
            for li, line in enumerate(s.lines):
                bar0 = s.start + li * line_bars
                if bar0 + line_bars > s.start + s.bars:
                    break
                syl = _syllables(line)[: line_bars * steps - 2]
                if not syl:
                    continue
                total = line_bars * steps - 2  # in 16ths, leaving a breath
                n = len(syl)
                base = max(1, min(4, total // n))
                durs = [base] * n
                spare = total - base * n
                lrng = np.random.default_rng(_h("line", self.req.seed, s.kind, li % 4))
                if spare > 0:
                    durs[-1] += min(spare, 6)
                    spare -= min(spare, 6)
                lead_in = max(0, spare)
                # Vary the rhythm: pair long-short where the grid allows.
                for k in range(0, n - 2, 2):
                    if durs[k] >= 2 and durs[k] == durs[k + 1] and lrng.random() < 0.4:
                        durs[k] += 1
                        durs[k + 1] -= 1
                cells = []
                pos = lead_in
                for k, d in enumerate(durs):
                    step = int(lrng.choice([-2, -1, 0, 1, 2], p=[0.15, 0.3, 0.15, 0.25, 0.15])) if k else 0
                    cells.append((pos, d, step))
                    pos += d
                # realise in 16th units
                notes = _realise(cells, lambda o, b0=bar0: b0 + o // steps, plan, center + lift, strong)
                for (onset, length, m), (vowel, is_hard) in zip(notes, syl):
                    bar = bar0 + onset // steps
                    t = self.at(bar, onset % steps)
                    hold = int(length * sf * 0.95)
                    self.play("vocals", t, voice, m, max(hold, 512), 0.5, vowel=vowel, echo=0.12)
                    if is_hard:
                        self.add(out, t - int(0.012 * self.sr), hard, 0.12)
        return used

    def _consonant(self) -> np.ndarray:
        rng = np.random.default_rng(_h("consonant", self.req.seed))
        n = int(0.03 * self.sr)
        t = np.arange(n) / self.sr
        x = _hp(rng.standard_normal(n).astype(np.float32), 2) * np.exp(-t / 0.01).astype(np.float32)
        return np.stack([x, x]).astype(np.float32)

    def reverb_returns(self, stems: dict[str, np.ndarray]) -> None:
        """Add each stem's reverb (one FFT convolution per stem at a quarter rate)."""
        p = self.style.profile
        seconds = {"ambient": 3.6, "cinematic": 3.0, "lofi": 1.6, "rock": 1.5}.get(p.name, 2.2)
        d = _REVERB_DECIMATE
        for stem, low in self.sends.items():
            ir, spectra = _ir(self.sr, seconds if stem != "vocals" else min(seconds, 1.8), 2, _h(stem) % 97)
            keep = min(low.shape[0] + ir.shape[1] - 1, stems[stem].shape[1] // d)
            wet_low = _convolve_blocks(low, ir, spectra)[:, :keep]
            # Linear interpolation back to the full rate, one phase of the 4 at a time.
            slope = np.zeros_like(wet_low)
            slope[:, :-1] = wet_low[:, 1:] - wet_low[:, :-1]
            target = stems[stem]
            k = wet_low.shape[1]
            for j in range(d):
                dst = target[:, j : j + k * d : d]
                dst += wet_low[:, : dst.shape[1]]
                dst += slope[:, : dst.shape[1]] * np.float32(j / d)

    # -------------------------------------------------------------- mix

    def stems(self) -> dict[str, np.ndarray]:
        """The unscaled stems, each (2, length); "vocals" only when something is sung."""
        p = self.style.profile
        self.progress(0.05)
        self.drums()
        self.progress(0.3)
        self.bass()
        self.progress(0.45)
        self.chords()
        self.progress(0.65)
        used = self.vocals()
        self.progress(0.8)
        self.lead(used)
        stems = self.out
        if "sidechain" in p.extras:
            pump = self._pump()
            stems["bass"] *= pump
            stems["other"] *= pump
            send = self.sends.get("other")
            if send is not None:
                send *= pump[:: _REVERB_DECIMATE][: send.shape[0]]
        self.reverb_returns(stems)
        self._balance(stems)
        if "vinyl" in p.extras:
            self._vinyl(stems["other"])
        self.progress(0.9)
        return stems

    def _balance(self, stems: dict[str, np.ndarray]) -> None:
        """Scale stems in place to the profile's relative loudness (RMS over sounding frames)."""
        targets = dict(zip(TRACKS, self.style.profile.balance))
        for name, x in stems.items():
            flat = x.reshape(-1)
            energy = float(np.dot(flat, flat))
            if energy <= 1e-12:
                continue
            # RMS over the frames that sound, so a stem that rests half the song is not boosted.
            hop = 4096
            nb = x.shape[1] // hop
            if nb >= 4:
                blocks = np.abs(x[0, : nb * hop : 64]).reshape(nb, hop // 64).max(axis=1)
                active = max(1, int(np.count_nonzero(blocks > 1e-4)))
                rms = math.sqrt(energy / (2 * active * hop))
            else:
                rms = math.sqrt(energy / flat.shape[0])
            x *= np.float32(0.1 * targets[name] / rms)

    def _pump(self) -> np.ndarray:
        """Side-chain gain: a dip on every beat that recovers in about 0.2 s."""
        beat = self.plan.step_frames * 4
        n = int(min(beat, 0.45 * self.sr))
        t = np.arange(n, dtype=np.float32) / self.sr
        dip = (0.55 * np.exp(-t / 0.09) * np.clip(t / 0.004, 0, 1)).astype(np.float32)
        g = np.ones(self.length, dtype=np.float32)
        k = 0
        while True:
            start = int(round(k * beat))
            if start >= self.length:
                break
            end = min(start + n, self.length)
            g[start:end] -= dip[: end - start]
            k += 1
        return g

    def _vinyl(self, buf: np.ndarray) -> None:
        """Add a looped bed of record hiss and crackle to `buf`, in place."""
        rng = np.random.default_rng(_h("vinyl", self.req.seed))
        loop = int(1.7 * self.sr)
        bed = _box(rng.standard_normal((2, loop)).astype(np.float32), 3) * np.float32(0.004)
        idx = rng.integers(0, loop, size=14)
        bed[:, idx] += rng.uniform(0.03, 0.09, size=14).astype(np.float32)
        for start in range(0, buf.shape[1], loop):
            end = min(start + loop, buf.shape[1])
            buf[:, start:end] += bed[:, : end - start]

    def finish(self, stems: dict[str, np.ndarray], want_stems: bool = True
               ) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
        """Sum, cut to the exact length, fade, normalise; stems get the same scale and fades.

        Returns (mix, stems), each (frames, 2) float32; stems is None unless asked for.
        """
        n = self.n
        mix = np.zeros((2, n), dtype=np.float32)
        for s in stems.values():
            mix += s[:, :n]
        fade_in = min(int(0.01 * self.sr), n // 4)
        fade_out = min(int(min(3.0, 0.08 * n / self.sr + 0.5) * self.sr), n // 3)
        fade_in_curve = np.linspace(0, 1, fade_in, dtype=np.float32)
        fade_out_curve = np.linspace(1, 0, fade_out, dtype=np.float32) ** 2

        def fade(x: np.ndarray) -> None:
            if fade_in:
                x[:, :fade_in] *= fade_in_curve
            if fade_out:
                x[:, n - fade_out :] *= fade_out_curve

        fade(mix)
        rms = math.sqrt((float(np.dot(mix[0], mix[0])) + float(np.dot(mix[1], mix[1]))) / max(1, 2 * n))
        peak = max(float(mix.max()), -float(mix.min())) if n else 0.0
        gain = 1.0
        if rms > 1e-9:
            gain = min(_TARGET_RMS / rms, _PEAK_CEILING / max(peak, 1e-9))
        mix *= np.float32(gain)
        mix = _soft_limit(mix)
        scaled = None
        if want_stems:
            scaled = {}
            for k in TRACKS:
                if k not in stems:
                    scaled[k] = np.zeros((n, 2), dtype=np.float32)
                    continue
                x = stems[k][:, :n] * np.float32(gain)
                fade(x)
                scaled[k] = np.stack([x[0], x[1]], axis=1)
        out = np.stack([mix[0], mix[1]], axis=1)
        self.progress(1.0)
        return out, scaled


def _soft_limit(x: np.ndarray, threshold: float = 0.95, ceiling: float = 0.99) -> np.ndarray:
    """Identity below `threshold`; above it, a tanh knee that never reaches `ceiling`."""
    if x.size == 0 or max(float(x.max()), -float(x.min())) <= threshold:
        return x
    a = np.abs(x)
    over = a > threshold
    room = ceiling - threshold
    y = x.copy()
    y[over] = np.sign(x[over]) * (threshold + room * np.tanh((a[over] - threshold) / room))
    return y


# ============================================================================================
# The engine
# ============================================================================================


class OfflineMusic:
    """The procedural arranger behind the MusicEngine interface (CPU, no weights)."""

    name = "offline-arranger"
    offline = True
    supports_styles = True  # train_style makes a JSON bias; render leans toward it

    def __init__(self, sample_rate: int = 44100, max_duration: float = 900.0, with_stems: bool = False):
        self.sample_rate = int(sample_rate)
        self.max_duration = float(max_duration)
        self.with_stems = with_stems

    def _check(self, req: MusicRequest) -> None:
        if not (req.duration and req.duration > 0) or not math.isfinite(req.duration):
            raise EngineError(f"duration must be positive, got {req.duration!r}")
        if req.duration > self.max_duration:
            raise EngineError(f"duration {req.duration:.0f}s is over the {self.max_duration:.0f}s limit")

    def render(self, requests: list[MusicRequest], progress: Progress | None = None) -> list[RenderedAudio]:
        """Render each request (one call for the batch); result i belongs to request i."""
        for r in requests:
            self._check(r)
        out: list[RenderedAudio] = []
        total = max(1, len(requests))
        for i, req in enumerate(requests):
            sub = (lambda f, i=i: progress((i + f) / total)) if progress else None
            r = _Renderer(req, self.sample_rate, sub)
            mix, stems = r.finish(r.stems(), want_stems=self.with_stems)
            out.append(RenderedAudio(
                samples=mix,
                sample_rate=self.sample_rate,
                seed=req.seed,
                steps=None,
                guidance=None,
                stems=stems if self.with_stems else None,
            ))
        return out

    def train_style(self, samples: list[TrainingSample], settings=None, progress=None,
                    should_stop: Callable[[], bool] | None = None) -> TrainedStyle:
        """An offline "style" from the songs: each one analysed (its tags: genre, tempo, key,
        mood; its audio: tempo by onset autocorrelation, brightness by spectral centroid), then
        combined into a JSON bias (`adapter.json`) that `render` leans toward. The report's
        "loss" is how far the estimate after each song is from the final one."""
        import time as time_mod

        started = time_mod.perf_counter()
        if not samples:
            raise EngineError("a style needs songs to learn from")
        parts = []
        loss = []
        for i, sample in enumerate(samples):
            if should_stop is not None and should_stop():
                raise Cancelled()
            parts.append(_analyse(sample))
            if progress is not None:
                progress((i + 1) / len(samples) * 0.9, "analysing")
        final = _combine(parts)
        for i in range(len(parts)):  # how far the estimate after i+1 songs is, plus their spread around it
            estimate = _combine(parts[: i + 1])
            spread = sum(_distance(_combine([p]), estimate) for p in parts[: i + 1]) / (i + 1)
            loss.append([i + 1, round(_distance(estimate, final) + spread / math.sqrt(i + 1), 5)])
        if should_stop is not None and should_stop():
            raise Cancelled()
        key_name = None
        if final["key"]:
            names = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
            key_name = f"{names[final['key'][0]]} {final['key'][1]}"
        bias = {"kind": OFFLINE_STYLE_KIND, "version": 1, **final, "key_name": key_name, "samples": len(samples)}
        adapter = json.dumps(bias, sort_keys=True, separators=(",", ":")).encode("utf-8")
        if progress is not None:
            progress(1.0, "saving")
        audio_seconds = round(float(sum(s.duration for s in samples)), 3)
        return TrainedStyle(
            adapter=adapter, filename="adapter.json",
            config={"engine": self.name, "kind": OFFLINE_STYLE_KIND, "method": "analysis of tags and audio"},
            report={"loss": loss, "steps": len(samples), "seconds": round(time_mod.perf_counter() - started, 3),
                    "samples": len(samples), "audio_seconds": audio_seconds, "style": final})

    def render_stems(self, request: MusicRequest) -> dict[str, np.ndarray]:
        """The song's "drums", "bass", "other" and "vocals" tracks, each (frames, 2) float32.

        They carry the mix's scale and fades: their sum equals `render([request])[0].samples`
        (the soft limiter never engages after the peak-aware normalisation).
        """
        self._check(request)
        r = _Renderer(request, self.sample_rate)
        _, stems = r.finish(r.stems())
        return stems

    def describe(self, request: MusicRequest | None = None) -> dict:
        """Facts for logs and the UI; given a request, what the arranger will play for it
        (style profile, tempo, key, meter, energy and the sections with their bars)."""
        if request is None:
            return {"engine": self.name, "offline": True, "sample_rate": self.sample_rate,
                    "profiles": sorted(_PROFILES), "max_duration": self.max_duration}
        st = _style(request)
        n = int(round(request.duration * self.sample_rate))
        plan = _plan(request, st, self.sample_rate, n, np.random.default_rng(_h("plan", request.seed)))
        return {
            "profile": st.profile.name,
            "bpm": st.bpm,
            "key": st.key_name,
            "time_signature": f"{st.beats_num}/{st.beats_den}",
            "energy": round(st.energy, 2),
            "sections": [(s.kind, s.bars) for s in plan.sections],
        }
