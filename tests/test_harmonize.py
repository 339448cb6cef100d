"""Gene harmonisation: versions, symbols, Entrez, duplicates, masks, value types."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from opengem.corpus import CorpusError, GeneMapper, StudyTable, harmonize
from opengem.ontology import default_gene_space

GENES = default_gene_space()
TP53, ACTB, GAPDH = "ENSG00000141510", "ENSG00000075624", "ENSG00000111640"
ANNOTATION = pd.DataFrame(
    {
        "ensgene": [TP53, ACTB, GAPDH, "ENSG00000251562"],
        "entrez": [7157.0, 60.0, 2597.0, 378938.0],
        "symbol": ["TP53", "ACTB", "GAPDH_OLDNAME", "MALAT1"],
    }
)
MAPPER = GeneMapper(GENES, ANNOTATION)


def table(gene_ids: list[str], values: list[list[float]]) -> StudyTable:
    """samples × genes values."""
    return StudyTable(
        sp.csr_matrix(np.array(values, dtype=float)),
        gene_ids,
        [f"S{i}" for i in range(len(values))],
    )


def run(t: StudyTable, id_type: str = "ensembl", value_type: str = "counts", **kw):  # type: ignore[no-untyped-def]
    return harmonize(
        t, study="toy", mapper=MAPPER, gene_id_type=id_type, value_type=value_type, **kw
    )


def col(h, gene_id: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    return h.counts[:, GENES.index_of(gene_id)].toarray().ravel()


def test_versions_are_stripped_and_duplicates_summed() -> None:
    h = run(table([f"{TP53}.17", TP53, ACTB], [[1, 2, 3], [4, 5, 6]]))
    np.testing.assert_array_equal(col(h, TP53), [3, 9])
    np.testing.assert_array_equal(col(h, ACTB), [3, 6])
    assert h.duplicates_summed == 1 and h.mapped_genes == 2
    assert h.counts.shape == (2, len(GENES)) and h.counts.dtype == np.int32


def test_mask_marks_measured_genes_only() -> None:
    h = run(table([TP53, ACTB], [[0, 0], [1, 0]]))
    assert h.measured.sum() == 2  # measured, even where every count is zero
    assert h.measured[GENES.index_of(ACTB)] and not h.measured[GENES.index_of(GAPDH)]


def test_symbols_map_through_the_gene_space_and_the_annotation() -> None:
    h = run(
        table(["TP53", "actb", "GAPDH_OLDNAME", "NOT_A_GENE"], [[1, 2, 3, 4]]),
        id_type="symbol",
        max_unmapped_fraction=0.5,
    )
    np.testing.assert_array_equal([col(h, g)[0] for g in (TP53, ACTB, GAPDH)], [1, 2, 3])
    assert h.top_unmapped[0][0] == "NOT_A_GENE"
    assert h.unmapped_fraction == pytest.approx(4 / 10)


def test_entrez_ids_map_through_the_annotation() -> None:
    h = run(
        table(["7157", "60.0", "378938"], [[5, 6, 7]]), id_type="entrez", max_unmapped_fraction=0.5
    )
    assert col(h, TP53)[0] == 5 and col(h, ACTB)[0] == 6
    assert h.unmapped_fraction == pytest.approx(7 / 18)  # MALAT1 is not protein-coding
    with pytest.raises(CorpusError, match="annotation table"):
        harmonize(
            table(["7157"], [[1]]),
            study="toy",
            mapper=GeneMapper(GENES),
            gene_id_type="entrez",
            value_type="counts",
        )


def test_coverage_becomes_reads() -> None:
    h = run(table([TP53, ACTB], [[3600, 70], [36, 0]]), value_type="coverage", read_length=36)
    np.testing.assert_array_equal(col(h, TP53), [100, 1])
    np.testing.assert_array_equal(col(h, ACTB), [2, 0])  # 70/36 = 1.94 -> 2
    assert h.rounded
    with pytest.raises(CorpusError, match="read_length"):
        run(table([TP53], [[1]]), value_type="coverage")


def test_estimated_counts_are_rounded_and_flagged() -> None:
    h = run(table([TP53, ACTB], [[2.4, 2.6]]), value_type="estimated")
    assert (col(h, TP53)[0], col(h, ACTB)[0]) == (2, 3)
    assert h.rounded


def test_spike_ins_and_summary_rows_are_dropped_not_counted_as_unmapped() -> None:
    h = run(table([TP53, "ERCC-00002", "__no_feature"], [[10, 30, 1000]]))
    assert h.unmapped_fraction == 0
    assert h.spike_in_fraction == pytest.approx(30 / 40)
    assert h.source_genes == 1


@pytest.mark.parametrize(
    ("value", "value_type", "needle"),
    [
        (-1.0, "counts", "negative"),
        (np.nan, "counts", "NaN"),
        (2.5, "counts", "not a count"),
        (np.inf, "estimated", "NaN or infinite"),
    ],
)
def test_bad_values_name_sample_and_gene(value: float, value_type: str, needle: str) -> None:
    with pytest.raises(CorpusError, match=needle) as err:
        run(table([TP53, ACTB], [[1, 1], [1, value]]), value_type=value_type)
    assert "'S1'" in str(err.value) and ACTB in str(err.value) and "toy" in str(err.value)


def test_unmapped_threshold() -> None:
    t = table([TP53, "ENSG00000251562"], [[10, 90]])
    with pytest.raises(CorpusError, match=r"90\.0% of counts .* ENSG00000251562"):
        run(t)
    assert run(t, max_unmapped_fraction=0.95).unmapped_fraction == pytest.approx(0.9)
