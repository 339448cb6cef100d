"""Every task of a model id on one bundle (gem1-notes.md, "Inference semantics").

In the model's log-expression space (see :mod:`opengem.model.gem`):

- baseline: the prior mean of the metadata's condition, plus the perturbation's
  effect when the metadata has one; latents z_bio, z_tech ~ N(0, I) (the technical
  draw shared by an input's samples, as replicates of one generated study), or 0
  with ``deterministic_latents``; "mean estimation" returns expected counts,
  "sample generation" adds the residual noise and draws Poisson counts; library
  size ``total_count``;
- reference conditioning: the reference (shrunk toward its most similar training
  contexts by a few thousand pseudo-counts, which matters only for shallow
  single-cell references) plus the perturbation's effect in that context (no
  perturbation given = control); groups left out of ``conditioning`` are redrawn
  from the prior; library size = the reference's unless ``fixed_total_count``;
- condition-on-sample-ids: a stored training sample (its condition's prior mean and
  its latents) stands in for the reference;
- metadata prediction: calibrated class probabilities from the metadata heads, the
  latents of the sample and a decoder sample (Poisson draws around the denoised
  sample).

Every output's metadata says whether its perturbation was seen in training
(``perturbation_seen``: ``"true"``, ``"false"`` = extrapolated from its type, or
``""`` without a perturbation).

All randomness comes from one numpy generator seeded by the query's ``seed``, so a
seed gives byte-identical results in any process; no seed, fresh randomness.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from opengem.contract import (
    FIELDS,
    BaselineQuery,
    PredictMetadataQuery,
    Problem,
    Query,
    QueryError,
    ReferenceQuery,
    SampleIdsQuery,
)
from opengem.contract.query import STRATEGIES, ReferenceInput, SampleIdsInput
from opengem.engine.bundle import Bundle
from opengem.engine.results import ExpressionResult, MetadataResult
from opengem.model import GEMModel, perturbations_of
from opengem.model.perturbations import SEP
from opengem.ontology.describe import term_label
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


#: how each sampling strategy (:data:`opengem.contract.query.STRATEGIES`) turns expected
#: counts into counts
DRAWS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "sample generation": lambda mu, rng: rng.poisson(mu),
    "mean estimation": lambda mu, rng: round_preserving_total(mu),
}
if set(DRAWS) != set(STRATEGIES):  # a strategy added to the contract needs its draw here
    raise ImportError(f"sampling strategies without a draw: {set(STRATEGIES) ^ set(DRAWS)}")


def output_metadata(
    record: Mapping[str, str], modality: str, labels: Mapping[str, Mapping[str, str]] | None = None
) -> dict[str, str]:
    """The same key set for every output: every field ("" when unset), labels, modality.

    ``labels`` (field -> value -> label, from the model's vocabulary) spares ontology
    look-ups for known values.
    """
    out = {f: record.get(f, "") for f in FIELDS}
    for f, label_key in LABELLED.items():
        parts = [p for p in out[f].split(SEP)] if out[f] else []
        names = []
        for value in parts:
            known = (labels or {}).get(f, {}).get(value) if value else None
            names.append(known if known else (term_label(value) if value else ""))
        out[label_key] = SEP.join(names)
    out["perturbation_seen"] = record.get("perturbation_seen", "")
    out["modality"] = MODALITY_WORD.get(modality, modality)
    return out


class Predictor:
    """Runs normalised queries (from :func:`opengem.validate_query`) on a bundle."""

    def __init__(self, bundle: Bundle, gene_space: GeneSpace | None = None) -> None:
        self.bundle = bundle
        self.model: GEMModel = bundle.model
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

    def _effect(
        self,
        record: dict[str, str],
        y: np.ndarray,
        mask: np.ndarray,
        library: float | None = None,
    ) -> tuple[np.ndarray, str]:
        """The perturbation effect of a record for a sample ``y`` (a reference of
        ``library`` reads, or a prior mean when None); and the seen flag."""
        perts = perturbations_of(record)
        if not perts:
            return np.zeros(self.model.n_genes), ""
        sim = self.model.context_similarity(y[None, :], mask[None, :])[0]
        weight = 1.0 if library is None else self.model.level_weight(library)
        effect, seen = self.model.effect(perts, sim, self.genes.index_of, y, weight)
        return effect, "true" if seen else "false"

    def _latent_noise(
        self, n: int, deterministic: bool, rng: np.random.Generator, shared: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        kb, kt = self.model.w_bio.shape[0], self.model.w_tech.shape[0]
        if deterministic:
            return np.zeros((n, kb)), np.zeros((n, kt))
        zb = rng.standard_normal((n, kb))
        zt = rng.standard_normal((1, kt)) if shared else rng.standard_normal((n, kt))
        return zb, np.repeat(zt, n, axis=0) if shared else zt

    def _counts(
        self, y: np.ndarray, library: np.ndarray, strategy: str, rng: np.random.Generator
    ) -> np.ndarray:
        draw = DRAWS.get(strategy)
        if draw is None:
            raise ValueError(f"sampling strategy {strategy!r}: expected one of {sorted(DRAWS)}")
        out = np.empty(y.shape, dtype=np.int64)
        for start in range(0, len(y), CHUNK):
            stop = min(len(y), start + CHUNK)
            mu = self.model.expected_counts(y[start:stop], library[start:stop])
            out[start:stop] = draw(mu, rng)
        return out

    def _pert_latent(self, effects: np.ndarray) -> np.ndarray:
        basis = self.model.w_pert
        return (effects @ basis.T).astype(np.float32) if basis.size else np.zeros((len(effects), 0))

    # -------------------------------------------------------------------- tasks
    def predict(self, query: Query) -> ExpressionResult | MetadataResult:
        rng = np.random.default_rng(query.seed)
        if isinstance(query, BaselineQuery):
            return self._baseline(query, rng)
        if isinstance(query, ReferenceQuery):
            refs: list[tuple[np.ndarray | None, dict[str, Any] | None]] = [
                (np.asarray(i.counts, dtype=np.float64), None) for i in query.inputs
            ]
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
        m = self.model
        records = [dict(i.metadata) for i in query.inputs]
        base = m.prior_mean(records)
        full = np.ones(m.n_genes, dtype=bool)
        parts_y, parts_b, parts_t, parts_p, rows = [], [], [], [], []
        sampling = query.sampling_strategy == "sample generation"
        for k, (item, record) in enumerate(zip(query.inputs, records, strict=True)):
            n = item.num_samples
            effect, seen = self._effect(record, base[k], full)
            record["perturbation_seen"] = seen
            zb, zt = self._latent_noise(n, query.deterministic_latents, rng, shared=True)
            y = base[k][None, :] + effect[None, :] + zb @ m.w_bio + zt @ m.w_tech
            if sampling and not query.deterministic_latents:
                y = y + rng.standard_normal(y.shape) * m.noise_sd[None, :]
            parts_y.append(y)
            parts_b.append(zb)
            parts_t.append(zt)
            parts_p.append(np.repeat(self._pert_latent(effect[None, :]), n, axis=0))
            rows += [record] * n
        y_all = np.concatenate(parts_y)
        library = np.full(len(rows), float(query.total_count))
        counts = self._counts(y_all, library, query.sampling_strategy, rng)
        return ExpressionResult(
            counts,
            self._metadata(rows),
            self._latents(parts_b, parts_t, parts_p),
            list(self.genes.gene_ids),
            self.bundle.model_version,
            "baseline",
        )

    @staticmethod
    def _latents(
        bio: list[np.ndarray], tech: list[np.ndarray], pert: list[np.ndarray]
    ) -> dict[str, np.ndarray]:
        return {
            "biological": np.concatenate(bio).astype(np.float32),
            "technical": np.concatenate(tech).astype(np.float32),
            "perturbation": np.concatenate(pert).astype(np.float32),
        }

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
        m = self.model
        records = [m.sample_records[m.sample_record_index[i]] for i in rows]
        y = (
            m.prior_mean(records)
            + m.sample_z_bio[rows].astype(np.float64) @ m.w_bio
            + m.sample_z_tech[rows].astype(np.float64) @ m.w_tech
        )
        library = self.bundle.latent_library_sizes
        lib = float(np.mean([library[i] for i in rows])) if library else None
        return {"y": y.mean(axis=0), "library": lib}

    def _basal(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Log-expression of a reference, shrunk toward its similar contexts; mask; sims."""
        m = self.model
        mask = m.measured(counts[None, :])[0]
        y = m.log_expression(counts[None, :], mask[None, :])[0]
        sim = m.context_similarity(y[None, :], mask[None, :])[0]
        prior = np.expm1(np.clip(m.context_prior(sim), 0, 30))
        prior = prior / max(prior.sum(), 1e-12)
        lib = float(counts.sum())
        a = float(m.config.reference_prior_counts)
        share = float(np.clip((mask * m.ref_fraction).sum(), 1e-6, 1.0))
        observed = np.where(mask, counts / max(lib, 1.0) * share, prior)
        post = (lib * observed + a * prior) / (lib + a)
        return np.log1p(post * 1e6), mask, sim

    def _conditioned(
        self,
        query: ReferenceQuery | SampleIdsQuery,
        refs: list[tuple[np.ndarray | None, dict[str, Any] | None]],
        rng: np.random.Generator,
    ) -> ExpressionResult:
        m = self.model
        conditioned = set(query.conditioning)
        parts_y, parts_b, parts_t, parts_p, rows, libraries = [], [], [], [], [], []
        full = np.ones(m.n_genes, dtype=bool)
        items: Sequence[ReferenceInput | SampleIdsInput] = query.inputs
        for item, (counts, stored) in zip(items, refs, strict=True):
            record = dict(item.metadata)
            record.setdefault("perturbation_type", "control")
            n = item.num_samples
            if counts is not None:
                y0, mask, _ = self._basal(counts)
                ref_library = float(counts.sum())
            else:
                assert stored is not None
                y0, mask = stored["y"], full
                ref_library = stored["library"] or float(query.total_count)
            resid = (y0 - m.gene_mean)[None, :]
            zt0 = m.project(resid, m.w_tech)
            zb0 = m.project(resid - zt0 @ m.w_tech, m.w_bio)
            zb, zt = self._latent_noise(n, query.deterministic_latents, rng, shared=True)
            y = np.repeat(y0[None, :], n, axis=0)
            if "technical" not in conditioned:  # redraw the batch: replace its projection
                y = y - zt0 @ m.w_tech + zt @ m.w_tech
            else:
                zt = np.repeat(zt0, n, axis=0)
            if "biological" not in conditioned:
                y = y - zb0 @ m.w_bio + zb @ m.w_bio
            else:
                zb = np.repeat(zb0, n, axis=0)
            effect, seen = self._effect(record, y0, mask, None if counts is None else ref_library)
            record["perturbation_seen"] = seen
            # a reference read as a gene panel is re-generated on its panel: its library
            # stays on the genes it measured, as in the reference
            parts_y.append(np.where(mask[None, :], y + effect[None, :], 0.0))
            parts_b.append(zb)
            parts_t.append(zt)
            parts_p.append(np.repeat(self._pert_latent(effect[None, :]), n, axis=0))
            rows += [record] * n
            total = float(query.total_count) if query.fixed_total_count else ref_library
            libraries.append(np.full(n, total))
        counts_out = self._counts(
            np.concatenate(parts_y), np.concatenate(libraries), query.sampling_strategy, rng
        )
        return ExpressionResult(
            counts_out,
            self._metadata(rows),
            self._latents(parts_b, parts_t, parts_p),
            list(self.genes.gene_ids),
            self.bundle.model_version,
            "reference_conditioned",
        )

    def _predict_metadata(
        self, query: PredictMetadataQuery, rng: np.random.Generator
    ) -> MetadataResult:
        m = self.model
        counts = np.stack([np.asarray(i.counts, dtype=np.float64) for i in query.inputs])
        mask = m.measured(counts)
        y = m.log_expression(counts, mask)
        probs_by_field = m.classify(y, mask)
        probs: list[dict[str, dict[str, float]]] = [{} for _ in range(len(counts))]
        predicted: list[dict[str, str]] = [{} for _ in range(len(counts))]
        for name, p in probs_by_field.items():
            classes = m.classifiers[name].classes
            best = p.argmax(axis=1)
            for i in range(len(counts)):
                probs[i][name] = dict(zip(classes, p[i].tolist(), strict=True))
                predicted[i][name] = classes[int(best[i])]
        basal = np.stack([self._basal(c)[0] for c in counts])
        basal_out = np.where(mask, basal, 0.0)  # a panel is decoded on its panel
        resid = basal - m.gene_mean[None, :]
        zt = m.project(resid, m.w_tech)
        zb = m.project(resid - zt @ m.w_tech, m.w_bio)
        decoded = self._counts(basal_out, counts.sum(axis=1), "sample generation", rng)
        return MetadataResult(
            self._metadata(predicted),
            probs,
            {
                "biological": zb.astype(np.float32),
                "technical": zt.astype(np.float32),
                "perturbation": np.zeros((len(counts), m.w_pert.shape[0]), np.float32),
            },
            decoded,
            list(self.genes.gene_ids),
            self.bundle.model_version,
        )
