"""Write MODEL_CARD.md for a bundle from its bundle.json (and eval outputs when given).

    python scripts/write_model_card.py src/opengem/models/gem-1-bulk [--eval DIR/metrics.json ...]
    python scripts/write_model_card.py src/opengem/models/gem-1-bulk --eval eval/bulk/summary.json

``--eval`` takes per-protocol metrics.json files (one full table each) and
summary.json files of `opengem eval --all` (the headline table of
`python scripts/summarise_eval.py --headline`, from the same code).

Everything in the card comes from the bundle's recorded provenance or from
`opengem eval` outputs, so rerunning the training and evaluation commands
regenerates it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summarise_eval import headline_lines

TASKS = {
    "bulk": [
        "gem-1-bulk",
        "gem-1-bulk_reference-conditioning",
        "gem-1-bulk_predict-metadata",
        "gem-1-bulk_condition-on-sample-ids",
    ],
    "sc": ["gem-1-sc", "gem-1-sc_reference-conditioning", "gem-1-sc_predict-metadata"],
}
FIELDS_SHOWN = (
    "tissue_ontology_id",
    "cell_type_ontology_id",
    "cell_line_ontology_id",
    "disease_ontology_id",
    "perturbation_ontology_id",
    "perturbation_type",
    "sample_type",
    "sex",
    "library_layout",
    "study",
)


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def summary_section(path: Path, m: dict) -> list[str]:
    """An ``opengem eval --all`` summary.json: its headline table."""
    return [
        f"### {m.get('modality', '?')}: {len(m['protocols'])} protocols "
        f"({len(m.get('skipped', {}))} skipped)",
        "",
        f"Command: `{m.get('command', '')}`",
        "",
        *headline_lines([path]),
        "",
    ]


def eval_section(paths: list[Path]) -> list[str]:
    lines: list[str] = []
    for path in paths:
        m = json.loads(path.read_text())
        if "protocols" in m:
            lines += summary_section(path, m)
            continue
        lines += [
            f"### {m['protocol']} ({len(m['units'])} held-out units)",
            "",
            f"Command: `{m.get('command', '')}`",
            "",
        ]
        summary = m["summary"]
        metrics = sorted(summary["model"])
        names = ["model", *sorted(summary.get("baselines", {}))]
        lines.append("| metric | " + " | ".join(names) + " |")
        lines.append("|---|" + "---|" * len(names))
        for metric in metrics:
            row = [_fmt(summary["model"].get(metric, ""))]
            row += [_fmt(summary["baselines"][b].get(metric, "")) for b in names[1:]]
            lines.append(f"| {metric} | " + " | ".join(row) + " |")
        verdict = m.get("verdict")
        if isinstance(verdict, dict):
            lines += [""] + [f"- {v}" for v in verdict.values()]
        elif verdict:
            lines += ["", str(verdict)]
        lines.append("")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--eval", type=Path, nargs="*", default=[])
    args = ap.parse_args()
    info = json.loads((args.bundle / "bundle.json").read_text())
    modality = info["modality"]
    training, corpus = info["training"], info.get("corpus", {})
    vocab = info["vocabulary"]["fields"]
    size_mb = sum(p.stat().st_size for p in args.bundle.iterdir() if p.is_file()) / 1e6
    drawn = ""
    weights = args.bundle / "weights.safetensors"
    if weights.is_file():
        import numpy as np
        from safetensors import safe_open

        with safe_open(str(weights), framework="numpy") as f:
            if "cell_dispersion" in f.keys():
                phi = np.asarray(f.get_tensor("cell_dispersion"), dtype=np.float64)
                q10, q50, q90 = np.quantile(phi, [0.1, 0.5, 0.9])
                drawn = (
                    '; "sample generation" draws cells negative-binomial around the '
                    "profile, each gene with the overdispersion of the training cells "
                    f"(median φ {q50:.2f}, 10-90% {q10:.2f}-{q90:.2f}; in a seen study its "
                    "own, moderated toward these; beyond GEM-1)"
                )
    cfg = training["config"]
    model = info.get("model", {})
    lines = [
        f"# Model card: {info.get('model_version', modality)}",
        "",
        f"Serves: {', '.join(f'`{t}`' for t in TASKS[modality])}.",
        "",
        "## What it is",
        "",
        "A structured GEM model of log1p(CPM) "
        + (
            "(condition means, context means and effects as log1p of the mean CPM of a "
            "group of cells: pseudobulk) "
            if cfg["model"].get("mean_space") == "linear"
            else ""
        )
        + "over "
        f"{len(info['gene_order']):,} human protein-coding genes (GENCODE v48), with three "
        f"latent groups (biological {cfg['model']['latent_biological']}, technical "
        f"{cfg['model']['latent_technical']}, perturbation {cfg['model']['latent_perturbation']} "
        "dims): a prior mean from ridge regression on the metadata's ontology tokens (with "
        "ancestors) and conditions; replicate and study variation by probabilistic PCA"
        + (
            f" (each of {len(model['study_noise_studies'])} seen studies with its own "
            "spread and per-gene noise, moderated toward the pooled one); "
            if model.get("study_noise_studies")
            else "; "
        )
        + "perturbation effects learned from matched controls "
        f"({model.get('facts', {}).get('n_units', 0)} units in "
        f"{model.get('facts', {}).get('n_contexts', 0)} contexts), transferred to a "
        "reference through a context kernel (width "
        f"{model.get('kernel_width') or 'infinite = the additive shift'}) with a level "
        f"slope of {model.get('level_slope', 0.0):g} (both chosen by leave-one-context-out "
        "cross-validation), interpolated over dose, combinations "
        f"scaled by {model.get('combination_scale', 1.0):.2f}; unseen perturbations "
        "shrunk toward their type's mean effect (and the on-target change per type: "
        + ", ".join(f"{k} {v:+.2f}" for k, v in sorted(model.get("on_target", {}).items()))
        + " log); calibrated class- and study-balanced metadata heads on PCA scores and each "
        f"field's discriminative genes{drawn}. Bundle size {size_mb:.1f} MB "
        "(float16 / int8 arrays).",
        "",
        "## Training data",
        "",
        f"{corpus.get('n_samples', 0):,} {'samples' if modality == 'bulk' else 'cells'} from "
        f"{len(corpus.get('studies', {}))} public studies (corpus checksum "
        f"`{corpus.get('corpus_checksum', 'n/a')}`), curated in `corpus/studies/*.toml`:",
        "",
        "| study | accession | samples |",
        "|---|---|---|",
    ]
    accessions = corpus.get("accessions", {})
    for study, n in sorted(corpus.get("studies", {}).items()):
        lines.append(f"| {study} | {accessions.get(study, '')} | {n:,} |")
    split = training.get("validation_split", "study")
    held = training.get("validation_studies") or []
    lines += [
        "",
        "## Training run",
        "",
        f"`opengem train --corpus build/corpus/{modality}.h5ad --config configs/{modality}.toml "
        f"--out src/opengem/models/gem-1-{modality}` — {training['wall_seconds']:.0f} s on a "
        f"2-core CPU (exact and convex fits: no epochs, no early stopping), seed "
        f"{cfg['training']['seed']}.",
        (
            "Held out from the fit (validation): " + ", ".join(held) + "."
            if held and split == "study"
            else "Fitted on every study of the corpus; held-out numbers come from `opengem eval`."
        ),
        "",
        "| validation metric | value |",
        "|---|---|",
    ]
    validation = info.get("validation", {})
    for key in ("loss", "reconstruction_per_gene", "n_samples"):
        if key in validation:
            lines.append(f"| {key} | {_fmt(validation[key])} |")
    for field, acc in validation.get("classifier_accuracy", {}).items():
        lines.append(f"| classifier accuracy: {field} | {acc:.3f} |")
    lines += [
        "",
        "## Vocabulary (what it has seen)",
        "",
        "| field | values seen in training |",
        "|---|---|",
    ]
    for field in FIELDS_SHOWN:
        if field in vocab:
            classes = vocab[field]["classes"]
            labels = vocab[field].get("labels", {})
            shown = ", ".join(f"{c} ({labels[c]})" if labels.get(c) else c for c in classes[:12])
            more = f" … {len(classes)} in all" if len(classes) > 12 else ""
            lines.append(f"| {field} | {shown}{more} |")
    lines += [
        "",
        "`opengem vocab <model id> <field>` lists every value with its label.",
        "",
        "## Intended use and limits",
        "",
        "- Research use: generating synthetic expression for the contexts listed above, "
        "simulating the perturbations seen in training on a reference sample, and predicting "
        "metadata of samples that resemble the training studies.",
        "- It has never seen most tissues, cell types, diseases, cell lines and compounds. "
        "Ontology terms outside the vocabulary are accepted only when they share an informative "
        "ancestor with a known term (they are encoded through it); unseen compounds are "
        "modelled as their type's mean effect shrunk by a cross-validated factor, and flagged "
        "`perturbation_seen = false` in the output metadata; unseen gene targets also move "
        "their own gene by the type's on-target change.",
        "- Trained on tens of studies, not GEM-1's hundreds of thousands of samples: expect "
        "study effects to dominate, and read the held-out numbers below before trusting an "
        "output.",
        "- Not for clinical use.",
        "",
        "## Held-out evaluation",
        "",
    ]
    lines += (
        eval_section(args.eval)
        if args.eval
        else [
            "Not yet evaluated with `opengem eval` in this release: run "
            f"`opengem eval --protocol seen-condition --corpus build/corpus/{modality}.h5ad "
            f"--config configs/{modality}.toml --out eval/{modality}-seen-condition` and pass "
            "its metrics.json (or the summary.json of `opengem eval --all`) with --eval.",
            "",
        ]
    )
    (args.bundle / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.bundle / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
