"""Studio tools on a song: retake, extend, repaint, remix (cover) and stems, and the stem files.

Each operation is validated here into a `core.songs.Draft` (bad input: 422 with the field,
nothing written, nothing charged) and submitted through `core.songs.submit`, like the Create
form: one Generation (operation, source_song_id, params) with its Songs (parent = the source)
and one credit per song reserved in the same transaction; the job then settles each song once. Owner only: any
other person gets 404. HTMX posts get the studio panel back on errors and an HX-Redirect to the
new song on success; plain posts get the page with a 4xx, or a 303 to the new song.
"""
from __future__ import annotations

import io
import logging
import math
import zipfile

from flask import Response, abort, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user

from core import catalogue, songs
from core.errors import UserError
from core.storage import content_disposition, get_storage, with_retries
from models import Generation, Song

from ..create.service import style_fields
from ..extensions import htmx, settings
from . import bp, get_owned_song_or_404

log = logging.getLogger("tunesmith.studio")

UPLOAD_MAX_BYTES = 20 * 1024 * 1024
UPLOAD_MAX_SECONDS = 600.0
UPLOAD_FORMATS = {"WAV": "wav", "MP3": "mp3", "FLAC": "flac"}
EXTEND_MIN, EXTEND_MAX = 10, 120
MAX_SECONDS = 600.0  # the longest song a studio tool may make
MIN_SECTION = 1.0
TAGS_MAX, LYRICS_MAX = 300, 5000  # characters of a studio tool's style tags and lyrics
# The fields each operation reads (the song page's forms and the JSON API alike; `audio` is a file).
STYLE_FIELDS = ("style_id", "style_weight")  # every tool that renders music takes a trained style
FIELDS = {"retake": ("variants", "seed", *STYLE_FIELDS), "extend": ("variants", "added", "from", "lyrics", *STYLE_FIELDS),
          "repaint": ("variants", "start", "end", "tags", "lyrics", *STYLE_FIELDS),
          "remix": ("variants", "tags", "strength", "audio", *STYLE_FIELDS), "stems": ()}
TEXT_FIELDS = {"tags", "lyrics", "style_id"}


# ---------------------------------------------------------------------------- validation
def _number(form, name: str, label: str, low: float, high: float, default=None, whole: bool = False):
    raw = (form.get(name) or "").strip()
    if raw == "":
        if default is None:
            raise UserError(f"Enter {label}.", field=name)
        return default
    try:
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError
    except ValueError:
        raise UserError(f"{label[0].upper() + label[1:]} must be a number.", field=name)
    if whole:
        if not value.is_integer():
            raise UserError(f"{label[0].upper() + label[1:]} must be a whole number.", field=name)
        value = int(value)
    if not low <= value <= high:
        raise UserError(f"{label[0].upper() + label[1:]} must be from {low:g} to {high:g}.", field=name)
    return value


def _text(form, name: str, label: str, limit: int) -> str:
    value = (form.get(name) or "").replace("\r\n", "\n").replace("\x00", "").strip()
    if len(value) > limit:
        raise UserError(f"{label} is {len(value):,} characters; the limit is {limit:,}.", field=name)
    return value


def inspect_upload(data: bytes) -> tuple[str, float]:
    """(extension, seconds) of an uploaded audio file, checked by decoding it, not by its name."""
    import soundfile as sf

    if len(data) > UPLOAD_MAX_BYTES:
        raise UserError(f"The file is {len(data) / 1e6:.1f} MB; the limit is 20 MB.", 413, "audio")
    if not data:
        raise UserError("The file is empty.", field="audio")
    try:
        info = sf.info(io.BytesIO(data))
        fmt = UPLOAD_FORMATS.get(info.format)
        if fmt is None:
            raise ValueError(info.format)
        frames = info.frames
        if frames <= 0 or frames > 2**40:  # some MP3s have no frame count: decode to measure
            samples, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
            frames = samples.shape[0]
        seconds = frames / float(info.samplerate)
        with sf.SoundFile(io.BytesIO(data)) as f:  # the audio itself decodes, not only the header
            f.read(min(f.frames if f.frames > 0 else 4096, 4096), dtype="float32")
    except Exception:
        raise UserError("That file is not audio we can read. Upload a WAV, MP3 or FLAC file.", 415, "audio")
    if seconds < 1.0:
        raise UserError("The audio is shorter than one second.", field="audio")
    if seconds > UPLOAD_MAX_SECONDS:
        raise UserError(f"The audio is {seconds / 60:.1f} minutes long; the limit is 10 minutes.", field="audio")
    return fmt, seconds


def parse_operation(op: str, song: Song, form, files, config) -> songs.Draft:
    """The studio operation `op` on `song` as a Draft to submit, or UserError."""
    if op not in catalogue.STUDIO_OPERATIONS:
        abort(404)
    if song.status != "processed" or not song.audio_key:
        raise UserError("Only a finished song can be used in the studio.", 409, code="not_finished")
    length = float(song.duration or 0)
    variants = 1 if op == "stems" else _number(form, "variants", "the number of variants", 1,
                                                config.MAX_VARIANTS, 1, whole=True)
    params: dict = {}
    upload = None
    duration = length
    if op == "retake":
        seed = _number(form, "seed", "the seed", 0, 2**31 - 2, -1, whole=True)
        if seed >= 0:
            params["seed"] = seed
    elif op == "extend":
        added = _number(form, "added", "the seconds to add", EXTEND_MIN, EXTEND_MAX)
        start = _number(form, "from", "the point to continue from", 1, length, length)
        if start + added > MAX_SECONDS:
            raise UserError(f"The extended song would be {start + added:.0f} s; the limit is "
                              f"{MAX_SECONDS:.0f} s.", field="added")
        lyrics = _text(form, "lyrics", "Lyrics", LYRICS_MAX)
        params.update(added=added, **({"from": start} if start < length else {}))
        if lyrics:
            params["lyrics"] = lyrics
        duration = start + added
    elif op == "repaint":
        start = _number(form, "start", "the section's start", 0, 1e9)
        end = _number(form, "end", "the section's end", 0, 1e9)
        if end <= start:
            raise UserError("The section must end after it starts.", field="end")
        if end > length + 1e-6:
            raise UserError(f"The section ends at {end:g} s, after the song ends ({length:.1f} s).", field="end")
        if start >= length:
            raise UserError(f"The section starts at {start:g} s, after the song ends ({length:.1f} s).", field="start")
        if end - start < MIN_SECTION:
            raise UserError(f"Choose a section of at least {MIN_SECTION:g} second.", field="end")
        params.update(start=start, end=end)
        for name, label, limit in (("tags", "Style tags", TAGS_MAX), ("lyrics", "Lyrics", LYRICS_MAX)):
            value = _text(form, name, label, limit)
            if value:
                params[name] = value
    elif op == "remix":
        tags = _text(form, "tags", "Style tags", TAGS_MAX)
        if not tags:
            raise UserError("Describe the new style, e.g. “jazz, upright bass, brushed drums”.", field="tags")
        strength = _number(form, "strength", "the strength", 0, 100, 50) / 100.0
        params.update(tags=tags, strength=round(strength, 3))
        file = files.get("audio") if files else None
        if file is not None and file.filename:
            upload = file.read(UPLOAD_MAX_BYTES + 1)
            ext, duration = inspect_upload(upload)
            params.update(upload_ext=ext, upload_name=(file.filename.rsplit("/", 1)[-1].rsplit(".", 1)[0] or
                                                       "Uploaded audio")[:80])
    key = _text(form, "idempotency_key", "The idempotency key", 100) or None
    draft = songs.Draft(
        mode=song.generation.mode, operation=op, parent=song, params=params, upload=upload,
        prompt=params.get("tags") or song.tags, lyrics=params.get("lyrics") or song.lyrics,
        instrumental=song.instrumental, duration=max(1, int(round(duration))), song_duration=float(duration),
        variants=int(variants), idempotency_key=key)
    if op != "stems":  # every tool that renders music can render it in a trained style
        style_fields(form, draft)
        if draft.errors:
            name, message = next(iter(draft.errors.items()))
            raise UserError(message, 422, field=name)
    return draft


def submit_operation(user, op: str, song: Song, form, files, config, source: str = "studio"):
    """Validate the studio operation `op` on `song` and submit it (credits reserved, queued):
    (generation, created, draft). The song page's forms and the JSON API both come here."""
    draft = parse_operation(op, song, form, files, config)
    gen, created = songs.submit(user, draft, config, source=source)
    return gen, created, draft


# ---------------------------------------------------------------------------- lineage
@bp.app_template_global("studio_lineage")
def lineage(song: Song, viewer) -> dict:
    """The song's parent (when the viewer may see it), how it was made from it, and its
    children the viewer may see."""
    gen = song.generation
    parent = song.parent if song.parent_id else None
    if parent is not None and not parent.visible_to(viewer):
        parent = None
    children = [c for c in Song.select(Song, Generation).join(Generation)
                .where(Song.parent == song.id).order_by(Song.created_at.desc(), Song.variant).limit(50)
                if c.visible_to(viewer)]
    stems_song = next((c for c in children if c.generation.operation == "stems" and c.status == "processed"), None)
    if gen.operation == "stems" and song.status == "processed":
        stems_song = song
    return {"operation": gen.operation, "params": {k: v for k, v in (gen.params or {}).items()
                                                   if k not in ("upload_key", "upload_ext")},
            "parent": parent, "children": children, "stems_song": stems_song,
            "stem_names": stem_names(stems_song) if stems_song is not None else []}


# ---------------------------------------------------------------------------- views
def _panel(song: Song, status: int, **extra):
    from .pages import _page_context

    if htmx:
        resp = make_response(render_template("songs/_studio.html", song=song, studio=lineage(song, current_user),
                                             **extra), status)
    else:
        ctx = _page_context(song)
        ctx.update(extra)
        resp = make_response(render_template("songs/page.html", **ctx), status)
    return resp


@bp.route(f"/songs/<song_id>/<any({', '.join(catalogue.STUDIO_OPERATIONS)}):op>", methods=["POST"])
def studio_operation(song_id, op):
    song = get_owned_song_or_404(song_id)
    cfg = settings()
    try:
        gen, _, _ = submit_operation(current_user, op, song, request.form, request.files, cfg)
    except UserError as exc:
        return _panel(song, exc.status, studio_error=exc.message, studio_field=exc.field, studio_op=op,
                      studio_form=request.form)
    first = Song.select().where(Song.generation == gen.id).order_by(Song.variant).first()
    target = url_for("songs.page", song_id=first.id)
    n = gen.variants
    flash(f"{catalogue.operation(op).made_as} started: {n} credit{'s' if n != 1 else ''} reserved.", "success")
    if htmx:
        resp = make_response("", 200)
        resp.headers["HX-Redirect"] = target
        return resp
    return redirect(target, 303)


def stem_names(stems: Song) -> list[str]:
    """The stems a stems song has, in order: the names its job stored in the generation's params
    ("stems": a six-source Demucs adds guitar and piano), else the catalogue's four."""
    names = (stems.generation.params or {}).get("stems") or catalogue.STEMS
    return [n for n in names if isinstance(n, str) and n.isidentifier()]  # they name files and URLs


def _stems_song_or_404(song: Song) -> Song:
    if song.generation.operation == "stems":
        stems = song
    else:
        stems = (Song.select().join(Generation).where((Song.parent == song.id) & (Generation.operation == "stems") &
                                                      (Song.status == "processed") & (Song.user == song.user_id))
                 .order_by(Song.created_at.desc()).first())
    if stems is None or stems.status != "processed":
        abort(404)
    return stems


@bp.route("/songs/<song_id>/stems/<name>")
def stem(song_id, name):
    from .media import _redirect, signed_url

    song = get_owned_song_or_404(song_id)
    if name.endswith(".wav"):
        name = name[:-4]
    stems = _stems_song_or_404(song)
    if name not in stem_names(stems):
        abort(404)
    base = (song.title or "Untitled")
    return _redirect(signed_url(catalogue.stem_key(stems.user_id, stems.id, name, stems.attempt), f"{base[:70]} - {name}.wav"),
                     cache=False)


class _Sink(io.RawIOBase):
    """A write-only stream that hands out what was written (for a streamed zip)."""

    def __init__(self):
        self.chunks: list[bytes] = []

    def writable(self):
        return True

    def write(self, b):
        self.chunks.append(bytes(b))
        return len(b)

    def take(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks.clear()
        return out


@bp.route("/songs/<song_id>/stems.zip")
def stems_zip(song_id):
    song = get_owned_song_or_404(song_id)
    stems = _stems_song_or_404(song)
    storage = get_storage(settings())
    base = " ".join("".join(ch if ch.isalnum() or ch in " -_()" else " " for ch in (song.title or "Untitled")).split())
    base = base[:70] or "Untitled"
    keys = [(name, catalogue.stem_key(stems.user_id, stems.id, name, stems.attempt)) for name in stem_names(stems)]
    try:
        first = with_retries(lambda: storage.get(keys[0][1]))
    except Exception:
        abort(404)

    def generate():
        sink = _Sink()
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as zf:
            for i, (name, key) in enumerate(keys):
                data = first if i == 0 else with_retries(lambda: storage.get(key))
                with zf.open(f"{base} - {name}.wav", "w", force_zip64=True) as entry:
                    for pos in range(0, len(data), 1 << 20):
                        entry.write(data[pos:pos + (1 << 20)])
                        chunk = sink.take()
                        if chunk:
                            yield chunk
        yield sink.take()

    resp = Response(generate(), mimetype="application/zip")
    resp.headers["Content-Disposition"] = content_disposition(f"{base} (stems).zip")
    resp.headers["Cache-Control"] = "private, no-store"
    return resp
