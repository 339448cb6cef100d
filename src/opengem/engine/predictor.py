"""Every task of a model id on one bundle (gem1-notes.md, "Inference semantics").

- baseline: z from p(z | metadata) (sampled, or its mean with ``deterministic_latents``);
  "mean estimation" returns expected counts, "sample generation" negative-binomial
  draws; library size ``total_count``;
- reference conditioning: the groups in ``conditioning`` take q(z | reference), the
  others p(z | perturbation metadata) (no perturbation given = control); library size
  = the reference's unless ``fixed_total_count``;
- condition-on-sample-ids: stored posterior means of training samples (pooled over the
  input's ids) stand in for q(z | reference);
- metadata prediction: q(z | counts) -> classifier probabilities, predicted labels, the
  latents and a decoder sample.

All randomness comes from one numpy generator seeded by the query's ``seed``, so a
seed gives byte-identical results in any process; no seed, fresh randomness.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from opengem.contract import (
    FIELDS,
    BaselineQuery,
    LatentGroup,
    PredictMetadataQuery,
    Problem,
    Query,
    QueryError,
    ReferenceQuery,
    SampleIdsQuery,
)
from opengem.engine.bundle import Bundle
from opengem.engine.results import ExpressionResult, MetadataResult
from opengem.model import GROUPS
from opengem.ontology.describe import term_ancestors, term_label
from opengem.ontology.genes import GeneSpace, default_gene_space

CHUNK = 512
#: ontology fields that also get a ``*_label`` key in result metadata
LABELLED = {
    "tissue_ontology_id": "tissue_label",
    "cell_type_ontology_id": "cell_type_label",
    "cell_line_ontology_id": "cell_line_label",
    "disease_ontology_id": "disease_label",
    "perturbation_ontology_id": "perturbation_label",
}
MODALITY_WORD = {"bulk": "bulk", "sc": "single-cell"}


def round_preserving_total(mu: np.ndarray) -> np.ndarray:
    """Integer counts from expected counts, each row summing exactly to its (rounded) total.

    Plain rounding of a single cell's ~20,000 expected counts, most below 0.5, would
    lose most of its library; largest-remainder rounding keeps every row's total.
    """
    counts = np.rint(mu).astype(np.int64)
    totals = np.rint(mu.sum(axis=1)).astype(np.int64)
    # deep libraries (bulk) round within 0.1%: only shallow rows need the exact method
    off = np.abs(counts.sum(axis=1) - totals) > 1e-3 * np.maximum(totals, 1)
    n = mu.shape[1]
    for i in np.flatnonzero(off):
        floor = np.floor(mu[i])
        frac = mu[i] - floor
        row = floor.astype(np.int64)
        d = int(min(max(totals[i] - row.sum(), 0), n))
        if d:
            row[np.argpartition(frac, n - d)[n - d :]] += 1
        counts[i] = row
    return counts


def output_metadata(
    record: Mapping[str, str], modality: str, labels: Mapping[str, Mapping[str, str]] | None = None
) -> dict[str, str]:
    """The same key set for every output: every field ("" when unset), labels, modality.

    ``labels`` (field -> value -> label, from the model's vocabulary) spares ontology
    look-ups for known values.
    """
    out = {f: record.get(f, "") for f in FIELDS}
    for f, label_key in LABELLED.items():
        value = out[f]
        known = (labels or {}).get(f, {}).get(value) if value else None
        out[label_key] = known if known else (term_label(value) if value else "")
    out["modality"] = MODALITY_WORD.get(modality, modality)
    return out


class Predictor:
    """Runs normalised queries (from :func:`opengem.validate_query`) on a bundle."""

    def __init__(self, bundle: Bundle, gene_space: GeneSpace | None = None) -> None:
        self.bundle = bundle
        # float64 inference: float32 sums depend on torch's thread count (a few counts in
        # 200,000 changed between 1 and 2 threads); in float64 a seed gives the same bytes
        # in any process
        self.module = copy.deepcopy(bundle.module).double().eval()
        self.vocab = bundle.vocab
        self.genes = gene_space or default_gene_space()
        self.sample_index = {s: i for i, s in enumerate(bundle.latent_sample_ids)}
        short: dict[str, list[int]] = {}
        for i, s in enumerate(bundle.latent_sample_ids):
            short.setdefault(s.split(":", 1)[-1], []).append(i)
        self.short_index = {k: v[0] for k, v in short.items() if len(v) == 1}
        self.labels = {f: fv.labels for f, fv in self.vocab.fields.items()}

    def _metadata(self, records: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
        cache: dict[int, dict[str, str]] = {}
        out = []
        for r in records:  # repeated inputs share one dict per distinct record object
            key = id(r)
            if key not in cache:
                cache[key] = output_metadata(r, self.bundle.modality, self.labels)
            out.append(cache[key])
        return out

    # ------------------------------------------------------------------ helpers
    def known_sample_ids(self) -> set[str]:
        return set(self.sample_index) | set(self.short_index)

    def _encode(self, records: Sequence[Mapping[str, str]]) -> dict[str, torch.Tensor]:
        meta = self.vocab.encode(records, self.genes.index_of, term_ancestors)
        return {k: v.double() if v.is_floating_point() else v for k, v in meta.items()}

    @torch.no_grad()
    def _prior(
        self, records: Sequence[Mapping[str, str]]
    ) -> dict[LatentGroup, tuple[np.ndarray, np.ndarray]]:
        p = self.module.prior(self._encode(records))
        return {g: (p[g][0].numpy(), p[g][1].numpy()) for g in GROUPS}

    @torch.no_grad()
    def _posterior(self, counts: np.ndarray) -> dict[LatentGroup, tuple[np.ndarray, np.ndarray]]:
        q = self.module.inference(torch.as_tensor(counts, dtype=torch.float64))
        return {g: (q[g][0].numpy(), q[g][1].numpy()) for g in GROUPS}

    @torch.no_grad()
    def _decode(
        self,
        z: dict[LatentGroup, np.ndarray],
        records: Sequence[Mapping[str, str]],
        library: np.ndarray,
        strategy: str,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Counts for each row of z (chunked); ``records`` give the on-target inputs."""
        n = library.shape[0]
        out = np.empty((n, len(self.genes)), dtype=np.int64)
        targets = self.vocab.targets(records, self.genes.index_of)
        theta = torch.exp(self.module.log_theta).numpy().astype(np.float64)
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            zt = {g: torch.as_tensor(z[g][start:stop], dtype=torch.float64) for g in GROUPS}
            chunk_meta = {k: v[start:stop] for k, v in targets.items()}
            lib = torch.ones(stop - start, 1, dtype=torch.float64)
            scale = self.module.generative(zt, lib, chunk_meta)["scale"].numpy()
            mu = scale * library[start:stop, None]
            if strategy == "sample generation":
                rate = rng.gamma(shape=theta, scale=mu / theta)
                out[start:stop] = rng.poisson(rate)
            else:
                out[start:stop] = round_preserving_total(mu)
        return out

    @staticmethod
    def _draw(
        mean: np.ndarray, std: np.ndarray, deterministic: bool, rng: np.random.Generator
    ) -> np.ndarray:
        if deterministic:
            return mean.astype(np.float32)
        return (mean + std * rng.standard_normal(mean.shape)).astype(np.float32)

    # -------------------------------------------------------------------- tasks
    def predict(self, query: Query) -> ExpressionResult | MetadataResult:
        rng = np.random.default_rng(query.seed)
        if isinstance(query, BaselineQuery):
            return self._baseline(query, rng)
        if isinstance(query, ReferenceQuery):
            refs = [(np.asarray(i.counts, dtype=np.float64), None) for i in query.inputs]
            return self._conditioned(query, refs, rng)
        if isinstance(query, SampleIdsQuery):
            return self._conditioned(
                query,
                [(None, self._stored(i.sample_ids, n)) for n, i in enumerate(query.inputs)],
                rng,
            )
        if isinstance(query, PredictMetadataQuery):
            return self._predict_metadata(query, rng)
        raise TypeError(f"unsupported query type {type(query).__name__}")

    def _baseline(self, query: BaselineQuery, rng: np.random.Generator) -> ExpressionResult:
        records = [dict(i.metadata) for i in query.inputs]
        repeats = np.array([i.num_samples for i in query.inputs])
        prior = self._prior(records)
        z = {
            g: self._draw(
                np.repeat(prior[g][0], repeats, axis=0),
                np.repeat(prior[g][1], repeats, axis=0),
                query.deterministic_latents,
                rng,
            )
            for g in GROUPS
        }
        rows = [records[i] for i in np.repeat(np.arange(len(records)), repeats)]
        library = np.full(len(rows), float(query.total_count))
        counts = self._decode(z, rows, library, query.sampling_strategy, rng)
        return ExpressionResult(
            counts,
            self._metadata(rows),
            {g.value: z[g] for g in GROUPS},
            list(self.genes.gene_ids),
            self.bundle.model_version,
            "baseline",
        )

    def _stored(self, sample_ids: Sequence[str], n: int) -> dict[str, Any]:
        rows = []
        for j, sid in enumerate(sample_ids):
            i = self.sample_index.get(sid, self.short_index.get(sid))
            if i is None:
                raise QueryError(
                    [
                        Problem(
                            f"inputs[{n}].sample_ids[{j}]",
                            sid,
                            "is not a training sample of this model",
                        )
                    ]
                )
            rows.append(i)
        stored = self.bundle.latents
        library = self.bundle.info.get("latent_library_sizes")
        lib = float(np.mean([library[i] for i in rows])) if library else None
        return {
            "z": {g: stored[g.value][rows].mean(axis=0, keepdims=True) for g in GROUPS},
            "library": lib,
        }

    def _conditioned(
        self,
        query: ReferenceQuery | SampleIdsQuery,
        refs: list[tuple[np.ndarray | None, dict[str, Any] | None]],
        rng: np.random.Generator,
    ) -> ExpressionResult:
        records = []
        for item in query.inputs:
            record = dict(item.metadata)
            record.setdefault("perturbation_type", "control")
            records.append(record)
        prior = self._prior(records)
        conditioned = set(query.conditioning)
        z_parts: dict[LatentGroup, list[np.ndarray]] = {g: [] for g in GROUPS}
        libraries: list[np.ndarray] = []
        for k, (item, (counts, stored)) in enumerate(zip(query.inputs, refs, strict=True)):
            n = item.num_samples
            if counts is not None:
                post = self._posterior(counts[None, :])
                ref_library = float(counts.sum())
            else:
                assert stored is not None
                post = {g: (stored["z"][g], np.zeros_like(stored["z"][g])) for g in GROUPS}
                ref_library = stored["library"] or float(query.total_count)
            for g in GROUPS:
                mean, std = (
                    post[g]
                    if g in conditioned
                    else (prior[g][0][k : k + 1], prior[g][1][k : k + 1])
                )
                z_parts[g].append(
                    self._draw(
                        np.repeat(mean, n, axis=0),
                        np.repeat(std, n, axis=0),
                        query.deterministic_latents,
                        rng,
                    )
                )
            total = float(query.total_count) if query.fixed_total_count else ref_library
            libraries.append(np.full(n, total))
        z = {g: np.concatenate(z_parts[g]) for g in GROUPS}
        repeats = [i.num_samples for i in query.inputs]
        rows = [records[i] for i in np.repeat(np.arange(len(records)), repeats)]
        counts_out = self._decode(z, rows, np.concatenate(libraries), query.sampling_strategy, rng)
        return ExpressionResult(
            counts_out,
            self._metadata(rows),
            {g.value: z[g] for g in GROUPS},
            list(self.genes.gene_ids),
            self.bundle.model_version,
            "reference_conditioned",
        )

    @torch.no_grad()
    def _predict_metadata(
        self, query: PredictMetadataQuery, rng: np.random.Generator
    ) -> MetadataResult:
        counts = np.stack([np.asarray(i.counts, dtype=np.float64) for i in query.inputs])
        post = self._posterior(counts)
        means = {g: post[g][0] for g in GROUPS}
        logits = self.module.classify({g: torch.as_tensor(means[g]) for g in GROUPS})
        probs: list[dict[str, dict[str, float]]] = [{} for _ in range(len(counts))]
        predicted: list[dict[str, str]] = [{} for _ in range(len(counts))]
        for field, values in logits.items():
            p = torch.softmax(values.double(), dim=-1).numpy()
            classes = self.vocab.fields[field].classes
            best = p.argmax(axis=1)
            for i in range(len(counts)):
                probs[i][field] = dict(zip(classes, p[i].tolist(), strict=True))
                predicted[i][field] = classes[int(best[i])]
        # the reconstruction: decode the posterior means at each input's own library size
        records = [dict(r) for r in predicted]
        decoded = self._decode(means, records, counts.sum(axis=1), "sample generation", rng)
        return MetadataResult(
            self._metadata(predicted),
            probs,
            {g.value: means[g].astype(np.float32) for g in GROUPS},
            decoded,
            list(self.genes.gene_ids),
            self.bundle.model_version,
        )
