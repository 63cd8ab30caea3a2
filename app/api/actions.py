"""The rest of the API: studio operations, library actions, the account and generations.

Studio operations validate and charge through the song page's own code
(`app.songs.studio.submit_operation`: the same fields, checks and costs as the forms); library
actions through `core.songs` (the same rules and messages as the page's buttons). Every view
answers only for the caller's own songs: anyone else's is a 404.
"""
from __future__ import annotations

import math

from flask import g, jsonify, request, url_for

from core import catalogue, songs
from core.errors import UserError
from core.storage import StorageUnavailable, get_storage
from models import Generation, Song

from ..extensions import settings
from ..songs import studio
from . import bp
from .serialize import generation_json, song_json, user_json
from .views import api_limit, idempotency_key, json_object, owned_song, token_required

CANCEL_MESSAGES = {"finished": "This song's generation is already finished; there was nothing to cancel.",
                   "cancelled": "Cancelled before it reached a worker; the credits are back.",
                   "stopping": "Stopping: the worker stops at its next step, then the credits come back."}


def _song_out(song: Song, status: int = 200):
    song = Song.get_by_id(song.id)
    resp = jsonify(song_json(song, Song.categories_for([song.id]).get(song.id, [])))
    resp.status_code = status
    return resp


def _reject_unknown(body, allowed) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        listed = ", ".join(sorted(allowed)) or "none"
        raise UserError(f"`{unknown[0]}` is not a field of this endpoint (fields: {listed}).", 422, unknown[0],
                        code="unknown_field")


def _empty_body() -> bool:
    return not request.get_data(cache=True).strip()


# ------------------------------------------------------------------------------ studio
def _studio_form(op: str) -> tuple[dict, object]:
    """The request as the studio's form fields (strings) and files. JSON types are checked first,
    so `"added": "ten"` or `"tags": 5` is a 422 naming the field, never a 500."""
    fields = studio.FIELDS[op]
    if request.mimetype == "multipart/form-data":
        if op != "remix":
            raise UserError("Send a JSON object with `Content-Type: application/json` (only remix takes a "
                            "multipart upload).", 400, code="invalid_body")
        form = request.form.to_dict()
        _reject_unknown(set(form) | set(request.files), fields)
        if "audio" in form:
            raise UserError("Send `audio` as a file part (e.g. curl -F audio=@song.wav).", 422, "audio")
        return form, request.files
    body = {} if _empty_body() else json_object()
    _reject_unknown(body, [f for f in fields if f != "audio"])
    form = {}
    for name, value in body.items():
        if value is None:
            continue
        if name in studio.TEXT_FIELDS:
            if not isinstance(value, str):
                raise UserError(f"`{name}` must be text.", 422, name, code="invalid")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise UserError(f"`{name}` is not valid Unicode text.", 422, name, code="invalid") from None
            form[name] = value
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    isinstance(value, float) and not math.isfinite(value)):
                raise UserError(f"`{name}` must be a number.", 422, name, code="invalid")
            form[name] = repr(value) if isinstance(value, float) else str(value)
    return form, None


def _same_operation(gen: Generation, op: str, song: Song, draft: songs.Draft) -> bool:
    keep = lambda params: {k: v for k, v in (params or {}).items() if k != "upload_key"}  # noqa: E731
    source = None if draft.upload is not None else song.id
    return (gen.operation == op and gen.source_song_id == source and gen.variants == draft.variants
            and keep(gen.params) == keep(draft.params))


def _studio(song_id: str, op: str):
    song = owned_song(song_id)
    form, files = _studio_form(op)
    key = idempotency_key()
    if key:
        form["idempotency_key"] = key
    else:
        form.pop("idempotency_key", None)
    cfg = settings()
    gen, created, draft = studio.submit_operation(g.api_user, op, song, form, files, cfg, source="api")
    if not created and not _same_operation(gen, op, song, draft):
        raise UserError("This Idempotency-Key was already used for a different request.", 409, "Idempotency-Key",
                        code="idempotency_key_reused")
    rows = Song.select(Song.id, Song.status).where(Song.generation == gen.id).order_by(Song.variant)
    resp = jsonify({"generation_id": gen.id, "songs": [{"id": s.id, "status": s.status} for s in rows]})
    resp.status_code = 202
    resp.headers["Location"] = url_for("api.get_generation", generation_id=gen.id)
    if not created:
        resp.headers["Idempotent-Replayed"] = "true"
    return resp


def _studio_view(op: str):
    def view(song_id):
        return _studio(song_id, op)

    view.__name__ = f"studio_{op}"
    return view


for _op in catalogue.STUDIO_OPERATIONS:
    bp.add_url_rule(f"/songs/<song_id>/{_op}", f"studio_{_op}", api_limit(token_required(_studio_view(_op))),
                    methods=["POST"])


# ------------------------------------------------------------------------------ library actions
@bp.post("/songs/<song_id>/publish")
@api_limit
@token_required
def publish_song(song_id):
    song = owned_song(song_id)
    songs.publish(song)
    return _song_out(song)


@bp.post("/songs/<song_id>/unpublish")
@api_limit
@token_required
def unpublish_song(song_id):
    song = owned_song(song_id)
    song.unpublish()
    return _song_out(song)


@bp.post("/songs/<song_id>/cancel")
@api_limit
@token_required
def cancel_song(song_id):
    song = owned_song(song_id)
    outcome = songs.cancel(settings(), song.generation)
    song = Song.get_by_id(song.id)
    resp = jsonify({"outcome": outcome, "message": CANCEL_MESSAGES[outcome],
                    "song": song_json(song, Song.categories_for([song.id]).get(song.id, []))})
    resp.status_code = 202 if outcome == "stopping" else 200
    return resp


@bp.patch("/songs/<song_id>")
@api_limit
@token_required
def update_song(song_id):
    song = owned_song(song_id)
    body = json_object()
    _reject_unknown(body, ["title"])
    if "title" not in body:
        raise UserError("Send the new `title`.", 422, "title", code="invalid")
    if not isinstance(body["title"], str):
        raise UserError("`title` must be text.", 422, "title", code="invalid")
    try:
        body["title"].encode("utf-8")
    except UnicodeEncodeError:
        raise UserError("`title` is not valid Unicode text.", 422, "title", code="invalid") from None
    songs.rename(song, body["title"])
    return _song_out(song)


@bp.delete("/songs/<song_id>")
@api_limit
@token_required
def delete_song(song_id):
    song = owned_song(song_id)
    try:
        songs.delete_song(song, get_storage(settings()))
    except StorageUnavailable:
        raise UserError("The file store did not answer, so nothing was deleted. Try again in a moment.", 503,
                        code="unavailable") from None
    return "", 204


# ------------------------------------------------------------------------------ account, generations
@bp.get("/me")
@api_limit
@token_required
def me():
    return jsonify(user_json(g.api_user))


def owned_generation(generation_id: str) -> Generation:
    gen = (Generation.get_or_none((Generation.id == generation_id) & (Generation.user == g.api_user.id))
           if len(generation_id) <= 32 else None)
    if gen is None:
        raise UserError("There is no generation with this id in your library.", 404, "generation_id",
                        code="not_found")
    return gen


@bp.get("/generations/<generation_id>")
@api_limit
@token_required
def get_generation(generation_id):
    gen = owned_generation(generation_id)
    rows = list(Song.select().where(Song.generation == gen.id).order_by(Song.variant))
    return jsonify(generation_json(gen, rows, Song.categories_for([s.id for s in rows])))
