"""Flask CLI: `flask db upgrade`, `flask users make-admin`, `flask credits grant`, ..."""
from __future__ import annotations

import click
from flask import Flask

import models

from .extensions import settings


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
        from core.reconcile import reconcile as run

        report = run(settings())
        click.echo(report.summary())

    @app.cli.group("feed")
    def feed_group():
        """Discover's precomputed rankings."""

    @feed_group.command("refresh")
    def feed_refresh():
        """Recompute Trending, the category sections and counts now (the worker does it every
        FEED_REFRESH_SECONDS), and build every search tier the feed calls for."""
        from core import feed_rank

        result = feed_rank.refresh(tier_builds=100)
        click.echo(f"feed refreshed: {result.summary()}")

    @app.cli.group("storage")
    def storage_group():
        """The object store."""

    @storage_group.command("sweep")
    @click.option("--dry-run", is_flag=True, help="List the orphaned objects; remove nothing.")
    @click.option("--grace", type=float, default=None,
                  help="Leave objects younger than this many seconds (default STORAGE_SWEEP_GRACE).")
    def storage_sweep(dry_run, grace):
        """Remove objects that no song or generation points at (killed uploads, replaced runs)."""
        from core.storage import get_storage
        from core.sweep import sweep

        cfg = settings()
        report = sweep(get_storage(cfg), grace=cfg.STORAGE_SWEEP_GRACE if grace is None else grace, dry_run=dry_run)
        for key in report.orphans:
            click.echo(f"{'would remove' if dry_run else 'removed'}  {key}")
        click.echo(report.summary())

    register_songs_cli(app)
    register_models_cli(app)


def _user(email: str) -> models.User:
    user = models.User.get_or_none(models.User.email == email.strip().lower())
    if user is None:
        raise click.ClickException(f"no user with email {email}")
    return user


def register_songs_cli(app: Flask) -> None:
    @app.cli.group("songs")
    def songs_group():
        """Make songs from the terminal (through the same queue as the web)."""

    @songs_group.command("generate")
    @click.argument("text")
    @click.option("--mode", type=click.Choice(["description", "lyrics", "described_lyrics"]), default="description",
                  help="description: TEXT describes the song; lyrics / described_lyrics: TEXT is the style tags.")
    @click.option("--lyrics", default="", help="Your lyrics (mode lyrics).")
    @click.option("--about", "described_lyrics", default="", help="What the lyrics are about (mode described_lyrics).")
    @click.option("--instrumental", is_flag=True)
    @click.option("--duration", type=int, default=None)
    @click.option("--variants", type=int, default=None)
    @click.option("--user", "email", default=None, help="Account to charge (default: the first admin).")
    @click.option("--wait/--no-wait", default=False, help="Wait until every variant is finished.")
    @click.option("--timeout", type=float, default=1800.0)
    def songs_generate(text, mode, lyrics, described_lyrics, instrumental, duration, variants, email, wait, timeout):
        """Submit a song, e.g. flask songs generate "cinematic synthwave, 120bpm, minor" --wait"""
        import time

        from core import songs
        from core.errors import UserError
        from core.storage import get_storage

        from .create import service

        cfg = settings()
        if email:
            user = _user(email)
        else:
            user = models.User.select().where(models.User.is_admin == True).order_by(models.User.id).first()  # noqa: E712
            if user is None:
                raise click.ClickException("pass --user EMAIL (no admin account to charge by default)")
        data = {"mode": mode, "instrumental": instrumental, "duration": duration, "variants": variants,
                "lyrics": lyrics, "described_lyrics": described_lyrics}
        data["description" if mode == "description" else "prompt"] = text
        req = service.parse(data, cfg)
        try:
            gen, _ = songs.submit(user, req, cfg, source="cli")
        except UserError as exc:
            raise click.ClickException(exc.message)
        click.echo(f"generation {gen.id}: {gen.variants} song(s) queued for {user.email}")
        if not wait:
            return
        deadline = time.monotonic() + timeout
        seen = {}
        while True:
            songs = list(models.Song.select().where(models.Song.generation == gen.id).order_by(models.Song.variant))
            for s in songs:
                state = (s.status, s.stage, s.progress)
                if seen.get(s.id) != state:
                    seen[s.id] = state
                    click.echo(f"  song {s.id}: {s.status} {s.stage} {s.progress}%")
            if all(s.is_final for s in songs):
                break
            if time.monotonic() > deadline:
                raise click.ClickException("timed out waiting (is a worker running? python gpu_worker.py)")
            time.sleep(1.0)
            models.db.close()
        storage = get_storage(cfg)
        for s in songs:
            if s.status == "processed":
                click.echo(f"{s.title} [{s.engine}, seed {s.seed}]")
                for key in (s.audio_key, s.stream_key, s.cover_key):
                    location = storage.root / key if hasattr(storage, "root") else f"s3://{storage.bucket}/{key}"
                    click.echo(f"  {location}")
            else:
                click.echo(f"failed: {s.error}")
        if any(s.status == "failed" for s in songs):
            raise SystemExit(1)


def register_models_cli(app: Flask) -> None:
    @app.cli.group("models")
    def models_group():
        """Model weights for the real engines (in MODEL_DIR)."""

    @models_group.command("fetch")
    @click.option("--role", "roles", multiple=True, type=click.Choice(["music", "writer", "cover", "stems"]),
                  help="Only these roles (default: all four).")
    @click.option("--force", is_flag=True, help="Download again even when complete.")
    def models_fetch(roles, force):
        """Download ACE-Step, Qwen2-7B-Instruct, SDXL-Turbo and Demucs into MODEL_DIR (needs the gpu extra)."""
        from core.weights import ROLES, ModelMissingError, fetch_models

        cfg = settings()
        try:
            done = fetch_models(cfg.MODEL_DIR, roles or ROLES, settings=cfg, force=force, echo=click.echo)
        except ImportError as exc:
            raise click.ClickException(f"{exc}: install the gpu extra first (EXTRAS=gpu scripts/run)")
        except ModelMissingError as exc:
            raise click.ClickException(str(exc))
        click.echo(f"{len(done)} model(s) ready in {cfg.MODEL_DIR}")

    @models_group.command("status")
    def models_status():
        """Which models are present in MODEL_DIR and what is missing."""
        from core.weights import describe_models

        for row in describe_models(settings()):
            state = "present" if row["present"] else f"missing {', '.join(row['missing'][:3])}"
            click.echo(f"{row['role']:7} {row['model']}  {state}  ({row['path']})")
