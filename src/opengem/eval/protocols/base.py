"""What every protocol gets (:class:`ProtocolContext`) and the training step they share."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from opengem.eval.corpus import CorpusView, EvalError, fast_rows
from opengem.eval.querying import ModelClient
from opengem.eval.training import Trainer, TrainingRecord

Log = Callable[[str], None]


@dataclass
class ProtocolContext:
    """The corpus, how to train, and the run's options."""

    view: CorpusView
    trainer: Trainer
    studies: list[str] | None = None
    fast: bool = False
    log: Log = print
    max_rotations: int | None = None
    trainings: list[TrainingRecord] = field(default_factory=list)
    inference_seconds: float = 0.0
    inference_samples: int = 0

    @property
    def max_scored(self) -> int | None:
        """Scored samples per unit: every bulk sample; a seeded subsample of cells."""
        if self.view.modality == "sc":
            return 30 if self.fast else 100
        return None

    def check_studies(self) -> None:
        if self.studies:
            present = self.view.study_list()
            unknown = sorted(set(self.studies) - set(present))
            if unknown:
                raise EvalError(f"--study {unknown} not in the corpus; studies: {present}")

    def selects(self, study: str) -> bool:
        """Whether units of ``study`` are evaluated (every study without ``--study``)."""
        return not self.studies or study in self.studies

    def selected_studies(self) -> list[str]:
        """The corpus's studies that :meth:`selects` (``--study`` checked first)."""
        self.check_studies()
        return [s for s in self.view.study_list() if self.selects(s)]

    @contextmanager
    def trained(
        self,
        train_rows: np.ndarray,
        focus: Sequence[str],
        label: str,
        held_out: Sequence[str] = (),
        protect: Sequence[str] | None = None,
    ) -> Iterator[tuple[ModelClient, np.ndarray]]:
        """Train on ``train_rows`` (``--fast``: a small subset around ``focus`` studies).

        Yields the model client and the rows the model was fitted on; the training
        is recorded and the model closed afterwards.
        """
        rows = np.asarray(train_rows, dtype=np.intp)
        if self.fast:
            rows = fast_rows(self.view, rows, focus)
        if len(rows) == 0:
            raise EvalError(f"{label}: nothing left to train on")
        self.log(f"[{label}] holding out {', '.join(held_out) if held_out else 'nothing'}")
        model, record, fitted = self.trainer(
            self.view, rows, list(focus if protect is None else protect), label
        )
        record.held_out = list(held_out)
        self.trainings.append(record)
        client = ModelClient(model)
        try:
            yield client, fitted
        finally:
            self.inference_seconds += client.inference_seconds
            self.inference_samples += client.inference_samples
            model.close()
