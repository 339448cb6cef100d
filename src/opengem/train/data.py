"""Corpus → model batches: vocabulary, study split, study-homogeneous batches.

Every batch holds samples of one study, so it carries one gene mask: the
encoder reads and the likelihood scores only the genes that study measured.
Works on an in-memory AnnData or a backed one (rows read per batch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from opengem.contract import FIELDS
from opengem.model import Vocabulary

#: fields whose values must be covered by training studies for a study to be "redundant"
_CONTEXT_FIELDS = (
    "tissue_ontology_id",
    "cell_type_ontology_id",
    "cell_line_ontology_id",
    "disease_ontology_id",
    "perturbation_ontology_id",
    "perturbation_type",
)


def obs_records(obs: pd.DataFrame) -> list[dict[str, str]]:
    """Canonical metadata records (unset fields dropped) from corpus ``obs``."""
    table = obs.reindex(columns=list(FIELDS)).astype(str).replace({"nan": ""})
    return [{k: v for k, v in r.items() if v} for r in table.to_dict("records")]


def choose_validation_studies(obs: pd.DataFrame, fraction: float, seed: int) -> list[str]:
    """Whole studies for validation, preferring those whose contexts other studies cover.

    A study is *redundant* when every value of its context fields (tissue, cell type,
    cell line, disease, perturbation) also occurs in another study, so holding it out
    loses no vocabulary. Redundant studies are drawn (seeded) until ``fraction`` of the
    samples is reached; studies hold out whole.
    """
    if fraction <= 0:
        return []
    studies = sorted(obs["study"].astype(str).unique())
    if len(studies) < 2:
        return []
    values = {
        s: {
            (f, v)
            for f in _CONTEXT_FIELDS
            for v in obs.loc[obs["study"].astype(str) == s, f].astype(str)
            if v
        }
        for s in studies
    }
    redundant = [
        s for s in studies if values[s] <= set().union(*(values[o] for o in studies if o != s))
    ]
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(redundant)) if redundant else list(rng.permutation(studies))
    sizes = obs["study"].astype(str).value_counts()
    chosen, total = [], 0
    for s in order:
        if total >= fraction * len(obs) or len(chosen) == len(studies) - 1:
            break
        if total + sizes[s] > 2 * fraction * len(obs) and chosen:
            continue
        chosen.append(str(s))
        total += int(sizes[s])
    return sorted(chosen)


class CorpusData:
    """Model-ready view of a corpus AnnData."""

    def __init__(
        self,
        adata: Any,
        *,
        validation_studies: Sequence[str] | None,
        validation_fraction: float,
        seed: int,
        gene_index: Callable[[str], int | None],
        ancestors: Callable[[str], Sequence[str]],
        labels: Callable[[str, str], str] | None = None,
        vocab: Vocabulary | None = None,
        validation_split: str = "study",
    ) -> None:
        self.adata = adata
        obs = adata.obs
        self.records = obs_records(obs)
        self.sample_ids = list(adata.obs_names.astype(str))
        self.studies = obs["study"].astype(str).to_numpy()
        known = set(self.studies)
        is_val = np.zeros(len(self.studies), dtype=bool)
        if validation_split == "sample":
            # every study is a context of its own: hold out a seeded share of each study
            is_val = np.random.default_rng(seed).random(len(self.studies)) < validation_fraction
            validation_studies = []
        elif validation_studies is None:
            validation_studies = choose_validation_studies(obs, validation_fraction, seed)
        unknown = sorted(set(validation_studies) - known)
        if unknown:
            raise ValueError(
                f"validation_studies {unknown} are not studies of the corpus; "
                f"studies: {sorted(known)}"
            )
        self.validation_studies = list(validation_studies)
        if validation_split != "sample":
            is_val = np.isin(self.studies, self.validation_studies)
        self.train_index = np.flatnonzero(~is_val)
        self.val_index = np.flatnonzero(is_val)
        self.gene_index = gene_index
        self.ancestors = ancestors
        self.vocab = vocab or Vocabulary.build(
            [self.records[i] for i in self.train_index], ancestors=ancestors, labels=labels
        )
        names = [str(s) for s in adata.uns["study_mask_studies"]]
        mask = np.asarray(adata.varm["study_mask"]).astype(bool)
        self.genes = {
            s: torch.as_tensor(np.flatnonzero(mask[:, j]), dtype=torch.long)
            for j, s in enumerate(names)
        }

    def batches(
        self, index: np.ndarray, batch_size: int, rng: np.random.Generator | None
    ) -> list[np.ndarray]:
        """Study-homogeneous batches over ``index`` (shuffled when ``rng`` is given)."""
        out: list[np.ndarray] = []
        for study in sorted(set(self.studies[index])):
            rows = index[self.studies[index] == study]
            if rng is not None:
                rows = rng.permutation(rows)
            n_batches = max(1, int(np.ceil(len(rows) / batch_size)))
            out.extend(np.array_split(rows, n_batches))
        if rng is not None:
            out = [out[i] for i in rng.permutation(len(out))]
        return out

    def collate(self, rows: Sequence[int]) -> dict[str, Any]:
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        study = self.studies[rows[0]]
        genes = self.genes[study]
        block = self.adata.X[rows]
        block = block[:, genes.numpy()]
        dense = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
        records = [self.records[i] for i in rows]
        return {
            "x": torch.as_tensor(dense, dtype=torch.float32),
            "genes": genes,
            "meta": self.vocab.encode(records, self.gene_index, self.ancestors),
            "labels": self.vocab.class_labels(records),
            "rows": torch.as_tensor(rows),
        }


class StudyBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Yields study-homogeneous index batches; reshuffled (seeded) at every pass.

    Under DDP each rank takes every ``world``-th batch, so ranks see disjoint data.
    """

    def __init__(
        self, data: CorpusData, index: np.ndarray, batch_size: int, seed: int, shuffle: bool
    ) -> None:
        self.data, self.index, self.batch_size = data, index, batch_size
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0

    def _all(self) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed + self.epoch) if self.shuffle else None
        batches = self.data.batches(self.index, self.batch_size, rng)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
            while len(batches) < world:  # every rank needs a batch: split the largest
                big = max(range(len(batches)), key=lambda i: len(batches[i]))
                if len(batches[big]) < 2:
                    break
                batches[big : big + 1] = np.array_split(batches[big], 2)
            usable = len(batches) - len(batches) % world  # equal counts, or ranks hang
            batches = batches[:usable][rank::world]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all()
        self.epoch += 1
        return iter([b.tolist() for b in batches])

    def __len__(self) -> int:
        return len(self._all())


class _Rows(torch.utils.data.Dataset[int]):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def loader(
    data: CorpusData, index: np.ndarray, batch_size: int, seed: int, shuffle: bool
) -> torch.utils.data.DataLoader[Any]:
    return torch.utils.data.DataLoader(
        _Rows(len(data.records)),
        batch_sampler=StudyBatchSampler(data, index, batch_size, seed, shuffle),
        collate_fn=data.collate,
    )
