"""API views: read the request, call core.songs or the models, answer JSON. Errors are
`core.errors.UserError`, turned into `{error: {code, message, field}}` by the blueprint's
handler (the API's thin JSON adapter)."""
from __future__ import annotations

import json
import math
from functools import wraps

from flask import g, jsonify, request, url_for

from core import songs
from core.errors import UserError
from models import Generation, Song

from ..create import service
from ..extensions import limiter, settings
from . import bp, openapi, paging, tokens
from .serialize import song_json

MAX_BODY = 256 * 1024

# endpoint -> (mode, {JSON field: Create service field})
COMMON = {"duration": "duration", "instrumental": "instrumental", "variants": "variants", "language": "language",
          "style_id": "style_id", "style_weight": "style_weight"}
ENDPOINTS = {
    "generate_from_description": ("description", {"description": "description", **COMMON}),
    "generate_with_lyrics": ("lyrics", {"prompt": "prompt", "lyrics": "lyrics", **COMMON}),
    "generate_from_described_lyrics": ("described_lyrics",
                                       {"description": "described_lyrics", "prompt": "prompt", **COMMON}),
}
INT_FIELDS = {"duration", "variants"}
BOOL_FIELDS = {"instrumental"}
NUMBER_FIELDS = {"style_weight"}


@bp.errorhandler(UserError)
def _api_error(err: UserError):
    resp = jsonify(err.as_json())
    resp.status_code = err.status
    if err.status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="tunesmith"' + (
            ', error="invalid_token"' if err.code == "invalid_token" else "")
    return resp


@bp.after_request
def _no_store(response):
    response.headers.setdefault("Cache-Control", "no-store")  # bodies carry short-lived signed URLs
    return response


# ------------------------------------------------------------------------------ auth & limits
def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def rate_key() -> str:
    """Per-token rate-limit key (the token's hash, never the token); per address without one."""
    raw = bearer_token()
    return "api-token:" + tokens.hash_token(raw)[:32] if raw else "api-ip:" + (request.remote_addr or "?")


api_limit = limiter.shared_limit(lambda: settings().API_RATE_LIMIT, scope="api", key_func=rate_key)


def token_required(view):
    @wraps(view)
    def wrapper(*args, **kwargs):
        raw = bearer_token()
        if raw is None:
            raise UserError("Send an API token as `Authorization: Bearer <token>` "
                            "(make one under Settings → API tokens).", 401, code="unauthorized")
        token = tokens.authenticate(raw)
        if token is None:
            raise UserError("This API token is not valid or has been revoked.", 401, code="invalid_token")
        g.api_token, g.api_user = token, token.user
        return view(*args, **kwargs)

    return wrapper


# ------------------------------------------------------------------------------ input
def json_object() -> dict:
    if request.mimetype and request.mimetype != "application/json" and not request.mimetype.endswith("+json"):
        raise UserError("Send a JSON object with `Content-Type: application/json`.", 400, code="invalid_body")
    if (request.content_length or 0) > MAX_BODY:
        raise UserError(f"The request body is over {MAX_BODY // 1024} KiB.", 413, code="too_large")
    raw = request.get_data(cache=True)
    if len(raw) > MAX_BODY:
        raise UserError(f"The request body is over {MAX_BODY // 1024} KiB.", 413, code="too_large")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise UserError("The request body is not valid JSON.", 400, code="invalid_json") from None
    if not isinstance(data, dict):
        raise UserError("The request body must be a JSON object.", 400, code="invalid_body")
    return data


def _typed(name: str, value):
    """JSON types are checked here, before the shared validation, so `"duration": "abc"` or
    `"description": 5` is a 422 naming the field, never a 500."""
    if value is None:
        return None
    if name in INT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(value, float) and (not math.isfinite(value) or not value.is_integer())):
            raise UserError(f"`{name}` must be a whole number.", 422, name, code="invalid")
        return int(value)
    if name in NUMBER_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"`{name}` must be a number.", 422, name, code="invalid")
        return value
    if name in BOOL_FIELDS:
        if not isinstance(value, bool):
            raise UserError(f"`{name}` must be true or false.", 422, name, code="invalid")
        return value
    if not isinstance(value, str):
        raise UserError(f"`{name}` must be text.", 422, name, code="invalid")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"`{name}` is not valid Unicode text.", 422, name, code="invalid") from None
    return value


def idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > 100 or not all(33 <= ord(ch) <= 126 for ch in key):
        raise UserError("`Idempotency-Key` must be 1 to 100 visible ASCII characters, e.g. a UUID.", 400,
                        "Idempotency-Key", code="invalid_header")
    return key


def _key_reused() -> UserError:
    return UserError("This Idempotency-Key was already used for a different request.", 409, "Idempotency-Key",
                     code="idempotency_key_reused")


def _same_request(gen: Generation, req: songs.Draft) -> bool:
    return all(getattr(gen, f) == getattr(req, f) for f in
               ("mode", "description", "prompt", "lyrics", "described_lyrics", "instrumental", "duration", "variants"))


# ------------------------------------------------------------------------------ generate
def _generate(endpoint: str):
    mode, fields = ENDPOINTS[endpoint]
    body = json_object()
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise UserError(f"`{unknown[0]}` is not a field of this endpoint (fields: {', '.join(sorted(fields))}).",
                        422, unknown[0], code="unknown_field")
    data = {"mode": mode}
    for name, target in fields.items():
        value = _typed(name, body.get(name))
        if value is not None:
            data[target] = value
    key = idempotency_key()
    data["idempotency_key"] = key
    cfg = settings()
    req = service.parse(data, cfg)
    if req.errors:
        public = {v: k for k, v in fields.items()}
        errors = {public.get(k, k): msg for k, msg in req.errors.items()}
        name, message = next(iter(errors.items()))
        raise UserError(message, 422, name, code="invalid", **({"fields": errors} if len(errors) > 1 else {}))
    user = g.api_user
    if key:
        seen = Generation.get_or_none((Generation.user == user.id) & (Generation.idempotency_key == key))
        if seen is not None and not _same_request(seen, req):
            raise _key_reused()
    try:
        gen, created = songs.submit(user, req, cfg, source="api")
    except UserError as exc:
        exc.field = {v: k for k, v in fields.items()}.get(exc.field, exc.field) if exc.field else None
        raise
    if not created and not _same_request(gen, req):
        raise _key_reused()
    rows = Song.select(Song.id, Song.status).where(Song.generation == gen.id).order_by(Song.variant)
    resp = jsonify({"generation_id": gen.id, "songs": [{"id": s.id, "status": s.status} for s in rows]})
    resp.status_code = 202
    resp.headers["Location"] = url_for("api.list_songs", generation_id=gen.id)
    if not created:
        resp.headers["Idempotent-Replayed"] = "true"
    return resp


@bp.post("/generate_from_description")
@api_limit
@token_required
def generate_from_description():
    return _generate("generate_from_description")


@bp.post("/generate_with_lyrics")
@api_limit
@token_required
def generate_with_lyrics():
    return _generate("generate_with_lyrics")


@bp.post("/generate_from_described_lyrics")
@api_limit
@token_required
def generate_from_described_lyrics():
    return _generate("generate_from_described_lyrics")


# ------------------------------------------------------------------------------ read
def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9 or not low <= int(raw) <= high:
        raise UserError(f"`{name}` must be a whole number from {low} to {high}.", 400, name,
                        code="invalid_parameter")
    return int(raw)


@bp.get("/songs")
@api_limit
@token_required
def list_songs():
    if request.args.get("page") is not None:
        raise UserError("`page` is not supported: pages are cursors. Pass the `next_cursor` of the previous "
                        "answer as `cursor`.", 400, "page", code="invalid_parameter")
    limit = _int_arg("limit", paging.LIMIT_DEFAULT, 1, paging.LIMIT_MAX)
    query = Song.select().where(Song.user == g.api_user.id)
    generation_id = request.args.get("generation_id")
    if generation_id is not None:
        if len(generation_id) > 32:
            raise UserError("`generation_id` is at most 32 characters.", 400, "generation_id",
                            code="invalid_parameter")
        query = query.where(Song.generation == generation_id)
    status = request.args.get("status")
    if status is not None:
        if status not in Song.STATUSES:
            raise UserError(f"`status` must be one of: {', '.join(Song.STATUSES)}.", 400, "status",
                            code="invalid_parameter")
        query = query.where(Song.status == status)
    rows, next_cursor = paging.page(query, Song, request.args.get("cursor"), limit)
    categories = Song.categories_for([s.id for s in rows])
    return jsonify({"songs": [song_json(s, categories.get(s.id, [])) for s in rows],
                    "limit": limit, "next_cursor": next_cursor})


def owned_song(song_id: str) -> Song:
    """The caller's song, or 404 (another person's song is "not found" too: its existence is
    not revealed)."""
    song = Song.get_or_none((Song.id == song_id) & (Song.user == g.api_user.id)) if len(song_id) <= 32 else None
    if song is None:
        raise UserError("There is no song with this id in your library.", 404, "song_id", code="not_found")
    return song


@bp.get("/songs/<song_id>")
@api_limit
@token_required
def get_song(song_id):
    song = owned_song(song_id)
    return jsonify(song_json(song, Song.categories_for([song.id]).get(song.id, [])))


@bp.get("/openapi.json")
def openapi_document():
    resp = jsonify(openapi.build(settings()))
    resp.headers["Cache-Control"] = "public, max-age=300"
    return resp
