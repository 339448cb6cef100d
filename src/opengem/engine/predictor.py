"""Every task of a model id on one bundle (gem1-notes.md, "Inference semantics").

In the model's log-expression space (see :mod:`opengem.model.gem`):

- baseline: the prior mean of the metadata's condition, plus the perturbation's
  effect when the metadata has one; latents z_bio, z_tech ~ N(0, I) (the technical
  draw shared by an input's samples, as replicates of one generated study), or 0
  with ``deterministic_latents``; "mean estimation" returns expected counts,
  "sample generation" adds the residual noise and draws Poisson counts (single
  cells: negative-binomial counts, each gene with the overdispersion of the training
  cells, and no residual noise on top); library size ``total_count``;
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

import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
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
from opengem.model.perturbations import SEP, context_key
from opengem.ontology.describe import term_label
from opengem.ontology.genes import GeneSpace, default_gene_space

#: ontology fields that also get a ``*_label`` key in result metadata
LABELLED = {
    "tissue_ontology_id": "tissue_label",
    "cell_type_ontology_id": "cell_type_label",
    "cell_line_ontology_id": "cell_line_label",
    "disease_ontology_id": "disease_label",
    "perturbation_ontology_id": "perturbation_label",
}
MODALITY_WORD = {"bulk": "bulk", "sc": "single-cell"}


#: rows per elementwise step of decoding (a few MB: the step's buffers stay in cache);
#: every step works row by row, so its size never changes a result
ROWS = 16
#: buckets of the fractional parts in :func:`round_preserving_total` (a power of two,
#: so that ``floor(frac * 256)`` is exact and monotone in ``frac``)
_BUCKETS = 256


def _add_largest(frac: np.ndarray, d: np.ndarray, counts: np.ndarray) -> None:
    """Add 1 to the ``d[i]`` largest fractions of each row ``i`` of ``counts``, in place.

    Vectorised over rows: each fraction's bucket (``floor(frac * 256)``, uint8) is
    sorted per row (a radix sort) to find the bucket holding the row's ``d``-th
    largest; everything above it is taken, and the largest fractions of that bucket
    make up the rest. When the last fraction taken equals the next one the top ``d``
    are not unique by value: such a row takes ``np.argpartition``'s choice, the rule
    every row followed before, so results are unchanged.
    """
    r, n = frac.shape
    key = np.multiply(frac, _BUCKETS, out=np.empty(frac.shape, np.uint8), casting="unsafe")
    rows = np.arange(r)
    has = d > 0
    kth = n - np.maximum(d, 1)
    tb = np.where(has, np.sort(key, axis=1, kind="stable")[rows, kth], _BUCKETS)
    tb16 = tb.astype(np.uint16)[:, None]
    above = np.greater(key, tb16)
    need = d - above.view(np.uint8).sum(axis=1, dtype=np.int64)
    tie = np.flatnonzero(np.equal(key, tb16).reshape(-1))
    tie_row = tie // n
    tie_val = frac.reshape(-1)[tie]
    order = np.lexsort((-tie_val, tie_row))
    tie, tie_row, tie_val = tie[order], tie_row[order], tie_val[order]
    rank = np.arange(len(tie)) - np.searchsorted(tie_row, rows)[tie_row]
    take = rank < need[tie_row]
    last = np.flatnonzero(take & (rank == need[tie_row] - 1))
    last = last[last + 1 < len(tie)]
    nxt = last + 1
    ambiguous = np.zeros(r, dtype=bool)
    same = (tie_row[nxt] == tie_row[last]) & (tie_val[nxt] == tie_val[last])
    ambiguous[tie_row[last][same]] = True
    if ambiguous.any():
        above[ambiguous] = False
        take &= ~ambiguous[tie_row]
    counts += above
    counts.reshape(-1)[tie[take]] += 1
    for i in np.flatnonzero(ambiguous):
        k = n - int(d[i])
        counts[i, np.argpartition(frac[i], k)[k:]] += 1


def round_preserving_total(
    mu: np.ndarray,
    out: np.ndarray | None = None,
    *,
    overwrite: bool = False,
    scratch: np.ndarray | None = None,
) -> np.ndarray:
    """Integer counts from expected counts, each row summing exactly to its (rounded) total.

    Plain rounding of a single cell's ~20,000 expected counts, most below 0.5, would
    lose most of its library; largest-remainder rounding keeps every row's total.
    Deep rows (bulk) whose rounded counts already sum within 0.1% of their total keep
    plain rounding.

    ``out`` (int64, C-contiguous) receives the counts; ``overwrite=True`` lets the
    function use ``mu`` as scratch; ``scratch`` is a float64 buffer of at least
    ``mu``'s shape. Vectorised: no Python loop over rows (but see :func:`_add_largest`).
    """
    mu = np.asarray(mu, dtype=np.float64)
    if not overwrite or not mu.flags.c_contiguous:
        mu = np.array(mu, dtype=np.float64, order="C")
    r, n = mu.shape
    counts = np.empty((r, n), dtype=np.int64) if out is None else out
    f = np.empty_like(mu) if scratch is None else scratch[:r]
    totals = np.rint(mu.sum(axis=1)).astype(np.int64)
    np.rint(mu, out=f)
    near = f.sum(axis=1).astype(np.int64)  # exact: integers, well below 2**53
    off = np.abs(near - totals) > 1e-3 * np.maximum(totals, 1)
    if not off.any():
        np.copyto(counts, f, casting="unsafe")
        return counts
    if off.all():
        sub, fl, rows, tot = mu, f, counts, totals
    else:
        counts[~off] = f[~off]
        sub = mu[off]
        fl, rows, tot = np.empty_like(sub), np.empty(sub.shape, dtype=np.int64), totals[off]
    np.floor(sub, out=fl)
    np.copyto(rows, fl, casting="unsafe")
    d = np.clip(tot - rows.sum(axis=1), 0, n)
    frac = np.subtract(sub, fl, out=sub)
    _add_largest(frac, d, rows)
    if rows is not counts:
        counts[off] = rows
    return counts


@dataclass(frozen=True)
class Draw:
    """How a sampling strategy turns expected counts into counts."""

    #: ``(mu, rng, out)``: counts of expected counts ``mu`` (which it may overwrite)
    #: into the int64 rows ``out``, with float64 ``scratch`` rows as large as ``mu``
    fill: Callable[[np.ndarray, np.random.Generator, np.ndarray, np.ndarray], None]
    #: it draws from the generator: every row must exist before the first draw, so that
    #: the stream of draws stays what it was (latents and noise first, then counts)
    random: bool


def _poisson(mu: np.ndarray, rng: np.random.Generator, out: np.ndarray, _: np.ndarray) -> None:
    out[...] = rng.poisson(mu)


def _rounded(mu: np.ndarray, _: np.random.Generator, out: np.ndarray, scratch: np.ndarray) -> None:
    round_preserving_total(mu, out, overwrite=True, scratch=scratch)


#: how each sampling strategy (:data:`opengem.contract.query.STRATEGIES`) turns expected
#: counts into counts
DRAWS: dict[str, Draw] = {
    "sample generation": Draw(_poisson, random=True),
    "mean estimation": Draw(_rounded, random=False),
}
if set(DRAWS) != set(STRATEGIES):  # a strategy added to the contract needs its draw here
    raise ImportError(f"sampling strategies without a draw: {set(STRATEGIES) ^ set(DRAWS)}")

#: ``fill(a, b, dst)``: rows ``a:b`` of one input's log expression into ``dst``
RowFill = Callable[[int, int, np.ndarray], None]
#: ``rows(done)``: the first ``done`` rows of the result's counts are final
RowsDone = Callable[[int], None]
#: ``on_start(result, bound)``, opt-in (:meth:`Predictor.predict`): called once an
#: expression result is known but for its counts (``result.counts`` is the buffer they
#: are decoded into, in row order), before the first row is decoded; ``bound`` is
#: what no count can exceed (None: not bounded, the counts are drawn). It may return a
#: :data:`RowsDone` that the decoding calls as rows become final.
OnStart = Callable[[ExpressionResult, "int | None"], "RowsDone | None"]


class CountSink:
    """Counts of a query's rows, built once in their returned dtype (int64).

    Inputs are added in order, each as a row-filling function; a strategy that draws
    no randomness decodes each input's rows in small steps straight into the result
    (no full-size float temporaries); one that draws keeps every row's log expression
    in the result's own memory (viewed as float64) and draws after the last input, as
    the stream of draws requires.
    """

    def __init__(
        self,
        n_rows: int,
        n_genes: int,
        strategy: str,
        rng: np.random.Generator,
        dispersion: np.ndarray | None = None,
    ):
        draw = DRAWS.get(strategy)
        if draw is None:
            raise ValueError(f"sampling strategy {strategy!r}: expected one of {sorted(DRAWS)}")
        self.draw, self.rng = draw, rng
        #: a strategy that draws: per gene, the negative-binomial overdispersion φ of the
        #: counts (a Gamma(1/φ, μφ) draw of each expected count before its Poisson draw),
        #: one row (G,) for every row of the result or a table (K, G) whose row each
        #: input names (:meth:`add`), genes chosen by the first row; None = Poisson
        self._overdispersed: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._table: np.ndarray | None = None
        self._table_row = np.zeros(n_rows, dtype=np.intp)
        if dispersion is not None and draw.random:
            table = np.atleast_2d(dispersion)
            if (table[0] > 0).any():
                cols = np.flatnonzero(table[0] > 0)
                phi = table[0, cols]
                self._overdispersed = (cols, 1.0 / phi, phi)
                if len(table) > 1:
                    self._table = np.maximum(table[:, cols], 1e-8)
        self.counts = np.empty((n_rows, n_genes), dtype=np.int64)
        self.library = np.empty(n_rows, dtype=np.float64)
        self._y = self.counts.view(np.float64) if draw.random else None
        self._step = np.empty((min(ROWS, max(n_rows, 1)), n_genes))
        self._scratch = np.empty_like(self._step)
        self._next = 0
        #: called with the number of leading rows whose counts are final (opt-in)
        self.on_rows: RowsDone | None = None

    def region(self, n: int) -> np.ndarray | None:
        """Where the next ``n`` rows' counts will go, as float64 scratch for their
        filling (each row block is read before its counts are written), or None when
        the rows' log expression must stay there until :meth:`finish`."""
        if self._y is not None:
            return None
        return self.counts[self._next : self._next + n].view(np.float64)

    def add(self, n: int, library: float | np.ndarray, fill: RowFill, table_row: int = 0) -> None:
        """The next ``n`` rows, at ``library``, drawn (a strategy that draws) with row
        ``table_row`` of the dispersion table."""
        start = self._next
        self._next += n
        self.library[start : start + n] = library
        self._table_row[start : start + n] = table_row
        for a in range(0, n, ROWS):
            b = min(n, a + ROWS)
            if self._y is not None:
                fill(a, b, self._y[start + a : start + b])
            else:
                step = self._step[: b - a]
                fill(a, b, step)
                self._decode(step, start + a, start + b)
                if self.on_rows is not None:
                    self.on_rows(start + b)

    def _decode(self, y: np.ndarray, a: int, b: int) -> None:
        step = self._step[: b - a]
        GEMModel.expected_counts(y, self.library[a:b], out=step)
        if self._overdispersed is not None:
            cols, shape, phi = self._overdispersed
            rows = self._table_row[a:b]
            if self._table is not None and rows.any():  # some rows with their own φ
                phi = self._table[rows]
                shape = 1.0 / phi
            step[:, cols] = self.rng.gamma(shape, step[:, cols] * phi)
        self.draw.fill(step, self.rng, self.counts[a:b], self._scratch)

    def finish(self) -> np.ndarray:
        if self._next != len(self.counts):
            raise RuntimeError(f"{self._next} of {len(self.counts)} rows added")
        if self._y is not None:
            for a in range(0, len(self.counts), ROWS):
                b = min(len(self.counts), a + ROWS)
                self._decode(self._y[a:b], a, b)
                if self.on_rows is not None:
                    self.on_rows(b)
            self._y = None
        return self.counts

    def bound(self, libraries: Sequence[float]) -> int | None:
        """What no count can exceed when the rows' libraries are ``libraries``: a
        strategy that draws none rounds expected counts (each at most its row's
        library) keeping the row's total, so a count is at most the library + 2; one
        that draws is not bounded (None)."""
        top = max(libraries, default=0.0)
        if self.draw.random or not math.isfinite(top):
            return None
        return math.ceil(top) + 2


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


class _Buffers:
    """Reusable (rows, genes) float64 buffers, by name: one set per predictor, kept
    between queries (their pages stay mapped: first-touch page faults cost as much as
    the arithmetic), lent to one query at a time. They hold up to two (largest input's
    samples × genes) float64 matrices, ~320 MB after a 1,000-sample input, released
    with the predictor (:meth:`ModelRegistry.unload_idle`)."""

    def __init__(self, n_genes: int) -> None:
        self.n_genes = n_genes
        self._held: dict[str, np.ndarray] = {}
        self.lock = threading.Lock()

    def get(self, name: str, n: int) -> np.ndarray:
        held = self._held.get(name)
        if held is None or len(held) < n:
            held = self._held[name] = np.empty((n, self.n_genes))
        return held[:n]


@contextmanager
def _borrowed(pool: _Buffers) -> Iterator[_Buffers]:
    """The predictor's buffers, or fresh ones while another query holds them."""
    if not pool.lock.acquire(blocking=False):
        yield _Buffers(pool.n_genes)
        return
    try:
        yield pool
    finally:
        pool.lock.release()


def _conditioned_rows(
    start: np.ndarray,
    tech: np.ndarray | None,
    bio0: np.ndarray | None,
    bio: np.ndarray | None,
    effect: np.ndarray,
    mask: np.ndarray,
) -> RowFill:
    """Rows of a conditioned input: ``start`` (the reference, less its technical
    projection when that is redrawn) ``+ tech``, ``- bio0 + bio``, ``+ effect``; genes
    outside ``mask`` 0 (a reference read as a gene panel is re-generated on its panel:
    its library stays on the genes it measured, as in the reference)."""
    off_panel = None if mask.all() else ~mask[None, :]

    def fill(a: int, b: int, dst: np.ndarray) -> None:
        if tech is not None:
            np.add(start, tech[a:b], out=dst)
        else:
            dst[...] = start
        if bio is not None:
            assert bio0 is not None
            dst -= bio0
            dst += bio[a:b]
        dst += effect[None, :]
        if off_panel is not None:
            np.copyto(dst, 0.0, where=off_panel)

    return fill


@dataclass
class _Inputs:
    """What an expression query's inputs add up to: the sink their counts decode
    into, the additions deferred until every input is prepared, their latents and
    their metadata rows."""

    sink: CountSink
    adds: list[Callable[[], None]] = field(default_factory=list)
    bio: list[np.ndarray] = field(default_factory=list)
    tech: list[np.ndarray] = field(default_factory=list)
    pert: list[np.ndarray] = field(default_factory=list)
    rows: list[dict[str, str]] = field(default_factory=list)

    def take(
        self,
        add: Callable[[], None],
        zb: np.ndarray,
        zt: np.ndarray,
        pert: np.ndarray,
        record: dict[str, str],
    ) -> None:
        """One input of ``len(zb)`` samples: a strategy that draws noise while adding
        adds it now (input by input: the same stream of draws); the others later."""
        if self.sink.draw.random:
            add()
        else:
            self.adds.append(add)
        self.bio.append(zb)
        self.tech.append(zt)
        self.pert.append(np.repeat(pert, len(zb), axis=0))
        self.rows += [record] * len(zb)


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
        self._buffers = _Buffers(self.model.n_genes)
        #: training studies: generating "in" one uses its batch, not a newly drawn one
        self._studies = set(self.vocab.values("study")) if "study" in self.vocab.fields else set()

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
        context: Mapping[str, str] | None = None,
    ) -> tuple[np.ndarray, str]:
        """The perturbation effect of a record for a sample ``y`` (a reference of
        ``library`` reads, or a prior mean when None) whose metadata, where known
        (``context``: a query's own metadata, a stored sample's record), names its
        training contexts; and the seen flag."""
        perts = perturbations_of(record)
        if not perts:
            return np.zeros(self.model.n_genes), ""
        sim = self.model.context_similarity(y[None, :], mask[None, :])[0]
        weight = 1.0 if library is None else self.model.level_weight(library)
        within = self.model.contexts_of(context) if context else frozenset()
        effect, seen = self.model.effect(perts, sim, self.genes.index_of, y, weight, within)
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
        """Counts of materialised log-expression rows ``y`` (small queries)."""
        sink = CountSink(len(y), y.shape[1], strategy, rng)

        def rows(a: int, b: int, dst: np.ndarray) -> None:
            dst[...] = y[a:b]

        sink.add(len(y), library, rows)
        return sink.finish()

    def _pert_latent(self, effects: np.ndarray) -> np.ndarray:
        basis = self.model.w_pert
        return (effects @ basis.T).astype(np.float32) if basis.size else np.zeros((len(effects), 0))

    # -------------------------------------------------------------------- tasks
    def predict(
        self, query: Query, on_start: OnStart | None = None
    ) -> ExpressionResult | MetadataResult:
        """The result of ``query``. ``on_start`` (opt-in, see :data:`OnStart`) lets a
        caller use an expression result's rows while later ones are decoded (a
        metadata prediction never calls it); the counts are the same with or without."""
        rng = np.random.default_rng(query.seed)
        if isinstance(query, BaselineQuery):
            return self._baseline(query, rng, on_start)
        if isinstance(query, ReferenceQuery):
            refs: list[tuple[np.ndarray | None, dict[str, Any] | None]] = [
                (np.asarray(i.counts, dtype=np.float64), None) for i in query.inputs
            ]
            return self._conditioned(query, refs, rng, on_start)
        if isinstance(query, SampleIdsQuery):
            return self._conditioned(
                query,
                [(None, self._stored(i.sample_ids, n)) for n, i in enumerate(query.inputs)],
                rng,
                on_start,
            )
        if isinstance(query, PredictMetadataQuery):
            return self._predict_metadata(query, rng)
        raise TypeError(f"unsupported query type {type(query).__name__}")

    @staticmethod
    def _decode(
        inputs: _Inputs,
        result: ExpressionResult,
        libraries: Sequence[float],
        on_start: OnStart | None,
    ) -> ExpressionResult:
        """Decode the counts of ``result`` (its counts are the inputs' sink's): the
        inputs' deferred additions (a strategy that draws none adds its inputs once
        every input is prepared; it draws nothing while adding, so the stream of draws
        is the same), after ``on_start`` has seen the result."""
        sink = inputs.sink
        if on_start is not None:
            sink.on_rows = on_start(result, sink.bound(libraries))
        for add in inputs.adds:
            add()
        sink.finish()
        sink.on_rows = None
        return result

    def _baseline(
        self, query: BaselineQuery, rng: np.random.Generator, on_start: OnStart | None = None
    ) -> ExpressionResult:
        m = self.model
        records = [dict(i.metadata) for i in query.inputs]
        base = m.prior_mean(records)
        full = np.ones(m.n_genes, dtype=bool)
        # residual noise in log space for bulk; cells draw theirs as negative-binomial counts
        noisy = (
            query.sampling_strategy == "sample generation"
            and not query.deterministic_latents
            and not m.cell_dispersion.size
        )
        dispersion, table_row = self._dispersion({r.get("study", "") for r in records})
        sink = CountSink(
            sum(i.num_samples for i in query.inputs),
            m.n_genes,
            query.sampling_strategy,
            rng,
            dispersion,
        )
        inputs = _Inputs(sink)
        library = float(query.total_count)
        # drawn cells differ in depth as a condition's cells do (bulk: the asked total)
        drawn_depth = query.sampling_strategy == "sample generation" and m.cell_library_sd > 0
        with _borrowed(self._buffers) as buffers:
            for k, (item, record) in enumerate(zip(query.inputs, records, strict=True)):
                n = item.num_samples
                effect, seen = self._effect(record, base[k], full, context=record)
                record["perturbation_seen"] = seen
                zb, zt = self._latent_noise(n, query.deterministic_latents, rng, shared=True)
                spread = 1.0
                own_noise = None
                if record.get("study") in self._studies:  # its own batch is in the prior mean:
                    zt = np.zeros_like(zt)  # no second one drawn on top (same draws consumed)
                    spread = math.sqrt(m.study_spread.get(record["study"], 1.0))  # as variable
                    own_noise = m.study_noise_sd.get(record["study"])  # gene by gene
                depth_sd = (  # a seen study's own cells' depth SD, else the pooled one
                    m.study_cell_library_sd.get(record.get("study", ""), m.cell_library_sd)
                    if drawn_depth
                    else 0.0
                )
                # y = base + effect + zb W_bio + zt W_tech (+ noise_sd * N(0, 1) when sampling),
                # the products as whole-input matrix products (their bits depend on the shape)
                # and the sums in this order, row block by row block
                mean = base[k][None, :] + effect[None, :]

                def add(
                    n: int = n,
                    zb: np.ndarray = zb,
                    zt: np.ndarray = zt,
                    mean: np.ndarray = mean,
                    spread: float = spread,
                    own_noise: np.ndarray | None = own_noise,
                    phi_row: int = table_row.get(record.get("study", ""), 0),
                    depth_sd: float = depth_sd,
                ) -> None:
                    libraries: float | np.ndarray = library
                    if depth_sd > 0:  # log-normal around the total (its mean)
                        z = rng.standard_normal(n)
                        libraries = library * np.exp(depth_sd * z - 0.5 * depth_sd**2)
                    region = sink.region(n)  # the rows' own result memory, when free
                    bio_out = buffers.get("bio", n) if region is None else region
                    bio = np.matmul(zb, m.w_bio, out=bio_out)
                    if spread != 1.0:
                        bio *= spread
                    tech = np.matmul(zt, m.w_tech, out=buffers.get("tech", n))
                    fill = self._baseline_rows(mean, bio, tech, noisy, rng, spread, own_noise)
                    sink.add(n, libraries, fill, phi_row)

                inputs.take(add, zb, zt, self._pert_latent(effect[None, :]), record)
            result = self._expression_result(inputs, "baseline")
            return self._decode(inputs, result, [library], on_start)

    def _baseline_rows(
        self,
        mean: np.ndarray,
        bio: np.ndarray,
        tech: np.ndarray,
        noisy: bool,
        rng: np.random.Generator,
        spread: float = 1.0,
        own_noise: np.ndarray | None = None,
    ) -> RowFill:
        noise_sd = self.model.noise_sd[None, :]
        if own_noise is not None:  # a seen study's own per-gene noise (GEMModel.study_noise_sd)
            noise_sd = own_noise[None, :]
        elif spread != 1.0:  # a seen study's own variation (GEMModel.study_spread)
            noise_sd = noise_sd * spread
        buffer = np.empty((min(ROWS, len(bio)), bio.shape[1])) if noisy else None

        def fill(a: int, b: int, dst: np.ndarray) -> None:
            np.add(mean, bio[a:b], out=dst)
            dst += tech[a:b]
            if buffer is not None:  # the input's noise, row block by row block: same stream
                noise = buffer[: b - a]
                rng.standard_normal(out=noise)
                noise *= noise_sd
                dst += noise

        return fill

    def _dispersion(self, studies: set[str]) -> tuple[np.ndarray | None, dict[str, int]]:
        """A single-cell model's dispersion table for :class:`CountSink` (row 0 the
        pooled φ, then the own φ of each of ``studies`` seen in training: cells drawn in
        a seen study vary as its cells do) and each such study's row; None for bulk."""
        m = self.model
        if not m.cell_dispersion.size:
            return None, {}
        own = sorted(studies & set(m.study_cell_dispersion))
        table = np.vstack([m.cell_dispersion, *(m.study_cell_dispersion[s] for s in own)])
        return table, {s: k + 1 for k, s in enumerate(own)}

    def _expression_result(self, inputs: _Inputs, kind: str) -> ExpressionResult:
        """The result of an expression query, its counts still being decoded."""
        return ExpressionResult(
            inputs.sink.counts,
            self._metadata(inputs.rows),
            self._latents(inputs.bio, inputs.tech, inputs.pert),
            list(self.genes.gene_ids),
            self.bundle.model_version,
            kind,
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
        # the samples' own context, when they share one (their perturbation's effect
        # there, if measured, is theirs; a context key has no perturbation fields)
        context = records[0] if len({context_key(r) for r in records}) == 1 else None
        return {"y": y.mean(axis=0), "library": lib, "context": context}

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
        on_start: OnStart | None = None,
    ) -> ExpressionResult:
        m = self.model
        conditioned = set(query.conditioning)
        full = np.ones(m.n_genes, dtype=bool)
        items: Sequence[ReferenceInput | SampleIdsInput] = query.inputs
        sink = CountSink(
            sum(i.num_samples for i in items),
            m.n_genes,
            query.sampling_strategy,
            rng,
            self._dispersion(set())[0],  # a reference names no study: the pooled φ
        )
        inputs = _Inputs(sink)
        libraries: list[float] = []
        with _borrowed(self._buffers) as buffers:
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
                # y = y0 [- zt0 W_tech + zt W_tech] [- zb0 W_bio + zb W_bio] + effect, in this
                # order, the products as whole-input matrix products (as :meth:`_baseline`)
                start = y0[None, :]
                redraw_tech = "technical" not in conditioned
                redraw_bio = "biological" not in conditioned
                bio0 = None
                if redraw_tech:  # redraw the batch: replace its projection
                    start = start - zt0 @ m.w_tech
                else:
                    zt = np.repeat(zt0, n, axis=0)
                if redraw_bio:
                    bio0 = zb0 @ m.w_bio
                else:
                    zb = np.repeat(zb0, n, axis=0)
                effect, seen = self._effect(
                    record,
                    y0,
                    mask,
                    None if counts is None else ref_library,
                    None if stored is None else stored["context"],
                )
                record["perturbation_seen"] = seen
                total = float(query.total_count) if query.fixed_total_count else ref_library
                libraries.append(total)

                def add(
                    n: int = n,
                    zb: np.ndarray = zb,
                    zt: np.ndarray = zt,
                    start: np.ndarray = start,
                    bio0: np.ndarray | None = bio0,
                    effect: np.ndarray = effect,
                    mask: np.ndarray = mask,
                    total: float = total,
                    redraw_tech: bool = redraw_tech,
                    redraw_bio: bool = redraw_bio,
                ) -> None:
                    tech = bio = None
                    if redraw_tech:
                        tech = np.matmul(zt, m.w_tech, out=buffers.get("tech", n))
                    if redraw_bio:
                        region = sink.region(n)  # the rows' own result memory, when free
                        bio_out = buffers.get("bio", n) if region is None else region
                        bio = np.matmul(zb, m.w_bio, out=bio_out)
                    sink.add(n, total, _conditioned_rows(start, tech, bio0, bio, effect, mask))

                inputs.take(add, zb, zt, self._pert_latent(effect[None, :]), record)
            result = self._expression_result(inputs, "reference_conditioned")
            return self._decode(inputs, result, libraries, on_start)

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
