"""Offline writer: turns a request into tags, a title, lyrics and categories by rules (no model).

- Tags come from a vocabulary of genres, moods, instruments and vocal types found in the text,
  completed with sensible defaults for the genre (an instrument or two, a mood, a voice) and
  always a tempo and a key: the ones the person named, else ones chosen deterministically from
  the text, so the music engine and the song page agree on them.
- Lyrics are built from the description's own words (its subject phrase, nouns, -ing verbs and
  names) poured into rhyming line templates, in [intro] / [verse] / [chorus] / [bridge] / [outro]
  sections; the same text always gives the same lyrics, different texts give different ones.
- Titles come from the subject ("about ..."), a quoted name, the chorus hook, or the first
  lyric line; never "Untitled".

Modes: ``description`` (everything from the description), ``lyrics`` (the person's lyrics,
normalised; tags from the prompt), ``described_lyrics`` (tags from the prompt, lyrics written
about ``described_lyrics``). ``instrumental`` gives empty lyrics and no vocal tags.
"""
from __future__ import annotations

import re
import zlib

from .base import EngineError, SongSpec, WriteRequest
from .text import (
    make_title,
    normalise_categories,
    normalise_lyrics,
    normalise_tags,
    parse_musical_hints,
)

__all__ = ["OfflineWriter"]


def _h(*parts: object) -> int:
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode("utf-8"))


def _find(text: str, phrase: str) -> int:
    m = re.search(r"(?<![a-z0-9])" + re.escape(phrase) + r"(?![a-z0-9])", text)
    return m.start() if m else -1


# --------------------------------------------------------------------------------------------
# Vocabulary: canonical tag -> words that mean it
# --------------------------------------------------------------------------------------------

_GENRES: dict[str, tuple[str, ...]] = {
    "lo-fi hip hop": ("lofi hip hop", "lo-fi hip hop", "lofi", "lo-fi", "lo fi", "chillhop", "study beats"),
    "synthwave": ("synthwave", "retrowave", "outrun", "synth wave"),
    "synth-pop": ("synth-pop", "synthpop", "synth pop"),
    "vaporwave": ("vaporwave",),
    "hip-hop": ("hip hop", "hip-hop", "hiphop", "boom bap", "boom-bap"),
    "rap": ("rap", "rapper", "rapping"),
    "trap": ("trap",),
    "drill": ("drill",),
    "r&b": ("r&b", "rnb", "r'n'b", "rhythm and blues"),
    "soul": ("soul", "neo soul", "neo-soul", "motown"),
    "funk": ("funk", "funky"),
    "disco": ("disco",),
    "house": ("house", "deep house", "tech house"),
    "techno": ("techno",),
    "trance": ("trance",),
    "edm": ("edm", "festival", "big room", "rave"),
    "drum and bass": ("drum and bass", "drum & bass", "drum n bass", "dnb", "jungle"),
    "dubstep": ("dubstep",),
    "electronic": ("electronic", "electronica", "electro", "idm"),
    "ambient": ("ambient", "soundscape", "drone", "new age", "meditation"),
    "cinematic": ("cinematic", "film score", "soundtrack", "trailer", "epic orchestral"),
    "orchestral": ("orchestral", "orchestra", "symphonic", "symphony"),
    "classical": ("classical", "baroque", "sonata", "piano solo"),
    "jazz": ("jazz", "jazzy", "bebop", "swing", "big band"),
    "smooth jazz": ("smooth jazz",),
    "blues": ("blues", "bluesy"),
    "bossa nova": ("bossa nova", "bossa"),
    "latin": ("latin", "salsa", "cumbia", "bachata"),
    "reggaeton": ("reggaeton",),
    "reggae": ("reggae", "dub", "ska"),
    "afrobeats": ("afrobeats", "afrobeat", "amapiano"),
    "rock": ("rock", "rock and roll", "rock n roll"),
    "indie rock": ("indie rock", "alt rock", "alternative rock", "alt-rock"),
    "hard rock": ("hard rock",),
    "punk": ("punk", "pop punk", "pop-punk"),
    "metal": ("metal", "heavy metal", "metalcore", "thrash"),
    "grunge": ("grunge",),
    "shoegaze": ("shoegaze",),
    "post-rock": ("post-rock", "post rock"),
    "emo": ("emo",),
    "folk": ("folk", "folksy", "indie folk"),
    "country": ("country", "honky tonk", "americana", "bluegrass"),
    "acoustic": ("acoustic", "unplugged", "singer-songwriter", "singer songwriter"),
    "gospel": ("gospel", "worship", "hymn"),
    "k-pop": ("k-pop", "kpop"),
    "j-pop": ("j-pop", "jpop", "anime"),
    "indie pop": ("indie pop", "bedroom pop", "indie"),
    "dream pop": ("dream pop", "dreampop"),
    "pop": ("pop", "mainstream", "radio", "chart"),
    "ballad": ("ballad", "power ballad"),
    "80s": ("80s", "80's", "eighties", "1980s"),
    "90s": ("90s", "90's", "nineties", "1990s"),
    "70s": ("70s", "70's", "seventies", "1970s"),
    "chiptune": ("chiptune", "8-bit", "8 bit", "video game", "retro game"),
    "lullaby": ("lullaby", "nursery"),
    "christmas": ("christmas", "holiday", "xmas"),
}

_MOODS: dict[str, tuple[str, ...]] = {
    "happy": ("happy", "joyful", "joy", "cheerful", "glad", "fun", "sunny", "feel-good", "feel good"),
    "upbeat": ("upbeat", "bouncy", "lively"),
    "energetic": ("energetic", "energy", "high energy", "hype", "pumped", "workout", "gym", "party"),
    "uplifting": ("uplifting", "inspiring", "inspirational", "motivational", "triumphant", "hopeful", "hope"),
    "euphoric": ("euphoric", "ecstatic"),
    "romantic": ("romantic", "love", "loving", "in love", "crush", "valentine"),
    "sad": ("sad", "sorrow", "crying", "tears", "heartbreak", "heartbroken", "breakup", "break up", "grief", "loss"),
    "melancholic": ("melancholic", "melancholy", "wistful", "bittersweet", "longing"),
    "nostalgic": ("nostalgic", "nostalgia", "memories", "remember", "childhood", "old days"),
    "lonely": ("lonely", "alone", "loneliness", "isolated"),
    "dark": ("dark", "sinister", "ominous", "gothic", "evil", "shadow", "shadows"),
    "mysterious": ("mysterious", "mystery", "enigmatic", "eerie", "haunting"),
    "angry": ("angry", "rage", "furious", "aggressive", "fierce"),
    "epic": ("epic", "heroic", "grand", "battle", "victory"),
    "dreamy": ("dreamy", "dream", "dreams", "dreaming", "ethereal", "floating", "hazy"),
    "calm": ("calm", "peaceful", "serene", "tranquil", "soothing", "relaxing", "relaxed", "gentle", "quiet"),
    "chill": ("chill", "chilled", "laid-back", "laid back", "mellow", "lazy", "easy"),
    "intense": ("intense", "powerful", "heavy"),
    "playful": ("playful", "quirky", "silly", "cute"),
    "groovy": ("groovy", "groove", "danceable", "dance", "dancing"),
    "tense": ("tense", "suspense", "anxious", "nervous"),
    "summer": ("summer", "beach", "sunshine", "tropical"),
}

_INSTRUMENTS: dict[str, tuple[str, ...]] = {
    "piano": ("piano", "keys", "grand piano"),
    "rhodes": ("rhodes", "electric piano", "wurlitzer"),
    "acoustic guitar": ("acoustic guitar",),
    "electric guitar": ("electric guitar", "guitar solo", "distorted guitar", "riff", "riffs"),
    "guitar": ("guitar", "guitars"),
    "bass guitar": ("bass guitar", "slap bass"),
    "808": ("808", "808s", "sub bass"),
    "synthesizer": ("synth", "synths", "synthesizer", "synthesizers", "analog synth"),
    "pads": ("pad", "pads"),
    "drum machine": ("drum machine", "tr-808", "tr-909", "909"),
    "drums": ("drums", "drum kit", "percussion"),
    "strings": ("strings", "string section"),
    "violin": ("violin", "fiddle"),
    "cello": ("cello",),
    "saxophone": ("saxophone", "sax"),
    "trumpet": ("trumpet", "horns", "brass"),
    "flute": ("flute",),
    "organ": ("organ", "hammond"),
    "harp": ("harp",),
    "ukulele": ("ukulele", "uke"),
    "banjo": ("banjo",),
    "bells": ("bells", "glockenspiel", "chimes", "music box"),
    "choir": ("choir", "choral"),
    "vinyl crackle": ("vinyl", "crackle", "tape hiss"),
}

_VOICES: dict[str, tuple[str, ...]] = {
    "female vocals": ("female vocals", "female vocal", "female voice", "female singer", "woman", "girl",
                      "she sings", "female", "soprano", "diva"),
    "male vocals": ("male vocals", "male vocal", "male voice", "male singer", "man singing", "guy",
                    "he sings", "male", "baritone", "tenor"),
    "duet": ("duet",),
    "choir vocals": ("choir vocals", "gang vocals"),
    "rap vocals": ("rap vocals", "rapping", "rapper", "verses rapped"),
    "falsetto": ("falsetto",),
    "whispered vocals": ("whisper", "whispered", "whispering"),
    "autotune": ("autotune", "auto-tune", "vocoder"),
}

# Per genre: tempo range, typical instruments, default mood, preferred mode, category name.
_GENRE_DEFAULTS: dict[str, tuple[tuple[int, int], tuple[str, ...], str, str | None]] = {
    "lo-fi hip hop": ((70, 88), ("rhodes", "vinyl crackle"), "chill", None),
    "synthwave": ((88, 118), ("synthesizer", "drum machine"), "nostalgic", "minor"),
    "synth-pop": ((105, 125), ("synthesizer", "drum machine"), "upbeat", None),
    "vaporwave": ((70, 95), ("synthesizer", "pads"), "dreamy", None),
    "hip-hop": ((82, 98), ("808", "piano"), "confident", "minor"),
    "rap": ((82, 100), ("808", "drums"), "confident", "minor"),
    "trap": ((130, 150), ("808", "bells"), "dark", "minor"),
    "drill": ((138, 146), ("808", "strings"), "dark", "minor"),
    "r&b": ((70, 95), ("rhodes", "bass guitar"), "romantic", None),
    "soul": ((70, 100), ("organ", "bass guitar"), "warm", None),
    "funk": ((100, 118), ("bass guitar", "electric guitar"), "groovy", None),
    "disco": ((115, 125), ("strings", "bass guitar"), "groovy", None),
    "house": ((120, 126), ("synthesizer", "drum machine"), "groovy", "minor"),
    "techno": ((126, 136), ("synthesizer", "drum machine"), "hypnotic", "minor"),
    "trance": ((132, 140), ("synthesizer", "pads"), "euphoric", "minor"),
    "edm": ((124, 130), ("synthesizer", "drum machine"), "energetic", "minor"),
    "drum and bass": ((170, 176), ("synthesizer", "drums"), "energetic", "minor"),
    "dubstep": ((140, 140), ("synthesizer", "808"), "intense", "minor"),
    "electronic": ((110, 128), ("synthesizer", "drum machine"), "energetic", None),
    "ambient": ((60, 80), ("pads", "bells"), "calm", None),
    "cinematic": ((64, 96), ("strings", "piano"), "epic", "minor"),
    "orchestral": ((70, 110), ("strings", "trumpet"), "epic", None),
    "classical": ((66, 110), ("piano", "strings"), "elegant", None),
    "jazz": ((96, 140), ("saxophone", "piano"), "smooth", None),
    "smooth jazz": ((80, 100), ("saxophone", "rhodes"), "smooth", None),
    "blues": ((70, 100), ("electric guitar", "organ"), "soulful", None),
    "bossa nova": ((110, 140), ("acoustic guitar", "flute"), "relaxed", None),
    "latin": ((95, 120), ("trumpet", "percussion"), "passionate", None),
    "reggaeton": ((88, 98), ("drum machine", "synthesizer"), "sensual", "minor"),
    "reggae": ((70, 90), ("bass guitar", "organ"), "laid-back", None),
    "afrobeats": ((100, 115), ("percussion", "guitar"), "groovy", None),
    "rock": ((112, 150), ("electric guitar", "drums"), "energetic", None),
    "indie rock": ((110, 140), ("electric guitar", "drums"), "raw", None),
    "hard rock": ((120, 150), ("electric guitar", "drums"), "intense", "minor"),
    "punk": ((150, 190), ("electric guitar", "drums"), "rebellious", None),
    "metal": ((120, 180), ("electric guitar", "drums"), "aggressive", "minor"),
    "grunge": ((100, 130), ("electric guitar", "drums"), "angsty", "minor"),
    "shoegaze": ((90, 125), ("electric guitar", "pads"), "dreamy", None),
    "post-rock": ((90, 130), ("electric guitar", "strings"), "epic", None),
    "emo": ((130, 170), ("electric guitar", "drums"), "emotional", "minor"),
    "folk": ((84, 118), ("acoustic guitar", "violin"), "warm", "major"),
    "country": ((90, 125), ("acoustic guitar", "banjo"), "heartfelt", "major"),
    "acoustic": ((80, 110), ("acoustic guitar", "piano"), "intimate", None),
    "gospel": ((70, 100), ("organ", "choir"), "uplifting", "major"),
    "k-pop": ((110, 128), ("synthesizer", "drum machine"), "energetic", None),
    "j-pop": ((115, 135), ("synthesizer", "electric guitar"), "bright", "major"),
    "indie pop": ((95, 120), ("guitar", "synthesizer"), "dreamy", None),
    "dream pop": ((80, 110), ("pads", "guitar"), "dreamy", None),
    "pop": ((98, 124), ("synthesizer", "drums"), "catchy", None),
    "ballad": ((64, 80), ("piano", "strings"), "emotional", None),
    "80s": ((100, 120), ("synthesizer", "drum machine"), "nostalgic", None),
    "90s": ((90, 110), ("drums", "guitar"), "nostalgic", None),
    "70s": ((95, 115), ("bass guitar", "organ"), "groovy", None),
    "chiptune": ((120, 150), ("synthesizer",), "playful", "major"),
    "lullaby": ((60, 75), ("bells", "piano"), "gentle", "major"),
    "christmas": ((90, 120), ("bells", "piano"), "festive", "major"),
}

_MINOR_MOODS = {"sad", "melancholic", "lonely", "dark", "mysterious", "angry", "tense", "nostalgic"}
_MAJOR_MOODS = {"happy", "upbeat", "uplifting", "euphoric", "romantic", "playful", "summer"}
_SLOW_MOODS = {"calm", "chill", "sad", "melancholic", "lonely", "dreamy", "romantic"}
_FAST_MOODS = {"energetic", "upbeat", "euphoric", "angry", "intense", "epic", "groovy"}
_KEYS = ("C", "D", "E", "F", "G", "A", "B", "Bb", "Eb", "F#", "C#", "Ab")
_KEY_WEIGHTS = (10, 9, 8, 8, 10, 10, 4, 5, 5, 3, 3, 3)

_STOP = set("""
a an the and or but if then so of to in on at by for with from into onto over under about as is
are was were be been being am do does did have has had i me my mine we us our ours you your yours
he him his she her hers it its they them their theirs this that these those there here what which
who whom whose when where why how all any both each few more most other some such no nor not only
own same than too very can will just should would could may might must shall let lets let's make
made create write compose generate give please want like song songs track tracks music tune tunes
beat beats vibe vibes style styled feel feeling sound sounds sounding bpm tempo key major minor
vocals vocal voice singer sung sing sings singing lyrics lyric instrumental version kind sort type
something someone somebody thing things really quite bit lot lots one two three also up down out
off again ever never always get got gets go goes going went come comes came new old good great big
small little long short way much many every instead while during after before through between
maybe yes its it's i'm im don't dont can't cant won't wont that's thats isn't
""".split())
_MUSIC_WORDS = {w for words in (*_GENRES.values(), *_MOODS.values(), *_INSTRUMENTS.values(), *_VOICES.values())
                for phrase in words for w in phrase.split()}
_MUSIC_WORDS |= {"genre", "mood", "melody", "chorus", "verse", "bridge", "intro", "outro", "hook",
                 "production", "produced", "mix", "vocalist", "band", "rhythm", "bass", "drum",
                 "upbeat", "slow", "fast", "mid-tempo", "midtempo", "uptempo", "catchy", "soft",
                 "loud", "bright", "warm", "heavy", "inspired", "era"}

# Fallback imagery when the description is thin, by broad mood.
_BANK = {
    "bright": (("sun", "summer", "sky", "light", "morning", "road", "heart", "smile"),
               ("dancing", "shining", "running", "flying", "laughing")),
    "dark": (("rain", "shadow", "night", "silence", "storm", "memory", "heart", "window"),
             ("falling", "waiting", "fading", "drifting", "breaking")),
    "calm": (("river", "moon", "breeze", "ocean", "garden", "stars", "sky", "candle"),
             ("drifting", "floating", "breathing", "dreaming", "resting")),
    "power": (("fire", "thunder", "city", "engine", "crowd", "lights", "street", "heart"),
              ("burning", "racing", "rising", "fighting", "shouting")),
}

# Verse couplets: each pair ends on a rhyme. Slots: {n} {n2} {the_n} {the_n2} {g} {G} {p} {N}.
_VERSE_COUPLETS = (
    ("I keep {g} through {the_n} tonight", "with {the_n2} burning bright"),
    ("{The_n} is calling out my name", "and nothing here will stay the same"),
    ("Down along {the_n} I lost my way", "but I still hear {the_n2} today"),
    ("We were {g} under {the_n}", "holding on to all we've known"),
    ("{G} through {p}", "every step is taking me home"),
    ("There's a light in {the_n} I can't explain", "and it shines on me through the rain"),
    ("I was looking for {the_n}", "and I found it in the {n2} and the stars"),
    ("Every {n} I ever knew", "leads me back again to you"),
    ("Streets of {N} and skies of {n2}", "I can feel it coming through"),
    ("{The_n} and {the_n2} on my mind", "I leave the yesterday behind"),
    ("Counting every {n} along the line", "waiting for a little sign"),
    ("Caught between {the_n} and the sea", "{g} back to where I'm free"),
    ("I remember {p}", "like a song I used to know"),
    ("Light up {the_n}, let it glow", "{g} wherever we go"),
)
_CHORUS = (
    ("{Hook}", "oh, {hook}", "{G} through {the_n}, we come alive", "{Hook}, tonight"),
    ("Take me back to {p}", "{hook}, {hook}", "and {the_n} will carry me home", "{Hook}, don't let go"),
    ("Oh, {hook}", "I can feel {the_n} in my heart", "{G}, we'll never fall apart", "oh, {hook}"),
    ("{Hook}, hold on", "{the_n} is singing our song", "{G} all night long", "{Hook}, hold on"),
    ("We are {g} in {the_n}", "{hook}, {hook}", "every {n2} is shining for us", "{Hook}"),
)
_BRIDGE = (
    ("And if {the_n} should fade away", "I'll be {g} another day"),
    ("Close your eyes, let {the_n} in", "this is where we both begin"),
    ("When {the_n} is gone and the {n2} is still", "I'll be {g}, I always will"),
    ("Slow it down, the {n} is near", "everything I need is here"),
)
_INTRO = ("Ooh, {hook}", "Oh-oh, {the_n}", "Mm, {g}", "Hey, {hook}")
_OUTRO = (("{Hook}", "{g} into {the_n}"), ("Oh, {hook}", "and {the_n} fades away"),
          ("{The_n}, {the_n2}", "{hook}"))


def _match_vocab(text: str, vocab: dict[str, tuple[str, ...]]) -> list[str]:
    """Canonical names whose words occur in `text`, in order of first mention."""
    hits: list[tuple[int, int, str]] = []
    for name, words in vocab.items():
        best = -1
        longest = 0
        for w in words:
            pos = _find(text, w)
            if pos >= 0 and (best < 0 or pos < best or (pos == best and len(w) > longest)):
                best, longest = pos, len(w)
        if best >= 0:
            hits.append((best, -longest, name))
    hits.sort()
    out: list[str] = []
    taken: list[tuple[int, int]] = []
    for pos, neg_len, name in hits:
        span = (pos, pos - neg_len)
        # "lo-fi hip hop" already covers "hip hop" at the same place.
        if any(s <= span[0] < e and span[1] <= e for s, e in taken):
            continue
        taken.append(span)
        out.append(name)
    return out


class _Words:
    """Content words from a text: names, nouns, -ing verbs and the subject phrase."""

    def __init__(self, text: str, mood_family: str):
        self.text = text
        tokens = re.findall(r"[A-Za-z][A-Za-z'\-]*", text)
        seen: set[str] = set()
        nouns: list[str] = []
        gerunds: list[str] = []
        names: list[str] = []
        for i, tok in enumerate(tokens):
            tok = re.sub(r"'s$", "", tok)
            low = tok.lower().strip("'-")
            if len(low) < 3 or low in _STOP or low in _MUSIC_WORDS or low in seen:
                continue
            if re.fullmatch(r"\d+s?", low):
                continue
            seen.add(low)
            if tok[0].isupper() and i > 0 and tokens[i - 1][-1:] not in ".!?":
                names.append(tok)
                nouns.append(tok)
            elif low.endswith("ing") and len(low) > 4:
                gerunds.append(low)
            elif not low.endswith(("ly", "ed", "ful", "ous", "ive", "ish", "less", "est")):
                nouns.append(low)
        bank_n, bank_g = _BANK[mood_family]
        h = _h("words", text)
        self.nouns = nouns or []
        self.gerunds = gerunds or []
        self.names = names
        # Fill up with mood imagery so every slot has a word, without repeating the text's own.
        self.fill_n = [w for w in bank_n if w not in seen]
        self.fill_g = [w for w in bank_g if w not in seen]
        rot = h % max(1, len(self.fill_n))
        self.fill_n = self.fill_n[rot:] + self.fill_n[:rot]
        rot = h % max(1, len(self.fill_g))
        self.fill_g = self.fill_g[rot:] + self.fill_g[:rot]
        self.subject = self._subject(text)

    @staticmethod
    def _subject(text: str) -> str:
        m = re.search(r"\babout\s+([^,.;:!?\n]{3,80})", text, re.I)
        if not m:
            return ""
        phrase = re.split(r"\s+(?:with|featuring|in the style|that|which|who|while|using)\b", m.group(1), 1, flags=re.I)[0]
        words = [w for w in phrase.split() if w.lower() not in ("a", "an", "the", "my", "our", "your")][:5]
        return " ".join(words)

    def noun(self, i: int) -> str:
        pool = self.nouns + self.fill_n
        return pool[i % len(pool)]

    def gerund(self, i: int) -> str:
        pool = self.gerunds + self.fill_g
        return pool[i % len(pool)]


def _the(word: str) -> str:
    return word if word[:1].isupper() else f"the {word}"


def _cap(line: str) -> str:
    line = re.sub(r"\s+", " ", line).strip()
    return line[:1].upper() + line[1:] if line else line


class OfflineWriter:
    """The rules writer behind the Writer interface (CPU, no weights)."""

    name = "offline-writer"
    offline = True

    # ------------------------------------------------------------------ public

    def write(self, request: WriteRequest) -> SongSpec:
        mode = (request.mode or "description").strip().lower()
        if mode not in ("description", "lyrics", "described_lyrics"):
            raise EngineError(f"unknown mode {request.mode!r}")
        instrumental = bool(request.instrumental)

        if mode == "description":
            style_text = request.description
            topic = request.description
        elif mode == "lyrics":
            style_text = request.prompt
            topic = request.lyrics or request.prompt
        else:
            style_text = request.prompt
            topic = request.described_lyrics or request.prompt
        if not (style_text or "").strip() and not (topic or "").strip():
            raise EngineError("nothing to write from: the description and style are empty")

        # Style words also come from the topic when the style box is empty.
        source = style_text if (style_text or "").strip() else topic
        tags, info = self._tags(source, topic, instrumental, keep_user_tags=(mode != "description"))

        if instrumental:
            lyrics = ""
        elif mode == "lyrics" and normalise_lyrics(request.lyrics):
            lyrics = normalise_lyrics(request.lyrics)
        else:
            lyrics = self._lyrics(topic or source, info)

        title = self._title(mode, request, lyrics, self._fallback_title(topic or source, info))
        categories = self._categories(info)
        return SongSpec(
            title=title,
            tags=tags,
            lyrics=lyrics,
            categories=categories,
            bpm=info["bpm"],
            key=info["key"],
            time_signature=info["time_signature"],
        )

    # ------------------------------------------------------------------ tags

    def _tags(self, style_text: str, topic: str, instrumental: bool, keep_user_tags: bool) -> tuple[str, dict]:
        text = (style_text or "").lower()
        topic_l = (topic or "").lower()
        hints = parse_musical_hints(style_text or "")
        genres = _match_vocab(text, _GENRES)
        moods = _match_vocab(text, _MOODS) or _match_vocab(topic_l, _MOODS)[:2]
        instruments = _match_vocab(text, _INSTRUMENTS)
        voices = _match_vocab(text, _VOICES)
        # "female" inside "female vocals" must not also give "male vocals".
        if "female vocals" in voices and "male vocals" in voices and _find(text, "male") == _find(text, "female") + 2:
            voices.remove("male vocals")
        h = _h("tags", text, topic_l)

        if not genres:
            if any(m in moods for m in ("calm", "dreamy")):
                genres = ["ambient"] if instrumental else ["dream pop"]
            elif "chill" in moods:
                genres = ["lo-fi hip hop"]
            elif any(m in moods for m in ("sad", "melancholic", "lonely")):
                genres = ["ballad"] if h % 2 else ["indie pop"]
            elif any(m in moods for m in ("energetic", "angry", "intense")):
                genres = ["rock"]
            elif "epic" in moods:
                genres = ["cinematic"]
            elif "groovy" in moods:
                genres = ["funk"]
            else:
                genres = ["pop"]
        primary = genres[0]
        bpm_range, default_instruments, default_mood, pref_mode = _GENRE_DEFAULTS.get(
            primary, _GENRE_DEFAULTS["pop"])
        if not moods:
            moods = [default_mood]
        if not instruments:
            instruments = list(default_instruments)
        if instrumental:
            voices = []
        elif not voices:
            voices = ["female vocals" if h % 2 else "male vocals"]

        bpm = hints["bpm"]
        if bpm is None:
            lo, hi = bpm_range
            pos = ((h >> 4) % 1000) / 1000.0
            if any(m in _SLOW_MOODS for m in moods):
                pos *= 0.5
            elif any(m in _FAST_MOODS for m in moods):
                pos = 0.5 + pos * 0.5
            bpm = int(round(lo + pos * (hi - lo)))
        key = hints["key"]
        if key is None:
            if any(m in _MINOR_MOODS for m in moods):
                mode = "minor"
            elif any(m in _MAJOR_MOODS for m in moods):
                mode = "major"
            else:
                mode = pref_mode or ("minor" if (h >> 9) % 2 else "major")
            total = sum(_KEY_WEIGHTS)
            r = (h >> 11) % total
            acc = 0
            note = _KEYS[0]
            for k, w in zip(_KEYS, _KEY_WEIGHTS):
                acc += w
                if r < acc:
                    note = k
                    break
            key = f"{note} {mode}"
        ts = hints["time_signature"] or "4/4"

        parts: list[str] = []
        user = keep_user_tags and bool((style_text or "").strip())
        if user:
            parts.append(style_text)  # the person's own tags come first, as typed
        for extra in genres[:3] + moods[:3] + instruments[:3] + voices[:2]:
            if user and _find(text, extra) >= 0:
                continue  # already in the person's words ("folk" inside "indie folk")
            parts.append(extra)
        if instrumental:
            parts.append("instrumental")
        parts.append(f"{bpm} bpm")
        parts.append(key)
        if ts != "4/4":
            parts.append(ts)
        tags = normalise_tags(self._dedupe_hints(parts), limit=300)
        info = {"genres": genres, "moods": moods, "instruments": instruments, "voices": voices,
                "bpm": bpm, "key": key, "time_signature": ts, "hash": h}
        return tags, info

    @staticmethod
    def _dedupe_hints(parts: list[str]) -> list[str]:
        """Drop generated tempo/key/meter tags when the person's tags already state them."""
        if not parts:
            return parts
        first = parts[0]
        hints = parse_musical_hints(first)
        out = []
        for i, p in enumerate(parts):
            if i > 0:
                if hints["bpm"] and re.fullmatch(r"\d+ bpm", p):
                    continue
                if hints["key"] and re.fullmatch(r"[A-G][#b]? (major|minor)", p):
                    continue
                if hints["time_signature"] and re.fullmatch(r"\d+/\d+", p):
                    continue
            out.append(p)
        return out

    # ------------------------------------------------------------------ lyrics

    def _lyrics(self, topic: str, info: dict) -> str:
        moods = set(info["moods"])
        if moods & {"sad", "melancholic", "lonely", "dark", "mysterious", "tense", "nostalgic"}:
            family = "dark"
        elif moods & {"calm", "chill", "dreamy"}:
            family = "calm"
        elif moods & {"energetic", "angry", "intense", "epic", "euphoric"}:
            family = "power"
        else:
            family = "bright"
        words = _Words(topic or "", family)
        h = _h("lyrics", topic)
        hook = self._hook(topic, words)

        counter = [0]

        def fill(template: str) -> str:
            i = counter[0]
            counter[0] += 2
            n, n2 = words.noun(i), words.noun(i + 1)
            if n2 == n:
                n2 = words.noun(i + 3)
            g = words.gerund(i // 2)
            p = words.subject or f"{_the(n)} and {_the(n2)}"
            values = {
                "n": n, "n2": n2, "N": n[:1].upper() + n[1:], "the_n": _the(n), "the_n2": _the(n2),
                "The_n": _the(n)[:1].upper() + _the(n)[1:], "g": g, "G": g[:1].upper() + g[1:],
                "p": p, "hook": hook, "Hook": hook[:1].upper() + hook[1:],
            }
            return _cap(template.format(**values))

        def pick(seq: tuple, k: int) -> object:
            return seq[(h >> (k % 24)) % len(seq) if k < 24 else (h + k) % len(seq)]

        verse_pairs = list(_VERSE_COUPLETS)
        start = h % len(verse_pairs)
        verse_pairs = verse_pairs[start:] + verse_pairs[:start]
        verses = []
        for v in range(2):
            lines = []
            for c in range(2):
                a, b = verse_pairs[(v * 2 + c) * 3 % len(verse_pairs)]
                lines += [fill(a), fill(b)]
            verses.append(lines)
        chorus_t = pick(_CHORUS, 3)
        counter[0] = 0  # the chorus reuses the opening images: a recognisable hook
        chorus = [fill(t) for t in chorus_t]
        counter[0] = 5
        bridge = [fill(t) for t in pick(_BRIDGE, 7)]
        intro = [fill(pick(_INTRO, 11))]
        outro = [fill(t) for t in pick(_OUTRO, 13)]

        blocks = [
            ("[intro]", intro),
            ("[verse]", verses[0]),
            ("[chorus]", chorus),
            ("[verse]", verses[1]),
            ("[chorus]", chorus),
            ("[bridge]", bridge),
            ("[chorus]", chorus),
            ("[outro]", outro),
        ]
        text = "\n\n".join(tag + "\n" + "\n".join(lines) for tag, lines in blocks)
        return normalise_lyrics(text)

    @staticmethod
    def _hook(topic: str, words: _Words) -> str:
        """A short phrase to sing in the chorus: a quoted name, the subject, a name, or images."""
        m = re.search(r"[\"“]([^\"”]{2,40})[\"”]", topic or "")
        if m:
            return m.group(1).strip()
        if words.subject:
            parts = words.subject.split()[:6]
            while len(parts) > 1 and parts[-1].lower() in ("at", "in", "on", "of", "to", "and", "the", "a", "with", "for", "by"):
                parts.pop()
            return " ".join(parts)
        if words.names:
            return words.names[0]
        n, n2 = words.noun(0), words.noun(1)
        return f"{_the(n)} and {_the(n2)}" if n2 != n else _the(n)

    # ------------------------------------------------------------------ title, categories

    def _title(self, mode: str, req: WriteRequest, lyrics: str, fallback: str) -> str:
        candidates: list[str] = []
        if mode == "description":
            candidates.append(req.description)
        elif mode == "described_lyrics":
            candidates += [req.described_lyrics]
        else:
            chorus = re.search(r"\[chorus\]\n([^\n]+)", lyrics or "")
            if chorus:
                candidates.append(chorus.group(1))
            candidates += [lyrics, req.lyrics]
        for c in candidates:
            if c and c.strip():
                t = make_title(c)
                if t and t != "New Song" and len(t) > 2:
                    return t
        return fallback

    def _fallback_title(self, topic: str, info: dict) -> str:
        """A title from the song's images when the text names nothing ("The Sun and the Sky")."""
        moods = set(info["moods"])
        family = ("dark" if moods & {"sad", "melancholic", "lonely", "dark", "mysterious"} else
                  "calm" if moods & {"calm", "chill", "dreamy"} else
                  "power" if moods & {"energetic", "angry", "intense", "epic"} else "bright")
        words = _Words(topic or "", family)
        hook = self._hook(topic, words)
        return make_title(hook) if make_title(hook) != "New Song" else "Morning Light"

    @staticmethod
    def _categories(info: dict) -> list[str]:
        names: list[str] = []
        for g in info["genres"]:
            names.append({"lo-fi hip hop": "Lo-Fi", "drum and bass": "Drum & Bass", "ballad": "Pop",
                          "smooth jazz": "Jazz", "hard rock": "Rock", "indie rock": "Rock",
                          "dream pop": "Pop", "indie pop": "Indie", "bossa nova": "Jazz"}.get(g, g))
        for m in info["moods"]:
            names.append({"happy": "Happy", "sad": "Sad", "melancholic": "Sad", "chill": "Chill",
                          "calm": "Chill", "romantic": "Love", "energetic": "Energetic",
                          "epic": "Epic", "dark": "Dark", "nostalgic": "Nostalgic",
                          "dreamy": "Dreamy", "uplifting": "Uplifting"}.get(m, ""))
        return normalise_categories([n for n in names if n], limit=3, fallback="Pop")
