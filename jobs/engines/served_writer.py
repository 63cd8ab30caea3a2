"""The writer on a model server: any OpenAI-compatible chat-completions endpoint (vLLM, SGLang,
TGI, `transformers serve`, ...) at ``WRITER_URL``.

It sends the same chat as the in-process writer (`qwen.build_messages`) and runs the same write
loop (`qwen.ChatWriter`: parse leniently, validate field by field, retry once naming the
problems, the offline writer for whatever is still missing, the person's own words win), so a
song reads the same whichever process ran the model. Only the transport differs: one HTTP POST
per attempt, with a timeout, and bounded retries with exponential back-off when the server
cannot be reached, times out, or answers 408 / 429 / 5xx.

When the server still has not answered after the last retry, `write` raises `EngineError`
("The lyrics writer service at ... did not answer ..."): the job fails its songs with that
message and their credits come back. A request the server refuses (another 4xx, e.g. an unknown
model name) fails the same way at once, naming the server's reason.

No torch here: a worker whose writer is served needs no model weights for this role.
"""
from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from .base import EngineError
from .qwen import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_P, ChatWriter

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 2
BACKOFF_SECONDS = 1.0  # the first pause between attempts; doubled each time
MAX_BACKOFF_SECONDS = 30.0
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}


def _public_url(url: str) -> str:
    """The URL without credentials (it is logged and shown to people in error messages)."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts).rstrip("/")


def chat_completions_url(url: str) -> str:
    """The chat-completions endpoint of a base URL: ``http://llm:8000/v1`` ->
    ``http://llm:8000/v1/chat/completions`` (a URL that already ends so is kept)."""
    url = url.strip().rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + "/chat/completions"


class ServedWriter(ChatWriter):
    """Writer that asks an OpenAI-compatible chat-completions server.

    Args:
        url: the server's base URL (``http://llm:8000/v1``) or its ``.../chat/completions`` URL.
        model: the model name sent with each request (the server's name for it).
        api_key: sent as ``Authorization: Bearer ...`` when given.
        timeout: seconds one request may take (connecting, and waiting for the whole answer).
        retries: further attempts after a failed one (unreachable, timed out, 408/429/5xx),
            with a pause of `backoff` seconds, doubled each time (at most 30 s).
        max_new_tokens / temperature / top_p: as the in-process writer's (sent as
            ``max_tokens``, ``temperature``, ``top_p``: fields every such server accepts).
        transport: an `httpx` transport (tests); None for the network.
    """

    offline = False

    def __init__(
        self,
        url: str,
        *,
        model: str,
        api_key: str | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        backoff: float = BACKOFF_SECONDS,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url or not url.strip():
            raise ValueError("ServedWriter needs the server's URL (WRITER_URL)")
        if not model:
            raise ValueError("ServedWriter needs the model name to send (WRITER_SERVED_MODEL)")
        self.endpoint = chat_completions_url(url)
        self.url = _public_url(url.strip())
        self.model_id = model
        self.name = model
        self.timeout = float(timeout if timeout is not None else DEFAULT_TIMEOUT)
        self.retries = max(0, int(retries if retries is not None else DEFAULT_RETRIES))
        self.backoff = max(0.0, float(backoff))
        self.max_new_tokens = int(max_new_tokens or DEFAULT_MAX_NEW_TOKENS)
        self.temperature = float(temperature if temperature is not None else DEFAULT_TEMPERATURE)
        self.top_p = float(top_p if top_p is not None else DEFAULT_TOP_P)
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
            transport=transport,
            follow_redirects=False,
        )
        self.requests = 0  # HTTP requests sent (retries included)
        self.failures = 0  # writes that ended in an EngineError
        self._start_stats()
        log.info("writer %s served at %s (timeout %.0f s, %d retries)", self.model_id, self.url, self.timeout,
                 self.retries)

    # ------------------------------------------------------------------ the transport

    def payload(self, messages: list[dict[str, str]], temperature: float | None = None) -> dict[str, Any]:
        """The chat-completions request body for one attempt."""
        return {
            "model": self.model_id,
            "messages": messages,
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature if temperature is None else temperature,
            "top_p": self.top_p,
            "stream": False,
        }

    def _pause(self, attempt: int, response: httpx.Response | None) -> float:
        wait = min(MAX_BACKOFF_SECONDS, self.backoff * (2 ** attempt))
        if response is not None:
            after = response.headers.get("Retry-After", "")
            if after.strip().isdigit():
                wait = min(MAX_BACKOFF_SECONDS, max(wait, float(after)))
        return wait

    def generate(self, messages: list[dict[str, str]], *, temperature: float | None = None) -> str:
        """One chat completion from the server: the assistant's reply text.

        Raises `EngineError` when the server cannot be reached, times out or fails (after the
        retries), refuses the request, or answers with something that is not a chat completion.
        """
        body = self.payload(messages, temperature)
        attempts = self.retries + 1
        problem = ""
        started = time.monotonic()
        for attempt in range(attempts):
            response = None
            self.requests += 1
            try:
                response = self.client.post(self.endpoint, json=body)
            except httpx.TimeoutException:
                problem = f"no answer within {self.timeout:.0f} s"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if response.status_code < 300:
                    return self._read(response, started)
                detail = _error_detail(response)
                problem = f"HTTP {response.status_code}{': ' + detail if detail else ''}"
                if response.status_code not in RETRY_STATUSES:
                    self.failures += 1
                    raise EngineError(f"The lyrics writer service at {self.url} refused the request ({problem}).")
            if attempt + 1 < attempts:
                wait = self._pause(attempt, response)
                log.warning("writer service at %s: attempt %d of %d failed (%s); trying again in %.1f s",
                            self.url, attempt + 1, attempts, problem, wait)
                time.sleep(wait)
        self.failures += 1
        log.error("writer service at %s did not answer after %d attempt(s): %s", self.url, attempts, problem)
        raise EngineError(
            f"The lyrics writer service at {self.url} did not answer after {attempts} "
            f"attempt{'s' if attempts != 1 else ''} ({problem[:160]})."
        )

    def _read(self, response: httpx.Response, started: float) -> str:
        try:
            data = response.json()
            message = data["choices"][0]["message"]
            content = message.get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            self.failures += 1
            raise EngineError(
                f"The lyrics writer service at {self.url} answered with something that is not a chat completion."
            ) from None
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        usage = data.get("usage") or {}
        self.last.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.last.new_tokens += int(usage.get("completion_tokens") or 0)
        self.last.seconds += time.monotonic() - started
        return str(content)

    def probe(self, timeout: float = 3.0) -> tuple[bool, str]:
        """(reachable, what was seen): a quick look at the server (``GET .../models``) for the
        worker's start-up log. Writing does not depend on it."""
        models_url = self.endpoint.removesuffix("/chat/completions") + "/models"
        try:
            response = self.client.get(models_url, timeout=timeout)
        except httpx.HTTPError as exc:
            return False, f"not reachable now ({type(exc).__name__})"
        if response.status_code >= 400:
            return True, f"answers (HTTP {response.status_code} for /models)"
        try:
            names = [m.get("id") for m in response.json().get("data", []) if isinstance(m, dict)]
        except (ValueError, AttributeError):
            names = []
        if names and self.model_id not in names:
            return True, f"answers, but does not list {self.model_id!r} (it lists {', '.join(map(str, names[:3]))})"
        return True, "answers"

    def close(self) -> None:
        self.client.close()

    def describe(self) -> dict[str, Any]:
        """Facts for logs and the UI."""
        return {
            "model": self.model_id,
            "url": self.url,
            "timeout": self.timeout,
            "retries": self.retries,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }


def _error_detail(response: httpx.Response) -> str:
    """The server's reason for an error answer, short."""
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:120]
    if isinstance(data, dict):
        detail = data.get("detail") or data.get("error") or data.get("message") or ""
        if isinstance(detail, dict):
            detail = detail.get("message") or ""
        return str(detail)[:120]
    return ""
