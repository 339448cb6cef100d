"""``report.html`` and its PNG figures for one protocol run (matplotlib, Agg backend).

Figures (small PNGs beside the HTML):

- ``pca.png``: PCA of real vs generated samples per unit, coloured by condition,
  marker by origin (o real, x synthetic);
- ``logfc.png`` (held-out context): predicted vs true logFC on the top-100 DEGs
  per unit, the model with the baselines;
- ``gene_mean_sd.png``: per-gene mean (and SD, for generation) of generated vs
  real expression;
- ``calibration.png`` (metadata prediction): reliability curve of the metadata
  classifier and of the logistic-regression baseline;
- ``diversity.png`` (generation): correlation between condition means, real vs
  generated (a collapsed generator is uniformly dark).

:func:`write_summary_report` writes the ``--all`` report: every protocol's summary
table (model, diagnostics and baselines side by side) with links to its own report.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np

COLORS = {
    "model": "#d62728",
    "additive_shift": "#7f7f7f",
    "train_mean": "#1f77b4",
    "condition_mean": "#1f77b4",
    "logistic_pca": "#1f77b4",
    "no_change": "#2ca02c",
}
DPI = 60
MAX_PANELS = 24


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int, width: float = 3.0) -> tuple[Any, Any]:
    plt = _plt()
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, width * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return fig, axes.ravel()


def _pca2(x: np.ndarray, fit: np.ndarray | None = None) -> np.ndarray:
    """Scores of ``x`` on the top two principal components of ``fit`` (default ``x``).

    The PCA is fitted on the real samples and generated ones are projected onto
    it, so the real structure stays visible however far off the generated lie.
    """
    fit = x if fit is None else fit
    var = fit.var(axis=0)
    genes = np.argsort(-var)[:1000]
    centre = fit[:, genes].mean(axis=0)
    if fit.shape[0] < 2:
        return np.zeros((x.shape[0], 2))
    _, _, vt = np.linalg.svd(fit[:, genes] - centre, full_matrices=False)
    z = (x[:, genes] - centre) @ vt[:2].T
    if z.shape[1] < 2:
        z = np.hstack([z, np.zeros((z.shape[0], 2 - z.shape[1]))])
    return z


def _short(name: str, n: int = 34) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1) :]


def pca_figure(units: list[dict[str, Any]], path: Path) -> bool:
    units = [u for u in units if u.get("real")][:MAX_PANELS]
    if not units:
        return False
    plt = _plt()
    fig, axes = _grid(len(units))
    for ax, u in zip(axes, units, strict=False):
        blocks: list[tuple[np.ndarray, np.ndarray, str]] = []
        labels = u.get("condition_labels")
        for name, x in u["real"].items():
            cond = np.asarray(labels) if labels is not None else np.full(len(x), name)
            blocks.append((x, cond.astype(str), "real"))
        for name, x in u["generated"].items():
            cond = np.asarray(labels) if labels is not None else np.full(len(x), name)
            blocks.append((x, cond.astype(str), "synthetic"))
        real = np.vstack([b[0] for b in blocks if b[2] == "real"])
        z = _pca2(np.vstack([b[0] for b in blocks]), real)
        conds = sorted({c for b in blocks for c in b[1]})
        cmap = plt.get_cmap("tab10")
        color = {c: cmap(i % 10) for i, c in enumerate(conds)}
        start = 0
        for x, cond, origin in blocks:
            zz = z[start : start + len(x)]
            start += len(x)
            for c in sorted(set(cond)):
                sel = cond == c
                ax.scatter(
                    zz[sel, 0],
                    zz[sel, 1],
                    s=22 if origin == "real" else 30,
                    marker="o" if origin == "real" else "x",
                    color=color[c],
                    alpha=0.8,
                    label=f"{c} ({origin})" if len(conds) <= 4 else None,
                )
        ax.set_title(_short(u["name"]), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        if len(conds) <= 4:
            ax.legend(fontsize=6, loc="best")
    fig.suptitle(
        "PCA of the real samples (o), generated samples (x) projected on it; colour = condition",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def logfc_figure(units: list[dict[str, Any]], path: Path) -> bool:
    units = [u for u in units if "true_lfc" in u][:MAX_PANELS]
    if not units:
        return False
    plt = _plt()
    fig, axes = _grid(len(units))
    for ax, u in zip(axes, units, strict=False):
        true = u["true_lfc"]
        for name, pred in u["pred_lfc"].items():
            ax.scatter(
                true,
                pred,
                s=6,
                alpha=0.6,
                color=COLORS.get(name, "k"),
                label=name,
                zorder=3 if name == "model" else 2,
            )
        lim = float(np.nanmax(np.abs(true))) if len(true) else 1.0
        ax.plot([-lim, lim], [-lim, lim], lw=0.5, color="k")
        ax.axhline(0, lw=0.3, color="k")
        ax.set_title(_short(u["name"]), fontsize=8)
        ax.tick_params(labelsize=6)
    axes[0].legend(fontsize=6)
    axes[0].set_xlabel("true logFC (top-100 DEGs)", fontsize=7)
    axes[0].set_ylabel("predicted logFC", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def gene_figure(units: list[dict[str, Any]], path: Path) -> bool:
    units = [u for u in units if "gen_mean" in u]
    if not units:
        return False
    plt = _plt()
    names: list[str] = []
    for u in units:
        names += [n for n in u["gen_mean"] if n not in names]
    has_sd = "gen_sd" in units[0]
    n = len(names) * (2 if has_sd else 1)
    fig, axes = _grid(n, width=2.8)
    rng = np.random.default_rng(0)

    def pooled(key: str, name: str | None) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for u in units:
            if name not in u.get(key, {}):
                continue
            real = u["real_mean"] if key == "gen_mean" else u["real_sd"]
            xs.append(real)
            ys.append(u[key][name])
        if not xs:
            return np.zeros(0), np.zeros(0)
        x, y = np.concatenate(xs), np.concatenate(ys)
        if len(x) > 6000:
            keep = rng.choice(len(x), 6000, replace=False)
            x, y = x[keep], y[keep]
        return x, y

    i = 0
    for key, what in (("gen_mean", "mean"), ("gen_sd", "SD")):
        if key not in units[0]:
            continue
        for name in names:
            ax = axes[i]
            i += 1
            x, y = pooled(key, name)
            if not len(x):
                ax.axis("off")
                continue
            ax.scatter(x, y, s=2, alpha=0.3, color=COLORS.get(name, "k"), rasterized=True)
            top = float(max(np.nanmax(x), np.nanmax(y), 1e-6))
            ax.plot([0, top], [0, top], lw=0.5, color="k")
            r = np.corrcoef(x, y)[0, 1] if np.ptp(x) > 0 and np.ptp(y) > 0 else float("nan")
            ax.set_title(f"{name}: per-gene {what} (r = {r:.2f})", fontsize=8)
            ax.set_xlabel(f"real {what} (log-CPM)", fontsize=7)
            ax.set_ylabel(f"generated {what}", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def calibration_figure(calibration: dict[str, list[dict[str, np.ndarray]]], path: Path) -> bool:
    if not any(calibration.values()):
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    edges = np.linspace(0, 1, 11)
    for name, parts in calibration.items():
        if not parts:
            continue
        conf = np.concatenate([p["confidence"] for p in parts])
        correct = np.concatenate([p["correct"] for p in parts]).astype(float)
        bins = np.clip(np.searchsorted(edges[1:-1], conf, side="left"), 0, 9)
        xs, ys = [], []
        for b in range(10):
            sel = bins == b
            if sel.any():
                xs.append(conf[sel].mean())
                ys.append(correct[sel].mean())
        ax.plot(xs, ys, marker="o", ms=3, color=COLORS.get(name, "k"), label=name)
    ax.plot([0, 1], [0, 1], lw=0.5, color="k", ls="--")
    ax.set_xlabel("confidence", fontsize=8)
    ax.set_ylabel("accuracy", fontsize=8)
    ax.set_title("metadata prediction calibration (all scorable fields)", fontsize=8)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def diversity_figure(units: list[dict[str, Any]], path: Path) -> bool:
    units = [u for u in units if "diversity" in u and len(u["diversity"]["real"]) >= 2]
    units = units[: MAX_PANELS // 2]
    if not units:
        return False
    plt = _plt()
    fig, axes = plt.subplots(len(units), 2, figsize=(5.0, 2.5 * len(units)), squeeze=False)
    for row, u in zip(axes, units, strict=True):
        for ax, name in zip(row, ("real", "model"), strict=True):
            c = np.corrcoef(np.asarray(u["diversity"][name]))
            ax.imshow(c, vmin=0.5, vmax=1.0, cmap="viridis")
            off = c[~np.eye(len(c), dtype=bool)]
            ax.set_title(
                f"{_short(u['name'], 20)} {name}: mean r {np.nanmean(off):.2f}", fontsize=7
            )
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def _fmt(v: Any) -> str:
    if v is None:
        return "undefined"
    if isinstance(v, float):
        return f"{v:.3f}"
    return html.escape(str(v))


def _table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(metrics: dict[str, Any], figures: dict[str, Any], out: Path) -> Path:
    """Write the figures and ``report.html`` into ``out``; returns the HTML path."""
    out = Path(out)
    pngs = []
    units = figures.get("units", [])
    if pca_figure(units, out / "pca.png"):
        pngs.append(("pca.png", "PCA: real (o) vs generated (x), coloured by condition"))
    if logfc_figure(units, out / "logfc.png"):
        pngs.append(("logfc.png", "Predicted vs true logFC, top-100 DEGs, model and baselines"))
    if gene_figure(units, out / "gene_mean_sd.png"):
        pngs.append(("gene_mean_sd.png", "Per-gene mean (and SD) of generated vs real"))
    if calibration_figure(figures.get("calibration", {}), out / "calibration.png"):
        pngs.append(("calibration.png", "Calibration of metadata prediction"))
    if diversity_figure(units, out / "diversity.png"):
        pngs.append(("diversity.png", "Correlation between condition means: real vs generated"))
    summary = metrics["summary"]
    header, rows = summary_rows(summary)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>opengem eval: {html.escape(metrics['protocol'])}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;font-size:14px}"
        "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:2px 6px;"
        "font-size:12px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%}code{background:#f4f4f4}</style></head><body>",
        f"<h1>opengem eval: {html.escape(metrics['protocol'])}</h1>",
        f"<p>Command: <code>{html.escape(str(metrics.get('command')))}</code><br>",
        f"Corpus checksum: <code>{html.escape(str(metrics.get('corpus_checksum')))}</code><br>",
        f"Trainings: {metrics['n_trainings']} ({html.escape(metrics.get('n_trainings_note', ''))})"
        f"<br>Units: {summary['n_units']}; total time {metrics['timings']['total_seconds']} s"
        f"{' (--fast)' if metrics.get('fast') else ''}</p>",
        "<h2>Summary (mean over units)</h2>",
        _table(rows, header),
        "<h2>Verdict</h2><ul>",
        *[f"<li>{html.escape(v)}</li>" for v in metrics["verdict"].values()],
        "</ul>",
    ]
    for name, caption in pngs:
        parts.append(f"<h3>{html.escape(caption)}</h3><img src='{name}' alt='{name}'>")
    parts.append("<h2>Per unit</h2>")
    for u in metrics["units"]:
        columns = {"model": u["model"], **u.get("diagnostics", {}), **u["baselines"]}
        keys: list[str] = []
        for vals in columns.values():
            keys += [k for k in vals if k not in keys]
        rows = [[k, *[vals.get(k) for vals in columns.values()]] for k in keys]
        extra = f"; error: {u['error']}" if u.get("error") else ""
        parts.append(
            f"<details><summary>{html.escape(u['unit'])} ({u['n_samples']} samples"
            f"{html.escape(extra)})</summary>" + _table(rows, ["metric", *columns]) + "</details>"
        )
    parts.append(
        "<h2>Timings</h2>"
        + _table([[k, str(v)] for k, v in metrics["timings"].items()], ["what", "value"])
    )
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path


def summary_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of a summary table: model, diagnostics, then baselines (means)."""
    columns = {"model": summary["model"]}
    columns |= {f"{d} (diagnostic)": v for d, v in summary.get("diagnostics", {}).items()}
    columns |= summary.get("baselines", {})
    n_defined = summary.get("n_defined", {})
    rows = [
        [metric, *[vals.get(metric) for vals in columns.values()], n_defined.get(metric)]
        for metric in summary["model"]
    ]
    return ["metric", *columns, "units defined (model)"], rows


def write_summary_report(summary: dict[str, Any], out: Path) -> Path:
    """The ``--all`` report: one section per protocol, with its figures and a link."""
    out = Path(out)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>opengem eval --all ({html.escape(str(summary['modality']))})</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;font-size:14px}"
        "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:2px 6px;"
        "font-size:12px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%}code{background:#f4f4f4}</style></head><body>",
        f"<h1>opengem eval --all: {html.escape(str(summary['modality']))}</h1>",
        f"<p>Command: <code>{html.escape(str(summary['command']))}</code><br>"
        f"Corpus checksum: <code>{html.escape(str(summary.get('corpus_checksum')))}</code>"
        f"{'<br><b>--fast</b>' if summary.get('fast') else ''}"
        + (
            "<br><b>TRUNCATED: a training hit the wall-clock cap</b>"
            if summary["truncated"]
            else ""
        )
        + "</p>",
    ]
    if summary.get("skipped"):
        parts.append("<h2>Skipped</h2><ul>")
        parts += [
            f"<li>{html.escape(n)}: {html.escape(r)}</li>" for n, r in summary["skipped"].items()
        ]
        parts.append("</ul>")
    for name, p in summary["protocols"].items():
        header, rows = summary_rows(p["summary"])
        parts.append(
            f"<h2>{html.escape(name)}</h2><p>{p['n_units']} units, {p['n_trainings']} "
            f"training(s){' (truncated)' if p['truncated'] else ''}; "
            f"<a href='{html.escape(name)}/report.html'>full report</a></p>"
        )
        parts.append(_table(rows, header))
        parts.append("<ul>" + "".join(f"<li>{html.escape(v)}</li>" for v in p["verdict"].values()))
        parts.append("</ul>")
        for png in sorted((out / name).glob("*.png")):
            parts.append(f"<img src='{html.escape(name)}/{png.name}' alt='{png.name}'>")
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path
