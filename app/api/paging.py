"""Keyset (cursor) pagination for the API's lists: no OFFSET, so a page costs the same however
deep it is and rows added meanwhile neither repeat nor go missing.

A list is ordered by (created_at DESC, variant ASC, id ASC); the cursor is the last row's key,
encoded as opaque URL-safe base64. A cursor that does not decode is a 400 naming `cursor`.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import json

from core.errors import UserError

LIMIT_DEFAULT, LIMIT_MAX = 20, 100
CURSOR_MAX = 200  # characters


def _bad_cursor() -> UserError:
    return UserError("`cursor` is not one this API gave out: pass the `next_cursor` of the previous page "
                     "unchanged, or leave it out for the first page.", 400, "cursor", code="invalid_parameter")


def encode(created_at: dt.datetime, variant: int, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(timespec="microseconds"), int(variant), row_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(cursor: str) -> tuple[dt.datetime, int, str]:
    if not cursor or len(cursor) > CURSOR_MAX or not cursor.isascii():
        raise _bad_cursor()
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, variant, row_id = json.loads(raw.decode("utf-8"))
        created_at = dt.datetime.fromisoformat(created)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise _bad_cursor() from None
    if (created_at.tzinfo is not None or isinstance(variant, bool) or not isinstance(variant, int)
            or not 0 <= variant < 1000 or not isinstance(row_id, str) or not 0 < len(row_id) <= 32
            or not row_id.isalnum()):
        raise _bad_cursor()
    return created_at, variant, row_id


def after(model, cursor: str | None):
    """The condition "after this cursor" for a query ordered by `order(model)`; None for no cursor."""
    if cursor is None:
        return None
    created_at, variant, row_id = decode(cursor)
    return ((model.created_at < created_at)
            | ((model.created_at == created_at) & (model.variant > variant))
            | ((model.created_at == created_at) & (model.variant == variant) & (model.id > row_id)))


def order(model):
    return (model.created_at.desc(), model.variant, model.id)


def page(query, model, cursor: str | None, limit: int) -> tuple[list, str | None]:
    """(rows, next_cursor): up to `limit` rows after `cursor`, and the cursor of the next page
    (None when this is the last)."""
    cond = after(model, cursor)
    if cond is not None:
        query = query.where(cond)
    rows = list(query.order_by(*order(model)).limit(limit + 1))
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode(rows[-1].created_at, rows[-1].variant, rows[-1].id) if more and rows else None
    return rows, next_cursor
