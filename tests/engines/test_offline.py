"""The offline engines and audio encoding, checked the way a listener or reader would check them.

Pure tests: no database, Redis or storage. Songs are short (a few seconds to 20 s) so the file
runs in seconds.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from jobs import audio  # noqa: E402
from jobs.engines.base import EngineError, MusicRequest, WriteRequest  # noqa: E402
from jobs.engines.offline_cover import OfflineCover  # noqa: E402
from jobs.engines.offline_music import OfflineMusic  # noqa: E402
from jobs.engines.offline_writer import OfflineWriter  # noqa: E402
from jobs.engines.text import (  # noqa: E402
    make_title,
    normalise_categories,
    normalise_category,
    normalise_lyrics,
    normalise_tags,
    parse_musical_hints,
)

SR = 44100
LYRICS = (
    "[verse]\nCity lights are fading out tonight\nI can hear you calling out my name\n"
    "Every step I take is closer now\nRunning through the neon rain\n\n"
    "[chorus]\nOh oh neon rain\nWashing all the pain away\nHold me till the morning light\n"
    "We will never be the same"
)


@pytest.fixture(scope="module")
def music() -> OfflineMusic:
    return OfflineMusic()


def req(**kw) -> MusicRequest:
    base = dict(tags="pop, upbeat", lyrics="", duration=8.0, seed=1, instrumental=True)
    base.update(kw)
    return MusicRequest(**base)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, dtype=np.float64) ** 2)))


def onset_envelope(x: np.ndarray, hop: int = 441) -> np.ndarray:
    """Positive log-energy differences per 10 ms frame."""
    m = np.abs(x).mean(axis=1)
    n = len(m) // hop
    e = np.log1p(100 * np.sqrt((m[: n * hop].reshape(n, hop) ** 2).mean(axis=1)))
    return np.maximum(np.diff(e), 0)


def estimated_bpm(drums: np.ndarray) -> float:
    """The beat period (60-200 bpm) where the onset envelope repeats best."""
    d = onset_envelope(drums)
    d = d - d.mean()
    ac = np.correlate(d, d, "full")[len(d) - 1 :]
    frames_per_s = SR / 441
    lo, hi = int(0.3 * frames_per_s), int(1.0 * frames_per_s)
    lag = lo + int(np.argmax(ac[lo:hi]))
    return 60.0 * frames_per_s / lag


def bass_pitch_classes(x: np.ndarray, win: int = 16384, hop: int = 4096) -> np.ndarray:
    """How long each pitch class sounds in a bass line, weighted by loudness.

    Per 0.37 s frame, the period is where the frame's autocorrelation peaks (18-400 Hz, so
    octave slips keep the pitch class); frames are weighted by energy and binned by class.
    """
    m = x.mean(axis=1)
    frames = np.lib.stride_tricks.sliding_window_view(m, win)[::hop]
    frames = frames - frames.mean(axis=1, keepdims=True)
    energy = (frames**2).sum(axis=1)
    spec = np.fft.rfft(frames, 2 * win, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, :win] / (win - np.arange(win))[None, :]
    lo, hi = int(SR / 400), int(SR / 18)
    lag = lo + np.argmax(ac[:, lo:hi], axis=1)
    pc = (np.round(12 * np.log2(SR / lag / 440)) + 69).astype(int) % 12
    keep = energy > 0.05 * energy.max()
    c = np.bincount(pc[keep], weights=energy[keep], minlength=12)
    return c / c.sum()


# ============================================================================================
# Music
# ============================================================================================


@pytest.mark.parametrize("duration", [1.0, 7.3, 12.345])
def test_exact_duration_stereo_float(music, duration):
    out = music.render([req(duration=duration)])[0]
    assert out.samples.shape == (round(duration * SR), 2)
    assert out.samples.dtype == np.float32
    assert out.sample_rate == SR == music.sample_rate
    assert out.seed == 1


def test_loud_enough_never_clips_and_fades(music):
    x = music.render([req(duration=12)])[0].samples
    assert rms(x) > 0.08  # about -22 dBFS or louder
    assert np.abs(x).max() <= 0.9  # -1 dBFS of headroom for the lossy stream copy
    assert np.isfinite(x).all()
    assert np.abs(x[:10]).max() < 0.05 and np.abs(x[-10:]).max() < 0.01  # short fade in / out
    # a real stereo image, not two identical channels
    assert rms(x[:, 0] - x[:, 1]) > 0.005


def test_seed_reproduces_and_variants_differ():
    r = req(tags="synthwave, 110 bpm", duration=6, seed=42)
    a = OfflineMusic().render([r])[0].samples
    b = OfflineMusic().render([req(tags="synthwave, 110 bpm", duration=6, seed=42)])[0].samples
    c = OfflineMusic().render([req(tags="synthwave, 110 bpm", duration=6, seed=43)])[0].samples
    assert np.array_equal(a, b)
    assert rms(a - c) > 0.02


def test_batch_is_one_call_with_progress(music):
    seen: list[float] = []
    reqs = [req(seed=1, duration=3), req(seed=2, duration=3)]
    outs = music.render(reqs, progress=seen.append)
    assert [o.seed for o in outs] == [1, 2]
    assert len(seen) >= 4 and seen == sorted(seen) and seen[-1] == pytest.approx(1.0)
    assert np.array_equal(outs[1].samples, music.render([req(seed=2, duration=3)])[0].samples)


def test_tempo_shows_in_drum_periodicity(music):
    fps = SR / 441
    lag = {bpm: round(60 / bpm * fps) for bpm in (90, 140)}
    estimates = {}
    for bpm, other in ((90, 140), (140, 90)):
        drums = music.render_stems(req(tags="pop", bpm=bpm, duration=20))["drums"]
        est = estimated_bpm(drums)
        # the beat, or its half/double (the same pulse heard at another level)
        assert min(abs(est / bpm - k) for k in (0.5, 1.0, 2.0)) < 0.04, (bpm, est)
        estimates[bpm] = est
        # the onsets repeat at this tempo's beat, not at the other tempo's
        d = onset_envelope(drums)
        d = d - d.mean()
        ac = np.correlate(d, d, "full")[len(d) - 1 :] / np.dot(d, d)
        assert ac[lag[bpm]] > 0.1 and ac[lag[bpm]] > ac[lag[other]] + 0.08, (bpm, ac[lag[bpm]], ac[lag[other]])
    assert abs(estimates[90] - estimates[140]) > 10


def test_tempo_from_tags_and_request(music):
    assert music.describe(req(tags="house, 124 bpm"))["bpm"] == 124
    assert music.describe(req(tags="house, 124 bpm", bpm=100))["bpm"] == 100
    assert music.describe(req(tags="waltz, 3/4"))["time_signature"] == "3/4"
    assert music.describe(req(time_signature="6/8"))["time_signature"] == "6/8"


@pytest.mark.parametrize("tags,key,tonic", [
    ("pop", "A minor", 9), ("pop", "C major", 0), ("pop", "F# major", 6),
    ("rock, energetic", "Bb minor", 10), ("lofi, chill", "E major", 4),
])
def test_key_shows_in_the_bass_line(music, tags, key, tonic):
    bass = music.render_stems(req(tags=tags, key=key, duration=20))["bass"]
    pcs = bass_pitch_classes(bass)
    assert int(np.argmax(pcs)) == tonic, np.round(pcs, 2)


def test_key_from_tags(music):
    bass = music.render_stems(req(tags="synthwave, Bbm, 100 bpm", duration=16))["bass"]
    assert int(np.argmax(bass_pitch_classes(bass))) == 10
    assert music.describe(req(tags="synthwave, Bbm"))["key"] == "Bb minor"


def test_stems_sum_to_mix(music):
    r = req(tags="lofi hip hop, chill", lyrics=LYRICS, instrumental=False, duration=10, seed=7)
    stems = music.render_stems(r)
    mix = music.render([r])[0].samples
    assert set(stems) == {"drums", "bass", "other", "vocals"}
    for s in stems.values():
        assert s.shape == mix.shape and s.dtype == np.float32
    total = sum(stems.values())
    assert np.abs(total - mix).max() < 1e-4
    assert all(rms(s) > 0.005 for s in stems.values())


def test_vocals_follow_lyrics_and_instrumental(music):
    sung = music.render_stems(req(lyrics=LYRICS, instrumental=False, duration=16))
    inst = music.render_stems(req(lyrics=LYRICS, instrumental=True, duration=16))
    assert rms(sung["vocals"]) > 0.02
    assert rms(inst["vocals"]) == 0.0


def test_genres_sound_different(music):
    calm = music.render_stems(req(tags="ambient, calm, peaceful", duration=16))
    loud = music.render_stems(req(tags="rock, energetic", duration=16))
    assert music.describe(req(tags="ambient, calm"))["profile"] == "ambient"
    assert music.describe(req(tags="hard rock, energetic"))["profile"] == "rock"
    assert music.describe(req(tags="ambient"))["bpm"] < music.describe(req(tags="rock, energetic"))["bpm"]
    calm_onsets = np.count_nonzero(onset_envelope(calm["drums"]) > 0.3)
    loud_onsets = np.count_nonzero(onset_envelope(loud["drums"]) > 0.3)
    assert loud_onsets > 3 * max(1, calm_onsets)
    assert rms(calm["drums"]) < 0.5 * rms(loud["drums"])


def test_odd_meters_and_extremes_render(music):
    for r in (req(time_signature="7/8", duration=4), req(time_signature="12/8", duration=4),
              req(bpm=40, duration=3), req(bpm=240, duration=3), req(duration=0.2),
              req(tags="", lyrics="[instrumental]", duration=2), req(key="nonsense", duration=2)):
        x = music.render([r])[0].samples
        assert x.shape == (round(r.duration * SR), 2) and np.isfinite(x).all()
        assert np.abs(x).max() <= 0.99


@pytest.mark.parametrize("duration", [0, -1, float("nan"), 10_000])
def test_bad_duration_is_an_engine_error(music, duration):
    with pytest.raises(EngineError):
        music.render([req(duration=duration)])


# ============================================================================================
# Audio encoding
# ============================================================================================


@pytest.fixture(scope="module")
def song(music) -> np.ndarray:
    return music.render([req(duration=6.5, seed=3)])[0].samples


def test_wav_master_round_trip(song):
    data = audio.encode_wav(song, SR)
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert audio.duration_of(data) == pytest.approx(6.5, abs=1e-6)
    back, sr = audio.decode(data)
    assert sr == SR and back.shape == song.shape
    assert np.abs(back - song).max() < 1.0 / 16000  # 16-bit
    assert len(data) == 44 + song.shape[0] * 2 * 2


def test_stream_copy_round_trip(song):
    data, ext, mime = audio.encode_stream(song, SR)
    assert (ext, mime) in (("mp3", "audio/mpeg"), ("ogg", "audio/ogg"))
    if audio.mp3_supported():
        assert ext == "mp3" and (data[:3] == b"ID3" or data[0] == 0xFF)
    assert len(data) < len(audio.encode_wav(song, SR)) / 4
    assert audio.duration_of(data) == pytest.approx(6.5, abs=0.06)
    back, sr = audio.decode(data)
    assert sr == SR and back.shape[1] == 2
    assert rms(back) == pytest.approx(rms(song), rel=0.15)
    assert np.abs(back).max() < 1.0  # the player never hears codec clipping


def test_stream_copy_of_a_hot_master_does_not_clip():
    t = np.arange(SR * 2) / SR
    hot = np.stack([np.sign(np.sin(2 * np.pi * 220 * t)) * 0.999] * 2, axis=1).astype(np.float32)
    back, _ = audio.decode(audio.encode_stream(hot, SR)[0])
    assert np.abs(back).max() < 1.0


def test_waveform_peaks(song):
    peaks = audio.waveform_peaks(song)
    assert len(peaks) == 160
    assert all(0.0 <= p <= 1.0 and round(p, 3) == p for p in peaks)
    assert max(peaks) == pytest.approx(float(np.abs(song).max()), abs=1e-3)
    assert peaks[0] < max(peaks)  # the fade-in bucket is quieter than the loudest
    assert audio.waveform_peaks(np.zeros((3, 2), np.float32), n=8) == [0.0] * 8
    assert len(audio.waveform_peaks(song[:, 0], n=32)) == 32


def test_encoders_clip_out_of_range_input():
    loud = np.full((SR // 10, 2), 3.0, dtype=np.float32)
    back, _ = audio.decode(audio.encode_wav(loud, SR))
    assert back.max() <= 1.0


# ============================================================================================
# Writer
# ============================================================================================


@pytest.fixture(scope="module")
def writer() -> OfflineWriter:
    return OfflineWriter()


def sections(lyrics: str) -> list[str]:
    return [ln for ln in lyrics.split("\n") if ln.startswith("[")]


def test_description_mode_writes_everything(writer):
    spec = writer.write(WriteRequest(mode="description",
                                     description="an upbeat synthwave song about driving through Tokyo at night, female vocals"))
    assert spec.title == "Driving Through Tokyo at Night"
    tags = spec.tags.split(", ")
    assert "synthwave" in tags and "upbeat" in tags and "female vocals" in tags
    assert f"{spec.bpm} bpm" in tags and spec.key and spec.key.lower() in tags
    assert spec.time_signature == "4/4"
    assert parse_musical_hints(spec.tags)["bpm"] == spec.bpm
    assert {"[verse]", "[chorus]", "[bridge]"} <= set(sections(spec.lyrics))
    assert sections(spec.lyrics)[0] == "[intro]" and sections(spec.lyrics)[-1] == "[outro]"
    assert "Tokyo" in spec.lyrics  # drawn from the description's words
    assert 1 <= len(spec.categories) <= 3 and spec.categories[0] == "Synthwave"
    assert normalise_lyrics(spec.lyrics) == spec.lyrics


def test_lyrics_depend_on_the_description(writer):
    a = writer.write(WriteRequest(mode="description", description="a sad piano ballad about my grandmother's garden in October"))
    b = writer.write(WriteRequest(mode="description", description="a happy pop song about summer at the beach with Maria"))
    a2 = writer.write(WriteRequest(mode="description", description="a sad piano ballad about my grandmother's garden in October"))
    assert a == a2
    assert a.lyrics != b.lyrics and a.title != b.title
    assert "garden" in a.lyrics.lower() and "Maria" in b.lyrics
    assert "sad" in a.tags and "minor" in a.tags and "major" in b.tags


def test_instrumental_has_no_lyrics_and_no_vocals(writer):
    spec = writer.write(WriteRequest(mode="description", description="chill lofi beat for studying on a rainy afternoon",
                                     instrumental=True))
    assert spec.lyrics == ""
    assert "vocals" not in spec.tags and "instrumental" in spec.tags.split(", ")
    assert spec.title and spec.title != "Untitled"
    assert spec.categories[0] == "Lo-Fi"


def test_lyrics_mode_keeps_and_cleans_the_persons_lyrics(writer):
    spec = writer.write(WriteRequest(
        mode="lyrics", prompt="Rock, Energetic, 140BPM, E minor",
        lyrics="Verse 1:\nWe ride tonight\nunder the city light\n\n\n\n(Chorus)\nRun run run\ntill the morning sun"))
    assert spec.lyrics == "[verse]\nWe ride tonight\nunder the city light\n\n[chorus]\nRun run run\ntill the morning sun"
    assert spec.tags.startswith("rock, energetic, 140bpm, e minor")
    assert spec.bpm == 140 and spec.key == "E minor"
    assert spec.title == "Run Run Run"  # the chorus hook, not "Untitled"
    assert spec.categories[0] == "Rock"


def test_lyrics_mode_instrumental_or_empty_lyrics_still_works(writer):
    inst = writer.write(WriteRequest(mode="lyrics", prompt="jazz, smooth", lyrics="", instrumental=True))
    assert inst.lyrics == "" and inst.title
    empty = writer.write(WriteRequest(mode="lyrics", prompt="jazz, smooth", lyrics="  "))
    assert "[verse]" in empty.lyrics and "[chorus]" in empty.lyrics


def test_described_lyrics_mode(writer):
    spec = writer.write(WriteRequest(mode="described_lyrics", prompt="indie folk, acoustic guitar, warm",
                                     described_lyrics="a road trip with my best friend across Nevada"))
    assert spec.tags.startswith("indie folk, acoustic guitar, warm")
    assert "Nevada" in spec.lyrics and "[chorus]" in spec.lyrics
    assert spec.title == "Road Trip"
    inst = writer.write(WriteRequest(mode="described_lyrics", prompt="indie folk", described_lyrics="a road trip",
                                     instrumental=True))
    assert inst.lyrics == ""


def test_writer_respects_stated_tempo_key_meter(writer):
    spec = writer.write(WriteRequest(mode="description", description="dark waltz in F# minor at 140 bpm, 6/8"))
    assert (spec.bpm, spec.key, spec.time_signature) == (140, "F# minor", "6/8")
    assert "6/8" in spec.tags.split(", ")


def test_writer_rejects_nothing_and_unknown_modes(writer):
    with pytest.raises(EngineError):
        writer.write(WriteRequest(mode="description", description="   "))
    with pytest.raises(EngineError):
        writer.write(WriteRequest(mode="karaoke", description="x"))
    spec = writer.write(WriteRequest(mode="description", description="song"))
    assert spec.title not in ("Untitled", "") and len(spec.title) <= 120 and spec.lyrics


# ============================================================================================
# Text helpers
# ============================================================================================


@pytest.mark.parametrize("text,bpm,key,ts", [
    ("dark synthwave, 120bpm, F# minor, 6/8", 120, "F# minor", "6/8"),
    ("tempo 90, Bbm", 90, "Bb minor", None),
    ("lofi, Am, 80 BPM", 80, "A minor", None),
    ("Am I dreaming? a song in C major", None, "C major", None),
    ("in the key of D, waltz", None, "D major", "3/4"),
    ("hip hop 95 bpm c sharp minor", 95, "C# minor", None),
    ("E-flat major ballad, 3/4", None, "Eb major", "3/4"),
    ("24/7 party at 300 bpm", None, None, None),
    ("", None, None, None),
])
def test_parse_musical_hints(text, bpm, key, ts):
    assert parse_musical_hints(text) == {"bpm": bpm, "key": key, "time_signature": ts}


def test_normalise_categories():
    assert normalise_category("hip hop") == normalise_category("HipHop") == normalise_category("Hip-Hop") == "Hip-Hop"
    assert normalise_category("rnb") == normalise_category("R&B") == normalise_category("r and b") == "R&B"
    assert normalise_category("electronica") == "Electronic"
    assert normalise_category("  1. indie   pop ") == "Indie Pop"
    assert normalise_category("**Jazz**") == "Jazz"
    for junk in ("", "   ", "none", "N/A", "genre", "a very long category name that nobody wants here", "12345"):
        assert normalise_category(junk) is None
    assert normalise_categories(["Pop", "pop", "POP ", "Electronic", "Sad", "80s"]) == ["Pop", "Electronic", "Sad"]
    assert normalise_categories("Pop, Electronic, Sad, 80s", limit=5) == ["Pop", "Electronic", "Sad", "80s"]
    assert normalise_categories([], fallback="electronica") == ["Electronic"]
    assert normalise_categories(["none", ""]) == []


def test_normalise_lyrics_messy_inputs():
    messy = (
        "Here are the lyrics for your song:\n\n```\nTitle: Neon Rain\n\n**Verse 1:**\n"
        "City lights are *fading* out\n- I can hear you _calling_ now\n\n\n\n"
        "(Chorus)\nOh oh, neon rain\n[Pre-Chorus]\nHold on\n## Bridge\nNothing left to say\n"
        "[Guitar Solo]\n[Hook]\n[Verse 2: Artist]\nHook, line and sinker\nOUTRO x2\nfade away\n"
        "```\nI hope you enjoy these lyrics!\n"
    )
    assert normalise_lyrics(messy) == (
        "[verse]\nCity lights are fading out\nI can hear you calling now\n\n"
        "[chorus]\nOh oh, neon rain\n\n[pre-chorus]\nHold on\n\n[bridge]\nNothing left to say\n\n"
        "[verse]\nHook, line and sinker\n\n[outro]\nfade away"
    )
    assert normalise_lyrics("Chorus: la la la\nINTRO\nhey") == "[chorus]\nla la la\n\n[intro]\nhey"
    assert normalise_lyrics("just words\nmore words") == "[verse]\njust words\nmore words"
    assert normalise_lyrics("Chorus (x2)\nla la\nVerse 2 (Rap): yo\n(ooh yeah)\nVerse of the day") == \
        "[chorus]\nla la\n\n[verse]\nyo\n(ooh yeah)\nVerse of the day"
    assert normalise_lyrics("[instrumental]") == "" and normalise_lyrics(None) == ""
    long = normalise_lyrics(("[verse]\n" + "la la la la la la la la\n" * 50 + "\n") * 20)
    assert len(long) <= 5000 and not long.endswith("[verse]") and long.endswith("la")


def test_normalise_tags():
    assert normalise_tags("Tags: Upbeat Pop, female vocals, upbeat pop;  Synth ,120 BPM, A minor.") == \
        "upbeat pop, female vocals, synth, 120 bpm, a minor"
    assert normalise_tags(["Pop", "pop", " ROCK "]) == "pop, rock"
    assert normalise_tags("") == ""
    many = normalise_tags(", ".join(f"tag number {i}" for i in range(100)), limit=300)
    assert len(many) <= 300 and many.endswith(tuple("0123456789"))
    assert len(normalise_tags("x" * 400)) == 300


@pytest.mark.parametrize("text,title", [
    ("an upbeat synthwave song about driving through Tokyo at night, 120 bpm", "Driving Through Tokyo at Night"),
    ('a ballad called "Neon Rain" with piano', "Neon Rain"),
    ("a track titled Midnight Run, with guitars", "Midnight Run"),
    ("[verse]\nCity lights are fading out\nI can hear", "City Lights Are Fading Out"),
    ("energetic rock anthem for the gym", "Energetic Rock Anthem for the Gym"),
    ("", "New Song"),
    ("untitled", "New Song"),
])
def test_make_title(text, title):
    assert make_title(text) == title


def test_make_title_is_short():
    t = make_title("about " + "very " * 100 + "long things")
    assert 1 <= len(t) <= 120


# ============================================================================================
# Cover
# ============================================================================================


def test_cover_is_a_deterministic_512_png():
    from PIL import Image

    painter = OfflineCover()
    a = painter.paint("Neon Rain", "synthwave, dark", 7)
    assert a[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(a))
    assert img.size == (512, 512) and img.format == "PNG"
    assert painter.paint("Neon Rain", "synthwave, dark", 7) == a
    assert painter.paint("Neon Rain", "synthwave, dark", 8) != a
    assert painter.paint("Other Title", "synthwave, dark", 7) != a
    assert np.asarray(img.convert("L")).std() > 10  # a picture, not a flat fill


def test_cover_mood_tints_the_palette():
    from PIL import Image

    painter = OfflineCover()

    def brightness(tags: str) -> float:
        vals = [np.asarray(Image.open(io.BytesIO(painter.paint("Song", tags, s))).convert("L")).mean() for s in range(6)]
        return float(np.mean(vals))

    assert brightness("dark, gothic") < brightness("happy, summer") - 15
