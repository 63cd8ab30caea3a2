"""Accounts as people expect them: a confirmed address (`email_verified_at`), suspension by an
admin (`suspended_at`), the tombstone of a deleted account (`deleted_at`), two-factor sign-in
(`totp_secret`); the links sent by mail (`mail_token`) and data exports (`data_export`).

Existing accounts stay unconfirmed: with REQUIRE_EMAIL_VERIFICATION on they are asked to confirm
their address (a resend button on every page) before they can create."""
import peewee as pw

import models
from app.migrate import add_missing_columns


def upgrade(database, migrator):
    add_missing_columns(database, migrator, "user",
                        email_verified_at=pw.DateTimeField(null=True),
                        suspended_at=pw.DateTimeField(null=True),
                        deleted_at=pw.DateTimeField(null=True),
                        totp_secret=pw.CharField(max_length=64, null=True))
    database.create_tables([models.MailToken, models.DataExport], safe=True)
