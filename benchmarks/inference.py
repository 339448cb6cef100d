"""Inference speed of the shipped models, printed as rates and ratios to the budget.

    python benchmarks/inference.py

- cold start: a fresh process imports opengem, loads the bulk bundle and answers a
  10-sample query (budget 3 s);
- warm bulk mean estimation at 1,000 samples: samples/s (budget >= 3,000/s);
- peak RSS of the process after both default bundles are loaded (budget 1.5 GB).
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time

COLD = """
import time
t = time.perf_counter()
import opengem
q = opengem.get_example_query("gem-1-bulk")["example_query"]
q["sampling_strategy"] = "mean estimation"
for i in q["inputs"]:
    i["num_samples"] = 5
opengem.predict_query(q, model_id="gem-1-bulk")
print(time.perf_counter() - t)
"""


def main() -> None:
    colds = []
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", COLD], capture_output=True, text=True, check=True
        )
        colds.append(float(out.stdout.strip().splitlines()[-1]))
    cold = min(colds)
    import opengem

    query = opengem.get_example_query("gem-1-bulk")["example_query"]
    query["sampling_strategy"] = "mean estimation"
    for item in query["inputs"]:
        item["num_samples"] = 500
    opengem.predict_query(query, model_id="gem-1-bulk")  # warm up
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        result = opengem.predict_query(query, model_id="gem-1-bulk")
        runs.append(time.perf_counter() - t)
    n = len(result["expression"])
    rate = n / min(runs)
    sc = opengem.get_example_query("gem-1-sc")["example_query"]
    opengem.predict_query(sc, model_id="gem-1-sc")
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(
        f"cold start (import + load + 10-sample query): {cold:.2f} s "
        f"(budget 3 s: {cold / 3:.2f}x of budget; runs {', '.join(f'{c:.2f}' for c in colds)})"
    )
    print(
        f"warm bulk mean estimation, {n} samples: {rate:,.0f} samples/s "
        f"(budget 3,000/s: {rate / 3000:.2f}x)"
    )
    print(
        f"peak RSS with both default bundles loaded: {rss_gb:.2f} GB "
        f"(budget 1.5 GB: {rss_gb / 1.5:.2f}x of budget)"
    )


if __name__ == "__main__":
    main()
