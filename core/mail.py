"""Outgoing mail: the standard library's `smtplib` and `email`, each mail as text and HTML.

`SMTP_URL` names the server: ``smtp://user:password@host:587?starttls=1`` (plain SMTP, upgraded
with STARTTLS when ``starttls=1``) or ``smtps://user:password@host:465`` (TLS from the start).
When it is unset (the embedded default), no mail leaves the machine: each one is written as an
``.eml`` file under ``VAR_DIR/mail/`` and the log says where, so a self-hoster can open it.

Mails are composed by `compose` from a few paragraphs and at most one button-like link, so the
web app and the worker (the export-ready mail) write them the same way.
"""
from __future__ import annotations

import html
import logging
import smtplib
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

log = logging.getLogger("tunesmith.mail")


class MailError(RuntimeError):
    """The mail could not be handed to the SMTP server (or written to disk)."""


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool        # TLS from the first byte (smtps)
    starttls: bool   # upgrade a plain connection


def parse_smtp_url(url: str) -> SmtpTarget:
    parsed = urlparse(url)
    if parsed.scheme not in {"smtp", "smtps"} or not parsed.hostname:
        raise ValueError(f"SMTP_URL {url!r}: expected smtp://user:pass@host:port or smtps://...")
    q = {k: v[-1].lower() for k, v in parse_qs(parsed.query).items()}
    tls = parsed.scheme == "smtps"
    starttls = not tls and q.get("starttls", "0") in {"1", "true", "yes", "on"}
    port = parsed.port or (465 if tls else 587 if starttls else 25)
    return SmtpTarget(parsed.hostname, port, unquote(parsed.username) if parsed.username else None,
                      unquote(parsed.password) if parsed.password else None, tls, starttls)


def compose(config, to: str, subject: str, paragraphs: list[str], link: tuple[str, str] | None = None,
            footer: str = "") -> EmailMessage:
    """A mail to `to` with a text part and an HTML part saying the same: the paragraphs, then
    the link (label, absolute URL) as a button and spelled out, then a small footer."""
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = config.MAIL_FROM
    msg["To"] = to
    msg["Date"] = formatdate(localtime=False)
    domain = (config.MAIL_FROM.rsplit("@", 1)[-1].strip(" >") or "localhost") if "@" in config.MAIL_FROM else "localhost"
    msg["Message-ID"] = make_msgid(domain=domain)
    footer = footer or "You get this mail because of your Tunesmith account."
    text = list(paragraphs)
    if link:
        text.append(f"{link[0]}:\n{link[1]}")
    text.append(f"-- \n{footer}")
    msg.set_content("\n\n".join(text) + "\n")
    parts = [f"<p>{html.escape(p)}</p>" for p in paragraphs]
    if link:
        label, url = html.escape(link[0]), html.escape(link[1], quote=True)
        parts.append(f'<p><a href="{url}" style="display:inline-block;padding:10px 16px;background:#6d28d9;'
                     f'color:#fff;border-radius:6px;text-decoration:none">{label}</a></p>'
                     f'<p style="color:#555;font-size:13px">Or open this address: {html.escape(link[1])}</p>')
    parts.append(f'<p style="color:#777;font-size:12px">{html.escape(footer)}</p>')
    msg.add_alternative("<!doctype html><html><body style=\"font-family:sans-serif;line-height:1.5\">"
                        + "".join(parts) + "</body></html>", subtype="html")
    return msg


def send(config, msg: EmailMessage) -> str:
    """Hand `msg` to the SMTP server of SMTP_URL, or write it under VAR_DIR/mail/ when none is
    set. Returns where it went (``smtp:<host>`` or the file's path). Raises MailError."""
    if not config.SMTP_URL:
        return _write_eml(config, msg)
    target = parse_smtp_url(config.SMTP_URL)
    timeout = float(getattr(config, "SMTP_TIMEOUT", 10.0))
    try:
        if target.tls:
            conn = smtplib.SMTP_SSL(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
        else:
            conn = smtplib.SMTP(target.host, target.port, timeout=timeout)
        with conn:
            if target.starttls:
                conn.starttls(context=ssl.create_default_context())
            if target.username:
                conn.login(target.username, target.password or "")
            conn.send_message(msg)
    except (smtplib.SMTPException, OSError) as exc:
        raise MailError(f"could not send mail to {msg['To']} via {target.host}:{target.port}: {exc}") from exc
    log.info("mail %r sent to %s via %s:%d", msg["Subject"], msg["To"], target.host, target.port)
    return f"smtp:{target.host}"


def send_quietly(config, msg: EmailMessage) -> bool:
    """`send`, logging instead of raising: for mails whose failure the person must not be able
    to tell from the answer (password reset)."""
    try:
        send(config, msg)
        return True
    except Exception:  # noqa: BLE001 - logged; the caller's answer must not change
        log.exception("mail %r to %s was not sent", msg["Subject"], msg["To"])
        return False


def send_in_background(config, msg: EmailMessage) -> threading.Thread:
    """`send_quietly` on a thread, so the answer to the request does not wait for (or reveal
    anything by) the SMTP conversation."""
    thread = threading.Thread(target=send_quietly, args=(config, msg), name="mail", daemon=True)
    thread.start()
    return thread


def mail_dir(config) -> Path:
    return Path(config.VAR_DIR) / "mail"


def _write_eml(config, msg: EmailMessage) -> str:
    folder = mail_dir(config)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.eml"
        tmp = path.with_suffix(".part")
        tmp.write_bytes(bytes(msg))
        tmp.replace(path)
    except OSError as exc:
        raise MailError(f"could not write mail to {folder}: {exc}") from exc
    log.warning("SMTP_URL is not set: mail %r to %s written to %s", msg["Subject"], msg["To"], path)
    return str(path)
