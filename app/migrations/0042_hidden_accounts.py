"""The accounts whose songs nobody else may see (suspended or deleted), as a partial index of
their ids: `user_hidden`. Search finds its candidates without joining each one's author: it
asks whether the song's account is among these few (`Song.publicly_visible_alone`), one
index-only read of the partial index, whatever the number of accounts.

Idempotent: `CREATE INDEX IF NOT EXISTS`, on SQLite and PostgreSQL alike."""


def upgrade(database, migrator):
    database.execute_sql('CREATE INDEX IF NOT EXISTS "user_hidden" ON "user" ("id") '
                         "WHERE suspended_at IS NOT NULL OR deleted_at IS NOT NULL")
