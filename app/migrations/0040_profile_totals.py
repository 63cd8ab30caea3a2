"""Profile totals without an aggregate per page: `user.song_count`, `listen_total`, `like_total`
(over the account's public songs: published, processed, not hidden) and `follower_count`, kept
by triggers on the song and follow tables (the same on SQLite and PostgreSQL) and filled here
from the rows there are (core.profiles.install_totals has the details).

Idempotent: the columns are added where missing, the triggers re-created, the counters
recomputed."""
import peewee as pw

from app.migrate import add_missing_columns
from core import profiles


def upgrade(database, migrator):
    add_missing_columns(database, migrator, "user",
                        song_count=pw.IntegerField(default=0),
                        listen_total=pw.BigIntegerField(default=0),
                        like_total=pw.BigIntegerField(default=0),
                        follower_count=pw.IntegerField(default=0))
    profiles.install_totals(database)
