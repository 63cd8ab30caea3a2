"""Moderation: a song can be hidden by a moderator (`hidden_at`, with the `hidden_reason` its
owner sees), people report songs (`report`) and every moderation step is logged
(`moderation_action`)."""
import peewee as pw

import models
from app.migrate import add_missing_columns


def upgrade(database, migrator):
    add_missing_columns(database, migrator, "song",
                        hidden_at=pw.DateTimeField(null=True),
                        hidden_reason=pw.CharField(max_length=200, default=""))
    database.create_tables([models.Report, models.ModerationAction], safe=True)
