"""Create every table of the data model."""
import models


def upgrade(database, migrator):
    database.create_tables(models.ALL_MODELS, safe=True)
