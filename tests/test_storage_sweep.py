"""The storage sweeper removes objects no row points at, after a grace period, and never a file a
song uses (`flask storage sweep [--dry-run]`, and the reconciler once per interval)."""
from __future__ import annotations

import time

from core import catalogue
from core.storage import get_storage
from core.sweep import sweep
from models import Song
from tests.helpers import connected, run_worker


def _make_song(app, auth) -> Song:
    auth.register()
    auth.post("/create", data={"mode": "description", "description": "a song to keep", "duration": "10",
                               "variants": "1"})
    run_worker(app)
    with connected(app):
        song = Song.get()
    assert song.status == "processed"
    return song


def test_sweep_lists_then_removes_orphans_and_keeps_every_file_a_song_uses(app, client, auth):
    song = _make_song(app, auth)
    cfg = app.extensions["tunesmith_config"]
    store = get_storage(cfg)
    prefix = catalogue.song_prefix(song.user_id, song.id)
    kept = store.list(prefix)
    assert {song.audio_key, song.stream_key, song.cover_key} <= set(kept)
    orphans = [
        catalogue.song_prefix(song.user_id, "0" * 32) + "master.wav",  # a killed upload: no row
        prefix + "attempt-2/master.wav",  # a run that never owned the finished song
        catalogue.upload_key(song.user_id, "f" * 32, "wav"),  # audio for a generation that is gone
    ]
    for key in orphans:
        store.put(key, b"RIFF orphan", "audio/wav")
    store.put("elsewhere/readme.txt", b"not ours", "text/plain")

    with connected(app):
        young = sweep(store, grace=3600)  # just written: inside the grace period
        assert young.orphans == [] and young.young == len(orphans)

    runner = app.test_cli_runner()
    listed = runner.invoke(args=["storage", "sweep", "--dry-run", "--grace", "0"])
    assert listed.exit_code == 0, listed.output
    for key in orphans:
        assert f"would remove  {key}" in listed.output
    assert all(store.exists(k) for k in orphans)  # a dry run removes nothing

    done = runner.invoke(args=["storage", "sweep", "--grace", "0"])
    assert done.exit_code == 0, done.output
    assert "3 orphaned object(s) removed" in done.output
    assert not any(store.exists(k) for k in orphans)
    assert store.list(prefix) == kept and store.exists("elsewhere/readme.txt")
    assert client.get(f"/songs/{song.id}/audio").status_code == 302  # the song still plays
    with connected(app):
        assert sweep(store, grace=0, now=time.time() + 10).orphans == []  # nothing left to find


def test_sweep_keeps_the_running_attempt_and_drops_the_replaced_one(app, auth):
    song = _make_song(app, auth)
    cfg = app.extensions["tunesmith_config"]
    store = get_storage(cfg)
    prefix = catalogue.song_prefix(song.user_id, song.id)
    with connected(app):  # the song is being made again by run 3; runs 1 and 2 left files
        Song.update(status="processing", attempt=3, audio_key=None, stream_key=None, cover_key=None).where(
            Song.id == song.id).execute()
        store.put(prefix + "attempt-2/master.wav", b"RIFF run 2", "audio/wav")
        store.put(prefix + "attempt-3/master.wav", b"RIFF run 3", "audio/wav")
        report = sweep(store, grace=0, now=time.time() + 10)
    assert prefix + "attempt-3/master.wav" not in report.orphans
    assert prefix + "attempt-2/master.wav" in report.orphans and song.audio_key in report.orphans
    assert store.exists(prefix + "attempt-3/master.wav") and not store.exists(prefix + "attempt-2/master.wav")
