"""Read a TOML file into a pydantic model, with errors that name the file and the key.

Study cards (``corpus/studies/*.toml``) and training configs (``configs/*.toml``)
are both read this way.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def read_toml_model(path: Path, model: type[M], what: str) -> M:
    """Parse ``path`` as ``model``.

    Raises
    ------
    ValueError
        ``"<what> <path> does not exist"``, ``"<path>: not valid TOML: …"`` or
        ``"<path>: <dotted.key>: <problem>; …"``.
    """
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{what} {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or what}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"{path}: {problems}") from None
