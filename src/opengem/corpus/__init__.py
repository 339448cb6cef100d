"""The training corpus: readers, study cards, gene harmonisation, corpus build."""

from opengem.corpus.build import CorpusManifest, build_corpus, process_card
from opengem.corpus.cards import StudyCard, load_card, load_cards, read_card, sample_metadata
from opengem.corpus.harmonize import GeneMapper, HarmonizedStudy, harmonize
from opengem.corpus.study import CorpusError, StudyTable

__all__ = [
    "CorpusError",
    "CorpusManifest",
    "GeneMapper",
    "HarmonizedStudy",
    "StudyCard",
    "StudyTable",
    "build_corpus",
    "harmonize",
    "load_card",
    "load_cards",
    "process_card",
    "read_card",
    "sample_metadata",
]
