"""One reader per file format; each returns a :class:`~opengem.corpus.study.StudyTable`."""

from opengem.corpus.readers.archs4 import archs4_annotations, read_archs4
from opengem.corpus.readers.delimited import detect_orientation, read_delimited
from opengem.corpus.readers.gct import read_gct
from opengem.corpus.readers.h5ad import h5ad_annotations, read_h5ad
from opengem.corpus.readers.mtx import read_mtx

FORMATS = ("delimited", "mtx", "h5ad", "archs4", "gct")

__all__ = [
    "FORMATS",
    "archs4_annotations",
    "detect_orientation",
    "h5ad_annotations",
    "read_archs4",
    "read_delimited",
    "read_gct",
    "read_h5ad",
    "read_mtx",
]
