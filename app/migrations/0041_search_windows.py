"""Search that reads no more than it must as the feed grows (core.search has the details).

PostgreSQL: a GIN index over the title's own tsvector, `song_title_search`, so the title matches
a search ranks first are found without reading every song whose tags or lyrics say the word, and
`song_public_published_at`, the publication times of published songs alone (narrower than the
Newest index), from which a search window's songs are read.
The search windows (where the newest 10,000, 20,000, ... public songs start) are rows of
`feed_rank`, written by the next feed refresh: nothing to create for them. SQLite: nothing (its
FTS5 index answers a title-only match by itself).

Idempotent: `CREATE INDEX IF NOT EXISTS`."""
import peewee as pw

from core import search


def upgrade(database, migrator):
    if not isinstance(database, pw.SqliteDatabase):
        search.install(database)
