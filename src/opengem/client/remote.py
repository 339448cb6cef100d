"""pysynthbio's functions against a GEM-1 API server (``opengem serve`` or compatible).

Two protocols, as in pysynthbio 4.2 (compat-spec §2):

- hosted (default): POST the query, poll its status, fetch the signed
  ``downloadUrl`` (no API key sent there), turn the result JSON into DataFrames;
- self-hosted (``self_hosted=True`` or ``SYNTHESIZE_SELF_HOSTED=1``): the same POST
  with ``Accept: application/vnd.apache.arrow.stream``, answered synchronously with
  an Arrow IPC stream read straight off the socket.

The DataFrames equal the embedded API's for the same query and seed. HTTP errors
raise the exceptions of :mod:`opengem.client.errors` (pysynthbio's names). Only
the standard library does HTTP here; pyarrow reads Arrow streams.
"""

from __future__ import annotations

import gzip
import http.client
import json
import re
import time
import urllib.error
import urllib.request
import zlib
from typing import Any

import numpy as np
import pandas as pd

from opengem.client.errors import (
    AuthenticationError,
    NotFoundError,
    SynthesizeAPIError,
    ValidationError,
)

API_BASE_URL = "https://app.synthesize.bio"
DEFAULT_TIMEOUT = 30
SELF_HOSTED_TIMEOUT = 600
ARROW_STREAM_CONTENT_TYPE = "application/vnd.apache.arrow.stream"
GROUPS = ("biological", "technical", "perturbation")
_URL_RE = re.compile(r"^https?://", re.IGNORECASE)


def _clean_error_message(message: str) -> str:
    """Strip a server-side traceback from a failure message (as pysynthbio does)."""
    return message.split("\nTraceback")[0].strip() if "\nTraceback" in message else message


def _detail(body: str) -> str:
    try:
        payload = json.loads(body)
    except ValueError:
        return body.strip()
    if isinstance(payload, dict) and isinstance(payload.get("detail"), str):
        return payload["detail"]
    return body.strip()


def _validation_error(status: int, body: str) -> ValidationError:
    """One line per problem when the server lists them (``errors``: path, message)."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    message = f"Invalid request ({status}): {body}"
    errors = payload.get("errors") if isinstance(payload, dict) else None
    if isinstance(errors, list) and errors and all(isinstance(e, dict) for e in errors):
        summary = payload.get("error") if isinstance(payload.get("error"), str) else None
        lines = [f"{summary or 'Invalid request'} ({status}):"]
        lines += [f"- {e.get('path') or '(request)'}: {e.get('message', '')}" for e in errors]
        message = "\n".join(lines)
    return ValidationError(message, status, response_body=body, response_json=payload)


def http_error(status: int, body: str, endpoint: str) -> SynthesizeAPIError:
    """The exception pysynthbio raises for an HTTP error status."""
    if status in (401, 403):
        return AuthenticationError(
            f"Authentication failed ({status}): {body}. Check that your SYNTHESIZE_API_KEY "
            "is valid.",
            status,
        )
    if status == 404:
        return NotFoundError(f"Resource not found: {endpoint} ({_detail(body)})", status)
    if status in (400, 422):
        return _validation_error(status, body)
    return SynthesizeAPIError(f"API request failed ({status}): {body}", status)


def _decoded(response: Any) -> bytes:
    data = response.read()
    encoding = (response.headers.get("Content-Encoding") or "").lower()
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "deflate":
        return zlib.decompress(data)
    return data


# ------------------------------------------------------------------ frames
def _counts_frame(rows: Any, gene_order: list[str] | None) -> pd.DataFrame:
    matrix = np.asarray(rows, dtype=np.int64)
    if matrix.ndim != 2:
        matrix = matrix.reshape(len(rows), -1)
    columns = pd.Index(gene_order) if gene_order is not None else None
    return pd.DataFrame(matrix, columns=columns)


def _latents_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows) if any(rows) else pd.DataFrame()


def frames_from_json(payload: dict[str, Any], model_id: str) -> dict[str, pd.DataFrame]:
    """Result JSON (compat-spec §4) → the DataFrames pysynthbio returns."""
    for key in ("error", "errors"):
        if key in payload:
            raise SynthesizeAPIError(f"Error in result payload: {payload[key]}")
    if "outputs" not in payload:
        raise SynthesizeAPIError(f"Unexpected result JSON structure: {list(payload)}")
    outputs = payload["outputs"]
    gene_order = payload.get("gene_order")
    if model_id.endswith("_predict-metadata"):
        return {
            "metadata": pd.DataFrame([o.get("metadata", {}) for o in outputs]),
            "latents": pd.DataFrame([o.get("latents", {}) for o in outputs]),
            "classifier_probs": pd.DataFrame([o.get("classifier_probs", {}) for o in outputs]),
            "expression": _counts_frame(
                [o.get("decoder_sample", {}).get("counts", []) for o in outputs], gene_order
            ),
        }
    counts = []
    for o in outputs:
        c = o.get("counts", [])
        counts.append(c["counts"] if isinstance(c, dict) and "counts" in c else c)
    return {
        "metadata": pd.DataFrame([o.get("metadata", {}) for o in outputs]),
        "expression": _counts_frame(counts, gene_order),
        "latents": _latents_frame([o["latents"] for o in outputs if "latents" in o]),
    }


def _arrow_counts(column: Any, n_genes: int | None) -> np.ndarray:
    """A list<int> column (one list per sample, in one or more chunks) as an int64
    matrix, converted chunk by chunk into the result (no combined copy first)."""
    import pyarrow as pa

    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    values = [c.flatten().to_numpy(zero_copy_only=False) for c in chunks]
    rows = sum(len(c) for c in chunks)
    total = sum(v.size for v in values)
    width = n_genes if n_genes is not None else (total // rows if rows else 0)
    if rows and total != rows * width:
        raise SynthesizeAPIError(
            f"Arrow counts column is not rectangular: {total} values for {rows} rows"
        )
    out = np.empty((rows, width), dtype=np.int64)
    start = 0
    for chunk, flat in zip(chunks, values, strict=True):
        out[start : start + len(chunk)] = flat.reshape(len(chunk), width)
        start += len(chunk)
    return out


def frames_from_arrow(table: Any) -> dict[str, pd.DataFrame]:
    """Self-hosted Arrow table (compat-spec §2.2) → the DataFrames pysynthbio returns."""
    import pyarrow as pa

    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    gene_order = json.loads(meta["gene_order"]) if "gene_order" in meta else None
    n_genes = len(gene_order) if gene_order is not None else None
    columns = pd.Index(gene_order) if gene_order is not None else None
    metadata = pd.DataFrame(table.column("metadata").to_pylist())
    if meta.get("request_type", "baseline") == "predict_metadata":
        decoder = table.column("decoder_sample")
        decoder = decoder.combine_chunks() if isinstance(decoder, pa.ChunkedArray) else decoder
        return {
            "metadata": metadata,
            "latents": pd.DataFrame(table.column("latents").to_pylist()),
            "classifier_probs": pd.DataFrame(table.column("classifier_probs").to_pylist()),
            "expression": pd.DataFrame(
                _arrow_counts(decoder.field("counts"), n_genes), columns=columns
            ),
        }
    latents = {
        g: table.column(f"{g}_latent").to_pylist()
        for g in GROUPS
        if f"{g}_latent" in table.schema.names
    }
    return {
        "metadata": metadata,
        "expression": pd.DataFrame(_arrow_counts(table.column("counts"), n_genes), columns=columns),
        "latents": pd.DataFrame(latents),
    }


# ------------------------------------------------------------------ client
class RemoteClient:
    """One server: its base URL and (optionally) an API key."""

    def __init__(
        self, base_url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        if not _URL_RE.match(base_url or ""):
            raise ValueError(
                f"Invalid api_base_url: {base_url}. Must start with http:// or https://"
            )
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key or None
        self.timeout = timeout

    def _open(
        self,
        method: str,
        endpoint: str,
        *,
        body: dict[str, Any] | None = None,
        accept: str = "application/json",
        timeout: float | None = None,
        absolute: bool = False,
        auth: bool = True,
    ) -> Any:
        """Send a request; returns the open response (raises mapped errors for >= 400)."""
        url = endpoint if absolute else f"{self.base_url}{endpoint}"
        headers = {"Accept": accept, "Accept-Encoding": "gzip"}
        if auth and self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            return urllib.request.urlopen(request, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as err:
            text = _decoded(err).decode("utf-8", errors="replace")
            if absolute:
                raise SynthesizeAPIError(
                    f"Download failed ({err.code}): {text}", err.code
                ) from None
            raise http_error(err.code, text, endpoint) from None
        except (urllib.error.URLError, OSError) as err:
            raise SynthesizeAPIError(f"Network error: {err}") from err

    def _json(
        self, method: str, endpoint: str, body: dict[str, Any] | None = None, **kw: Any
    ) -> Any:
        with self._open(method, endpoint, body=body, **kw) as response:
            data = _decoded(response)
        try:
            return json.loads(data)
        except ValueError as err:
            raise SynthesizeAPIError(
                f"Failed to decode JSON from response: {data[:200]!r}"
            ) from err

    # ---------------------------------------------------------- endpoints
    def list_models(self) -> dict[str, Any]:
        return self._json("GET", "/api/models")

    def get_example_query(self, model_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/models/{model_id}/example-query")

    def start_query(self, model_id: str, query: dict[str, Any]) -> str:
        content = self._json("POST", f"/api/models/{model_id}/predict", query)
        if not isinstance(content, dict) or "modelQueryId" not in content:
            raise SynthesizeAPIError(f"Unexpected response from predict endpoint: {content}")
        return str(content["modelQueryId"]).strip()

    def poll(self, query_id: str, interval: float, timeout: float) -> tuple[str, dict[str, Any]]:
        """Poll until ready/failed or ``timeout``: quickly at first, then every ``interval``."""
        start, pause = time.monotonic(), 0.05
        while True:
            payload = self._json("GET", f"/api/model-queries/{query_id}/status")
            if not isinstance(payload, dict) or "status" not in payload:
                raise SynthesizeAPIError(f"Unexpected status response: {payload}")
            status = str(payload["status"])
            if status in ("ready", "failed") or time.monotonic() - start > timeout:
                return status, payload
            time.sleep(pause)
            pause = min(pause * 2, max(0.05, float(interval)))

    def download(self, url: str) -> dict[str, Any]:
        """The result JSON behind a signed URL (no API key sent)."""
        return self._json("GET", url, absolute=True, auth=False)

    def predict_arrow(self, model_id: str, query: dict[str, Any], raw: bool = False) -> Any:
        """The self-hosted protocol: the result as a pyarrow Table (``raw``: the stream's bytes)."""
        import pyarrow as pa
        import pyarrow.ipc as ipc

        with self._open(
            "POST",
            f"/api/models/{model_id}/predict",
            body=query,
            accept=ARROW_STREAM_CONTENT_TYPE,
            timeout=SELF_HOSTED_TIMEOUT,
        ) as response:
            encoding = (response.headers.get("Content-Encoding") or "").lower()
            out: Any
            try:
                if raw:
                    out = _decoded(response)
                elif encoding in ("gzip", "deflate"):
                    out = ipc.open_stream(pa.py_buffer(_decoded(response))).read_all()
                else:  # each message read off the socket as the server sends it
                    out = ipc.open_stream(response).read_all()
                if response.length:  # http.client reads a short body without complaint
                    raise http.client.IncompleteRead(b"", response.length)
                return out
            except (http.client.HTTPException, OSError, zlib.error, pa.ArrowException) as err:
                # the server ends a stream short when the query fails mid-way (its
                # worker died, say): the stream so far may read as a shorter table
                raise SynthesizeAPIError(
                    "the server's Arrow stream was cut off before its end "
                    f"({type(err).__name__}): the query failed while its result was being "
                    "sent (a query that fails on the server is not charged; its log says "
                    "why), or the connection broke; run it again"
                ) from err

    def predict_query(
        self,
        query: dict[str, Any],
        model_id: str,
        *,
        self_hosted: bool = False,
        poll_interval_seconds: float = 2,
        poll_timeout_seconds: float = 900,
        return_download_url: bool = False,
        raw_response: bool = False,
    ) -> Any:
        if self_hosted:
            if return_download_url:
                raise ValueError(
                    "return_download_url is not supported in self-hosted mode; the server "
                    "returns results synchronously as an Arrow stream."
                )
            if raw_response:
                return self.predict_arrow(model_id, query, raw=True)
            return frames_from_arrow(self.predict_arrow(model_id, query))
        query_id = self.start_query(model_id, query)
        status, payload = self.poll(query_id, poll_interval_seconds, poll_timeout_seconds)
        if status == "failed":
            message = payload.get("message")
            if not message:
                raise SynthesizeAPIError("Model query failed. No error message in payload.")
            raise SynthesizeAPIError(f"Model query failed: {_clean_error_message(message)}")
        if status != "ready":
            raise SynthesizeAPIError(
                f"Model query did not complete in time (status={status}). Consider increasing "
                "poll_timeout_seconds."
            )
        url = payload.get("downloadUrl")
        if not url:
            raise SynthesizeAPIError("Response missing downloadUrl when status=ready")
        if return_download_url:
            return {"download_url": url}
        result = self.download(url)
        if raw_response:
            return result
        return frames_from_json(result, model_id)
