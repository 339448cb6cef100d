"""Print the README's "How good is it?" tables from `opengem eval` outputs.

    python scripts/summarise_eval.py eval/*/metrics.json

One table per protocol: every summary metric, the model next to every baseline,
from the same run (means over held-out units; per-unit values in metrics.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else ("–" if value is None else str(value))


def main(paths: list[str]) -> None:
    for name in paths:
        m = json.loads(Path(name).read_text())
        summary = m["summary"]
        baselines = sorted(summary.get("baselines", {}))
        print(
            f"**{m['protocol']}** — {len(m['units'])} held-out units, "
            f"{m.get('n_trainings', '?')} trainings: `{m.get('command', '')}`\n"
        )
        print("| metric | model | " + " | ".join(baselines) + " |")
        print("|---|---|" + "---|" * len(baselines))
        for metric in sorted(summary["model"]):
            row = [fmt(summary["model"][metric])]
            row += [fmt(summary["baselines"][b].get(metric)) for b in baselines]
            print(f"| {metric} | " + " | ".join(row) + " |")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
