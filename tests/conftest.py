"""Shared fixtures and the ``corpus`` marker's skip rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from opengem.settings import data_root

REPO = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    root = data_root()
    return root if root.is_absolute() else (REPO / root).resolve()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = _data_root()
    if (root / "PROVENANCE.md").is_file():
        return
    skip = pytest.mark.skip(
        reason=f"shared datasets not found at {root} (set OPENGEM_DATA to the data folder)"
    )
    for item in items:
        if "corpus" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the shared public datasets (tests using it are marked ``corpus``)."""
    return _data_root()


@pytest.fixture(scope="session")
def shared_corpus(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus built from every study card over the shared data (once per session)."""
    from opengem.corpus import build_corpus

    out = tmp_path_factory.mktemp("corpus")
    build_corpus(REPO / "corpus" / "studies", shared_data, out)
    return out
