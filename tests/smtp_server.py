"""A real SMTP server on a loopback port (aiosmtpd), for tests of the mail the app sends.

    smtp = SmtpServer().start()      # smtp.url -> smtp://127.0.0.1:<port>
    msg = smtp.wait_for("alice@example.com")   # an email.message.EmailMessage
"""
from __future__ import annotations

import email
import email.policy
import re
import threading
import time

from tests.helpers import free_port


class _Handler:
    def __init__(self, box):
        self.box = box

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        self.box.add(envelope.rcpt_tos, msg)
        return "250 OK"


class SmtpServer:
    def __init__(self):
        self.port = free_port()
        self.url = f"smtp://127.0.0.1:{self.port}"
        self._lock = threading.Condition()
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []
        self._controller = None

    def add(self, rcpts, msg) -> None:
        with self._lock:
            self.messages.append(([r.lower() for r in rcpts], msg))
            self._lock.notify_all()

    def start(self) -> "SmtpServer":
        from aiosmtpd.controller import Controller

        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()

    def to(self, address: str) -> list:
        with self._lock:
            return [m for rcpts, m in self.messages if address.lower() in rcpts]

    def wait_for(self, address: str, count: int = 1, timeout: float = 10.0):
        """The `count`-th mail to `address` (waiting up to `timeout` seconds for it)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                got = [m for rcpts, m in self.messages if address.lower() in rcpts]
                if len(got) >= count:
                    return got[count - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no mail #{count} to {address} within {timeout:.0f} s "
                                         f"(got {len(got)}; all: {[r for r, _ in self.messages]})")
                self._lock.wait(left)


def parts(msg) -> tuple[str, str]:
    """(text, html) of a multipart/alternative mail."""
    text = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    return (text.get_content() if text else ""), (html.get_content() if html else "")


def link_in(msg, path: str) -> str:
    """The first link in the mail's text whose path starts with `path`, as a path + query."""
    text, _ = parts(msg)
    m = re.search(r"https?://[^/\s]+(" + re.escape(path) + r"[^\s]*)", text)
    assert m, f"no {path} link in the mail:\n{text}"
    return m.group(1)
