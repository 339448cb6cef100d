"""The in-memory form every reader returns: one study's raw matrix and annotations."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp


class CorpusError(ValueError):
    """Bad corpus input: the message names the study, sample, field and value."""


@dataclass
class StudyTable:
    """Raw values of one study, as read: nothing mapped or renamed yet.

    Attributes
    ----------
    values
        Sparse samples × genes matrix of the values as stored (float64: counts,
        coverage or estimated counts).
    gene_ids
        Row/column ids of the genes as the file gives them (any id type).
    sample_ids
        Sample ids as the file gives them.
    annotations
        Sample annotations shipped inside the file (h5ad ``obs``, ARCHS4
        ``meta/samples``), indexed by sample id; empty when the format has none.
    """

    values: sp.csr_matrix
    gene_ids: list[str]
    sample_ids: list[str]
    annotations: pd.DataFrame = field(default_factory=pd.DataFrame)

    def __post_init__(self) -> None:
        n_samples, n_genes = self.values.shape
        if n_samples != len(self.sample_ids) or n_genes != len(self.gene_ids):
            raise CorpusError(
                f"matrix is {n_samples} × {n_genes} but has {len(self.sample_ids)} sample ids "
                f"and {len(self.gene_ids)} gene ids"
            )

    def subset(self, sample_ids: list[str]) -> StudyTable:
        """The same study restricted to (and ordered by) ``sample_ids``."""
        index = {s: i for i, s in enumerate(self.sample_ids)}
        rows = np.array([index[s] for s in sample_ids], dtype=np.int64)
        ann = (
            self.annotations.loc[sample_ids] if len(self.annotations.columns) else self.annotations
        )
        return StudyTable(self.values[rows], self.gene_ids, list(sample_ids), ann)
