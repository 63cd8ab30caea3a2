"""Numbered migration scripts (app/migrations/NNNN_name.py), applied in order by `flask db upgrade`.

Each script defines `upgrade(database, migrator)`. The first creates the tables; later ones make
additive changes through playhouse.migrate (use `add_missing_columns`, so a database created
from the current models at step one is not altered twice).
"""
from __future__ import annotations

import importlib
import logging
import pkgutil

import peewee as pw
from playhouse.migrate import PostgresqlMigrator, SqliteMigrator

import models

log = logging.getLogger("tunesmith.migrate")


def migrator_for(database: pw.Database):
    if isinstance(database, pw.SqliteDatabase):
        return SqliteMigrator(database)
    return PostgresqlMigrator(database)


def available() -> list[str]:
    from . import migrations

    return sorted(m.name for m in pkgutil.iter_modules(migrations.__path__) if m.name[:4].isdigit())


def applied() -> set[str]:
    database = models.db.obj
    if not database.table_exists(models.SchemaMigration._meta.table_name):
        return set()
    return {m.name for m in models.SchemaMigration.select()}


def upgrade() -> list[str]:
    """Apply pending migrations; returns the names applied."""
    database = models.db.obj
    database.create_tables([models.SchemaMigration], safe=True)
    done = applied()
    ran = []
    for name in available():
        if name in done:
            continue
        module = importlib.import_module(f"app.migrations.{name}")
        with database.atomic():
            module.upgrade(database, migrator_for(database))
            models.SchemaMigration.create(name=name)
        log.info("applied migration %s", name)
        ran.append(name)
    return ran


def add_missing_columns(database: pw.Database, migrator, table: str, **fields: pw.Field) -> None:
    from playhouse.migrate import migrate

    existing = {c.name for c in database.get_columns(table)}
    ops = [migrator.add_column(table, name, field) for name, field in fields.items() if name not in existing]
    if ops:
        migrate(*ops)
