"""Migrations from empty, the ledger, the admin CLI, and the deployment files."""
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import models
from app.migrate import applied, available, upgrade

ROOT = Path(__file__).resolve().parent.parent


def test_migrations_from_empty_create_every_table_and_are_idempotent(app, db):
    # the app fixture already migrated this database from empty
    assert applied() == set(available())
    for model in models.ALL_MODELS:
        assert db.table_exists(model._meta.table_name), model
    assert upgrade() == []  # nothing pending: a second run changes nothing


def test_flask_db_upgrade_cli_on_a_fresh_sqlite_file(tmp_path, redis_conn):
    env_db = tmp_path / "fresh.db"
    import os
    import sys

    env = dict(os.environ, DATABASE_URL=f"sqlite:///{env_db}", VAR_DIR=str(tmp_path / "var"))
    cmd = [sys.executable, "-m", "flask", "--app", "app:create_app", "db", "upgrade"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "0001_initial" in out.stdout
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert "up to date" in again.stdout


def test_ledger_grant_and_balance(app, db):
    user = models.User.register("ledger@example.com", "password123", credits=100)
    assert user.balance() == 100
    with models.write_transaction():
        models.apply_credits(user, -30, "reserve", "test:reserve")
        assert models.apply_credits(user, -30, "reserve", "test:reserve") is None  # same ref: once
        models.apply_credits(user, 5, "admin", "test:admin")
    assert user.balance() == 75 == user.ledger_balance()
    with pytest.raises(models.InsufficientCredits):
        with models.write_transaction():
            models.apply_credits(user, -76, "reserve", "test:too-much")
    assert user.balance() == 75 == user.ledger_balance()
    with models.write_transaction():
        entry = models.apply_credits(user, -100, "refund", "test:refund", "refund", allow_partial=True)
    assert entry.delta == -75 and "only 75 of 100" in entry.note
    assert user.balance() == 0 == user.ledger_balance()


def test_cli_credits_grant_and_make_admin(app, db):
    models.User.register("cli@example.com", "password123", credits=100)
    runner = app.test_cli_runner()
    res = runner.invoke(args=["credits", "grant", "CLI@example.com", "25", "--reason", "beta tester"])
    assert res.exit_code == 0, res.output
    assert "balance 125" in res.output
    user = models.User.get(models.User.email == "cli@example.com")
    entry = models.CreditEntry.select().where(models.CreditEntry.kind == "admin").get()
    assert (entry.delta, entry.note, user.balance()) == (25, "beta tester", 125)
    res = runner.invoke(args=["credits", "grant", "nobody@example.com", "5"])
    assert res.exit_code != 0 and "no user" in res.output
    res = runner.invoke(args=["users", "make-admin", "cli@example.com"])
    assert res.exit_code == 0
    assert models.User.get_by_id(user.id).is_admin


def test_compose_file_describes_the_one_box_deployment():
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = spec["services"]
    assert {"postgres", "redis", "minio", "web", "worker"} <= set(services)
    worker = services["worker"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    grace = worker["stop_grace_period"]
    minutes = int(grace.rstrip("m")) if grace.endswith("m") else int(grace.rstrip("s")) / 60
    from config import Config

    c = Config()
    assert minutes * 60 > c.JOB_TIMEOUT_BASE + c.JOB_TIMEOUT_PER_SECOND * c.MAX_DURATION


@pytest.mark.skipif(not shutil.which("docker") or subprocess.run(["docker", "compose", "version"],
                    capture_output=True).returncode != 0, reason="docker compose plugin not installed")
def test_docker_compose_config_validates():
    env = {"POSTGRES_PASSWORD": "x", "MINIO_ROOT_USER": "x", "MINIO_ROOT_PASSWORD": "xxxxxxxx", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(["docker", "compose", "config", "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_procfile_has_web_worker_release():
    kinds = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    assert set(kinds) == {"web", "worker", "release"}
    assert "app:create_app()" in kinds["web"] and "gpu_worker.py" in kinds["worker"]


def test_gunicorn_workers_freeze_what_they_loaded_out_of_the_collectors_sight():
    """gunicorn.conf.py (read by every gunicorn started from the repository root): after a
    worker loads the app, the objects alive then are frozen, so full collections stay short."""
    import gc
    import runpy
    from pathlib import Path

    hooks = runpy.run_path(str(Path(__file__).resolve().parents[1] / "gunicorn.conf.py"))
    assert gc.get_freeze_count() == 0
    try:
        hooks["post_worker_init"](None)
        assert gc.get_freeze_count() > 1000  # the test process's modules, at least
    finally:
        gc.unfreeze()
