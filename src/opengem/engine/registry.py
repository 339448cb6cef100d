"""Model ids → bundles: shipped defaults or a directory of your own, loaded lazily.

A models directory holds one bundle per base model: ``<dir>/gem-1-bulk/``,
``<dir>/gem-1-sc/``. Every task of a modality (baseline, reference conditioning,
metadata prediction, condition-on-sample-ids) runs on its base model's bundle.
The directory is ``OPENGEM_MODELS`` when set, else the bundles shipped inside the
package (``opengem/models``).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opengem.contract import parse_model_id
from opengem.contract.validate import MAX_PROBLEMS
from opengem.engine.bundle import BundleError, load_bundle
from opengem.engine.predictor import Predictor

if TYPE_CHECKING:
    from opengem.contract import Query
    from opengem.settings import QueryLimits


def default_models_dir() -> Path:
    env = os.environ.get("OPENGEM_MODELS")
    if env:
        return Path(env).expanduser()
    return Path(str(resources.files("opengem").joinpath("models")))


@dataclass
class _Loaded:
    predictor: Predictor
    last_used: float


class ModelRegistry:
    """Lazily loads and caches one :class:`Predictor` per base model (thread-safe)."""

    def __init__(self, models_dir: Path | str | None = None) -> None:
        self.models_dir = Path(models_dir) if models_dir else default_models_dir()
        self._loaded: dict[str, _Loaded] = {}
        self._lock = threading.Lock()

    def bundle_dir(self, model_id: str) -> Path:
        return self.models_dir / parse_model_id(model_id).base_model_id

    def available(self, model_id: str) -> bool:
        return (self.bundle_dir(model_id) / "bundle.json").is_file()

    def predictor(self, model_id: str) -> Predictor:
        """The predictor serving ``model_id`` (loads its bundle on first use).

        Raises
        ------
        UnknownModelError
            For an id opengem does not serve.
        BundleError
            When the bundle is missing or unusable (the message says where it looked).
        """
        base = parse_model_id(model_id).base_model_id
        with self._lock:
            hit = self._loaded.get(base)
            if hit is None:
                directory = self.models_dir / base
                if not (directory / "bundle.json").is_file():
                    raise BundleError(
                        f"no bundle for {base} in {self.models_dir} (set OPENGEM_MODELS to a "
                        f"folder holding {base}/, or train one: opengem train ... --out "
                        f"{self.models_dir / base})"
                    )
                hit = _Loaded(Predictor(load_bundle(directory)), time.monotonic())
                self._loaded[base] = hit
            hit.last_used = time.monotonic()
            return hit.predictor

    def validate(
        self,
        model_id: str,
        query: Any,
        limits: QueryLimits | None = None,
        *,
        max_problems: int | None = MAX_PROBLEMS,
    ) -> Query:
        """``query`` validated against the vocabulary of the model serving ``model_id``
        (its training sample ids too, for condition-on-sample-ids): the one check every
        caller uses (embedded API, server, evaluation).

        Raises ``UnknownModelError``, ``QueryError`` (with at most ``max_problems``
        problems; ``None``: all of them), or ``BundleError`` when the model has no
        bundle here.
        """
        from opengem.contract import validate_query

        predictor = self.predictor(model_id)
        return validate_query(
            query,
            model_id,
            limits=limits,
            vocabulary=predictor.vocab.as_validation_vocabulary(),
            ancestor_tokens=predictor.vocab.ancestor_tokens(),
            trained_fields=predictor.vocab.trained_fields(),
            max_problems=max_problems,
            known_sample_ids=(
                predictor.known_sample_ids()
                if model_id.endswith("condition-on-sample-ids")
                else None
            ),
        )

    def loaded(self) -> list[str]:
        with self._lock:
            return sorted(self._loaded)

    def unload_idle(self, idle_seconds: float) -> list[str]:
        """Drop bundles unused for ``idle_seconds``; returns the base ids dropped."""
        now = time.monotonic()
        with self._lock:
            gone = [k for k, v in self._loaded.items() if now - v.last_used > idle_seconds]
            for k in gone:
                del self._loaded[k]
        return gone


_DEFAULT: ModelRegistry | None = None
_DEFAULT_LOCK = threading.Lock()


def default_registry() -> ModelRegistry:
    """The process-wide registry over :func:`default_models_dir` (re-read if it changes)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None or _DEFAULT.models_dir != default_models_dir():
            _DEFAULT = ModelRegistry()
        return _DEFAULT
