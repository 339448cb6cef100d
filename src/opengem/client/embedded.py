"""pysynthbio's functions, run in this process on the local bundles (no server, no key)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pandas as pd

from opengem.engine.registry import ModelRegistry, default_registry
from opengem.engine.results import ExpressionResult, MetadataResult, Result


def run_query(
    query: dict[str, Any], model_id: str, registry: ModelRegistry | None = None
) -> Result:
    """Validate a query against the model's vocabulary and run it."""
    registry = registry or default_registry()
    normalised = registry.validate(model_id, query)
    return registry.predictor(model_id).predict(normalised)


def predict_query(
    query: dict[str, Any],
    model_id: str,
    auto_authenticate: bool = True,
    api_base_url: str | None = None,
    poll_interval_seconds: int = 2,
    poll_timeout_seconds: int = 900,
    return_download_url: bool = False,
    raw_response: bool = False,
    registry: ModelRegistry | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Generate with ``model_id`` — pysynthbio's ``predict_query``, embedded.

    Extra keyword arguments are merged into the query, as pysynthbio does; the
    caller's dict is not modified. Polling and authentication arguments are
    accepted for compatibility and have no effect in embedded mode.

    Returns
    -------
    dict
        DataFrames ``metadata``, ``expression`` (int64, gene ids as columns) and
        ``latents`` (predict-metadata models: also ``classifier_probs``), or the
        result JSON when ``raw_response=True``.
    """
    if return_download_url:
        raise ValueError(
            "return_download_url needs a server (embedded mode has no download "
            "URL); set api_base_url or SYNTHESIZE_API_BASE_URL"
        )
    merged = copy.copy(query)
    merged.update(kwargs)
    result = run_query(merged, model_id, registry)
    if raw_response:
        return result.to_json()
    return result.to_frames()


def to_anndata(result: dict[str, Any] | Result) -> Any:
    """An AnnData of generated expression: ``var`` gene ids and symbols, ``obs`` metadata,
    latents in ``obsm`` (``X_biological``…), classifier probabilities in ``uns``."""
    import anndata

    from opengem.ontology.genes import default_gene_space

    if isinstance(result, ExpressionResult | MetadataResult):
        frames = result.to_frames()
    else:
        frames = result
    expression: pd.DataFrame = frames["expression"]
    genes = default_gene_space()
    var = pd.DataFrame(
        {"symbol": [genes.symbol_of(g) or "" for g in expression.columns]},
        index=pd.Index([str(g) for g in expression.columns], name="gene_id"),
    )
    obs = frames["metadata"].astype(str).copy()
    obs.index = [f"sample_{i + 1}" for i in range(len(obs))]
    adata = anndata.AnnData(X=expression.to_numpy(dtype=np.int64), obs=obs, var=var)
    latents = frames.get("latents")
    if latents is not None and len(latents):
        for group in latents.columns:
            adata.obsm[f"X_{group}"] = np.array(latents[group].tolist(), dtype=np.float32)
    if "classifier_probs" in frames:
        adata.uns["classifier_probs"] = {
            field: pd.DataFrame(list(frames["classifier_probs"][field])).to_numpy().tolist()
            for field in frames["classifier_probs"].columns
        }
    return adata
