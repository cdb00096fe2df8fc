import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (it comes with the [test] extra)")
    run = subprocess.run(
        [sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_no_large_or_generated_files_are_tracked():
    """A run's checkpoint once got committed (84 MB in every clone); outputs stay out of git."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=60)
    if listed.returncode != 0:
        pytest.skip("git is not available")
    paths = [p for p in listed.stdout.decode().split("\0") if p]
    large = [p for p in paths if (ROOT / p).is_file() and (ROOT / p).stat().st_size > 2 * 1024**2]
    outputs = [p for p in paths if p.split("/")[0] in ("mvssl_runs", "mlruns", "mlartifacts", "evaluations")]
    assert not large and not outputs, (large, outputs)
