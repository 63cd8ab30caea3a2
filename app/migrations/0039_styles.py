"""Styles: a person's trained styles (`style`: a LoRA adapter, or the offline engine's JSON bias,
with its status, report and adapter file's key and hash), the songs and uploads each learned
from (`style_sample`), and on each song the style it was made with (`song.style_id`, set null
when the style is deleted) and its adapter's hash (`song.style_hash`)."""
import peewee as pw

import models
from app.migrate import add_missing_columns


def upgrade(database, migrator):
    database.create_tables([models.Style], safe=True)
    add_missing_columns(database, migrator, "song",
                        style_id=pw.ForeignKeyField(models.Style, null=True, on_delete="SET NULL",
                                                    field=models.Style.id),
                        style_hash=pw.CharField(max_length=64, default=""))
    database.create_tables([models.StyleSample], safe=True)
