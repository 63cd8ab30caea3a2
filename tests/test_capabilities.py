"""Worker capability records in the real Redis, and the refusal the web gives when no live worker
can do a studio operation (core/capabilities.py)."""
from __future__ import annotations

import json
import time
import uuid
from types import SimpleNamespace

import pytest

from core import capabilities
from core.capabilities import engine_caps, fleet, record, refusal
from core.errors import UserError

TURBO = {"model": "ACE-Step/acestep-v15-turbo", "kind": "turbo", "tasks": ["repaint", "text2music"],
         "offline": False, "stems": None, "stems_offline": None}
BASE = {"model": "ACE-Step/acestep-v15-base", "kind": "base", "tasks": ["cover", "extract", "repaint", "text2music"],
        "offline": False, "stems": None, "stems_offline": None}


@pytest.fixture
def caps(redis_conn, monkeypatch):
    """An isolated key space in the test Redis (other sessions may share the database)."""
    prefix = f"tunesmith:test-caps-{uuid.uuid4().hex[:8]}:"
    monkeypatch.setattr(capabilities, "KEY_PREFIX", prefix)
    yield redis_conn
    for k in redis_conn.scan_iter(match=prefix + "*"):
        redis_conn.delete(k)


@pytest.fixture
def config():
    from config import TestConfig

    return TestConfig()


def test_record_is_json_under_a_per_worker_key_with_a_ttl(caps):
    record(caps, "gpu-1", TURBO, ttl=30)
    raw = caps.get(capabilities.KEY_PREFIX + "gpu-1")
    body = json.loads(raw)
    assert {k: body[k] for k in TURBO} == TURBO and body["at"] <= time.time()
    assert 0 < caps.ttl(capabilities.KEY_PREFIX + "gpu-1") <= 30
    record(caps, "gpu-1", BASE, ttl=30)  # renewed with the heartbeat: replaced, not duplicated
    assert [(c["worker"], c["kind"]) for c in fleet(caps)] == [("gpu-1", "base")]


def test_fleet_lists_live_records_only(caps):
    record(caps, "gpu-b", BASE, ttl=30)
    record(caps, "gpu-a", TURBO, ttl=1)
    caps.set(capabilities.KEY_PREFIX + "broken", "{not json", ex=30)
    assert [c["worker"] for c in fleet(caps)] == ["gpu-a", "gpu-b"]
    time.sleep(1.2)
    assert [c["worker"] for c in fleet(caps)] == ["gpu-b"]  # gpu-a's TTL ran out: it is gone


def test_no_record_means_no_fleet_information_and_everything_is_accepted(caps, config):
    assert fleet(caps) == []
    assert all(refusal(caps, op) is None for op in ("retake", "extend", "repaint", "remix", "stems"))
    assert refusal(config, "stems") is None


def test_turbo_only_fleet_refuses_stems_and_remix_by_name(caps):
    record(caps, "gpu-1", TURBO, ttl=30)
    stems = refusal(caps, "stems")
    assert isinstance(stems, UserError) and stems.status == 422 and stems.code == "unsupported"
    assert stems.message == ("The loaded checkpoint (acestep-v15-turbo) cannot separate stems; "
                             "stems need a base checkpoint or the Demucs separator.")
    remix = refusal(caps, "remix")
    assert "acestep-v15-turbo" in remix.message and "cannot remix" in remix.message
    assert "audio tokenizer" in remix.message
    assert remix.as_json()["error"]["operation"] == "remix"
    for op in ("generate", "retake", "extend", "repaint"):
        assert refusal(caps, op) is None


def test_one_capable_worker_is_enough(caps):
    record(caps, "gpu-1", TURBO, ttl=30)
    record(caps, "gpu-2", BASE, ttl=30)
    assert refusal(caps, "stems") is None and refusal(caps, "remix") is None


def test_a_stems_engine_or_the_offline_engines_can_split(caps):
    record(caps, "gpu-1", {**TURBO, "stems": "demucs/htdemucs", "stems_offline": False}, ttl=30)
    assert refusal(caps, "stems") is None
    assert refusal(caps, "remix") is not None  # the separator does not remix
    caps.delete(capabilities.KEY_PREFIX + "gpu-1")
    record(caps, "cpu-1", {"model": "offline-arranger", "kind": "offline", "tasks": [], "offline": True}, ttl=30)
    assert all(refusal(caps, op) is None for op in ("stems", "remix", "extend"))


def test_several_checkpoints_are_named(caps):
    record(caps, "gpu-1", TURBO, ttl=30)
    record(caps, "gpu-2", {**TURBO, "model": "ACE-Step/acestep-v15-turbo-shift1"}, ttl=30)
    message = refusal(caps, "stems").message
    assert message.startswith("The loaded checkpoints (acestep-v15-turbo, acestep-v15-turbo-shift1) cannot")


def test_a_config_counts_the_workers_of_its_queue(caps, config):
    record(caps, "gpu-other", {**BASE, "queues": ["someone-elses-queue"]}, ttl=30)
    assert refusal(config, "stems") is None  # no worker serves this config's queue: nothing known
    record(caps, "gpu-mine", {**TURBO, "queues": [config.QUEUE_NAME, config.HIGH_QUEUE_NAME]}, ttl=30)
    assert "cannot separate stems" in refusal(config, "stems").message  # the base one serves elsewhere
    assert refusal(caps, "stems") is None  # a connection counts every worker


def test_unreachable_redis_accepts():
    from redis import Redis

    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    assert refusal(dead, "stems") is None


def test_unknown_operation_is_a_programming_error(caps):
    with pytest.raises(ValueError):
        refusal(caps, "karaoke")


def test_engine_caps_reads_an_engines_holder():
    turbo_music = SimpleNamespace(offline=False, model_id="ACE-Step/acestep-v15-turbo",
                                  name="ACE-Step/acestep-v15-turbo", kind="turbo",
                                  tasks=frozenset({"text2music", "repaint"}))
    caps = engine_caps(SimpleNamespace(music=turbo_music, writer=object(), cover=object()))
    assert caps == {"model": "ACE-Step/acestep-v15-turbo", "kind": "turbo", "tasks": ["repaint", "text2music"],
                    "offline": False, "stems": None, "stems_offline": None}
    demucs = SimpleNamespace(name="demucs/htdemucs", offline=False)
    with_stems = engine_caps(SimpleNamespace(music=turbo_music, stems=demucs))
    assert (with_stems["stems"], with_stems["stems_offline"]) == ("demucs/htdemucs", False)
    offline = engine_caps(SimpleNamespace(music=SimpleNamespace(offline=True, name="offline-arranger")))
    assert offline["offline"] and offline["kind"] == "offline"
    assert offline["tasks"] == ["cover", "extract", "repaint", "text2music"]


def test_engine_caps_of_the_offline_engines_round_trips(caps):
    from jobs.engines import load_engines
    from config import TestConfig

    engines = load_engines(TestConfig(ENGINE="offline"))
    record(caps, "cpu-1", engine_caps(engines), ttl=30)
    (live,) = fleet(caps)
    assert live["offline"] and live["worker"] == "cpu-1"
    assert refusal(caps, "stems") is None and refusal(caps, "remix") is None
