"""The storage sweeper: objects that no song or generation row points at are removed.

They come from runs that were cut short — a worker killed between its uploads and its database
write, uploads made just before the store became unreachable, the files of a run that was
replaced by a retry (`attempt-N/` folders older than the song's current attempt), audio uploaded
for a studio operation whose generation is gone. An object younger than the grace period is left
alone (its run may still be writing the row). Never removed: any key a Song row holds, anything
under the folder of the song's current attempt, its stems, and uploads of a live generation.

    flask storage sweep --dry-run    lists what would go
    flask storage sweep              removes it (the reconciler also runs it every
                                     STORAGE_SWEEP_INTERVAL seconds)
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field

from models import Generation, Song

log = logging.getLogger("tunesmith.sweep")

SONG_KEY = re.compile(r"^users/(?P<user>\d+)/songs/(?P<song>[0-9a-f]{1,32})/(?P<rest>.+)$")
UPLOAD_KEY = re.compile(r"^users/(?P<user>\d+)/uploads/(?P<gen>[0-9a-f]{1,32})/(?P<rest>.+)$")
ATTEMPT = re.compile(r"^attempt-(\d+)/")


@dataclass
class SweepReport:
    orphans: list[str] = field(default_factory=list)
    kept: int = 0
    young: int = 0
    removed: int = 0

    def summary(self) -> str:
        return (f"{len(self.orphans)} orphaned object(s) {'removed' if self.removed else 'found'}; "
                f"{self.kept} kept, {self.young} younger than the grace period")


def _is_orphan(key: str, songs: dict[str, Song], gens: set[str]) -> bool:
    m = SONG_KEY.match(key)
    if m:
        song = songs.get(m["song"])
        if song is None or str(song.user_id) != m["user"]:
            return True
        if key in {song.audio_key, song.stream_key, song.cover_key} or m["rest"].startswith("stems/"):
            return False
        if song.status == "processing":  # the running attempt's files are live, earlier ones are not
            run = ATTEMPT.match(m["rest"])
            return (int(run.group(1)) if run else 1) != song.attempt
        return True  # a finished, failed or re-queued song holds every live key in its row
    m = UPLOAD_KEY.match(key)
    if m:
        return m["gen"] not in gens
    return False  # not a key this app writes: leave it


def sweep(storage, grace: float = 3600.0, dry_run: bool = False, now: float | None = None) -> SweepReport:
    report = SweepReport()
    now = time.time() if now is None else now
    entries = storage.entries("users/")
    song_ids = {m["song"] for key, _ in entries if (m := SONG_KEY.match(key))}
    gen_ids = {m["gen"] for key, _ in entries if (m := UPLOAD_KEY.match(key))}
    songs: dict[str, Song] = {}
    ids = sorted(song_ids)
    for i in range(0, len(ids), 500):
        songs.update({s.id: s for s in Song.select().where(Song.id.in_(ids[i:i + 500]))})
    gens: set[str] = set()
    gids = sorted(gen_ids)
    for i in range(0, len(gids), 500):
        gens |= {g.id for g in Generation.select(Generation.id).where(Generation.id.in_(gids[i:i + 500]))}
    for key, modified in entries:
        if not _is_orphan(key, songs, gens):
            report.kept += 1
        elif now - modified < grace:
            report.young += 1
        else:
            report.orphans.append(key)
    if not dry_run:
        for key in report.orphans:
            storage.delete(key)
            report.removed += 1
        if report.removed:
            log.warning("storage sweep: %s", report.summary())
    return report
