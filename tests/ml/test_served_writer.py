"""The served writer (WRITER_URL) against a real OpenAI-compatible server over real HTTP.

`transformers serve` (transformers' `serving` extra) runs in a subprocess on a loopback port,
serving the tiny random-weight Qwen2 writer that tests/ml/tiny_models.py saves; it is started
once for the module. The served writer talks to it exactly as it would to vLLM, SGLang or TGI.
A closed port stands in for a server that is down.
"""
from __future__ import annotations

import html
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
for _serving in ("fastapi", "uvicorn", "openai"):
    pytest.importorskip(_serving)

from jobs.engines.base import EngineError, SongSpec, WriteRequest  # noqa: E402
from jobs.engines.qwen import build_messages  # noqa: E402
from jobs.engines.served_writer import ServedWriter  # noqa: E402
from tests.helpers import connected, free_port, run_worker, wait_for_port  # noqa: E402

pytestmark = pytest.mark.ml

ROOT = Path(__file__).resolve().parents[2]
KEY_RE = re.compile(r"^[A-G][#b]? (major|minor)$")
PASSWORD = "served writer tests 7 quiet lanterns"  # not on any common-password list


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory):
    """`transformers serve` on the tiny writer, on a free loopback port (one per module)."""
    model = str(tiny.root / tiny.writer)
    port = free_port()
    log_path = tmp_path_factory.mktemp("served") / "serve.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2", TOKENIZERS_PARALLELISM="false")
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from transformers.cli.transformers import main; sys.exit(main())",
             "serve", model, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        try:
            wait_for_port(port, timeout=90, proc=proc)
        except RuntimeError:
            pytest.fail("transformers serve did not start:\n" + log_path.read_text()[-3000:])
        yield {"url": f"http://127.0.0.1:{port}/v1", "model": model, "proc": proc, "log": log_path}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def closed_url():
    """A loopback URL whose port is bound but not listening: every connection is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        sock.close()


@pytest.fixture
def writer_url(request, served):
    """The served writer's URL for the worker's app: the real server, or ("down") a closed port."""
    if getattr(request, "param", "up") == "down":
        return request.getfixturevalue("closed_url")
    return served["url"]


@pytest.fixture
def app_overrides(tiny, served, writer_url, monkeypatch):
    """The worker's writer is served; music and cover are the offline engines (fast)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tiny.values(ENGINE_MUSIC="offline", ENGINE_COVER="offline", WRITER_URL=writer_url,
                       WRITER_SERVED_MODEL=served["model"], WRITER_MAX_NEW_TOKENS=24, WRITER_RETRIES=1)


# ------------------------------------------------------------------------------ the writer alone


def test_served_writer_writes_a_valid_song_over_http(served, tiny):
    from transformers import AutoTokenizer

    writer = ServedWriter(served["url"], model=served["model"], max_new_tokens=24, timeout=60, retries=0)
    request = WriteRequest(mode="description", description="a dreamy synthwave song about rain, 110 bpm, A minor")

    # The server renders the very chat the in-process writer renders: same prompt tokens.
    messages = build_messages(request)
    writer.generate(messages)
    tokenizer = AutoTokenizer.from_pretrained(served["model"])
    local = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert writer.last.prompt_tokens == len(local)
    assert 0 < writer.last.new_tokens <= 24

    sent = writer.requests
    spec = writer.write(request)
    assert isinstance(spec, SongSpec)
    # Random weights never write JSON: the answer was retried once, then repaired from the
    # offline writer, like the in-process writer does.
    assert writer.last.attempts == 2 and writer.requests - sent == 2
    assert writer.last.new_tokens > 0 and "title" in writer.last.fallback_fields
    assert spec.title and ("[verse]" in spec.lyrics or "[chorus]" in spec.lyrics)
    assert (spec.bpm, spec.key) == (110, "A minor")  # the person's words win
    assert spec.tags.endswith("110 bpm, a minor") and KEY_RE.match(spec.key)
    assert 1 <= len(spec.categories) <= 3 and spec.time_signature


def test_served_writer_names_a_refused_model_at_once(served):
    writer = ServedWriter(served["url"], model="someone/another-model", max_new_tokens=8, retries=3)
    with pytest.raises(EngineError, match=r"refused the request \(HTTP 400: Server is pinned to"):
        writer.write(WriteRequest(mode="description", description="a song"))
    assert writer.requests == 1  # a refusal is not retried


def test_served_writer_gives_up_after_bounded_retries(closed_url):
    writer = ServedWriter(closed_url, model="m", retries=2, backoff=0.2, timeout=5)
    started = time.monotonic()
    with pytest.raises(EngineError) as info:
        writer.write(WriteRequest(mode="description", description="a song"))
    waited = time.monotonic() - started
    assert str(info.value).startswith(f"The lyrics writer service at {closed_url} did not answer after 3 attempts")
    assert writer.requests == 3 and 0.6 <= waited < 5  # back-off 0.2 s, then 0.4 s


def test_writer_url_selects_the_served_writer_unless_the_writer_is_offline(served, tmp_path):
    from config import TestConfig
    from jobs.engines import load_engines

    base = dict(ENGINE="auto", ENGINE_MUSIC="offline", ENGINE_COVER="offline", MODEL_DIR=str(tmp_path),
                WRITER_URL=served["url"], WRITER_SERVED_MODEL=served["model"])
    # auto: no CUDA and no writer weights here, yet the writer is the served one
    engines = load_engines(TestConfig(**base))
    assert type(engines.writer).__name__ == "ServedWriter" and engines.offline_roles == ["music", "cover"]
    assert engines.reasons["writer"] == f"ENGINE=auto and WRITER_URL is set: served at {served['url']} (answers)"
    assert f"writer={served['model']} (real" in engines.describe()
    # ENGINE_WRITER=offline still wins over WRITER_URL
    offline = load_engines(TestConfig(**base, ENGINE_WRITER="offline"))
    assert offline.writer.offline and offline.reasons["writer"] == "ENGINE_WRITER=offline"


# ------------------------------------------------------------------------------ whole jobs


@pytest.mark.parametrize("backend", ["sqlite"])
def test_job_with_a_served_writer_is_processed(app, client, auth, served):
    from jobs import runtime
    from models import Song

    runtime.set_engines(None)  # this worker builds its engines from the app's settings
    try:
        auth.register(password=PASSWORD)
        resp = auth.post("/create", data={"mode": "description", "description": "a lofi song about rain, 85 bpm",
                                          "duration": "10", "variants": "2"})
        assert resp.status_code == 303
        run_worker(app)
        engines = runtime.engines()
        assert type(engines.writer).__name__ == "ServedWriter" and not engines.writer.offline
        assert engines.reasons["writer"].startswith("ENGINE=real and WRITER_URL is set: served at "
                                                    f"{served['url']} (answers)")
        assert engines.writer.requests >= 1
    finally:
        runtime.set_engines(None)
    with connected(app):
        songs = list(Song.select().order_by(Song.created_at, Song.variant))
    assert [s.status for s in songs] == ["processed", "processed"], [s.error for s in songs]
    for song in songs:
        assert song.writer_engine == served["model"] and song.title and song.lyrics
        page = html.unescape(client.get(f"/songs/{song.id}").get_data(as_text=True))
        assert "Writer" in page and served["model"] in page and song.title in page


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("writer_url", ["down"], indirect=True)
def test_job_fails_with_credits_back_when_the_writer_service_is_down(app, client, auth, writer_url):
    from jobs import runtime
    from models import Song, User

    runtime.set_engines(None)
    try:
        auth.register(password=PASSWORD)
        with connected(app):
            before = User.get(User.email == "alice@example.com").balance()
        resp = auth.post("/create", data={"mode": "description", "description": "a song nobody writes",
                                          "duration": "10", "variants": "2"})
        assert resp.status_code == 303
        run_worker(app)
        assert runtime.engines().reasons["writer"].endswith("(not reachable now (ConnectError))")
    finally:
        runtime.set_engines(None)
    with connected(app):
        songs = list(Song.select().order_by(Song.created_at, Song.variant))
        after = User.get(User.email == "alice@example.com").balance()
    message = f"The lyrics writer service at {writer_url} did not answer after 2 attempts"
    assert [s.status for s in songs] == ["failed", "failed"]
    assert all(message in s.error for s in songs), [s.error for s in songs]
    assert after == before
    page = html.unescape(client.get("/library").get_data(as_text=True))
    assert message in page and "credit for this song was returned" in page
