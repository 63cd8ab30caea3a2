"""Full-text search over songs' titles, tags and lyrics (core.search has the details).

PostgreSQL: a stored generated tsvector column `song.search_vector` (title weighted A, tags B,
lyrics C, the 'simple' configuration) and its GIN index `song_search_vector`; adding the column
computes it for every song there is. SQLite: the FTS5 table `song_fts` over the song table, the
triggers that keep it current, and the index filled from every song there is.

Idempotent: `ADD COLUMN IF NOT EXISTS`, `CREATE INDEX IF NOT EXISTS`, `CREATE VIRTUAL TABLE IF NOT
EXISTS`; the triggers are re-created and the FTS index rebuilt. Where the database cannot hold
the index (an SQLite library without FTS5, PostgreSQL before 12) it logs that and changes nothing:
search then scans with LIKE as before."""
from core import search


def upgrade(database, migrator):
    search.install(database)
