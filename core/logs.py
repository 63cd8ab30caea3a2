"""Logging for the web and the worker: one line per event, `req=<id>` on lines logged while a web
request is served and `job=<id>` on lines logged while a job runs, and secrets kept out.

    2025-01-01T12:00:00 INFO tunesmith.http req=3f2a9c0d11e84b7a POST /api/v1/generate_with_lyrics 202 41.3ms

What is never logged: passwords, tokens (API tokens, bearer headers, signed file links) and
lyrics. The code does not pass them to a logger; `RedactFilter` is the safety net that masks them
if one slips through (`key=value` pairs and dict arguments by key, API tokens and bearer headers
by shape), and newlines are escaped so a message or a traceback stays on one line.

This module imports no Flask or RQ at load time (the worker uses it too).
"""
from __future__ import annotations

import contextvars
import logging
import re
import sys

SECRET_KEYS = ("password", "passwd", "token", "secret", "authorization", "lyrics", "api_key", "cookie")
MASK = "***"

_PATTERNS = [
    (re.compile(r"\bts_[A-Za-z0-9_\-]{16,}"), "ts_" + MASK),  # API tokens
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=\-]+"), r"\1 " + MASK),
    (re.compile(r"(?i)\b(" + "|".join(SECRET_KEYS) + r")([\"']?\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&]+)"),
     r"\1\2" + MASK),
    (re.compile(r"(/files/)[A-Za-z0-9._\-]+"), r"\1" + MASK),  # signed local file links
    (re.compile(r"(?i)([?&](?:X-Amz-Signature|X-Amz-Credential|Signature)=)[^&\s]+"), r"\1" + MASK),
    (re.compile(r"://([^:/@\s]+):[^@/\s]+@"), r"://\1:" + MASK + "@"),  # passwords in URLs
]


def redact(text: str) -> str:
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


def _redact_arg(value):
    if isinstance(value, dict):
        return {k: (MASK if isinstance(k, str) and any(s in k.lower() for s in SECRET_KEYS) else v)
                for k, v in value.items()}
    return value


class ContextFilter(logging.Filter):
    """Adds `request_id` (inside a Flask request) and `job_id` (inside an RQ job) to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = getattr(record, "request_id", None) or _request_id()
        record.job_id = getattr(record, "job_id", None) or _job_id()
        return True


class RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict):
            record.args = _redact_arg(record.args)
        elif isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(a) for a in record.args)
        return True


def _request_id() -> str | None:
    flask = sys.modules.get("flask")
    if flask is None:
        return None
    try:
        if flask.has_request_context():
            return flask.g.get("request_id")
    except Exception:
        return None
    return None


_bound_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("tunesmith_job", default=None)


def bind_job(job_id: str | None) -> None:
    """Lines logged from here on in this thread say `job=<job_id>` (the worker's background
    finisher, which runs outside RQ's job)."""
    _bound_job.set(job_id)


def _job_id() -> str | None:
    job_mod = sys.modules.get("rq.job")
    job = None
    if job_mod is not None:
        try:
            job = job_mod.get_current_job()
        except Exception:
            job = None
    return getattr(job, "id", None) or _bound_job.get()


class LineFormatter(logging.Formatter):
    """`<time> <LEVEL> <logger> [req=..] [job=..] <message>` on one line, secrets masked."""

    def __init__(self):
        super().__init__(datefmt="%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            message = f"{message} | {record.exc_text}"
        if record.stack_info:
            message = f"{message} | {self.formatStack(record.stack_info)}"
        context = ""
        if getattr(record, "request_id", None):
            context += f" req={record.request_id}"
        if getattr(record, "job_id", None):
            context += f" job={record.job_id}"
        line = f"{self.formatTime(record, self.datefmt)} {record.levelname} {record.name}{context} {message}"
        return redact(line).replace("\r", "\\r").replace("\n", "\\n")


def make_handler(stream=None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LineFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactFilter())
    handler._tunesmith = True  # type: ignore[attr-defined]
    return handler


def install(level: str | int = "INFO", stream=None) -> logging.Handler:
    """Send every logger through one Tunesmith handler on the root logger (idempotent). Handlers
    that others put on the root (e.g. pytest's capture) are left alone."""
    root = logging.getLogger()
    # peewee logs every SQL statement with its parameters (lyrics, emails) at DEBUG: never below INFO.
    logging.getLogger("peewee").setLevel(logging.INFO)
    for handler in root.handlers:
        if getattr(handler, "_tunesmith", False):
            root.setLevel(level if isinstance(level, int) else str(level).upper())
            return handler
    handler = make_handler(stream)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else str(level).upper())
    return handler
