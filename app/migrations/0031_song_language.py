"""Songs remember the language they are sung in (ACE-Step's `vocal_language`)."""
import peewee as pw

from app.migrate import add_missing_columns


def upgrade(database, migrator):
    add_missing_columns(database, migrator, "song", language=pw.CharField(max_length=8, default=""))
