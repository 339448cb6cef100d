"""Process-wide settings read from the environment, in one place.

Nothing here is mutated at run time: callers that need other values pass them
explicitly (for instance ``validate_query(..., limits=QueryLimits(...))``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Default location of the shared public datasets, relative to the working directory.
DEFAULT_DATA_ROOT = Path("../shared/data")


def data_root() -> Path:
    """Root folder of the public input datasets (env ``OPENGEM_DATA``)."""
    return Path(os.environ.get("OPENGEM_DATA", str(DEFAULT_DATA_ROOT))).expanduser()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} must be a whole number") from exc
    if value < 1:
        raise ValueError(f"environment variable {name}={raw!r} must be at least 1")
    return value


@dataclass(frozen=True)
class QueryLimits:
    """Upper bounds on how many samples one query may ask for."""

    max_samples_per_input: int = 1000
    max_samples_per_query: int = 10_000

    @classmethod
    def from_env(cls) -> QueryLimits:
        """Limits from ``OPENGEM_MAX_SAMPLES_PER_INPUT`` / ``OPENGEM_MAX_SAMPLES_PER_QUERY``."""
        return cls(
            max_samples_per_input=_env_int(
                "OPENGEM_MAX_SAMPLES_PER_INPUT", cls.max_samples_per_input
            ),
            max_samples_per_query=_env_int(
                "OPENGEM_MAX_SAMPLES_PER_QUERY", cls.max_samples_per_query
            ),
        )
