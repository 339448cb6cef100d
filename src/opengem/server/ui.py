"""The web page at ``/``: compose a query, run it through the job API, look, download.

The page (``ui_assets/``: plain HTML, JS and CSS, served by opengem; nothing from a
CDN) talks to the same routes as pysynthbio — ``/api/models/{id}/vocab``,
``/example-query``, ``/predict``, ``/api/model-queries/{id}/status`` — and to a few of
its own, outside the OpenAPI schema:

    GET  /ui/api/config                                   fields, units, strategies, models
    POST /ui/api/counts?filename=NAME  (body: the file)   a counts table → count vectors
    GET  /ui/api/model-queries/{id}/summary?<signed>      preview, PCA, fold changes, classes
    GET  /ui/api/model-queries/{id}/download/{fmt}?<signed>   csv | metadata.csv | parquet | h5ad

``<signed>`` is the ``expires``/``signature`` pair of the status's ``downloadUrl``, so
a result is readable exactly as long as its download URL is. ``/ui/api/counts``
needs a key when auth is on (the others need none, like ``/healthz``).
"""

from __future__ import annotations

import gzip
import os
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

import opengem
from opengem.client.export import EXPORT_FORMATS, MEDIA_TYPES
from opengem.contract import FIELDS, list_models
from opengem.contract.fields import PERTURBATION_FIELDS, FieldKind, LatentGroup
from opengem.contract.models import Modality
from opengem.contract.quantities import DOSE_UNITS, TIME_UNITS
from opengem.contract.query import DEFAULT_CONDITIONING, DEFAULT_TOTAL_COUNT, STRATEGIES
from opengem.server.routes.common import Key, signed_result
from opengem.server.state import ServerState, State
from opengem.server.ui_summary import MAX_SUMMARY_SAMPLES, summarise

ASSETS = Path(__file__).with_name("ui_assets")
#: most samples one uploaded counts file may hold
MAX_UPLOAD_SAMPLES = 1000
_SUFFIX = {"csv": ".csv", "metadata.csv": "-metadata.csv", "parquet": ".parquet", "h5ad": ".h5ad"}

router = APIRouter(include_in_schema=False)


def mount_ui(app: FastAPI) -> None:
    """Serve the page at ``/`` and its assets under ``/ui/static``."""
    app.mount("/ui/static", StaticFiles(directory=ASSETS), name="ui-static")
    app.include_router(router)


@cache
def _page() -> str:
    html = (ASSETS / "index.html").read_text(encoding="utf-8")
    return html.replace("{{version}}", opengem.__version__)


@cache
def _symbols() -> dict[str, str]:
    from opengem.ontology import default_gene_space

    genes = default_gene_space()
    return dict(zip(genes.gene_ids, genes.symbols, strict=True))


def field_registry() -> list[dict[str, Any]]:
    """Every metadata field with its group and kind: the page builds its form from these
    and the model's vocabulary."""
    return [
        {
            "name": f.name,
            "group": f.group.value,
            "kind": f.kind.value,
            "description": f.description,
            "values": list(f.values),
            "unit_kind": f.unit_kind,
            "example": f.example,
            "id_spaces": [s.value for s in f.id_spaces],
            "perturbation": f.name in PERTURBATION_FIELDS,
        }
        for f in FIELDS.values()
    ]


@router.get("/")
def index() -> HTMLResponse:
    return HTMLResponse(_page(), headers={"Cache-Control": "no-cache"})


@router.get("/ui/api/config")
def config(state: State) -> dict[str, Any]:
    return {
        "version": opengem.__version__,
        "auth": state.config.auth_enabled,
        "models": list_models()["models"],
        "fields": field_registry(),
        "groups": [g.value for g in LatentGroup],
        "units": {"dose": list(DOSE_UNITS), "time": list(TIME_UNITS)},
        "strategies": [
            {
                "name": s.name,
                "modalities": [m.value for m in s.modalities],
                "description": s.description,
            }
            for s in STRATEGIES.values()
        ],
        "default_total_count": {m.value: DEFAULT_TOTAL_COUNT[m] for m in Modality},
        "default_conditioning": [g.value for g in DEFAULT_CONDITIONING],
        "limits": {
            "max_samples_per_input": state.limits.max_samples_per_input,
            "max_samples_per_query": state.limits.max_samples_per_query,
            "max_upload_samples": MAX_UPLOAD_SAMPLES,
            "max_body_bytes": state.config.max_body_bytes,
        },
        "export_formats": EXPORT_FORMATS,
        "ontology_fields": [n for n, f in FIELDS.items() if f.kind is FieldKind.ONTOLOGY],
    }


@router.post("/ui/api/counts")
async def upload_counts(request: Request, key: Key, filename: str = "counts.csv") -> Response:
    """A counts file (CSV / TSV / h5ad, gene ids or symbols; samples × genes or
    genes × samples) as count vectors in the models' gene order."""
    from opengem.client.tables import CountsTableError, read_counts_table

    body = await request.body()
    name = os.path.basename(filename)[:200] or "counts.csv"
    try:
        table = await run_in_threadpool(read_counts_table, body, name, None, MAX_UPLOAD_SAMPLES)
    except CountsTableError as exc:
        problem = {
            "location": "reference",
            "value": name,
            "reason": str(exc),
            "suggestions": [],
            "message": str(exc),
        }
        return JSONResponse({"detail": str(exc), "problems": [problem]}, status_code=422)
    payload = {
        "filename": name,
        "samples": [
            {
                "name": s,
                "library": int(table.counts[i].sum()),
                "genes": int((table.counts[i] > 0).sum()),
            }
            for i, s in enumerate(table.samples)
        ],
        "counts": table.counts,
        "mapped": table.mapped,
        "gene_names": table.gene_names,
        "n_genes": int(table.counts.shape[1]),
        "rounded": table.rounded,
    }
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
    )


def _read_result(path: Path) -> dict[str, Any]:
    payload: dict[str, Any] = orjson.loads(gzip.decompress(path.read_bytes()))
    return payload


def _labels(state: ServerState, model_id: str) -> dict[str, dict[str, str]]:
    try:
        vocab = state.registry.predictor(model_id).vocab
        return {name: dict(vocab.values(name)) for name in vocab.fields}
    except Exception:  # labels are a nicety: a missing bundle shows ids only
        return {}


@router.get("/ui/api/model-queries/{query_id}/summary")
def summary(
    query_id: str, state: State, expires: str | None = None, signature: str | None = None
) -> Response:
    job, path = signed_result(state, query_id, expires, signature)
    if job.samples > MAX_SUMMARY_SAMPLES:
        raise HTTPException(
            413,
            f"this result has {job.samples:,} samples; the page previews at most "
            f"{MAX_SUMMARY_SAMPLES:,}: download it instead",
        )
    try:
        query = orjson.loads(job.query)
    except orjson.JSONDecodeError:
        query = {}
    out = summarise(
        _read_result(path),
        query if isinstance(query, dict) else {},
        _symbols(),
        _labels(state, job.model_id),
    )
    out.update(model_id=job.model_id, query_id=job.id)
    return Response(orjson.dumps(out), media_type="application/json")


@router.get("/ui/api/model-queries/{query_id}/download/{fmt}")
def download(
    query_id: str,
    fmt: str,
    state: State,
    expires: str | None = None,
    signature: str | None = None,
) -> FileResponse:
    from opengem.client.export import write_frames
    from opengem.client.remote import frames_from_json

    if fmt not in EXPORT_FORMATS:
        raise HTTPException(
            404, f"unknown download format {fmt!r}; formats: {', '.join(EXPORT_FORMATS)}"
        )
    job, path = signed_result(state, query_id, expires, signature)
    frames = frames_from_json(_read_result(path), job.model_id)
    handle, tmp = tempfile.mkstemp(prefix=".export-", suffix=_SUFFIX[fmt])
    os.close(handle)
    try:
        write_frames(frames, Path(tmp), fmt)
    except BaseException:
        os.unlink(tmp)
        raise
    name = f"opengem-{job.model_id}-{job.id[:8]}{_SUFFIX[fmt]}"
    return FileResponse(
        tmp,
        media_type=MEDIA_TYPES[fmt],
        filename=name,
        background=BackgroundTask(os.unlink, tmp),
    )
