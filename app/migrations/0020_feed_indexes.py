"""Indexes for the public feed's orderings, trending and category sections.

- song (published, status, published_at, id): Newest, search results and category sections walk
  published, processed songs by publication time without a sort.
- song_category (category_id, song_id): category filter and sections start from a category.
- like (song_id, created_at): a song's likes (cascading deletes, recounts) without a table scan.
- listen (created_at, song_id): Trending reads the recent window's listens from the index alone.

Published songs that have no publication time get their creation time, so the Newest ordering
never meets a NULL. Idempotent: `CREATE INDEX IF NOT EXISTS` on SQLite and PostgreSQL.
"""

INDEXES = (
    ("song_feed_published_at", "song", ("published", "status", "published_at", "id")),
    ("song_category_category_song", "song_category", ("category_id", "song_id")),
    ("like_song_created_at", "like", ("song_id", "created_at")),
    ("listen_created_at_song", "listen", ("created_at", "song_id")),
)


def upgrade(database, migrator):
    for name, table, columns in INDEXES:
        cols = ", ".join(f'"{c}"' for c in columns)
        database.execute_sql(f'CREATE INDEX IF NOT EXISTS "{name}" ON "{table}" ({cols})')
    database.execute_sql('UPDATE "song" SET "published_at" = "created_at" '
                         'WHERE "published" = %s AND "published_at" IS NULL' % database.param, (True,))
