"""Precomputed feed rankings and the indexes of the paged lists (core.feed_rank has the details).

- `feed_rank`: Trending and the category sections as rows (kind, position, song, score), written
  by the worker every FEED_REFRESH_SECONDS, so no page request runs an aggregate.
- `category.published_count`: each category's publicly visible songs, counted by the same step.
- song (user_id, published, status, published_at, id): a profile's songs (and each followed
  account's in the Following tab), newest first from the "Load more" cursor on, walked in the
  index's order; published and processed songs only, so the unpublished ones (no publication
  time) are never stepped over.
- song (user_id, created_at DESC, variant, id): the library (and the API's song list) in its own
  order (newest first, variants in order), so a page after a cursor is an index range.
- category (published_count DESC, name): the category list, biggest first.

Discover's Newest already has song (published, status, published_at, id) from migration 0020.
The rankings are not filled here: the first refresh (the worker's, `flask feed refresh`, or the
first Discover request, once) fills them. Idempotent: `CREATE ... IF NOT EXISTS`, on SQLite and
PostgreSQL alike.
"""
import peewee as pw

import models
from app.migrate import add_missing_columns

INDEXES = (
    ("song_user_published", "song", '"user_id", "published", "status", "published_at", "id"'),
    ("song_library", "song", '"user_id", "created_at" DESC, "variant", "id"'),
    ("category_published_count", "category", '"published_count" DESC, "name"'),
)


def upgrade(database, migrator):
    add_missing_columns(database, migrator, "category", published_count=pw.IntegerField(default=0))
    database.create_tables([models.FeedRank], safe=True)
    for name, table, columns in INDEXES:
        database.execute_sql(f'CREATE INDEX IF NOT EXISTS "{name}" ON "{table}" ({columns})')
