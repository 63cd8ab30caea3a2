"""Songs remember which run owns them (`attempt`) and when that run last showed life
(`heartbeat_at`): the reconciler retries the songs of a dead worker, and a late write of the
run it replaced is refused."""
import peewee as pw

from app.migrate import add_missing_columns


def upgrade(database, migrator):
    add_missing_columns(database, migrator, "song", attempt=pw.IntegerField(default=0),
                        heartbeat_at=pw.DateTimeField(null=True))
