"""The OpenAPI 3.1 document of /api/v1, built from the same limits the API enforces (text lengths
from the Create service, duration and variant ranges from the settings), so it cannot drift from
what the API accepts."""
from __future__ import annotations

from core import catalogue, styles

from ..create.service import LIMITS
from . import paging
from .openapi_more import SONG_ID, more_paths, more_schemas, song_item_ops

VERSION = "1.0.0"


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _text(max_length: int, description: str, example: str | None = None) -> dict:
    schema = {"type": "string", "maxLength": max_length, "description": description}
    if example:
        schema["examples"] = [example]
    return schema


def _generate_op(op_id: str, summary: str, body_schema: str, example: dict) -> dict:
    return {"post": {
        "operationId": op_id,
        "summary": summary,
        "description": "Validates and charges exactly like the Create form: one credit per variant, "
                       "reserved now and given back if a variant fails. Poll `GET /songs/{song_id}` "
                       "(or `GET /songs?generation_id=...`) until `status` is `processed` or `failed`.",
        "tags": ["generate"],
        "parameters": [{"$ref": "#/components/parameters/IdempotencyKey"}],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{body_schema}"}, "example": example}}},
        "responses": {
            "202": {"description": "Accepted: the songs are queued. A retry with the same `Idempotency-Key` "
                                   "answers the same body with `Idempotent-Replayed: true`.",
                    "headers": {"Location": {"description": "The songs of this generation",
                                             "schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}},
            "400": _error("The body is not a JSON object, or a header is malformed."),
            "401": _error("No token, or the token is unknown or revoked."),
            "402": _error("Not enough credits (`code: insufficient_credits`)."),
            "403": _error("The account is suspended (`code: suspended`) or its email address is not confirmed "
                          "yet (`code: email_unverified`)."),
            "404": _error("`style_id` names no style you may use (`code: style_not_found`)."),
            "409": _error("The `Idempotency-Key` was used before for a different request, or the style is not "
                          "ready yet (`code: style_not_ready`)."),
            "413": _error("The body is too large."),
            "422": _error("A field is missing or invalid; `field` names it."),
            "429": _error("Too many requests for this token; wait and retry."),
        },
    }}


def build(config) -> dict:
    lo, hi = config.MIN_DURATION, config.MAX_DURATION
    common = {
        "duration": {"type": "integer", "minimum": lo, "maximum": hi, "default": config.DEFAULT_DURATION,
                     "description": "Length of each song in seconds."},
        "variants": {"type": "integer", "minimum": 1, "maximum": config.MAX_VARIANTS,
                     "default": config.DEFAULT_VARIANTS,
                     "description": "How many versions to make (one credit each)."},
        "instrumental": {"type": "boolean", "default": False, "description": "No vocals."},
        "language": {"type": "string", "enum": ["auto", *sorted(catalogue.LANGUAGES)], "default": "auto",
                     "description": "The language the lyrics are sung in (ISO 639-1; yue: Cantonese). auto: "
                                    "the writer's, else the language of your own words."},
        "style_id": {"type": "string", "maxLength": 32,
                     "description": "A ready style to render with: one of yours, or one someone published."},
        "style_weight": {"type": "number", "minimum": styles.WEIGHT_MIN, "maximum": styles.WEIGHT_MAX,
                         "default": styles.WEIGHT_DEFAULT, "description": "How strongly the style applies."},
    }
    nullable_string = {"type": ["string", "null"]}
    song_status = {"type": "string", "enum": ["queued", "processing", "processed", "failed"]}
    song = {
        "type": "object",
        "required": ["id", "generation_id", "status", "stage", "progress", "title", "tags", "lyrics",
                     "categories", "audio_url", "download_url", "cover_url"],
        "properties": {
            "id": {"type": "string"},
            "generation_id": {"type": "string"},
            "status": {"type": "string", "enum": ["queued", "processing", "processed", "failed"]},
            "stage": {"type": "string", "description": "queued, writing, composing, painting, encoding, "
                                                       "uploading, done or failed"},
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "error": {**nullable_string, "description": "Why the song failed."},
            "title": {"type": "string"},
            "tags": {"type": "string", "description": "Style tags the song was rendered with."},
            "lyrics": {"type": "string"},
            "categories": {"type": "array", "items": {"type": "string"}},
            "instrumental": {"type": "boolean"},
            "language": {**nullable_string, "description": "ISO 639-1 code the song is sung in, or unknown."},
            "seed": {"type": ["integer", "null"]},
            "guidance": {"type": ["number", "null"]},
            "steps": {"type": ["integer", "null"]},
            "duration": {"type": ["number", "null"], "description": "Seconds."},
            "engine": {"type": "string"},
            "offline": {"type": "boolean", "description": "Made by the offline (CPU) engines."},
            "published": {"type": "boolean"},
            "like_count": {"type": "integer"},
            "listen_count": {"type": "integer"},
            "created_at": {**nullable_string, "format": "date-time"},
            "updated_at": {**nullable_string, "format": "date-time"},
            "finished_at": {**nullable_string, "format": "date-time"},
            "audio_url": {**nullable_string, "description": "Short-lived URL of the playable audio."},
            "download_url": {**nullable_string, "description": "Short-lived URL of the WAV master."},
            "cover_url": {**nullable_string, "description": "Short-lived URL of the cover (PNG)."},
            "urls_expire_in": {"type": ["integer", "null"], "description": "Seconds the URLs stay valid."},
            "style_id": {**nullable_string, "description": "The style it was made with (null: none, or deleted)."},
            "style_hash": {**nullable_string, "description": "The sha256 of that style's adapter."},
        },
    }
    cursor_params = [
        {"name": "cursor", "in": "query", "description": "The `next_cursor` of the previous page (opaque).",
         "schema": {"type": "string", "maxLength": paging.CURSOR_MAX}},
        {"name": "limit", "in": "query", "description": "How many songs a page holds.",
         "schema": {"type": "integer", "minimum": 1, "maximum": paging.LIMIT_MAX, "default": paging.LIMIT_DEFAULT}},
    ]
    read_errors = {"401": _error("No token, or the token is unknown or revoked."),
                   "429": _error("Too many requests for this token; wait and retry.")}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tunesmith API", "version": VERSION,
                 "description": "Make songs from a description or your lyrics and fetch them. Authenticate "
                                "with a token from Settings → API tokens: `Authorization: Bearer <token>`. "
                                "Errors are `{\"error\": {\"code\", \"message\", \"field\"}}`."},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearerAuth": []}],
        "paths": {
            "/generate_from_description": _generate_op(
                "generateFromDescription", "Make songs from a description", "GenerateFromDescription",
                {"description": "a dreamy synthwave track about neon city nights", "duration": 60}),
            "/generate_with_lyrics": _generate_op(
                "generateWithLyrics", "Make songs from your lyrics and style tags", "GenerateWithLyrics",
                {"prompt": "acoustic folk, 90 bpm, male vocals", "lyrics": "[verse]\nThe river knows my name"}),
            "/generate_from_described_lyrics": _generate_op(
                "generateFromDescribedLyrics", "Make songs whose lyrics are written from a description",
                "GenerateFromDescribedLyrics",
                {"description": "two friends meeting after years", "prompt": "rock, energetic, 140 bpm"}),
            "/songs": {"get": {
                "operationId": "listSongs", "summary": "Your songs, newest first", "tags": ["songs"],
                "description": "Cursor pagination: pass the answer's `next_cursor` as `cursor` for the next "
                               "page, with the same filters; `next_cursor` is null on the last page.",
                "parameters": [
                    *cursor_params,
                    {"name": "generation_id", "in": "query", "schema": {"type": "string", "maxLength": 32}},
                    {"name": "status", "in": "query",
                     "schema": {"type": "string", "enum": ["queued", "processing", "processed", "failed"]}},
                ],
                "responses": {
                    "200": {"description": "One page of songs",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SongPage"}}}},
                    "400": _error("A query parameter is invalid; `field` names it."),
                    **read_errors,
                },
            }},
            "/songs/{song_id}": {"get": {
                "operationId": "getSong", "summary": "One of your songs: status, progress, URLs", "tags": ["songs"],
                "parameters": [SONG_ID],
                "responses": {
                    "200": {"description": "The song",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Song"}}}},
                    "404": _error("No such song in your library."),
                    **read_errors,
                },
            }, **song_item_ops()},
            **more_paths(config),
            "/openapi.json": {"get": {
                "operationId": "openapi", "summary": "This document", "tags": ["meta"], "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1 document",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}},
            }},
        },
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "An API token (`ts_...`) from Settings → API tokens."}},
            "parameters": {"IdempotencyKey": {
                "name": "Idempotency-Key", "in": "header", "required": False,
                "description": "Makes a retried POST safe: the same key with the same body creates nothing new "
                               "and answers the first result; with a different body it is a 409.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": "^[!-~]+$"}}},
            "schemas": {
                "GenerateFromDescription": {
                    "type": "object", "additionalProperties": False, "required": ["description"],
                    "properties": {"description": _text(LIMITS["description"], "What the song is like.",
                                                        "an upbeat pop anthem about a summer road trip"),
                                   **common}},
                "GenerateWithLyrics": {
                    "type": "object", "additionalProperties": False, "required": ["prompt"],
                    "description": "`lyrics` is required unless `instrumental` is true.",
                    "properties": {"prompt": _text(LIMITS["prompt"], "Style tags.", "synthwave, 110 bpm"),
                                   "lyrics": _text(LIMITS["lyrics"], "Your lyrics; [verse]/[chorus] sections help."),
                                   **common}},
                "GenerateFromDescribedLyrics": {
                    "type": "object", "additionalProperties": False, "required": ["prompt"],
                    "description": "`description` is required unless `instrumental` is true.",
                    "properties": {"description": _text(LIMITS["described_lyrics"], "What the lyrics are about."),
                                   "prompt": _text(LIMITS["prompt"], "Style tags.", "rock, energetic"),
                                   **common}},
                "Accepted": {
                    "type": "object", "required": ["generation_id", "songs"],
                    "properties": {
                        "generation_id": {"type": "string"},
                        "songs": {"type": "array", "items": {
                            "type": "object", "required": ["id", "status"],
                            "properties": {"id": {"type": "string"},
                                           "status": {"type": "string",
                                                      "enum": ["queued", "processing", "processed", "failed"]}}}},
                    }},
                "Song": song,
                "SongPage": {
                    "type": "object", "required": ["songs", "limit", "next_cursor"],
                    "properties": {"songs": {"type": "array", "items": {"$ref": "#/components/schemas/Song"}},
                                   "limit": {"type": "integer"},
                                   "next_cursor": {"type": ["string", "null"],
                                                   "description": "Pass as `cursor` for the next page."}}},
                **more_schemas(config, song_status),
                "Error": {
                    "type": "object", "required": ["error"],
                    "properties": {"error": {
                        "type": "object", "required": ["code", "message"],
                        "properties": {
                            "code": {"type": "string", "examples": ["invalid", "insufficient_credits"]},
                            "message": {"type": "string", "description": "What to do, for a person."},
                            "field": {"type": "string", "description": "The input at fault, when there is one."},
                            "fields": {"type": "object", "additionalProperties": {"type": "string"},
                                       "description": "Every invalid field, when there are several."},
                        }}}},
            },
        },
    }
