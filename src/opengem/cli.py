"""The ``opengem`` command line: argument handling only, the logic lives in the packages.

Errors in a query print every problem and exit with code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer

from opengem.contract import (
    FIELDS,
    MODEL_IDS,
    QueryError,
    UnknownModelError,
    get_example_query,
    list_models,
    validate_query,
)
from opengem.server.config import ServerConfig  # the serve defaults (a light import)

_MIB = 1024 * 1024

app = typer.Typer(
    help="opengem: open generative gene-expression models (GEM-1 / pysynthbio compatible).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_BAD_INPUT = 2


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _load_json(path: str) -> Any:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        _fail(f"cannot read query file {path!r}: {exc.strerror}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(
            f"query file {path!r} is not valid JSON: {exc.msg} (line {exc.lineno}, "
            f"column {exc.colno})"
        )


def summarise(value: Any) -> Any:
    """Shorten long count vectors so a query fits on a screen."""
    if isinstance(value, dict):
        return {k: summarise(v) for k, v in value.items()}
    if isinstance(value, list) and len(value) > 8 and all(isinstance(v, int) for v in value[:8]):
        nonzero = sum(1 for v in value if v)
        return (
            f"[{', '.join(map(str, value[:5]))}, … {len(value):,} counts, "
            f"{nonzero:,} non-zero, library {sum(value):,}]"
        )
    if isinstance(value, list):
        return [summarise(v) for v in value]
    return value


def _guarded(call: Any, *args: Any) -> Any:
    """Run ``call``; bad input (unknown model, invalid query, missing bundle) exits 2."""
    try:
        return call(*args)
    except UnknownModelError as exc:
        _fail(str(exc))
    except QueryError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except ValueError as exc:
        # a BundleError can only come from an imported engine (torch stays unimported here)
        bundle = sys.modules.get("opengem.engine.bundle")
        if bundle is not None and isinstance(exc, bundle.BundleError):
            _fail(str(exc))
        raise


def _validated(query: Any, model_id: str) -> Any:
    return _guarded(validate_query, query, model_id)


@app.command("models")
def models_cmd(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List the model ids opengem serves."""
    models = list_models()
    if as_json:
        typer.echo(json.dumps(models, indent=2))
        return
    for m in models["models"]:
        typer.echo(f"{m['model_id']:<38} {m['modality']:<5} {m['task']:<24} {m['description']}")


@app.command("example")
def example_cmd(
    model_id: str = typer.Argument(..., help="a model id (see `opengem models`)"),
    full: bool = typer.Option(False, "--full", help="print count vectors in full (valid JSON)"),
) -> None:
    """Print a valid example query for a model."""
    try:
        example = get_example_query(model_id)
    except UnknownModelError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(example if full else summarise(example), indent=2, ensure_ascii=False))


@app.command("validate")
def validate_cmd(
    model_id: str = typer.Argument(..., help="a model id (see `opengem models`)"),
    query: str = typer.Option(..., "--query", "-q", help="query JSON file, or - for stdin"),
) -> None:
    """Check a query; print it normalised, or every problem (exit code 2)."""
    normalised = _validated(_load_json(query), model_id)
    typer.echo(json.dumps(summarise(json.loads(normalised.model_dump_json())), indent=2))


@app.command("fields")
def fields_cmd() -> None:
    """List the metadata fields a query may carry, with their latent group and kind."""
    for f in FIELDS.values():
        extra = ", ".join(f.values) if f.values else (", ".join(s.value for s in f.id_spaces))
        typer.echo(
            f"{f.name:<26} {f.group.value:<13} {f.kind.value:<9} {f.description}"
            + (f" [{extra}]" if extra else "")
        )
    typer.echo(
        "\nSeveral perturbations on one input (a combination): give the perturbation_* fields "
        'as lists in the same order,\n  {"perturbation_ontology_id": ["ENSG00000112658", '
        '"ENSG00000120738"], "perturbation_type": ["shrna", "shrna"],\n'
        '   "perturbation_time": "48 hours"}\n'
        'or as strings joined by "|" ("ENSG00000112658|ENSG00000120738", "shrna|shrna"). '
        "Ids and types need one\nvalue per perturbation; a single dose or time applies to "
        "all; each component is checked like a\nsingle perturbation (errors name it: "
        "perturbation_ontology_id[1]); 'control' is never combined."
    )
    from opengem.contract.query import STRATEGIES

    typer.echo("\nSampling strategies (sampling_strategy):")
    for s in STRATEGIES.values():
        where = ", ".join("single-cell" if m.value == "sc" else m.value for m in s.modalities)
        typer.echo(f"  {s.name:<18} {where:<18} {s.description}")


@app.command("examples")
def examples_cmd() -> None:
    """For every model: print its example query and validate it (the contract, end to end)."""
    for model_id in MODEL_IDS:
        start = time.perf_counter()
        query = get_example_query(model_id)["example_query"]
        normalised = _validated(query, model_id)
        n_inputs = len(normalised.inputs)
        samples = sum(getattr(x, "num_samples", 1) for x in normalised.inputs)
        typer.echo(
            f"== {model_id}: valid ({n_inputs} input(s), {samples} sample(s), "
            f"{time.perf_counter() - start:.2f} s)"
        )
        typer.echo(json.dumps(summarise(query), indent=2, ensure_ascii=False))
    typer.echo(f"all {len(MODEL_IDS)} example queries are valid")


def _run(query: Any, model_id: str) -> Any:
    """Validate against the model and run; bad input exits 2 with the problems."""
    from opengem.client.embedded import run_query

    return _guarded(run_query, query, model_id)


def write_result(result: Any, out: Path) -> None:
    """Write a result as .h5ad, .csv (expression; metadata beside it) or .parquet, atomically."""
    import os

    from opengem.client.export import write_frames

    suffix = out.suffix.lower()
    if suffix not in (".h5ad", ".csv", ".parquet"):
        _fail(f"--out {out}: unknown format {suffix!r}; use .h5ad, .csv or .parquet")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    frames = result.to_frames()
    write_frames(frames, tmp, suffix[1:])
    if suffix == ".csv":
        write_frames(frames, out.with_name(out.stem + ".metadata.csv"), "metadata.csv")
    os.replace(tmp, out)


def summary(model_id: str, result: Any) -> str:
    """Shape, library sizes and top genes of a result, for people."""
    import numpy as np

    from opengem.ontology import default_gene_space

    counts = result.counts if hasattr(result, "counts") else result.decoder_counts
    libs = counts.sum(axis=1)
    genes = default_gene_space()
    top = np.argsort(-counts.mean(axis=0))[:5]
    names = ", ".join(genes.symbols[i] for i in top)
    text = (
        f"{model_id}: {counts.shape[0]} samples × {counts.shape[1]:,} genes; library sizes "
        f"{int(libs.min()):,}–{int(libs.max()):,}; top genes {names}"
    )
    if hasattr(result, "classifier_probs"):
        first = result.metadata[0]
        text += (
            f"; predicted tissue {first.get('tissue_ontology_id') or '-'} "
            f"({first.get('tissue_label') or ''}), cell type "
            f"{first.get('cell_type_ontology_id') or '-'} ({first.get('cell_type_label') or ''})"
        )
    return text


@app.command("generate")
def generate_cmd(
    model_id: str = typer.Argument(..., help="a model id (see `opengem models`)"),
    query: str = typer.Option(..., "--query", "-q", help="query JSON file, or - for stdin"),
    out: Path = typer.Option(None, "--out", "-o", help="write .h5ad, .csv or .parquet"),
) -> None:
    """Run a query with the local models (no server) and write or summarise the result."""
    result = _run(_load_json(query), model_id)
    if out is not None:
        write_result(result, out)
    typer.echo(summary(model_id, result) + (f" -> {out}" if out else ""))


@app.command("predict-metadata")
def predict_metadata_cmd(
    counts: Path = typer.Option(
        ...,
        help="counts table (csv/tsv/h5ad): samples × genes or genes × samples, genes "
        "named by Ensembl id or symbol; missing genes count as 0",
    ),
    modality: str = typer.Option("bulk", help="bulk or sc"),
    out: Path = typer.Option(None, "--out", "-o", help="write predictions as .csv"),
) -> None:
    """Predict tissue, cell type, disease, sex… of each sample in a counts table."""
    from opengem.client.tables import CountsTableError, read_counts_table

    if modality not in ("bulk", "sc"):
        _fail(f"--modality {modality!r}: use 'bulk' or 'sc'")
    if not counts.is_file():
        _fail(f"counts file {counts} does not exist")
    try:
        table = read_counts_table(counts.read_bytes(), counts.name)
    except CountsTableError as exc:
        _fail(str(exc))
    matrix = table.counts
    model_id = f"gem-1-{modality}_predict-metadata"
    result = _run({"inputs": [{"counts": row} for row in matrix.tolist()]}, model_id)
    frame = result.to_frames()["metadata"]
    frame.index = table.samples
    if out is not None:
        frame.to_csv(out)
    fields = [
        "tissue_ontology_id",
        "tissue_label",
        "cell_type_ontology_id",
        "cell_type_label",
        "disease_ontology_id",
        "disease_label",
        "sex",
        "sample_type",
    ]
    typer.echo(frame[[f for f in fields if f in frame]].to_string())
    typer.echo(f"{table.mapped:,} of {table.gene_names:,} gene names mapped onto the gene space")


@app.command("vocab")
def vocab_cmd(
    model_id: str = typer.Argument(..., help="a model id (see `opengem models`)"),
    field: str = typer.Argument(None, help="one metadata field (default: a count per field)"),
) -> None:
    """The values a model knows for each metadata field, with labels."""
    from opengem.engine import BundleError, default_registry

    try:
        vocab = default_registry().predictor(model_id).vocab
    except UnknownModelError as exc:
        _fail(str(exc))
    except BundleError as exc:
        _fail(str(exc))
    if field is None:
        for name, fv in vocab.fields.items():
            typer.echo(f"{name:<26} {len(fv.classes):>5} values")
        return
    if field not in vocab.fields:
        _fail(
            f"{field!r} is not a categorical field of this model; fields: {', '.join(vocab.fields)}"
        )
    for value, label in vocab.values(field).items():
        typer.echo(f"{value:<24} {label}")


@app.command("run")
def run_cmd(out: Path = typer.Option(Path("results"), help="output folder")) -> None:
    """The main job: every model's example query through the shipped models -> results/*.h5ad."""
    from opengem.engine import default_registry

    registry = default_registry()
    for model_id in MODEL_IDS:
        if not registry.available(model_id):
            _fail(
                str(registry.bundle_dir(model_id)) + " has no bundle; train one "
                "(see README: retraining the shipped models)"
            )
        query = get_example_query(model_id)["example_query"]
        start = time.perf_counter()
        result = _run(query, model_id)
        path = out / f"{model_id}.h5ad"
        write_result(result, path)
        typer.echo(f"{summary(model_id, result)} ({time.perf_counter() - start:.2f} s) -> {path}")


corpus_app = typer.Typer(help="Build and check the training corpus.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")


@corpus_app.command("build")
def corpus_build_cmd(
    studies: Path = typer.Option(Path("corpus/studies"), help="folder of study cards (*.toml)"),
    data_root: Path = typer.Option(
        None, help="data folder (default: env OPENGEM_DATA or ../shared/data)"
    ),
    out: Path = typer.Option(Path("build/corpus"), help="output folder"),
    study: list[str] = typer.Option(None, help="build only these study ids (repeatable)"),
) -> None:
    """Read every study card and write bulk.h5ad, sc.h5ad, corpus_report.md, manifest.json."""
    from rich.progress import Progress

    from opengem.corpus import CorpusError, build_corpus, load_cards
    from opengem.settings import data_root as default_root

    root = data_root or default_root()
    try:
        total = len(study) if study else len(load_cards(studies))
        with Progress(transient=True) as bar:
            task = bar.add_task("reading studies", total=total)

            def step(name: str) -> None:
                bar.update(task, advance=1, description=f"reading {name}")

            manifest = build_corpus(studies, root, out, progress=step, only=study or None)
    except CorpusError as exc:
        _fail(str(exc))
    for name, digest in sorted(manifest.files.items()):
        typer.echo(f"{out / name}  sha256 {digest}")
    n = sum(s["samples"] for s in manifest.studies.values())
    typer.echo(
        f"{len(manifest.studies)} studies, {n:,} samples; corpus checksum "
        f"{manifest.checksum}; report: {out / 'corpus_report.md'}"
    )


@corpus_app.command("check")
def corpus_check_cmd(
    cards: list[Path] = typer.Argument(..., help="study card file(s)"),
    data_root: Path = typer.Option(None, help="data folder (default: env OPENGEM_DATA)"),
) -> None:
    """Read one or more cards, harmonise their data, and print every id with its label."""
    from opengem.corpus import CorpusError, GeneMapper, load_card, process_card
    from opengem.corpus.build import ANNOTATION_TABLE, _label
    from opengem.ontology import default_gene_space
    from opengem.settings import data_root as default_root

    root = data_root or default_root()
    mapper = GeneMapper.from_annotables(default_gene_space(), root / ANNOTATION_TABLE)
    for path in cards:
        try:
            result = process_card(path, load_card(path), root, mapper)
        except CorpusError as exc:
            _fail(str(exc))
        d = result.data
        typer.echo(
            f"== {result.card.study.id}: {d.counts.shape[0]:,} samples, "
            f"{d.mapped_genes:,} of {d.source_genes:,} genes mapped, "
            f"{d.unmapped_fraction:.2%} of counts unmapped, {result.left_out} matrix "
            "samples not in the sheet"
        )
        for name in FIELDS:
            values = result.obs[name].value_counts()
            for value, n in values.items():
                if value:
                    label = _label(name, str(value))
                    typer.echo(f"   {name:<26} {value:<22} {label[:40]:<40} {n:>6,}")


@app.command("train")
def train_cmd(
    corpus: Path = typer.Option(..., help="corpus file (bulk.h5ad or sc.h5ad)"),
    config: Path = typer.Option(..., help="training config (configs/bulk.toml, configs/sc.toml)"),
    out: Path = typer.Option(..., help="bundle directory to write"),
    progress: bool = typer.Option(True, help="print each step of the fit"),
) -> None:
    """Fit a model bundle on a corpus (exact / convex fits, no epochs); prints its wall time."""
    from opengem.train import load_config
    from opengem.train.fit import train_bundle

    if not corpus.is_file():
        _fail(f"corpus file {corpus} does not exist (build it with `opengem corpus build`)")
    try:
        cfg = load_config(config)
        result = train_bundle(corpus, cfg, out, progress=progress)
    except ValueError as exc:
        _fail(str(exc))
    acc = result.validation.get("classifier_accuracy", {})
    shown = ", ".join(f"{k} {v:.2f}" for k, v in acc.items())
    typer.echo(
        f"fitted in {result.wall_seconds:.0f} s; bundle: {out}"
        + (f"; held-out head accuracy: {shown}" if shown else "")
    )


# ---------------------------------------------------------------- the server
@app.command("serve")
def serve_cmd(
    host: str = typer.Option(ServerConfig.host, help="address to bind (0.0.0.0: every interface)"),
    port: int = typer.Option(ServerConfig.port, help="TCP port"),
    workers: int = typer.Option(ServerConfig.workers, help="worker processes that run queries"),
    models: Path = typer.Option(
        None, "--models", help="model bundles folder (default: OPENGEM_MODELS or the shipped ones)"
    ),
    data_dir: Path = typer.Option(
        None,
        "--data-dir",
        help="job database, results and URL-signing secret (default: OPENGEM_DATA_DIR or "
        "~/.local/share/opengem/server)",
    ),
    auth: bool = typer.Option(
        None,
        "--auth/--no-auth",
        help="require API keys (default: on unless --host is a loopback address)",
    ),
    max_body_mb: float = typer.Option(
        ServerConfig.max_body_bytes / _MIB, help="largest request body, MiB"
    ),
    body_timeout: float = typer.Option(
        ServerConfig.body_timeout_s,
        help="seconds a request body may stall before the request is refused (408)",
    ),
    max_connections: int = typer.Option(
        ServerConfig.max_connections, help="concurrent connections (503 beyond)"
    ),
    max_samples_per_query: int = typer.Option(
        None, help="most samples one query may ask for (default: OPENGEM_MAX_SAMPLES_PER_QUERY)"
    ),
    query_timeout: float = typer.Option(
        ServerConfig.query_timeout_s, help="seconds a query may run"
    ),
    model_idle_seconds: float = typer.Option(
        ServerConfig.model_idle_s, help="unload a model unused this long"
    ),
    download_ttl: int = typer.Option(
        ServerConfig.download_ttl_s, help="seconds a signed download URL stays valid"
    ),
    result_ttl_hours: float = typer.Option(
        ServerConfig.result_ttl_s / 3600, help="delete finished results after this"
    ),
    public_url: str = typer.Option(
        None, help="base URL clients use, for download links (default: the request's)"
    ),
    torch_threads: int = typer.Option(
        None,
        help="torch threads per worker (default: torch's, so results equal the embedded "
        "API's to the last count)",
    ),
    log_level: str = typer.Option(ServerConfig.log_level, help="debug, info, warning or error"),
    log_format: str = typer.Option(
        ServerConfig.log_format, help="plain (timestamped lines) or json (one JSON object per line)"
    ),
    allow_public_no_auth: bool = typer.Option(
        False,
        "--allow-public-no-auth",
        help="with --no-auth, serve a non-loopback address anyway (anyone who can reach "
        "it can run queries)",
    ),
) -> None:
    """Serve the GEM-1 API (hosted and self-hosted protocols) for pysynthbio / rsynthbio."""
    from opengem.server.app import serve
    from opengem.server.config import default_data_dir, is_loopback

    if auth is False and not is_loopback(host) and not allow_public_no_auth:
        _fail(
            f"--no-auth on {host}, which is not a loopback address, would let anyone who can "
            "reach it run queries; add --allow-public-no-auth to do it anyway, or drop "
            "--no-auth (and create a key with `opengem keys create`)"
        )
    from opengem.server.store import open_store
    from opengem.settings import QueryLimits

    try:
        config = ServerConfig(
            data_dir=data_dir or default_data_dir(),
            models_dir=models,
            host=host,
            port=port,
            workers=workers,
            auth=auth,
            max_body_bytes=int(max_body_mb * _MIB),
            body_timeout_s=body_timeout,
            max_connections=max_connections,
            max_samples_per_query=(
                max_samples_per_query or QueryLimits.from_env().max_samples_per_query
            ),
            query_timeout_s=query_timeout,
            model_idle_s=model_idle_seconds,
            download_ttl_s=download_ttl,
            result_ttl_s=int(result_ttl_hours * 3600),
            public_url=public_url,
            torch_threads=torch_threads,
            log_level=log_level,
            log_format=log_format,
        )
        store = open_store(config.data_dir, config.resolved_database_url)
        n_keys = sum(1 for k in store.list_keys() if k.revoked_at is None)
        store.close()
    except (ValueError, OSError, RuntimeError) as exc:
        _fail(str(exc))
    mode = "on" if config.auth_enabled else "off"
    typer.echo(
        f"opengem {__import__('opengem').__version__} on http://{host}:{port} "
        f"(auth {mode}, {workers} worker(s), data {config.data_dir})",
        err=True,
    )
    if not config.auth_enabled and not is_loopback(host):
        typer.echo(
            f"WARNING: auth is OFF on {host}: anyone who can reach this address can run "
            "queries and read results",
            err=True,
        )
    if config.auth_enabled and n_keys == 0:
        typer.echo(
            f"warning: auth is on and there are no API keys; create one with "
            f"`opengem keys create --data-dir {config.data_dir} --name NAME`",
            err=True,
        )
    serve(config)


@app.command("ui")
def ui_cmd(
    port: int = typer.Option(0, help="TCP port on 127.0.0.1 (0: a free one)"),
    models: Path = typer.Option(
        None, "--models", help="model bundles folder (default: OPENGEM_MODELS or the shipped ones)"
    ),
    data_dir: Path = typer.Option(
        None, "--data-dir", help="where queries and results go (default: a temporary folder)"
    ),
    workers: int = typer.Option(ServerConfig.workers, help="worker processes that run queries"),
    open_browser: bool = typer.Option(
        True, "--open/--no-open", help="open the page in the default browser"
    ),
) -> None:
    """Open the web page on the local models: loopback only, no API keys."""
    import socket
    import tempfile
    import threading
    import urllib.request
    import webbrowser

    from opengem.server.app import serve

    if port == 0:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
    url = f"http://127.0.0.1:{port}/"

    def open_when_ready() -> None:
        for _ in range(300):
            try:
                with urllib.request.urlopen(url + "healthz", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        webbrowser.open(url)

    with tempfile.TemporaryDirectory(prefix="opengem-ui-") as tmp:
        try:
            config = ServerConfig(
                data_dir=data_dir or Path(tmp),
                models_dir=models,
                host="127.0.0.1",
                port=port,
                workers=workers,
                auth=False,
                log_level="warning",
            )
        except ValueError as exc:
            _fail(str(exc))
        typer.echo(f"opengem web page: {url}  (Ctrl-C to stop)", err=True)
        if open_browser:
            threading.Thread(target=open_when_ready, daemon=True).start()
        serve(config)


keys_app = typer.Typer(help="API keys of a server (stored hashed in its data folder).")
app.add_typer(keys_app, name="keys")


def _key_store(data_dir: Path | None) -> Any:
    from opengem.server.config import default_data_dir
    from opengem.server.store import open_store

    try:
        return open_store(data_dir or default_data_dir())
    except (ValueError, OSError, RuntimeError) as exc:
        _fail(str(exc))


@keys_app.command("create")
def keys_create_cmd(
    name: str = typer.Option(..., "--name", help="who or what uses the key"),
    data_dir: Path = typer.Option(None, "--data-dir", help="the server's data folder"),
    quota_samples_per_week: int = typer.Option(
        None, "--quota-samples-per-week", help="samples this key may generate per week"
    ),
) -> None:
    """Create a key; it is printed once, alone on the last line, and stored only hashed."""
    from opengem.server.keys import create_key

    store = _key_store(data_dir)
    try:
        token = create_key(store, name, quota_samples_per_week)
    except ValueError as exc:
        _fail(str(exc))
    finally:
        store.close()
    quota = (
        "no quota"
        if quota_samples_per_week is None
        else f"{quota_samples_per_week:,} samples per week"
    )
    typer.echo(f"created API key {token.split('_')[1]} for {name!r} ({quota}).")
    typer.echo("It is shown only now; send it as 'Authorization: Bearer <key>'.")
    typer.echo(token)


@keys_app.command("list")
def keys_list_cmd(
    data_dir: Path = typer.Option(None, "--data-dir", help="the server's data folder"),
) -> None:
    """List keys (ids and names, never the keys) with this week's usage."""
    from datetime import UTC, datetime

    from opengem.server.store import week_of

    store = _key_store(data_dir)
    week = week_of()
    try:
        for k in store.list_keys():
            quota = "-" if k.quota_samples_per_week is None else f"{k.quota_samples_per_week:,}"
            created = datetime.fromtimestamp(k.created_at, UTC).strftime("%Y-%m-%d")
            state = "revoked" if k.revoked_at else "active"
            used = store.usage(k.key_id, week)
            typer.echo(
                f"{k.key_id}  {state:<7}  used {used:>9,} / {quota:>9} this week  "
                f"created {created}  {k.name}"
            )
    finally:
        store.close()


@keys_app.command("revoke")
def keys_revoke_cmd(
    key_id: str = typer.Argument(..., help="the key id (second part of og_<id>_…)"),
    data_dir: Path = typer.Option(None, "--data-dir", help="the server's data folder"),
) -> None:
    """Revoke a key: requests with it get 401 from then on."""
    store = _key_store(data_dir)
    try:
        revoked = store.revoke_key(key_id)
    finally:
        store.close()
    if not revoked:
        _fail(f"no active key {key_id!r}")
    typer.echo(f"revoked {key_id}")


@app.command("eval")
def eval_cmd(
    protocol: str = typer.Option(
        None,
        help="fit, held-out-context, held-out-study-perturbation, held-out-perturbation, "
        "combinations, held-out-study, seen-condition, held-out-cells (docs/evaluation.md)",
    ),
    all_protocols: bool = typer.Option(
        False, "--all", help="every protocol of the corpus modality: summary.json + report.html"
    ),
    corpus: Path = typer.Option(..., help="corpus file (bulk.h5ad or sc.h5ad)"),
    out: Path = typer.Option(..., help="output folder: metrics.json, report.html, PNGs"),
    study: list[str] = typer.Option(None, help="restrict units to these studies (repeatable)"),
    config: Path = typer.Option(None, help="training config (default: built-in defaults)"),
    fast: bool = typer.Option(False, help="the tiny documented preset on a small training subset"),
    max_minutes: float = typer.Option(
        None,
        help="safety cap on each training's wall clock, for configs with a wall-clock budget "
        "([training] max_minutes; a training it stops is marked truncated); the default "
        "model's exact fit has none, so there it has no effect (with a warning)",
    ),
    max_rotations: int = typer.Option(None, help="at most this many trainings per protocol"),
) -> None:
    """Evaluate a model under a protocol (or --all), with every baseline, from one run."""
    import shlex

    from opengem.eval.corpus import EvalError
    from opengem.eval.run import load_train_config, run_all, run_protocol

    if (protocol is None) == (not all_protocols):
        _fail("give either --protocol NAME or --all")
    if Path(sys.argv[0]).name == "opengem":
        command = shlex.join(["opengem", *sys.argv[1:]])
    else:
        words = ["opengem", "eval"]
        words += ["--all"] if all_protocols else ["--protocol", protocol]
        words += ["--corpus", str(corpus)]
        for s in study or []:
            words += ["--study", s]
        words += ["--config", str(config)] if config else []
        words += ["--fast"] if fast else []
        words += ["--max-minutes", f"{max_minutes:g}"] if max_minutes is not None else []
        words += ["--max-rotations", str(max_rotations)] if max_rotations is not None else []
        command = shlex.join([*words, "--out", str(out)])
    options: dict[str, Any] = {
        "config": None,
        "fast": fast,
        "max_minutes": max_minutes,
        "studies": study or None,
        "command": command,
        "log": lambda line: typer.echo(line, err=True),
        "max_rotations": max_rotations,
    }
    try:
        options["config"] = load_train_config(config)
        if all_protocols:
            summary = run_all(corpus, out, **options)
        else:
            metrics = run_protocol(protocol, corpus, out, **options)
    except (EvalError, ValueError) as exc:
        _fail(str(exc))
    if all_protocols:
        typer.echo(
            f"--all: {len(summary['protocols'])} protocols, {len(summary['skipped'])} skipped; "
            f"{out / 'summary.json'}, {out / 'report.html'}"
        )
        return
    typer.echo(
        f"{protocol}: {metrics['summary']['n_units']} units, {metrics['n_trainings']} "
        f"training(s); {out / 'metrics.json'}, {out / 'report.html'}"
    )
    for sentence in metrics["verdict"].values():
        typer.echo(f"  {sentence}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
