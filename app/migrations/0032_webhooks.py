"""Outbound webhooks: a person's endpoints, the deliveries (the outbox the worker sends from)
and the log of every attempt."""
import models


def upgrade(database, migrator):
    database.create_tables([models.WebhookEndpoint, models.WebhookDelivery, models.WebhookAttempt], safe=True)
