"""Flask CLI: `flask db upgrade`, `flask users make-admin`, `flask credits grant`, ..."""
from __future__ import annotations

import click
from flask import Flask, current_app

import models


def register_cli(app: Flask) -> None:
    @app.cli.group("db")
    def db_group():
        """Database schema."""

    @db_group.command("upgrade")
    def db_upgrade():
        """Apply pending migrations."""
        from .migrate import upgrade

        ran = upgrade()
        click.echo(f"applied {len(ran)} migration(s): {', '.join(ran)}" if ran else "database is up to date")

    @db_group.command("status")
    def db_status():
        from .migrate import applied, available

        done = applied()
        for name in available():
            click.echo(f"{'applied' if name in done else 'pending'}  {name}")

    @app.cli.group("users")
    def users_group():
        """User accounts."""

    @users_group.command("make-admin")
    @click.argument("email")
    def make_admin(email):
        user = _user(email)
        models.User.update(is_admin=True).where(models.User.id == user.id).execute()
        click.echo(f"{user.email} is now an admin")

    @app.cli.group("credits")
    def credits_group():
        """The credit ledger."""

    @credits_group.command("grant")
    @click.argument("email")
    @click.argument("amount", type=int)
    @click.option("--reason", default="", help="Why (shown in the user's history).")
    def credits_grant(email, amount, reason):
        """Add (or with a negative AMOUNT, take) credits as an admin ledger entry."""
        import uuid

        user = _user(email)
        if amount == 0:
            raise click.BadParameter("AMOUNT must not be zero")
        with models.write_transaction():
            try:
                entry = models.apply_credits(user, amount, "admin", f"admin:{uuid.uuid4().hex}",
                                             reason or "Adjusted by an admin")
            except models.InsufficientCredits as exc:
                raise click.ClickException(str(exc))
        click.echo(f"{user.email}: {amount:+d} credits, balance {entry.balance_after}")

    @app.cli.command("reconcile")
    def reconcile():
        """Re-enqueue orphaned generations and fail-and-refund stuck ones."""
        from jobs.reconcile import reconcile as run

        report = run(current_app.extensions["tunesmith_config"])
        click.echo(report.summary())


def _user(email: str) -> models.User:
    user = models.User.get_or_none(models.User.email == email.strip().lower())
    if user is None:
        raise click.ClickException(f"no user with email {email}")
    return user
