"""Print the README / model-card tables from `opengem eval` outputs (never typed by hand).

    python scripts/summarise_eval.py eval/bulk/summary.json            # every table
    python scripts/summarise_eval.py --headline eval/bulk/summary.json eval/sc/summary.json
    python scripts/summarise_eval.py eval/bulk/held-out-context/metrics.json

``--headline`` prints the README's "How good is it?" table: per protocol the
metrics that decide (issue thresholds), the model next to its toughest baseline
(compared on the units both are defined: a baseline that applies to a few units is
set against the model on those units) and the "no perturbation sent" diagnostic.
Without it, one full table per protocol: every summary metric, model, diagnostics
and every baseline (means over units; per unit values in each protocol's
metrics.json). "undefined" marks a metric that is
undefined on every unit.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from opengem.eval.results import toughest

#: per protocol, the metrics of the headline table, in order
HEADLINE = {
    "fit": [
        "cf_pearson_delta_top100",
        "cf_magnitude_ratio_top100",
        "cf_direction_accuracy_top100",
    ],
    "held-out-context": [
        "pearson_delta_top100",
        "cf_pearson_delta_top100",
        "direction_accuracy_top100",
        "cf_direction_accuracy_top100",
        "cf_magnitude_ratio_top100",
        "on_target_error",
        "cf_on_target_error",
    ],
    "held-out-study-perturbation": [
        "pearson_delta_top100",
        "cf_pearson_delta_top100",
        "cf_magnitude_ratio_top100",
    ],
    "held-out-perturbation": [
        "pearson_delta_top100",
        "cf_pearson_delta_top100",
        "on_target_error",
    ],
    "combinations": ["pearson_delta_top100", "cf_pearson_delta_top100"],
    "held-out-study": [
        "metadata_accuracy",
        "metadata_macro_f1",
        "metadata_ece",
        "fields_predicted_constant",
        "samplewise_pearson",
        "genewise_pearson_weighted",
        "diversity_gap",
    ],
    "seen-condition": [
        "samplewise_pearson",
        "classifier_auc",
        "energy_distance",
        "sd_correlation",
        "diversity_gap",
        "spread_ratio",
    ],
    "held-out-cells": [
        "cell_type_ontology_id:macro_f1",
        "cell_type_ontology_id:accuracy",
        "metadata_ece",
    ],
}
#: the fit protocol's numbers are medians (issue thresholds), the others means
MEDIAN = {"fit"}
LOWER = ("error", "ece", "energy_distance", "diversity_gap", "fields_predicted_constant")


def fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "undefined"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _how(metric: str) -> str:
    if metric.endswith("classifier_auc"):
        return "half"
    if "magnitude_ratio" in metric or metric.endswith("spread_ratio"):
        return "one"
    return "lower" if metric.endswith(LOWER) else "higher"


def _best(metric: str, baselines: dict[str, dict[str, Any]]) -> tuple[str, Any]:
    how = _how(metric)
    found = [(n, v.get(metric)) for n, v in baselines.items() if v.get(metric) is not None]
    if not found:
        return "–", None
    key = {
        "half": lambda x: abs(x[1] - 0.5),
        "one": lambda x: abs(x[1] - 1.0),
        "lower": lambda x: x[1],
        "higher": lambda x: -x[1],
    }[how]
    return min(found, key=key)


def protocols_of(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(protocol -> its summary block, the file's header) from summary.json or metrics.json."""
    data = json.loads(path.read_text())
    if "protocols" in data:
        return data["protocols"], data
    block = {k: data[k] for k in ("summary", "verdict", "n_trainings", "truncated") if k in data}
    block["n_units"] = data["summary"]["n_units"]
    return {data["protocol"]: block}, data


def headline_lines(paths: list[Path]) -> list[str]:
    """The headline table (Markdown lines) of summary.json / metrics.json files."""
    columns = ["modality", "protocol (units)", "metric", "model", "toughest baseline"]
    lines = [
        "| " + " | ".join([*columns, "no perturbation sent"]) + " |",
        "|---|---|---|---|---|---|",
    ]
    for path in paths:
        protocols, header = protocols_of(path)
        modality = header.get("modality", "?")
        for name, p in protocols.items():
            s = p["summary"]
            stats = s["median"] if name in MEDIAN else s
            model = stats["model"]
            baselines = stats.get("baselines", {})
            diag = stats.get("diagnostics", {}).get("no_perturbation_sent", {})
            for metric in HEADLINE.get(name, []):
                if metric not in model:
                    continue
                label = f"{name} ({p['n_units']})" + (" median" if name in MEDIAN else "")
                pick = toughest(metric, s["paired"], name in MEDIAN) if "paired" in s else None
                if pick is not None:  # compared on the units both are defined
                    best, row = pick
                    suffix = "_median" if name in MEDIAN else ""
                    base = f"{best} {fmt(row['baseline' + suffix])}"
                    defined = s.get("n_defined", {}).get(metric, row["n"])
                    if row["n"] < defined:
                        base += f" (model {fmt(row['model' + suffix])} on those {row['n']} units)"
                else:
                    best, value = _best(metric, baselines)
                    base = f"{best} {fmt(value)}" if value is not None else "–"
                lines.append(
                    f"| {modality} | {label} | {metric} | {fmt(model[metric])} | {base} | "
                    f"{fmt(diag.get(metric)) if diag else '–'} |"
                )
        for name, why in header.get("skipped", {}).items():
            lines.append(f"| {modality} | {name} | skipped | {why} | | |")
    return lines


def headline(paths: list[Path]) -> None:
    print("\n".join(headline_lines(paths)))


def full(paths: list[Path]) -> None:
    for path in paths:
        protocols, header = protocols_of(path)
        print(f"`{header.get('command', '')}`{' (--fast)' if header.get('fast') else ''}\n")
        for name, p in protocols.items():
            s = p["summary"]
            diagnostics = s.get("diagnostics", {})
            baselines = s.get("baselines", {})
            columns = ["model", *[f"{d} (diagnostic)" for d in diagnostics], *baselines]
            print(
                f"**{name}** — {p['n_units']} units, {p.get('n_trainings', '?')} trainings"
                + (" (TRUNCATED)" if p.get("truncated") else "")
                + "\n"
            )
            print("| metric | " + " | ".join(columns) + " |")
            print("|---|" + "---|" * len(columns))
            for metric in s["model"]:
                row = [fmt(s["model"][metric])]
                row += [fmt(v.get(metric)) for v in diagnostics.values()]
                row += [fmt(v.get(metric)) for v in baselines.values()]
                print(f"| {metric} | " + " | ".join(row) + " |")
            print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="summary.json or metrics.json files")
    parser.add_argument("--headline", action="store_true", help="the README table only")
    args = parser.parse_args()
    (headline if args.headline else full)(args.paths)


if __name__ == "__main__":
    main()
