"""Every reader on small files written in the real formats, both orientations."""

from __future__ import annotations

import gzip
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from opengem.corpus import CorpusError
from opengem.corpus.readers import archs4 as archs4_module
from opengem.corpus.readers import (
    archs4_annotations,
    read_archs4,
    read_delimited,
    read_gct,
    read_h5ad,
    read_mtx,
)
from opengem.ontology import is_ensembl_gene_id

GENES = ["ENSG00000141510.17", "ENSG00000075624", "ENSG00000111640.15", "ENSG00000163631"]
SAMPLES = ["S1", "S2", "S3"]
# samples × genes
VALUES = np.array([[10, 0, 3, 7], [0, 5, 0, 1], [2, 2, 2, 0]], dtype=float)


def frame_genes_x_samples() -> pd.DataFrame:
    return pd.DataFrame(VALUES.T, index=pd.Index(GENES, name="gene_id"), columns=SAMPLES)


def assert_study(table, genes=GENES, samples=SAMPLES, values=VALUES) -> None:  # type: ignore[no-untyped-def]
    assert table.gene_ids == list(genes)
    assert table.sample_ids == list(samples)
    np.testing.assert_array_equal(table.values.toarray(), values)


@pytest.mark.parametrize("orientation", ["genes_x_samples", "auto"])
def test_csv_genes_x_samples(tmp_path: Path, orientation: str) -> None:
    path = tmp_path / "counts.csv"
    frame_genes_x_samples().to_csv(path)
    table = read_delimited(path, orientation=orientation, looks_like_gene=is_ensembl_gene_id)
    assert_study(table)


@pytest.mark.parametrize("orientation", ["samples_x_genes", "auto"])
def test_tsv_gz_samples_x_genes(tmp_path: Path, orientation: str) -> None:
    path = tmp_path / "counts.tsv.gz"
    frame = frame_genes_x_samples().T
    frame.index.name = "sample"
    with gzip.open(path, "wt") as fh:
        frame.to_csv(fh, sep="\t")
    table = read_delimited(path, orientation=orientation, looks_like_gene=is_ensembl_gene_id)
    assert_study(table)


def test_r_style_header_one_field_short(tmp_path: Path) -> None:
    path = tmp_path / "counts.csv"
    lines = [",".join(SAMPLES)] + [
        ",".join([g, *map(str, VALUES[:, j].astype(int))]) for j, g in enumerate(GENES)
    ]
    path.write_text("\n".join(lines) + "\n")
    assert_study(read_delimited(path, orientation="genes_x_samples"))


def test_index_column_and_drop_columns(tmp_path: Path) -> None:
    frame = frame_genes_x_samples().reset_index()
    frame.insert(0, "length", [100, 200, 300, 400])
    frame.insert(2, "symbol", ["TP53", "ACTB", "GAPDH", "ALB"])
    path = tmp_path / "counts.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(CorpusError, match="hold text"):
        read_delimited(path, orientation="genes_x_samples", index_column="gene_id")
    table = read_delimited(
        path,
        orientation="genes_x_samples",
        index_column="gene_id",
        drop_columns=["length", "symbol"],
    )
    assert_study(table)


def test_auto_orientation_refuses_to_guess(tmp_path: Path) -> None:
    path = tmp_path / "counts.csv"
    pd.DataFrame(VALUES, index=SAMPLES, columns=["a", "b", "c", "d"]).to_csv(path)
    with pytest.raises(CorpusError, match="set orientation"):
        read_delimited(path, orientation="auto", looks_like_gene=is_ensembl_gene_id)


def _write_ids(path: Path, rows: list[list[str]]) -> None:
    path.write_text("".join("\t".join(r) + "\n" for r in rows))


@pytest.mark.parametrize("stored", ["samples_x_genes", "genes_x_samples"])
def test_mtx_both_orientations(tmp_path: Path, stored: str) -> None:
    matrix = sp.coo_matrix(VALUES if stored == "samples_x_genes" else VALUES.T)
    scipy.io.mmwrite(tmp_path / "matrix.mtx", matrix)
    _write_ids(tmp_path / "genes.tsv", [[g, f"SYM{i}"] for i, g in enumerate(GENES)])
    _write_ids(tmp_path / "barcodes.tsv", [[s] for s in SAMPLES])
    for orientation in (stored, "auto"):
        table = read_mtx(
            tmp_path / "matrix.mtx",
            genes_path=tmp_path / "genes.tsv",
            barcodes_path=tmp_path / "barcodes.tsv",
            orientation=orientation,
        )
        assert_study(table)
    symbols = read_mtx(
        tmp_path / "matrix.mtx",
        genes_path=tmp_path / "genes.tsv",
        sample_ids=SAMPLES,
        genes_column=1,
    )
    assert symbols.gene_ids == ["SYM0", "SYM1", "SYM2", "SYM3"]


def test_mtx_shape_mismatch_is_explained(tmp_path: Path) -> None:
    scipy.io.mmwrite(tmp_path / "matrix.mtx", sp.coo_matrix(VALUES))
    _write_ids(tmp_path / "genes.tsv", [[g] for g in GENES[:3]])
    with pytest.raises(CorpusError, match="matches neither"):
        read_mtx(tmp_path / "matrix.mtx", genes_path=tmp_path / "genes.tsv", sample_ids=SAMPLES)


def _adata() -> anndata.AnnData:
    obs = pd.DataFrame({"donor": ["d1", "d2", "d3"]}, index=SAMPLES)
    var = pd.DataFrame({"gene_ids": GENES}, index=["TP53", "ACTB", "GAPDH", "ALB"])
    adata = anndata.AnnData(X=sp.csr_matrix(VALUES * 0.5), obs=obs, var=var)
    adata.layers["counts"] = sp.csr_matrix(VALUES)
    adata.raw = anndata.AnnData(X=sp.csr_matrix(VALUES), obs=obs, var=var)
    return adata


@pytest.mark.parametrize("layer", ["counts", "raw"])
def test_h5ad_layer_and_raw(tmp_path: Path, layer: str) -> None:
    path = tmp_path / "cells.h5ad"
    _adata().write_h5ad(path)
    table = read_h5ad(path, layer=layer, gene_id_field="gene_ids")
    assert_study(table)
    assert table.annotations["donor"].tolist() == ["d1", "d2", "d3"]


def test_h5ad_x_streamed_with_a_sample_subset(tmp_path: Path) -> None:
    path = tmp_path / "cells.h5ad"
    _adata().write_h5ad(path)
    table = read_h5ad(path, samples=["S3", "S1"])
    assert table.gene_ids == ["TP53", "ACTB", "GAPDH", "ALB"]
    assert table.sample_ids == ["S3", "S1"]
    np.testing.assert_array_equal(table.values.toarray(), VALUES[[2, 0]] * 0.5)
    with pytest.raises(CorpusError, match="no layer 'spliced'"):
        read_h5ad(path, layer="spliced")


def _write_archs4(path: Path, n_samples: int = 9) -> np.ndarray:
    rng = np.random.default_rng(0)
    expression = rng.integers(0, 50, size=(len(GENES), n_samples))  # genes × samples
    with h5py.File(path, "w") as f:
        f["data/expression"] = expression
        f["meta/genes/ensembl_gene_id"] = np.array(GENES, dtype="S")
        f["meta/genes/symbol"] = np.array(["TP53", "ACTB", "GAPDH", "ALB"], dtype="S")
        f["meta/samples/geo_accession"] = np.array([f"GSM{i}" for i in range(n_samples)], dtype="S")
        f["meta/samples/title"] = np.array([f"sample {i}" for i in range(n_samples)], dtype="S")
        f["meta/samples/series_id"] = np.array(["GSE1"] * n_samples, dtype="S")
    return expression


@pytest.mark.parametrize("chunk", [2, 1000])
def test_archs4_reads_chosen_samples_in_chunks(
    tmp_path: Path, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archs4_module, "CHUNK", chunk)
    path = tmp_path / "human_gene_v2.h5"
    expression = _write_archs4(path)
    annotations = archs4_annotations(path)
    assert annotations.index.tolist()[:2] == ["GSM0", "GSM1"]
    assert annotations.loc["GSM4", "title"] == "sample 4"
    wanted = ["GSM8", "GSM0", "GSM3", "GSM4"]  # scattered and out of order
    table = read_archs4(path, samples=wanted)
    assert table.gene_ids == GENES and table.sample_ids == wanted
    np.testing.assert_array_equal(table.values.toarray(), expression[:, [8, 0, 3, 4]].T)
    everything = read_archs4(path, gene_id_field="symbol")
    assert everything.gene_ids[0] == "TP53" and everything.values.shape == (9, 4)
    with pytest.raises(CorpusError, match="no sample 'GSM99'"):
        read_archs4(path, samples=["GSM99"])


def test_archs4_layout_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["matrix"] = np.zeros((2, 2))
    with pytest.raises(CorpusError, match="not an ARCHS4-style file"):
        read_archs4(path)


def test_gct(tmp_path: Path) -> None:
    path = tmp_path / "counts.gct"
    rows = [
        f"{g}\tdesc\t" + "\t".join(str(int(v)) for v in VALUES[:, j]) for j, g in enumerate(GENES)
    ]
    path.write_text(
        "#1.2\n4\t3\nName\tDescription\t" + "\t".join(SAMPLES) + "\n" + "\n".join(rows) + "\n"
    )
    assert_study(read_gct(path))
    bad = tmp_path / "bad.gct"
    bad.write_text(
        "#1.2\n5\t3\nName\tDescription\t" + "\t".join(SAMPLES) + "\n" + "\n".join(rows) + "\n"
    )
    with pytest.raises(CorpusError, match="declares 5 × 3"):
        read_gct(bad)


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        read_delimited(tmp_path / "nope.csv", orientation="genes_x_samples")
    with pytest.raises(CorpusError, match="does not exist"):
        read_gct(tmp_path / "nope.gct")
