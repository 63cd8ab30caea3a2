"""Profiles and follows: every account gets a public handle (`/u/<handle>`), a bio and an
avatar; `follow` records who follows whom.

Accounts that exist get a handle derived from their display name or the first part of their
address (core.profiles: slugified, padded to 3 characters, a numeric suffix for duplicates), in
account order, so the result is deterministic. Then the unique index is built, on SQLite and
PostgreSQL alike (`CREATE UNIQUE INDEX IF NOT EXISTS`, under the name peewee gives it when it
creates the table from the model, so a database made from the current models is not altered
twice)."""
import peewee as pw

import models
from app.migrate import add_missing_columns
from core import profiles


def upgrade(database, migrator):
    add_missing_columns(database, migrator, "user",
                        handle=pw.CharField(max_length=30, null=True),
                        bio=pw.TextField(default=""),
                        avatar_key=pw.CharField(max_length=300, null=True))
    profiles.fill_missing_handles()
    database.execute_sql('CREATE UNIQUE INDEX IF NOT EXISTS "user_handle" ON "user" ("handle")')
    database.create_tables([models.Follow], safe=True)
