"""The OpenAPI paths and schemas of the studio operations, library actions, the account,
generations and their event stream (app/api/actions.py, app/api/events.py). Limits come from
the studio's own constants (app/songs/studio.py) and the settings, so they cannot drift."""
from __future__ import annotations

from core import catalogue, styles

from ..songs import studio

SONG_ID = {"name": "song_id", "in": "path", "required": True, "schema": {"type": "string"}}
GENERATION_ID = {"name": "generation_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(ref: str, description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


AUTH = {"401": _error("No token, or the token is unknown or revoked."),
        "429": _error("Too many requests for this token; wait and retry.")}
NOT_YOURS = {"404": _error("No such song in your library (another person's song is not found either).")}

OPERATIONS = {
    "retake": ("Retake: the same song again with a new seed", "StudioRetake"),
    "extend": ("Extend: continue the song for more seconds", "StudioExtend"),
    "repaint": ("Repaint: render one section again", "StudioRepaint"),
    "remix": ("Remix: the song (or your upload) in a new style", "StudioRemix"),
    "stems": ("Stems: split the song into vocals, drums, bass and other", "StudioStems"),
}


def _studio_op(op: str) -> dict:
    summary, schema = OPERATIONS[op]
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}
    if op == "remix":
        content["multipart/form-data"] = {"schema": {"$ref": "#/components/schemas/StudioRemixUpload"}}
    return {"post": {
        "operationId": f"studio{op.capitalize()}",
        "summary": summary,
        "description": "The same fields, checks and cost as the song page's studio: one credit per variant "
                       "(stems: one), reserved now and given back if a song fails. The source song must be "
                       "finished. Follow the new songs with `GET /generations/{generation_id}` or its events.",
        "tags": ["studio"],
        "parameters": [SONG_ID, {"$ref": "#/components/parameters/IdempotencyKey"}],
        "requestBody": {"required": op in ("extend", "repaint", "remix"), "content": content},
        "responses": {
            "202": {"description": "Accepted: the new songs are queued.",
                    "headers": {"Location": {"description": "The new generation", "schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}},
            "400": _error("The body is not a JSON object (or not multipart, for an upload), or a header is "
                          "malformed."),
            "402": _error("Not enough credits (`code: insufficient_credits`)."),
            "403": _error("The account is suspended (`code: suspended`) or its email address is not confirmed "
                          "yet (`code: email_unverified`)."),
            **NOT_YOURS,
            "409": _error("The song is not finished (`code: not_finished`), or the `Idempotency-Key` was used "
                          "for a different request."),
            "413": _error("The body or the uploaded file is too large."),
            "415": _error("The uploaded file is not audio that can be read (WAV, MP3 or FLAC)."),
            "422": _error("A field is missing or invalid; `field` names it."),
            **AUTH,
        },
    }}


def _action(op_id: str, summary: str, description: str, ok: dict, extra: dict | None = None) -> dict:
    return {"operationId": op_id, "summary": summary, "description": description, "tags": ["songs"],
            "parameters": [SONG_ID], "responses": {**ok, **NOT_YOURS, **(extra or {}), **AUTH}}


def song_item_ops() -> dict:
    """PATCH and DELETE on /songs/{song_id}."""
    return {
        "patch": {**_action("updateSong", "Rename a song", "Only `title` can be changed.",
                            {"200": _json("Song", "The renamed song")},
                            {"400": _error("The body is not a JSON object."),
                             "413": _error("The body is too large."),
                             "422": _error("The title is empty, too long, or not text; or an unknown field.")}),
                  "requestBody": {"required": True, "content": {"application/json": {
                      "schema": {"$ref": "#/components/schemas/SongUpdate"}, "example": {"title": "Neon Nights"}}}}},
        "delete": _action("deleteSong", "Delete a song and its files",
                          "A song deleted before it finished gets its credit back.",
                          {"204": {"description": "Deleted"}},
                          {"503": _error("The file store did not answer; nothing was deleted.")}),
    }


def more_paths(config) -> dict:
    paths = {f"/songs/{{song_id}}/{op}": _studio_op(op) for op in OPERATIONS}
    paths["/songs/{song_id}/publish"] = {"post": _action(
        "publishSong", "Publish a song to the public feed", "Only a finished song can be published.",
        {"200": _json("Song", "The published song")},
        {"409": _error("The song is not finished (`code: not_finished`).")})}
    paths["/songs/{song_id}/unpublish"] = {"post": _action(
        "unpublishSong", "Make a song private again", "Only you can see it afterwards.",
        {"200": _json("Song", "The private song")})}
    paths["/songs/{song_id}/cancel"] = {"post": _action(
        "cancelSong", "Cancel the song's generation",
        "Queued: its songs fail and the credits come back at once (`cancelled`). Running: the worker stops at "
        "its next step and then gives the credits back (`stopping`, 202). Already final: `finished`.",
        {"200": _json("CancelResult", "Cancelled, or nothing left to cancel"),
         "202": _json("CancelResult", "The worker is stopping it")})}
    paths["/me"] = {"get": {
        "operationId": "getMe", "summary": "Your account and credit balance", "tags": ["account"],
        "responses": {"200": _json("Me", "The account the token belongs to"), **AUTH}}}
    paths["/generations/{generation_id}"] = {"get": {
        "operationId": "getGeneration", "summary": "One request and its songs", "tags": ["songs"],
        "parameters": [GENERATION_ID],
        "responses": {"200": _json("Generation", "The generation"),
                      "404": _error("No such generation in your library."), **AUTH}}}
    paths["/generations/{generation_id}/events"] = {"get": {
        "operationId": "generationEvents", "summary": "Server-sent events: stage and percent until finished",
        "tags": ["songs"],
        "description": "A `text/event-stream`. Events: `progress` (data: GenerationProgress) whenever a song's "
                       "status, stage or percent changes, `done` (the same, final) when every song is processed "
                       "or failed, then the stream ends; `timeout` after "
                       f"{int(config.SSE_MAX_SECONDS)} s (reconnect); `gone` when the songs were deleted. A "
                       "`: keep-alive` comment is sent while nothing changes.",
        "parameters": [GENERATION_ID],
        "responses": {"200": {"description": "The event stream",
                              "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/Event"}}}},
                      "404": _error("No such generation in your library."), **AUTH}}}
    return paths


def more_schemas(config, song_status: dict) -> dict:
    variants = {"type": "integer", "minimum": 1, "maximum": config.MAX_VARIANTS, "default": 1,
                "description": "How many versions to make (one credit each)."}
    text = lambda limit, description: {"type": "string", "maxLength": limit, "description": description}  # noqa: E731
    tags = text(studio.TAGS_MAX, "Style tags.")
    lyrics = text(studio.LYRICS_MAX, "Lyrics.")
    style = {"style_id": {"type": "string", "maxLength": 32, "description": "A ready style to render with: one "
                                                                           "of yours, or one someone published."},
             "style_weight": {"type": "number", "minimum": styles.WEIGHT_MIN, "maximum": styles.WEIGHT_MAX,
                              "default": styles.WEIGHT_DEFAULT, "description": "How strongly the style applies."}}
    remix = {"variants": variants, "tags": {**tags, "minLength": 1, "description": "The new style."},
             "strength": {"type": "number", "minimum": 0, "maximum": 100, "default": 50,
                          "description": "How far from the source (percent)."}, **style}
    studio_obj = lambda props, required=(), description=None: {  # noqa: E731
        "type": "object", "additionalProperties": False,
        "properties": props,
        **({"required": list(required)} if required else {}), **({"description": description} if description else {})}
    song_progress = {"type": "object", "required": ["id", "status", "stage", "progress"],
                     "properties": {"id": {"type": "string"}, "status": song_status, "stage": {"type": "string"},
                                    "progress": {"type": "integer"}, "error": {"type": ["string", "null"]},
                                    "title": {"type": "string"}}}
    state = {"status": {"type": "string", "enum": ["queued", "processing", "finished"]},
             "finished": {"type": "boolean"}, "progress": {"type": "integer", "minimum": 0, "maximum": 100},
             "processed": {"type": "integer"}, "failed": {"type": "integer"}}
    return {
        "StudioRetake": studio_obj({"variants": variants, "seed": {
            "type": "integer", "minimum": 0, "maximum": 2**31 - 2, "description": "A seed; random when left out."},
            **style}),
        "StudioExtend": studio_obj({
            "variants": variants,
            "added": {"type": "number", "minimum": studio.EXTEND_MIN, "maximum": studio.EXTEND_MAX,
                      "description": "Seconds to add."},
            "from": {"type": "number", "minimum": 1, "description": "Continue from this second (at most the "
                                                                   "song's length; default its end)."},
            "lyrics": lyrics, **style}, ["added"], f"The extended song is at most {studio.MAX_SECONDS:.0f} s long."),
        "StudioRepaint": studio_obj({
            "variants": variants,
            "start": {"type": "number", "minimum": 0, "description": "Section start, seconds."},
            "end": {"type": "number", "minimum": 0, "description": "Section end, seconds (after start, within "
                                                                   "the song)."},
            "tags": tags, "lyrics": lyrics, **style}, ["start", "end"]),
        "StudioRemix": studio_obj(remix, ["tags"]),
        "StudioRemixUpload": studio_obj({**remix, "audio": {
            "type": "string", "format": "binary",
            "description": f"WAV, MP3 or FLAC, up to {studio.UPLOAD_MAX_BYTES // 1024 // 1024} MB and "
                           f"{studio.UPLOAD_MAX_SECONDS / 60:.0f} minutes; remixed instead of the song."}},
            ["tags"]),
        "StudioStems": studio_obj({}, (), "No fields: stems cost one credit."),
        "SongUpdate": studio_obj({"title": {"type": "string", "minLength": 1, "maxLength": catalogue.TITLE_MAX}},
                                 ["title"]),
        "CancelResult": {"type": "object", "required": ["outcome", "message", "song"], "properties": {
            "outcome": {"type": "string", "enum": ["finished", "cancelled", "stopping"]},
            "message": {"type": "string"}, "song": {"$ref": "#/components/schemas/Song"}}},
        "Me": {"type": "object", "required": ["id", "email", "credits"], "properties": {
            "id": {"type": "integer"}, "email": {"type": "string"}, "name": {"type": "string"},
            "display_name": {"type": "string"}, "credits": {"type": "integer", "description": "Your balance."},
            "has_purchased": {"type": "boolean"}, "created_at": {"type": ["string", "null"], "format": "date-time"}}},
        "Generation": {"type": "object", "required": ["id", "operation", "status", "finished", "songs"],
                       "properties": {
                           "id": {"type": "string"}, "operation": {"type": "string"}, "mode": {"type": "string"},
                           "source_song_id": {"type": ["string", "null"]}, "params": {"type": "object"},
                           "variants": {"type": "integer"}, "duration": {"type": "integer"},
                           "created_at": {"type": ["string", "null"], "format": "date-time"}, **state,
                           "songs": {"type": "array", "items": {"$ref": "#/components/schemas/Song"}}}},
        "Event": {"type": "object", "required": ["event", "data"],
                  "description": "One server-sent event (the schema of each event in the stream).",
                  "properties": {
                      "event": {"type": "string", "enum": ["progress", "done", "timeout", "gone"]},
                      "data": {"type": "string", "contentMediaType": "application/json",
                               "description": "JSON: a GenerationProgress for progress and done; "
                                              "{generation_id, after_seconds} for timeout; {generation_id} for gone."},
                      "id": {"type": "string"}, "retry": {"type": "integer"}}},
        "GenerationProgress": {"type": "object", "required": ["generation_id", "status", "finished", "songs"],
                               "properties": {"generation_id": {"type": "string"}, **state,
                                              "songs": {"type": "array", "items": song_progress}}},
    }
