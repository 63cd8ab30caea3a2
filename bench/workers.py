"""Throughput with 1, 2 and 4 GPU-worker processes on one Redis/PostgreSQL (offline engines).

Each round submits the same work (USERS users x PER_USER generations of one 10 s song) through
the real submit path, starts N `python gpu_worker.py --burst` processes, and times until every
song is processed. Prints songs/minute per N and the speed-up against one worker. On a 2-core
machine throughput stops growing past 2 workers: the offline engines are CPU-bound.

    python bench/workers.py [--workers 1 2 4] [--users 8] [--per-user 3]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_ADMIN = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")


def pg(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.close()


def one_round(n_workers: int, users: int, per_user: int, tmp: Path) -> dict:
    from app import create_app
    from app.create import service
    from app.migrate import upgrade
    from core import songs
    from config import TestConfig

    import models

    dbname = f"tunesmith_bench_workers_{os.getpid()}"
    pg(f'DROP DATABASE IF EXISTS "{dbname}"')
    pg(f'CREATE DATABASE "{dbname}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{dbname}"
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    cfg = TestConfig(DATABASE_URL=url, REDIS_URL=REDIS_URL, QUEUE_NAME=queue, HIGH_QUEUE_NAME=f"{queue}-high",
                     STYLE_TRAIN_QUEUE=f"{queue}-train",
                     STORAGE_URL=f"file://{tmp / queue}", VAR_DIR=tmp / "var", ENGINE="offline")
    app = create_app(cfg)
    with app.app_context():
        models.db.connect(reuse_if_open=True)
        upgrade()
        for u in range(users):
            user = models.User.register(f"u{u}@bench.example", "password123", credits=per_user)
            for i in range(per_user):
                req = service.parse({"mode": "description", "description": f"bench song {u}-{i}, 120 bpm",
                                     "duration": 10, "variants": 1}, cfg)
                songs.submit(user, req, cfg)
        total = users * per_user
        env = dict(os.environ, DATABASE_URL=url, REDIS_URL=REDIS_URL, QUEUE_NAME=queue, HIGH_QUEUE_NAME=f"{queue}-high",
                   STYLE_TRAIN_QUEUE=f"{queue}-train", STORAGE_URL=cfg.STORAGE_URL, ENGINE="offline",
                   SECRET_KEY=cfg.SECRET_KEY, VAR_DIR=str(tmp / "var"),
                   RECONCILE_INTERVAL="0", LOG_LEVEL="WARNING", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        started = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "gpu_worker.py", "--name", f"bench-{queue}-{i}"], cwd=ROOT, env=env)
                 for i in range(n_workers)]
        try:
            while True:
                done = models.Song.select().where(models.Song.status.in_(models.Song.FINAL)).count()
                models.db.close()
                if done >= total:
                    break
                if time.perf_counter() - started > 900:
                    raise TimeoutError("round took over 15 minutes")
                time.sleep(0.2)
            elapsed = time.perf_counter() - started
            processed = models.Song.select().where(models.Song.status == "processed").count()
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(60)
            models.db.close()
            models.db.obj.close_all()
    pg(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}' AND pid <> pg_backend_pid()")
    pg(f'DROP DATABASE IF EXISTS "{dbname}"')
    return {"workers": n_workers, "songs": processed, "seconds": elapsed, "per_minute": processed / elapsed * 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--per-user", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.workers:
            rows.append(one_round(n, args.users, args.per_user, Path(tmp)))
    base = rows[0]["per_minute"]
    print(f"cores: {os.cpu_count()}  songs per round: {args.users * args.per_user} (10 s each, offline engines)")
    print(f"{'workers':>7} {'songs':>6} {'seconds':>8} {'songs/min':>10} {'speed-up':>9}")
    for r in rows:
        print(f"{r['workers']:>7} {r['songs']:>6} {r['seconds']:>8.1f} {r['per_minute']:>10.1f} {r['per_minute'] / base:>8.2f}x")


if __name__ == "__main__":
    main()
