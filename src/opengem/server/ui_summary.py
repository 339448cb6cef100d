"""What the web page draws from a result: preview table, PCA, fold changes, class bars.

Pure numpy over the result JSON (compat-spec §4) and the query that made it; the
page renders the numbers itself (SVG / canvas), so nothing here draws. Expression is
compared as CPM (counts per million of each sample's library), PCA runs on
log1p(CPM) of the most variable genes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from opengem.contract import FIELDS

PREVIEW_GENES = 20
PREVIEW_ROWS = 100
PCA_GENES = 2000
PCA_MAX_POINTS = 2000
FOLD_CHANGE_INPUTS = 8
TOP_LABELLED = 12
TOP_CLASSES = 5
#: results with more samples than this are downloaded, not previewed
MAX_SUMMARY_SAMPLES = 5000

Labels = dict[str, dict[str, str]]


def _counts_of(item: Any) -> list[int] | None:
    counts = item.get("counts") if isinstance(item, dict) else None
    if isinstance(counts, dict):
        counts = counts.get("counts")
    return counts if isinstance(counts, list) else None


def _num_samples(item: Any) -> int:
    n = item.get("num_samples", 1) if isinstance(item, dict) else 1
    try:
        return max(int(n), 1)
    except (TypeError, ValueError):
        return 1


def sample_inputs(query: dict[str, Any], n_outputs: int) -> list[int]:
    """The input each output sample came from (outputs follow inputs, ``num_samples``
    each); one group when the query does not account for every output."""
    inputs = query.get("inputs") if isinstance(query, dict) else None
    if not isinstance(inputs, list) or not inputs:
        return [0] * n_outputs
    groups = [i for i, item in enumerate(inputs) for _ in range(_num_samples(item))]
    return groups if len(groups) == n_outputs else [0] * n_outputs


def _shown(field: str, value: Any, labels: Labels) -> str:
    if isinstance(value, list):
        return " + ".join(_shown(field, v, labels) for v in value)
    text = str(value)
    if "|" in text:
        return " + ".join(_shown(field, v, labels) for v in text.split("|"))
    label = labels.get(field, {}).get(text)
    return f"{label} ({text})" if label and label != text else text


def input_label(item: Any, index: int, labels: Labels) -> str:
    """A short name for an input: its metadata values (with labels), or ``input N``."""
    metadata = item.get("metadata") if isinstance(item, dict) else None
    parts: list[str] = []
    if isinstance(item, dict) and isinstance(item.get("sample_ids"), list):
        parts.append(", ".join(str(s) for s in item["sample_ids"][:3]))
    if isinstance(metadata, dict):
        for name in FIELDS:
            value = metadata.get(name)
            if value not in (None, "", []):
                parts.append(_shown(name, value, labels))
    text = " · ".join(parts) or ("counts" if _counts_of(item) is not None else "no metadata")
    text = f"{index + 1}: {text}"
    return text if len(text) <= 90 else text[:89] + "…"


def cpm(counts: np.ndarray) -> np.ndarray:
    """Counts per million of each row's total (a row of zeros stays zeros)."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return counts / np.where(totals > 0, totals, 1.0) * 1e6


def pca(log_expr: np.ndarray, n_genes: int = PCA_GENES) -> tuple[np.ndarray, list[float]]:
    """The first two principal components of rows (samples) over the ``n_genes`` most
    variable columns, and the share of variance each explains."""
    n = log_expr.shape[0]
    coords = np.zeros((n, 2))
    if n < 2:
        return coords, [0.0, 0.0]
    variance = log_expr.var(axis=0)
    top = np.argsort(-variance)[: min(n_genes, log_expr.shape[1])]
    x = log_expr[:, top] - log_expr[:, top].mean(axis=0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    k = min(2, len(s))
    coords[:, :k] = u[:, :k] * s[:k]
    total = float((s**2).sum())
    explained = [float(s[i] ** 2 / total) if total > 0 and i < k else 0.0 for i in range(2)]
    return coords, explained


def _round(values: np.ndarray, digits: int = 4) -> list[float]:
    return [float(v) for v in np.round(values, digits)]


def _class_bars(
    probs: dict[str, dict[str, float]], labels: Labels
) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    order = [f for f in FIELDS if f in probs] + [f for f in probs if f not in FIELDS]
    for field in order:
        ranked = sorted(probs[field].items(), key=lambda kv: -kv[1])[:TOP_CLASSES]
        out[field] = [
            {"value": v, "label": labels.get(field, {}).get(v, ""), "p": round(float(p), 5)}
            for v, p in ranked
        ]
    return out


def summarise(
    payload: dict[str, Any],
    query: dict[str, Any],
    symbols: dict[str, str],
    labels: Labels | None = None,
) -> dict[str, Any]:
    """The page's view of a result.

    Parameters
    ----------
    payload
        The result JSON.
    query
        The query as submitted (inputs give each sample its group and reference).
    symbols
        Gene id → symbol.
    labels
        Per metadata field, value → label (the model's vocabulary).
    """
    labels = labels or {}
    outputs = payload.get("outputs") or []
    gene_order = [str(g) for g in payload.get("gene_order") or []]
    predict = bool(outputs) and "classifier_probs" in outputs[0]
    rows = [
        (o.get("decoder_sample") or {}).get("counts", []) if predict else _counts_of(o) or []
        for o in outputs
    ]
    counts = np.asarray(rows, dtype=np.int64).reshape(len(rows), -1)
    n, n_genes = counts.shape
    raw_inputs = query.get("inputs")
    inputs: list[Any] = raw_inputs if isinstance(raw_inputs, list) else []
    groups = list(range(n)) if predict else sample_inputs(query, n)
    expr = cpm(counts)
    mean = expr.mean(axis=0) if n else np.zeros(n_genes)
    top = np.argsort(-mean)[:PREVIEW_GENES] if n else np.array([], dtype=np.int64)
    genes = [{"id": gene_order[i], "symbol": symbols.get(gene_order[i], "")} for i in top]
    summary: dict[str, Any] = {
        "model_version": payload.get("model_version"),
        "kind": "predict_metadata" if predict else "expression",
        "n_samples": n,
        "n_genes": n_genes,
        "inputs": [input_label(item, i, labels) for i, item in enumerate(inputs)]
        or ["1: all samples"],
        "samples": [
            {"name": f"sample_{i + 1}", "input": groups[i], "library": int(counts[i].sum())}
            for i in range(n)
        ],
        "preview": {
            "genes": genes,
            "rows": counts[:PREVIEW_ROWS][:, top].tolist(),
            "shown": min(n, PREVIEW_ROWS),
        },
    }
    # the references the query sent, once each (the input they belong to first)
    references: list[tuple[int, np.ndarray]] = []
    for i, item in enumerate(inputs):
        ref = _counts_of(item)
        if ref is None or len(ref) != n_genes:
            continue
        vec = np.asarray(ref, dtype=np.int64)
        if not any(np.array_equal(vec, r) for _, r in references):
            references.append((i, vec))
    shown: np.ndarray = np.linspace(0, n - 1, min(n, PCA_MAX_POINTS)).round().astype(np.int64)
    stacked = np.vstack([counts[shown]] + [r[None, :] for _, r in references]) if n else counts
    coords, explained = pca(np.log1p(cpm(stacked)))
    points = [
        {
            "x": float(coords[j, 0]),
            "y": float(coords[j, 1]),
            "input": groups[i],
            "kind": "generated",
            "name": f"sample_{i + 1}",
        }
        for j, i in enumerate(shown)
    ]
    for k, (i, _) in enumerate(references):
        j = len(shown) + k
        points.append(
            {
                "x": float(coords[j, 0]),
                "y": float(coords[j, 1]),
                "input": i,
                "kind": "reference",
                "name": f"reference of input {i + 1}",
            }
        )
    summary["pca"] = {"explained": explained, "points": points}
    if predict:
        summary["predictions"] = [
            {
                "metadata": {
                    k: v
                    for k, v in (o.get("metadata") or {}).items()
                    if v not in ("", None) and k != "modality"
                },
                "classes": _class_bars(o.get("classifier_probs") or {}, labels),
            }
            for o in outputs
        ]
    elif references:
        summary["fold_change"] = _fold_changes(expr, groups, inputs, gene_order, symbols)
    return summary


def _fold_changes(
    expr: np.ndarray,
    groups: list[int],
    inputs: list[Any],
    gene_order: list[str],
    symbols: dict[str, str],
) -> dict[str, Any]:
    """Per input with a reference: log2 fold change of its generated samples' mean CPM
    over the reference's CPM, against log2 mean expression (pseudocount 1 CPM)."""
    group_of = np.asarray(groups)
    per_input: list[tuple[int, np.ndarray, np.ndarray]] = []
    for i, item in enumerate(inputs[:FOLD_CHANGE_INPUTS]):
        ref = _counts_of(item)
        if ref is None or len(ref) != expr.shape[1] or not (group_of == i).any():
            continue
        generated = expr[group_of == i].mean(axis=0)
        reference = cpm(np.asarray(ref, dtype=np.int64)[None, :])[0]
        lfc = np.log2((generated + 1.0) / (reference + 1.0))
        average = np.log2((generated + reference) / 2.0 + 1.0)
        per_input.append((i, lfc, average))
    if not per_input:
        return {"genes": [], "symbols": [], "inputs": []}
    expressed = np.zeros(expr.shape[1], dtype=bool)
    for _, _, average in per_input:
        expressed |= average > 0
    keep = np.flatnonzero(expressed)
    out_inputs = []
    for i, lfc, average in per_input:
        lfc_k, avg_k = lfc[keep], average[keep]
        eligible = avg_k >= 1.0 if (avg_k >= 1.0).sum() >= TOP_LABELLED else np.ones_like(avg_k)
        score = np.where(eligible.astype(bool), np.abs(lfc_k), -1.0)
        top = [int(t) for t in np.argsort(-score)[:TOP_LABELLED]]
        out_inputs.append(
            {"input": i, "log2fc": _round(lfc_k), "mean": _round(avg_k, 3), "top": top}
        )
    return {
        "genes": [gene_order[k] for k in keep],
        "symbols": [symbols.get(gene_order[k], "") for k in keep],
        "inputs": out_inputs,
    }
