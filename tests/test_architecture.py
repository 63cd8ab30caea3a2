"""The layers of docs/architecture.md hold: a change that crosses one fails the suite.

The package rules are import-linter contracts in pyproject.toml, run here as `lint-imports`;
import-linter reads packages only, so the rules for the top-level modules are checked here by
reading every import statement in them (lazy ones inside functions too).
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP_PARTS = {"app", "core", "jobs", "models", "config", "gpu_worker"}


def _lint_imports() -> str:
    exe = Path(sys.executable).with_name("lint-imports")
    return str(exe) if exe.exists() else (shutil.which("lint-imports") or "lint-imports")


def test_import_contracts_are_kept():
    proc = subprocess.run([_lint_imports(), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    assert "0 broken" in report and " kept" in report, report


def _imported_top_levels(path: Path) -> dict[str, int]:
    """{top-level module name: first line} for every import in the file."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            found.setdefault(name.split(".", 1)[0], node.lineno)
    return found


def test_models_and_config_import_no_part_of_the_application():
    for name, allowed in (("models.py", set()), ("config.py", set())):
        crossed = {m: line for m, line in _imported_top_levels(ROOT / name).items()
                   if m in APP_PARTS - allowed - {name[:-3]}}
        assert not crossed, f"{name} imports {crossed} (models.py and config.py import no part of the app)"


def test_gpu_worker_never_imports_the_web_app():
    crossed = {m: line for m, line in _imported_top_levels(ROOT / "gpu_worker.py").items() if m in {"app", "flask"}}
    assert not crossed, f"gpu_worker.py imports {crossed} (the worker never imports the web app)"


def test_web_process_starts_without_the_worker_side_or_torch():
    """Building the app and serving a page loads neither `jobs` nor torch."""
    code = ("import sys; from app import create_app; from config import TestConfig; "
            "app = create_app(TestConfig()); c = app.test_client(); assert c.get('/healthz').status_code == 200; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jobs', 'torch', 'gpu_worker')); "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
