"""A new user's first minutes: a fresh copy of the repo and `make run`, nothing else.

CI already runs `make test` on a fresh clone; this covers the other README command.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from opengem.contract import MODEL_IDS

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_make_run_on_a_fresh_copy(tmp_path: Path) -> None:
    if shutil.which("make") is None or shutil.which("git") is None:
        pytest.skip("make and git are needed for the fresh-copy test")
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    clone = tmp_path / "opengem"
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, clone / name)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    base_python = getattr(sys, "_base_executable", sys.executable)
    out = subprocess.run(
        ["make", "run", f"PYTHON={base_python}"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (clone / ".venv" / "bin" / "opengem").exists()
    for model_id in MODEL_IDS:
        assert (clone / "results" / f"{model_id}.h5ad").is_file(), model_id
        assert f"{model_id}: " in out.stdout
    # the second run reuses the environment instead of reinstalling
    again = subprocess.run(
        ["make", "-q", f"PYTHON={base_python}", ".venv/.installed"], cwd=clone, env=env
    )
    assert again.returncode == 0
