"""The one error type a person or an API client sees.

Raised by the song lifecycle, the studio and library actions, token management and the API
views alike; the web renders it into the form (HTMX or a plain POST) and the API as
`{"error": {"code", "message", "field"}}` with `status`.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input or an action that cannot be done now: nothing was written, nothing charged.

    `message` is for a person, `status` the HTTP status, `field` the input it concerns (None for
    the whole form), `code` a stable machine-readable word, `extra` more JSON for API clients.
    """

    def __init__(self, message: str, status: int = 422, field: str | None = None, code: str = "invalid",
                 **extra):
        super().__init__(message)
        self.message, self.status, self.field, self.code, self.extra = message, status, field, code, extra

    def as_json(self) -> dict:
        body: dict = {"code": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        body.update(self.extra)
        return {"error": body}
