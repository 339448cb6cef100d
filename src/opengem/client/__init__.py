"""pysynthbio-compatible client functions (embedded by default)."""

from opengem.client.embedded import predict_query, run_query, to_anndata

__all__ = ["predict_query", "run_query", "to_anndata"]
