"""Outbound webhooks: a person's endpoints are told when their songs are made.

Events: `song.processed`, `song.failed` (one per song), `generation.finished` (once every song of
a request is processed or failed), and `webhook.test` ("send a test event" on the settings page).

- **Outbox.** An event becomes one `WebhookDelivery` row per subscribed endpoint, written in the
  same transaction as the status change it reports (`on_song_final`, called by
  `core.songs.finish_song` / `fail_songs`), so an event is never lost or invented by a rollback.
  A unique (endpoint, event_key) makes each event at most once per endpoint.
- **Delivery** is worker-side: `deliver_due` (run by the GPU worker's webhook thread every
  WEBHOOK_POLL_INTERVAL seconds, `run_loop`) claims due rows with a conditional UPDATE (so a fleet
  of workers sends each attempt once), POSTs the stored body and logs the attempt.
- **Signatures** follow the Standard Webhooks spec: headers `webhook-id` (the delivery id, the
  same on every retry), `webhook-timestamp` (Unix seconds of this attempt) and
  `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed by the endpoint's
  secret (`whsec_` + base64 of 24 random bytes).
- **Retries**: any answer but a 2xx (redirects are not followed), a timeout or a refused
  connection is a failed attempt; the next comes after WEBHOOK_RETRY_BASE x 3^(n-1) seconds, at
  most WEBHOOK_RETRY_MAX, up to WEBHOOK_MAX_ATTEMPTS attempts (by default 10 over about 24 h).
- **Disabling**: an endpoint with WEBHOOK_DISABLE_AFTER failed attempts in a row spanning at least
  WEBHOOK_DISABLE_SECONDS (no success between) is disabled, and its pending deliveries given up.
- **SSRF**: the host is resolved and every address must be public (not private, loopback,
  link-local, multicast, reserved or unspecified) unless ALLOW_PRIVATE_WEBHOOKS; the connection
  goes to the address that was checked (no second lookup an attacker's DNS could change).
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import peewee as pw

import models
from core.errors import UserError
from models import Song, WebhookAttempt, WebhookDelivery, WebhookEndpoint, utcnow

log = logging.getLogger("tunesmith.webhooks")

EVENTS = WebhookEndpoint.EVENTS
TEST_EVENT = "webhook.test"
URL_MAX = 2000
LEASE = dt.timedelta(minutes=5)  # a claimed attempt is due again after this if its worker died mid-send
USER_AGENT = "Tunesmith-Webhooks/1.0 (+https://www.standardwebhooks.com/)"


class Refused(Exception):
    """The target may not be reached (a private address without ALLOW_PRIVATE_WEBHOOKS, no DNS)."""


# -- secrets and signatures ----------------------------------------------------------------------
def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value (Standard Webhooks, scheme v1)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


# -- targets -------------------------------------------------------------------------------------
def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_private or ip.is_loopback or ip.is_link_local
                                 or ip.is_reserved or ip.is_unspecified)


def resolve(host: str, port: int, allow_private: bool) -> list[str]:
    """The addresses to connect to for `host`; Refused when any of them is not public (a host
    with one private address among public ones is refused too: a client may pick either)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise Refused(f"{host} could not be resolved ({exc})") from None
    addrs = list(dict.fromkeys(info[4][0] for info in infos))
    if not addrs:
        raise Refused(f"{host} has no address")
    if not allow_private:
        for addr in addrs:
            if not _public(ipaddress.ip_address(addr.split("%", 1)[0])):
                raise Refused(f"{host} resolves to {addr}, a private, loopback or link-local address")
    return addrs


def clean_url(url, allow_private: bool) -> str:
    """An endpoint URL as typed, checked: http(s), a host, no credentials, and (resolved now)
    only public addresses unless allowed. UserError (field `url`) otherwise."""
    url = str(url or "").strip()
    if not url:
        raise UserError("Enter the URL to send events to, e.g. https://example.com/hooks/tunesmith.", 422, "url")
    if len(url) > URL_MAX or any(ch.isspace() or not ch.isprintable() for ch in url):
        raise UserError(f"Enter a URL of at most {URL_MAX} characters, without spaces.", 422, "url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UserError("That URL is not valid.", 422, "url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError("Use an http:// or https:// URL with a host name.", 422, "url")
    if parts.username or parts.password:
        raise UserError("Leave credentials out of the URL; verify the signature instead.", 422, "url")
    try:
        resolve(parts.hostname, port or (443 if parts.scheme == "https" else 80), allow_private)
    except Refused as exc:
        raise UserError(f"Tunesmith will not send events there: {exc}.", 422, "url") from None
    return url


class _Connection(http.client.HTTPConnection):
    def __init__(self, host, address, port, timeout):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _TLSConnection(http.client.HTTPSConnection):
    def __init__(self, host, address, port, timeout):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def post(url: str, body: bytes, headers: dict, timeout: float, allow_private: bool) -> tuple[int, bytes]:
    """POST `body` to `url` on a checked address; (status, first bytes of the answer). Redirects
    are answers like any other (not followed). Raises Refused or OSError."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    error: OSError | None = None
    for address in resolve(parts.hostname, port, allow_private)[:3]:
        conn = (_TLSConnection if https else _Connection)(parts.hostname, address, port, timeout)
        try:
            conn.connect()
        except OSError as exc:  # this address does not answer: the next one may
            error = exc
            conn.close()
            continue
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read(500)
        finally:
            conn.close()
    raise error or OSError("no address answered")


# -- events (the outbox) ----------------------------------------------------------------------------
def _iso(value) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value else None


def _body(event_type: str, data: dict) -> str:
    return json.dumps({"type": event_type, "timestamp": _iso(utcnow()), "data": data}, separators=(",", ":"))


def _insert(endpoint_id: int, event_type: str, event_key: str, data: dict) -> None:
    (WebhookDelivery.insert(id="msg_" + secrets.token_hex(16), endpoint=endpoint_id, event_key=event_key[:120],
                            type=event_type, payload=_body(event_type, data), next_attempt_at=utcnow())
     .on_conflict_ignore().execute())


def _song_data(song: Song) -> dict:
    gen = song.generation
    return {"song_id": song.id, "generation_id": song.generation_id, "operation": gen.operation,
            "parent_id": song.parent_id, "status": song.status, "title": song.title, "error": song.error or None,
            "duration": song.duration, "tags": song.tags, "seed": song.seed, "engine": song.engine,
            "offline": song.offline, "finished_at": _iso(song.finished_at),
            "api_url": f"/api/v1/songs/{song.id}"}


def on_song_final(song, event_type: str) -> None:
    """Queue `event_type` (song.processed | song.failed) for the song's owner's endpoints, and
    `generation.finished` when this was the generation's last unfinished song. Call inside the
    transaction that made the song final."""
    endpoints = list(WebhookEndpoint.select(WebhookEndpoint.id, WebhookEndpoint.events).where(
        (WebhookEndpoint.user == song.user_id) & WebhookEndpoint.disabled_at.is_null()))
    if not endpoints:
        return
    row = Song.get_or_none(Song.id == song.id)
    if row is None:
        return
    wanted = [e for e in endpoints if event_type in (e.events or [])]
    if wanted:
        data = _song_data(row)
        for endpoint in wanted:
            _insert(endpoint.id, event_type, f"{event_type}:{row.id}", data)
    finishing = [e for e in endpoints if "generation.finished" in (e.events or [])]
    if finishing and not Song.select().where((Song.generation == row.generation_id) &
                                             Song.status.not_in(Song.FINAL)).exists():
        songs = list(Song.select().where(Song.generation == row.generation_id).order_by(Song.variant))
        gen = row.generation
        data = {"generation_id": gen.id, "operation": gen.operation, "source_song_id": gen.source_song_id,
                "processed": sum(s.status == "processed" for s in songs),
                "failed": sum(s.status == "failed" for s in songs),
                "songs": [{"id": s.id, "status": s.status, "title": s.title, "error": s.error or None}
                          for s in songs],
                "api_url": f"/api/v1/generations/{gen.id}"}
        for endpoint in finishing:
            _insert(endpoint.id, "generation.finished", f"generation.finished:{gen.id}", data)


def send_test(endpoint: WebhookEndpoint) -> str:
    """Queue a `webhook.test` event for this endpoint (the worker sends it); its delivery id."""
    if endpoint.disabled_at is not None:
        raise UserError("This endpoint is disabled; enable it first.", 409, code="disabled")
    with models.write_transaction():
        key = "test:" + secrets.token_hex(8)
        _insert(endpoint.id, TEST_EVENT, key, {"message": "A test event from Tunesmith.",
                                                "endpoint_url": endpoint.url})
    return WebhookDelivery.get((WebhookDelivery.endpoint == endpoint.id) & (WebhookDelivery.event_key == key)).id


# -- delivery (worker side) ------------------------------------------------------------------------
def retry_delay(config, attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (1, 2, ...)."""
    return float(min(config.WEBHOOK_RETRY_MAX, config.WEBHOOK_RETRY_BASE * 3 ** (attempt - 1)))


def schedule(config) -> list[float]:
    """Every wait between the attempts of one delivery (the whole back-off)."""
    return [retry_delay(config, n) for n in range(1, config.WEBHOOK_MAX_ATTEMPTS)]


@dataclass
class Outcome:
    status_code: int | None
    error: str
    body: str
    ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _send(config, delivery: WebhookDelivery, endpoint: WebhookEndpoint) -> Outcome:
    body = delivery.payload.encode()
    timestamp = int(time.time())
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "webhook-id": delivery.id,
               "webhook-timestamp": str(timestamp),
               "webhook-signature": sign(endpoint.secret, delivery.id, timestamp, body)}
    start = time.monotonic()
    try:
        status, answer = post(endpoint.url, body, headers, config.WEBHOOK_TIMEOUT, config.ALLOW_PRIVATE_WEBHOOKS)
        error = "" if 200 <= status < 300 else (
            f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else ""))
        return Outcome(status, error, answer.decode("utf-8", "replace"), int((time.monotonic() - start) * 1000))
    except Refused as exc:
        return Outcome(None, f"refused: {exc}", "", 0)
    except (OSError, http.client.HTTPException) as exc:
        return Outcome(None, f"{type(exc).__name__}: {exc}"[:255], "", int((time.monotonic() - start) * 1000))


def _record(config, delivery: WebhookDelivery, endpoint: WebhookEndpoint, out: Outcome, now) -> None:
    number = delivery.attempts + 1
    give_up = not out.ok and number >= config.WEBHOOK_MAX_ATTEMPTS
    retry_in = None if out.ok or give_up else retry_delay(config, number)
    with models.write_transaction():
        WebhookAttempt.create(delivery=delivery.id, number=number, attempted_at=now, status_code=out.status_code,
                              error=out.error[:255], response_body=out.body[:500], duration_ms=out.ms,
                              retry_in=retry_in)
        WebhookDelivery.update(
            attempts=number, last_status_code=out.status_code, last_error=out.error[:255],
            status="delivered" if out.ok else ("failed" if give_up else "pending"),
            next_attempt_at=now + dt.timedelta(seconds=retry_in) if retry_in is not None else None,
            finished_at=now if (out.ok or give_up) else None).where(WebhookDelivery.id == delivery.id).execute()
        if out.ok:
            WebhookEndpoint.update(consecutive_failures=0, failing_since=None, last_success_at=now).where(
                WebhookEndpoint.id == endpoint.id).execute()
            return
        WebhookEndpoint.update(consecutive_failures=WebhookEndpoint.consecutive_failures + 1,
                               failing_since=pw.fn.COALESCE(WebhookEndpoint.failing_since, now)).where(
            WebhookEndpoint.id == endpoint.id).execute()
        row = WebhookEndpoint.get_by_id(endpoint.id)
        if (row.disabled_at is None and row.consecutive_failures >= config.WEBHOOK_DISABLE_AFTER
                and (now - row.failing_since).total_seconds() >= config.WEBHOOK_DISABLE_SECONDS):
            disable(row, f"Disabled after {row.consecutive_failures} failed deliveries in a row "
                         f"(the last: {out.error or 'no answer'}).", now)


def disable(endpoint: WebhookEndpoint, reason: str, now=None) -> None:
    """Stop sending to the endpoint; its pending deliveries are given up."""
    now = now or utcnow()
    with models.write_transaction():
        WebhookEndpoint.update(disabled_at=now, disabled_reason=reason[:255]).where(
            (WebhookEndpoint.id == endpoint.id) & WebhookEndpoint.disabled_at.is_null()).execute()
        WebhookDelivery.update(status="failed", finished_at=now, next_attempt_at=None,
                               last_error="The endpoint was disabled.").where(
            (WebhookDelivery.endpoint == endpoint.id) & (WebhookDelivery.status == "pending")).execute()
    log.warning("webhook endpoint %s disabled: %s", endpoint.id, reason)


def enable(endpoint: WebhookEndpoint) -> None:
    WebhookEndpoint.update(disabled_at=None, disabled_reason="", consecutive_failures=0, failing_since=None).where(
        WebhookEndpoint.id == endpoint.id).execute()


def deliver_due(config, now: dt.datetime | None = None, limit: int = 50) -> int:
    """Send every delivery that is due at `now` (default: the time now), up to `limit`; returns
    how many attempts were made. Each is claimed first, so concurrent workers never send the same
    attempt twice."""
    now = now or utcnow()
    due = list(WebhookDelivery.select(WebhookDelivery, WebhookEndpoint).join(WebhookEndpoint)
               .where((WebhookDelivery.status == "pending") & (WebhookDelivery.next_attempt_at <= now))
               .order_by(WebhookDelivery.next_attempt_at).limit(limit))
    sent = 0
    for delivery in due:
        endpoint = delivery.endpoint
        claimed = WebhookDelivery.update(next_attempt_at=now + LEASE).where(
            (WebhookDelivery.id == delivery.id) & (WebhookDelivery.status == "pending")
            & (WebhookDelivery.attempts == delivery.attempts) & (WebhookDelivery.next_attempt_at <= now)).execute()
        if not claimed:
            continue
        if endpoint.disabled_at is not None:  # disabled after it was read: give it up
            disable(endpoint, endpoint.disabled_reason or "Disabled.", now)
            continue
        out = _send(config, delivery, endpoint)
        _record(config, delivery, endpoint, out, now)
        sent += 1
        log.info("webhook %s %s to endpoint %s: attempt %d %s", delivery.type, delivery.id, endpoint.id,
                 delivery.attempts + 1, out.status_code or out.error)
    return sent


def run_loop(config, stop: threading.Event) -> None:
    """The worker's delivery loop: deliver what is due every WEBHOOK_POLL_INTERVAL seconds (at
    once again while a pass finds a full batch) until `stop` is set."""
    interval = max(0.1, float(config.WEBHOOK_POLL_INTERVAL))
    while not stop.is_set():
        busy = False
        try:
            models.db.connect(reuse_if_open=True)
            busy = deliver_due(config) >= 50
        except Exception:  # the database briefly away: the next pass tries again
            log.exception("webhook delivery pass failed")
        finally:
            if not models.db.is_closed():
                models.db.close()
        if not busy:
            stop.wait(interval)
