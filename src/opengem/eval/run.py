"""Running protocols end to end: ``metrics.json`` + ``report.html`` per protocol, and ``--all``.

Outputs are written into a temporary folder beside ``out`` and moved into place
only when the run succeeded, so a failed run leaves no (empty or half-written)
output folder. Every time-dependent number lives under ``timings``: the rest of
``metrics.json`` is the same for the same command on the same machine.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opengem.eval.corpus import CorpusView, EvalError
from opengem.eval.protocols import ALL, PROTOCOLS, ProtocolContext
from opengem.eval.results import clean, summarise, verdicts
from opengem.eval.training import (
    MAX_MINUTES_IGNORED,
    Trainer,
    base_config,
    eval_config,
    has_wall_clock_budget,
    train_bundle_model,
)

__all__ = ["load_train_config", "run_all", "run_protocol"]

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_train_config(path: Path | str | None) -> Any | None:
    """A training config file, or None."""
    if path is None:
        return None
    from opengem.train import load_config

    return load_config(Path(path))


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """A temporary folder whose files replace ``out``'s on success (nothing on failure)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        for old in [*out.glob("*.png"), out / "metrics.json", out / "report.html"]:
            old.unlink(missing_ok=True)
        for item in tmp.iterdir():
            target = out / item.name
            if target.is_dir():
                shutil.rmtree(target)
            shutil.move(str(item), str(target))
        tmp.rmdir()
    else:
        tmp.rename(out)


def _metrics(
    protocol: str,
    view: CorpusView,
    cfg: Any,
    ctx: ProtocolContext,
    result: Any,
    command: str,
    fast: bool,
    studies: Sequence[str] | None,
    start: float,
) -> dict[str, Any]:
    units = result.units
    summary = summarise(units)
    trainings = [t.to_dict() for t in result.trainings]
    train_s = [round(t.wall_seconds, 1) for t in result.trainings]
    inf_s, inf_n = ctx.inference_seconds, ctx.inference_samples
    total = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    truncated = any(t.truncated for t in result.trainings)
    return clean(
        {
            "protocol": protocol,
            "corpus": str(view.path) if view.path else None,
            "corpus_checksum": view.checksum(),
            "command": command,
            "modality": view.modality,
            "fast": fast,
            "studies": list(studies) if studies else None,
            "config": cfg.model_dump(),
            "n_trainings": len(trainings),
            "trainings": trainings,
            "truncated": truncated,
            **result.details,
            "units": [u.to_dict() for u in units],
            "summary": summary,
            "verdict": verdicts(units, summary),
            "timings": {
                "total_seconds": round(total, 1),
                "training_seconds": train_s,
                "training_seconds_total": round(sum(train_s), 1),
                "inference_seconds": round(inf_s, 2),
                "inference_samples": inf_n,
                "inference_samples_per_second": round(inf_n / inf_s, 1) if inf_s > 0 else None,
                "peak_rss_mb": round(rss, 1),
            },
        }
    )


def _default_command(protocol: str, corpus: Any, out: Any, fast: bool, studies: Any) -> str:
    where = str(corpus) if isinstance(corpus, str | Path) else "<AnnData>"
    return (
        f"opengem.eval.run_protocol({protocol!r}, {where!r}, out={str(out)!r}, fast={fast}, "
        f"studies={list(studies) if studies else None})"
    )


def run_protocol(
    protocol: str,
    corpus: Path | str | Any,
    out: Path | str,
    *,
    config: Any | None = None,
    fast: bool = False,
    max_minutes: float | None = None,
    studies: Sequence[str] | None = None,
    command: str | None = None,
    log: Log | None = None,
    report: bool = True,
    trainer: Trainer | None = None,
    max_rotations: int | None = None,
    view: CorpusView | None = None,
    shown_out: Path | str | None = None,
) -> dict[str, Any]:
    """Run one protocol end to end; write ``metrics.json`` (and ``report.html`` + PNGs).

    Parameters
    ----------
    protocol
        One of :data:`opengem.eval.protocols.PROTOCOLS`.
    corpus
        Path of a corpus ``.h5ad`` (its ``manifest.json`` gives the checksum) or an AnnData.
    out
        Output folder (written only when the run succeeds).
    config
        Training config (default: the config defaults for the corpus modality).
    fast
        The documented tiny preset (:data:`opengem.eval.training.FAST_PRESET`) on a
        small training subset.
    max_minutes
        Wall-clock safety cap per training, for configs whose ``[training]`` has a
        wall-clock budget (``max_minutes``); a training it stops is marked truncated.
        Without such a budget (the current exact fit) it has no effect, with a warning.
    studies
        Restrict units to these studies.
    command
        The command line recorded in metrics.json.
    log
        Progress lines (default: stderr).
    trainer
        How to train (default: :func:`opengem.train.fit.train_bundle` with the config);
        tests pass fake trainers.
    max_rotations
        At most this many trainings for the rotating protocols.
    view
        The corpus, already loaded (``corpus`` then only names it).
    shown_out
        The folder named in progress lines (default ``out``; :func:`run_all` writes
        into a staging folder and names the final one).

    Returns
    -------
    dict
        The content of ``metrics.json``.
    """
    if protocol not in PROTOCOLS:
        raise EvalError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    log = log or _stderr
    command = command or _default_command(protocol, corpus, out, fast, studies)
    start = time.perf_counter()
    view = view or CorpusView.load(corpus)
    cfg = eval_config(config, view.modality, fast, max_minutes)
    if max_minutes is not None and not has_wall_clock_budget(cfg):
        log(f"WARNING: {MAX_MINUTES_IGNORED}")
    log(
        f"{protocol} on {view.path or 'an in-memory corpus'} ({view.obs.shape[0]:,} samples, "
        f"{len(view.study_list())} studies){' --fast' if fast else ''}"
    )
    ctx = ProtocolContext(
        view=view,
        trainer=trainer or train_bundle_model(cfg, log),
        studies=list(studies) if studies else None,
        fast=fast,
        log=log,
        max_rotations=max_rotations,
    )
    with staged_output(Path(out)) as tmp:
        result = PROTOCOLS[protocol](ctx)
        if not result.units:
            raise EvalError(f"{protocol}: no unit could be evaluated")
        metrics = _metrics(protocol, view, cfg, ctx, result, command, fast, studies, start)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        if report:
            from opengem.eval.report import write_report

            write_report(metrics, result.figures, tmp)
    if metrics["truncated"]:
        log(f"WARNING: {protocol}: a training was stopped by the wall-clock cap (truncated)")
    log(f"{protocol}: {len(result.units)} units -> {Path(shown_out or out) / 'metrics.json'}")
    return metrics


def run_all(
    corpus: Path | str | Any,
    out: Path | str,
    *,
    config: Any | None = None,
    fast: bool = False,
    max_minutes: float | None = None,
    studies: Sequence[str] | None = None,
    command: str | None = None,
    log: Log | None = None,
    trainer: Trainer | None = None,
    protocols: Sequence[str] | None = None,
    max_rotations: int | None = None,
) -> dict[str, Any]:
    """Every protocol of the corpus modality: one folder each, one ``summary.json`` +
    ``report.html`` over them in ``out``.

    A protocol that finds no unit in the corpus is recorded as skipped, with why.
    """
    log = log or _stderr
    view = CorpusView.load(corpus)
    if max_minutes is not None and not has_wall_clock_budget(base_config(config, view.modality)):
        log(f"WARNING: {MAX_MINUTES_IGNORED}")  # once, not once per protocol
        max_minutes = None
    names = list(protocols or ALL[view.modality])
    command = command or f"opengem.eval.run_all({str(corpus)!r}, {str(out)!r}, fast={fast})"
    out = Path(out)
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    start = time.perf_counter()
    with staged_output(out) as tmp:
        for name in names:
            try:
                results[name] = run_protocol(
                    name,
                    corpus,
                    tmp / name,
                    config=config,
                    fast=fast,
                    max_minutes=max_minutes,
                    studies=studies,
                    command=f"{command} [protocol {name}]",
                    log=log,
                    trainer=trainer,
                    max_rotations=max_rotations,
                    view=view,
                    shown_out=out / name,
                )
            except EvalError as exc:
                if "training failed" in str(exc):
                    raise
                skipped[name] = str(exc)
                log(f"{name}: skipped ({exc})")
        if not results:
            raise EvalError("no protocol could be evaluated: " + "; ".join(skipped.values()))
        summary = clean(
            {
                "modality": view.modality,
                "command": command,
                "corpus": str(view.path) if view.path else None,
                "corpus_checksum": view.checksum(),
                "fast": fast,
                "config": next(iter(results.values()))["config"],
                "truncated": any(m["truncated"] for m in results.values()),
                "protocols": {
                    name: {
                        "path": f"{name}/metrics.json",
                        "n_units": m["summary"]["n_units"],
                        "n_trainings": m["n_trainings"],
                        "trainings": m["trainings"],
                        "truncated": m["truncated"],
                        "summary": m["summary"],
                        "verdict": m["verdict"],
                    }
                    for name, m in results.items()
                },
                "skipped": skipped,
                "timings": {
                    "total_seconds": round(time.perf_counter() - start, 1),
                    "per_protocol": {n: m["timings"] for n, m in results.items()},
                },
            }
        )
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        from opengem.eval.report import write_summary_report

        write_summary_report(summary, tmp)
    log(f"--all: {len(results)} protocols ({len(skipped)} skipped) -> {out / 'summary.json'}")
    return summary
