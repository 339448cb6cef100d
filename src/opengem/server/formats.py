"""Results on the wire: the result JSON (gzip) and the self-hosted Arrow IPC stream.

The result JSON is written atomically (temporary file, fsync, rename), so a reader
never sees half a result, and a worker killed mid-write leaves only a stray
temporary file behind. An Arrow result is streamed: the worker writes it record
batch by record batch to a partial file named after the query and the worker
(:meth:`ResultFiles.partial`), which the API sends on to the client as it grows,
then renames it into place and marks the query ready. The file starts with
:data:`ARROW_HEADER` (a magic and the stream's length in bytes, measured before
writing by a dry run that copies nothing), so the API answers with a
``Content-Length`` from the first byte; it holds the stream's last bytes back until
the store says the worker finished, so a stream whose worker died is cut off
short (an error for the client's HTTP library), never a table that looks complete.

The Arrow stream follows compat-spec §2.2. Schema metadata: ``request_type``
(``baseline`` | ``reference_conditioned`` | ``predict_metadata``), ``model_version``
and ``gene_order`` (a JSON array). Expression results have one row per sample
with ``counts`` (list<int32>, or list<int64> when a count needs it), ``metadata``
(struct of strings) and ``biological_latent`` / ``technical_latent`` /
``perturbation_latent`` (list<float32>); metadata predictions have
``classifier_probs`` (struct of structs field → label → probability), ``latents``
(struct of the three lists), ``metadata`` and ``decoder_sample`` (struct{counts}).
Count and latent columns are built from the numpy arrays directly (a values
buffer plus an offsets buffer), never number by number.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np
import orjson

ARROW_STREAM = "application/vnd.apache.arrow.stream"
GROUPS = ("biological", "technical", "perturbation")
BATCH_ROWS = 256
GZIP_LEVEL = 1
_INT32 = np.iinfo(np.int32)
#: values per step of the int32 check and conversion of counts (1 MiB of int32)
_BLOCK = 1 << 18
#: what a result file holds before its Arrow stream: magic, the stream's length
ARROW_HEADER = struct.Struct("<8sQ")
ARROW_MAGIC = b"OGARROW1"


# ---------------------------------------------------------------- Arrow arrays
def wants_arrow(accept: str) -> bool:
    """Whether an ``Accept`` header asks for the Arrow stream rather than JSON.

    Media ranges are weighed by their ``q`` (default 1; ``q=0`` means "not
    acceptable"): Arrow when it is named with a positive ``q`` at least that of
    JSON (``application/json``, ``application/*`` or ``*/*``).
    """
    arrow_q, json_q = 0.0, 0.0
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        q = 1.0
        for f in fields[1:]:
            if f.lower().startswith("q="):
                try:
                    q = min(max(float(f[2:]), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        if media == ARROW_STREAM:
            arrow_q = max(arrow_q, q)
        elif media in ("application/json", "application/*", "*/*"):
            json_q = max(json_q, q)
    return arrow_q > 0 and arrow_q >= json_q


def non_finite_paths(body: bytes, limit: int = 5) -> list[str]:
    """Where a body that strict JSON refuses holds NaN / Infinity literals (what many
    JSON encoders write for a float NaN), as query paths; empty when none does or the
    body is not JSON even with them."""
    import json
    import math

    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return []
    found: list[str] = []
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack and len(found) < limit:
        path, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            found.append(path or "(the body)")
        elif isinstance(value, dict):
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return sorted(found)


def list_array(matrix: np.ndarray, value_type: Any, large: bool | None = None) -> Any:
    """A (rows, width) matrix as an Arrow list array, one list per row, without copying
    the values number by number (large_list when the values need 64-bit offsets, or
    when ``large`` says so)."""
    import pyarrow as pa

    matrix = np.ascontiguousarray(matrix)
    rows, width = matrix.shape
    values = pa.array(matrix.reshape(-1), type=value_type)
    total = rows * width
    if not (total >= 2**31 if large is None else large):
        offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * np.int32(width))
        return pa.ListArray.from_arrays(offsets, values)
    offsets = pa.array(np.arange(rows + 1, dtype=np.int64) * np.int64(width))
    return pa.LargeListArray.from_arrays(offsets, values)


def _as_int32(counts: np.ndarray) -> np.ndarray | None:
    """``counts`` as int32 when every value fits, else None: for int64 counts one pass
    in blocks (each block's range checked while it is in cache, then converted)."""
    if counts.dtype == np.int32:
        return counts
    if counts.dtype != np.int64 or not counts.flags.c_contiguous:
        fits = counts.size == 0 or (counts.min() >= _INT32.min and counts.max() <= _INT32.max)
        return counts.astype(np.int32, copy=False) if fits else None
    out = np.empty(counts.shape, dtype=np.int32)
    src, dst = counts.reshape(-1), out.reshape(-1)
    for a in range(0, src.size, _BLOCK):
        block = src[a : a + _BLOCK]
        if block.min() < _INT32.min or block.max() > _INT32.max:
            return None
        np.copyto(dst[a : a + _BLOCK], block, casting="unsafe")
    return out


def counts_array(counts: np.ndarray) -> Any:
    """Counts as list<int32> when every value fits (R reads them as integers), else int64."""
    import pyarrow as pa

    small = _as_int32(counts)
    if small is not None:
        return list_array(small, pa.int32())
    return list_array(counts.astype(np.int64, copy=False), pa.int64())


def _string_struct(rows: list[dict[str, str]]) -> Any:
    import pyarrow as pa

    keys = list(rows[0]) if rows else []
    return pa.array(rows, type=pa.struct([(k, pa.string()) for k in keys]))


def _probs_struct(rows: list[dict[str, dict[str, float]]]) -> Any:
    import pyarrow as pa

    first = rows[0] if rows else {}
    kind = pa.struct(
        [(f, pa.struct([(label, pa.float64()) for label in labels])) for f, labels in first.items()]
    )
    return pa.array(rows, type=kind)


def _counts_of(result: Any) -> np.ndarray:
    return result.decoder_counts if result.request_type == "predict_metadata" else result.counts


def _table(result: Any, counts: Any) -> Any:
    """The self-hosted Arrow table of a result, ``counts`` its counts list array."""
    import pyarrow as pa

    meta = {
        "request_type": result.request_type,
        "model_version": str(result.model_version),
        "gene_order": orjson.dumps(list(result.gene_order)).decode(),
    }
    latents = {
        g: list_array(result.latents[g].astype(np.float32, copy=False), pa.float32())
        for g in GROUPS
        if g in result.latents
    }
    if result.request_type == "predict_metadata":
        columns = {
            "classifier_probs": _probs_struct(result.classifier_probs),
            "latents": pa.StructArray.from_arrays(list(latents.values()), names=list(latents)),
            "metadata": _string_struct(result.metadata),
            "decoder_sample": pa.StructArray.from_arrays([counts], names=["counts"]),
        }
    else:
        columns = {"counts": counts, "metadata": _string_struct(result.metadata)}
        columns.update({f"{g}_latent": array for g, array in latents.items()})
    table = pa.table(columns)
    return table.replace_schema_metadata(meta)


def arrow_table(result: Any) -> Any:
    """The self-hosted Arrow table of an ``ExpressionResult`` or ``MetadataResult``."""
    return _table(result, counts_array(_counts_of(result)))


class ArrowBatches:
    """A result's Arrow stream as its schema and record batches, the counts converted
    to int32 one batch at a time into one reused buffer (no whole-matrix copy), so the
    first batch can be written as soon as the range of the counts is known. Writes the
    bytes :func:`write_arrow_stream` writes for :func:`arrow_table`."""

    def __init__(self, result: Any, fits: bool | None = None) -> None:
        """``fits=True``: the int64 counts are known to fit int32 (e.g. not decoded yet,
        but bounded): not checked whole, each batch is checked as it is converted."""
        import pyarrow as pa

        counts = np.ascontiguousarray(_counts_of(result))
        self._metadata = result.request_type == "predict_metadata"
        self.counts: np.ndarray | None = None
        if fits is None:
            fits = counts.dtype == np.int64 and (
                counts.size == 0 or (counts.min() >= _INT32.min and counts.max() <= _INT32.max)
            )
            self._check = False
        else:
            fits = self._check = fits and counts.dtype == np.int64
        if not fits:  # int64 on the wire, or not int64 counts: converted whole
            self.table = arrow_table(result)
            self.schema = self.table.schema
            return
        # the int64 counts (zero-copy) stand in until each batch is converted
        self.table = _table(result, list_array(counts, pa.int64()))
        self.counts = counts
        self._large = counts.size >= 2**31  # list or large_list, as the whole column
        field = pa.field("counts", (pa.large_list if self._large else pa.list_)(pa.int32()))
        self._at = self.table.schema.get_field_index("counts")
        if self._metadata:
            self._at = self.table.schema.get_field_index("decoder_sample")
            field = pa.field("decoder_sample", pa.struct([field]))
        self.schema = self.table.schema.set(self._at, field)
        self._buffer = np.empty((min(BATCH_ROWS, len(counts)), counts.shape[1]), np.int32)

    def batches(
        self, convert: bool = True, ready: Callable[[int], None] | None = None
    ) -> Iterator[Any]:
        """The record batches (``convert=False``: the counts left unconverted, for
        measuring the stream, whose bytes do not depend on the values). Each batch's
        counts live in the shared buffer until the next batch is made. ``ready(rows)``
        returns once the first ``rows`` rows' counts are final (they are read then)."""
        import pyarrow as pa

        start = 0
        for batch in self.table.to_batches(max_chunksize=BATCH_ROWS):
            if self.counts is None:
                yield batch
                continue
            n = batch.num_rows
            block = self._buffer[:n]
            if convert:
                if ready is not None:
                    ready(start + n)
                source = self.counts[start : start + n]
                if (
                    self._check
                    and source.size
                    and (source.min() < _INT32.min or source.max() > _INT32.max)
                ):  # the bound was wrong: never send a wrapped count
                    raise ValueError("a count does not fit the Arrow stream's int32")
                np.copyto(block, source, casting="unsafe")
            start += n
            column = list_array(block, pa.int32(), large=self._large)
            if self._metadata:
                column = pa.StructArray.from_arrays([column], names=["counts"])
            arrays = list(batch.columns)
            arrays[self._at] = column
            yield pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def write(self, sink: Any, ready: Callable[[int], None] | None = None) -> None:
        """Write the stream to ``sink`` (``ready``: as :meth:`batches`)."""
        import pyarrow as pa

        with pa.ipc.new_stream(sink, self.schema) as writer:
            for batch in self.batches(ready=ready):
                writer.write_batch(batch)

    def length(self) -> int:
        """The bytes :meth:`write` writes, from a dry run into a sink that only counts."""
        import pyarrow as pa

        sink = pa.MockOutputStream()
        with pa.ipc.new_stream(sink, self.schema) as writer:
            for batch in self.batches(convert=False):
                writer.write_batch(batch)
        return int(sink.size())


def write_arrow_stream(
    table: Any, sink: Any, after_batch: Callable[[], None] | None = None
) -> None:
    """Write a table as an IPC stream, in batches a reader can consume as they arrive
    (``after_batch`` runs after each one, e.g. to flush a buffered sink)."""
    import pyarrow as pa

    with pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=BATCH_ROWS):
            writer.write_batch(batch)
            if after_batch is not None:
                after_batch()


def arrow_stream_length(table: Any) -> int:
    """The bytes :func:`write_arrow_stream` writes for ``table``, from a dry run into a
    sink that only counts (no buffer is copied)."""
    import pyarrow as pa

    sink = pa.MockOutputStream()
    write_arrow_stream(table, sink)
    return int(sink.size())


def read_arrow_header(head: bytes) -> int | None:
    """The stream length a result file's first bytes announce (None: not a result file)."""
    if len(head) < ARROW_HEADER.size:
        return None
    magic, length = ARROW_HEADER.unpack_from(head)
    return int(length) if magic == ARROW_MAGIC else None


# ---------------------------------------------------------------------- JSON
def result_json_bytes(result: Any) -> bytes:
    """The result JSON (compat-spec §4), latents as float64 so every float reads back
    exactly as the embedded API returns it. Arrays are made C-contiguous first: orjson
    encodes no other layout (a metadata prediction of several samples has latents
    sliced column-wise)."""
    changes: dict[str, Any] = {
        "latents": {g: np.ascontiguousarray(v, dtype=np.float64) for g, v in result.latents.items()}
    }
    for name in ("counts", "decoder_counts"):
        if hasattr(result, name):
            changes[name] = np.ascontiguousarray(getattr(result, name))
    return bytes(dataclasses.replace(result, **changes).to_json_bytes())


# ---------------------------------------------------------------- files
def atomic_write(path: Path, write: Callable[[IO[bytes]], None], durable: bool = True) -> Path:
    """Write via a temporary file in the same folder, fsync (``durable``), then rename
    into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class ResultFiles:
    """Where results live: ``<data dir>/results/<query id>.json.gz | .arrows``, and the
    partial Arrow stream a worker is writing, ``.<query id>.<worker tag>.part``."""

    SUFFIX: ClassVar[dict[str, str]] = {"json": ".json.gz", "arrow": ".arrows"}
    PARTIAL = ".part"

    def __init__(self, data_dir: Path | str) -> None:
        self.root = Path(data_dir) / "results"

    def path(self, name: str) -> Path:
        """The file of a stored result name (names never contain a separator)."""
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"bad result name {name!r}")
        return self.root / name

    def name(self, job_id: str, kind: str) -> str:
        return f"{job_id}{self.SUFFIX[kind]}"

    def partial(self, job_id: str, worker_id: str) -> Path:
        """The partial Arrow stream ``worker_id`` writes for ``job_id``: one per attempt
        at the query, so a reader never mixes the bytes of two workers."""
        if not job_id or "/" in job_id or "\\" in job_id or job_id.startswith("."):
            raise ValueError(f"bad query id {job_id!r}")
        tag = hashlib.sha256(worker_id.encode()).hexdigest()[:12]
        return self.root / f".{job_id}.{tag}{self.PARTIAL}"

    def write(self, job_id: str, kind: str, result: Any) -> str:
        """Write a result in the job's format, whole; returns the name to store with the
        job (workers stream Arrow results with :meth:`stream_arrow` instead)."""
        name = self.name(job_id, kind)
        if kind == "json":
            data = result_json_bytes(result)

            def write(fh: IO[bytes]) -> None:
                with gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as gz:
                    gz.write(data)

        else:
            table = arrow_table(result)
            length = arrow_stream_length(table)

            def write(fh: IO[bytes]) -> None:
                fh.write(ARROW_HEADER.pack(ARROW_MAGIC, length))
                write_arrow_stream(table, fh)

        # an Arrow result lives seconds (streamed once, then deleted): no fsync
        atomic_write(self.path(name), write, durable=kind == "json")
        return name

    def stream_arrow(
        self,
        job_id: str,
        worker_id: str,
        result: Any,
        stream: ArrowBatches | None = None,
        ready: Callable[[int], None] | None = None,
    ) -> str:
        """Write an Arrow result batch by batch to its partial file (readable while it
        grows), then rename it into place; returns the name to store with the job.

        The file is what :meth:`write` writes. The table is built and measured before
        the file exists, so a result that cannot be converted leaves nothing to read.
        ``stream`` and ``ready`` (:class:`RowStream`): batches of a result whose counts
        are still being decoded, each written once ``ready`` says its rows are final."""
        import pyarrow as pa

        stream = stream or ArrowBatches(result)
        length = stream.length()
        name = self.name(job_id, "arrow")
        part = self.partial(job_id, worker_id)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            # unbuffered: each batch reaches the file (and a reader) as it is written
            with pa.OSFile(str(part), "wb") as sink:
                sink.write(ARROW_HEADER.pack(ARROW_MAGIC, length))
                stream.write(sink, ready)
                written = sink.tell()
            if written != ARROW_HEADER.size + length:  # the header would lie: never send it
                raise RuntimeError(f"Arrow stream of {written} bytes, measured {length}")
            os.replace(part, self.path(name))
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return name

    def delete(self, name: str | None) -> None:
        if name:
            try:
                self.path(name).unlink(missing_ok=True)
            except ValueError:
                pass

    def sweep_temporary(self, older_than_s: float = 3600.0) -> int:
        """Remove temporary and partial files left by workers that died mid-write."""
        import time

        if not self.root.is_dir():
            return 0
        cutoff, removed = time.time() - older_than_s, 0
        for pattern in (".*.tmp", f".*{self.PARTIAL}"):
            for tmp in self.root.glob(pattern):
                try:
                    if tmp.stat().st_mtime < cutoff:
                        tmp.unlink()
                        removed += 1
                except OSError:
                    pass
        return removed


#: counts up to this bound fit the Arrow stream's int32 (a result's counts go out as
#: int64 when any needs it, which is known only once all are decoded)
INT32_MAX = int(_INT32.max)


class RowStream:
    """An Arrow result streamed while the engine still decodes its counts: a thread
    writes each record batch (:meth:`ResultFiles.stream_arrow`) as soon as the engine
    reports its rows final (:meth:`rows`, the engine's ``RowsDone``), so decoding,
    conversion, writing and the API's send overlap. Only for an expression result
    whose counts are bounded within int32 (the schema, written first, says int32):
    everything else in the stream (schema, metadata, latents, the length) is known
    before decoding starts. The bytes are those of the whole result's stream.

    :meth:`finish` (after the prediction) returns the result's name; :meth:`abort`
    (the prediction failed) stops the thread and removes the partial file, so the
    API cuts the response off, as for any worker failing mid-stream."""

    def __init__(self, files: ResultFiles, job_id: str, worker_id: str, result: Any) -> None:
        import threading

        self._total = len(result.counts)
        self._done = 0
        self._aborted = False
        self._wanted = min(BATCH_ROWS, self._total)
        self._cond = threading.Condition()
        self._name: str | None = None
        self._error: BaseException | None = None
        self._files, self._job_id, self._worker_id, self._result = files, job_id, worker_id, result
        self._thread = threading.Thread(target=self._write, name="arrow-rows", daemon=True)
        self._thread.start()

    @staticmethod
    def fits(result: Any, bound: int | None) -> bool:
        """Whether a result the engine has started (``bound``: what no count exceeds)
        can be streamed this way."""
        return (
            bound is not None
            and bound <= INT32_MAX
            and getattr(result, "request_type", "") != "predict_metadata"
            and getattr(result.counts, "dtype", None) == np.int64
        )

    def rows(self, done: int) -> None:
        """The first ``done`` rows' counts are final (called by the decoding thread)."""
        if done < self._wanted and done < self._total:
            return
        with self._cond:
            self._done = done
            self._cond.notify()

    def _ready(self, rows: int) -> None:
        with self._cond:
            self._wanted = rows
            while self._done < rows:
                if self._aborted:
                    raise _Aborted
                self._cond.wait()

    def _write(self) -> None:
        try:
            stream = ArrowBatches(self._result, fits=True)  # built here: decoding goes on
            self._name = self._files.stream_arrow(
                self._job_id, self._worker_id, self._result, stream, self._ready
            )
        except _Aborted:
            pass
        except BaseException as exc:  # reported by finish()
            self._error = exc

    def finish(self) -> str:
        """Wait for the last batch; the name to store with the job."""
        self.rows(self._total)
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._name is not None
        return self._name

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify()
        self._thread.join()
        if self._name is not None:  # it had finished: the file is not the job's now
            self._files.delete(self._name)
        self._files.partial(self._job_id, self._worker_id).unlink(missing_ok=True)


class _Aborted(Exception):
    """The prediction a :class:`RowStream` was waiting on failed."""
