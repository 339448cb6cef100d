"""Find scVI's own Python and run ``scvi_peer.py`` in it (shared by the benchmarks).

scvi-tools is never a dependency of opengem: it lives in its own environment, named by
``--scvi-python PATH`` or ``OPENGEM_SCVI_PYTHON``. Without one (or when ``import scvi``
fails there) a benchmark prints :func:`skip_line` and still prints opengem's own rates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ENV_VAR = "OPENGEM_SCVI_PYTHON"
PEER = Path(__file__).with_name("scvi_peer.py")
HINT = f"set {ENV_VAR} to a python with scvi-tools"


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scvi-python",
        metavar="PATH",
        help=f"python of an environment with scvi-tools (default: ${ENV_VAR})",
    )


def find_scvi_python(cli: str | None) -> tuple[str | None, str]:
    """``(python, version)`` when ``import scvi`` works there, else ``(None, reason)``."""
    path = cli or os.environ.get(ENV_VAR)
    if not path:
        return None, f"neither --scvi-python nor {ENV_VAR} is set"
    source = "--scvi-python" if cli else ENV_VAR
    if not Path(path).is_file():
        return None, f"{source}={path} is not a file"
    try:
        probe = subprocess.run(
            [path, "-c", "import importlib.metadata as m, scvi; print(m.version('scvi-tools'))"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"{source}={path} could not run: {err}"
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"])[-1]
        return None, f"`import scvi` failed in {path}: {last}"
    return path, probe.stdout.strip().splitlines()[-1]


def skip_line(reason: str) -> str:
    return f"scVI: skipped ({reason}; {HINT})"


def write_counts(adata: Any, folder: Path, batch_key: str = "study") -> Path:
    """Counts (CSR) with only the batch column in obs: the file the peer reads."""
    import anndata
    import scipy.sparse as sp

    x = adata.X[:] if getattr(adata, "isbacked", False) else adata.X
    obs = adata.obs[[batch_key]].copy()
    obs[batch_key] = obs[batch_key].astype(str).astype("category")
    out = anndata.AnnData(
        X=sp.csr_matrix(x, dtype="float32"),
        obs=obs,
        var=adata.var[[]].copy(),
    )
    path = folder / "cells.h5ad"
    out.write_h5ad(path)
    return path


def run_peer(
    python: str, adata: Any, peer_args: list[str], timeout: float = 3600
) -> dict[str, Any]:
    """Write ``adata`` to a temp dir, run ``scvi_peer.py`` there, return its JSON."""
    with tempfile.TemporaryDirectory(prefix="opengem-scvi-") as tmp:
        h5ad = write_counts(adata, Path(tmp))
        done = subprocess.run(
            [python, str(PEER), "--h5ad", str(h5ad), *peer_args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise RuntimeError(f"scvi_peer.py failed (exit status {done.returncode})")
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise RuntimeError("scvi_peer.py printed no JSON")
    return json.loads(lines[-1])
