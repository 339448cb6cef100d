"""``predict_query`` / ``get_example_query`` / ``list_models``: on a server when one is
configured, else embedded (this process, the local bundles, no key).

A server is configured by, in order (pysynthbio 4.2's names, compat-spec §1.3):

1. the ``api_base_url`` argument;
2. per model: ``SYNTHESIZE_ENDPOINT_<MODEL>``, then ``SYNTHESIZE_API_BASE_URL__<MODEL>``
   (``<MODEL>`` = the base model id upper-cased, non-alphanumerics as ``_``; variants
   ``_reference-conditioning`` and ``_predict-metadata`` share their base's server);
3. ``SYNTHESIZE_API_BASE_URL``.

On a server, ``SYNTHESIZE_API_KEY`` is sent as a bearer token when set, and
``self_hosted=True`` (or ``SYNTHESIZE_SELF_HOSTED=1``) selects the synchronous Arrow
protocol instead of submit-poll-download. HTTP errors raise pysynthbio's exception
names (:mod:`opengem.client.errors`); embedded, a bad query raises ``QueryError``.
"""

from __future__ import annotations

import os
import re
from typing import Any

from opengem.contract import get_example_query as _local_example
from opengem.contract import list_models as _local_models

API_KEY_ENV = "SYNTHESIZE_API_KEY"
API_BASE_URL_ENV = "SYNTHESIZE_API_BASE_URL"
SELF_HOSTED_ENV = "SYNTHESIZE_SELF_HOSTED"
_VARIANT_SUFFIXES = ("_reference-conditioning", "_predict-metadata")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def per_model_env_vars(model_id: str) -> list[str]:
    """Env vars naming a server for one model, new name first."""
    base = model_id
    for suffix in _VARIANT_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    key = re.sub(r"[^A-Z0-9]+", "_", base.upper())
    return [f"SYNTHESIZE_ENDPOINT_{key}", f"{API_BASE_URL_ENV}__{key}"]


def resolve_base_url(api_base_url: str | None = None, model_id: str | None = None) -> str | None:
    """The server to use, or None for embedded mode."""
    if api_base_url:
        return api_base_url.rstrip("/")
    if model_id:
        for name in per_model_env_vars(model_id):
            if os.environ.get(name, "").strip():
                return os.environ[name].strip().rstrip("/")
    url = os.environ.get(API_BASE_URL_ENV, "").strip()
    return url.rstrip("/") or None


def self_hosted_enabled(explicit: bool | None = None) -> bool:
    return explicit if explicit is not None else _truthy(os.environ.get(SELF_HOSTED_ENV))


def _client(base_url: str) -> Any:
    from opengem.client.remote import RemoteClient

    return RemoteClient(base_url, api_key=os.environ.get(API_KEY_ENV))


def predict_query(
    query: dict[str, Any],
    model_id: str,
    auto_authenticate: bool = True,
    api_base_url: str | None = None,
    poll_interval_seconds: float = 2,
    poll_timeout_seconds: float = 900,
    return_download_url: bool = False,
    raw_response: bool = False,
    self_hosted: bool | None = None,
    registry: Any = None,
    **kwargs: Any,
) -> Any:
    """Generate with ``model_id`` — pysynthbio's ``predict_query``, on a server or embedded.

    Extra keyword arguments are merged into the query (the caller's dict is not
    modified). ``auto_authenticate`` is accepted for compatibility: opengem never
    prompts for a key. ``registry`` (embedded only) picks the local models.

    Returns
    -------
    dict
        DataFrames ``metadata``, ``expression``, ``latents`` (metadata prediction:
        also ``classifier_probs``); ``{"download_url": …}`` with
        ``return_download_url`` (hosted protocol); the result JSON with
        ``raw_response`` (self-hosted protocol: the Arrow stream's bytes).
    """
    base_url = resolve_base_url(api_base_url, model_id)
    if base_url is None:
        from opengem.client.embedded import predict_query as embedded

        return embedded(
            query,
            model_id,
            return_download_url=return_download_url,
            raw_response=raw_response,
            registry=registry,
            **kwargs,
        )
    merged = {**query, **kwargs}
    merged.setdefault("source", "opengem")
    return _client(base_url).predict_query(
        merged,
        model_id,
        self_hosted=self_hosted_enabled(self_hosted),
        poll_interval_seconds=poll_interval_seconds,
        poll_timeout_seconds=poll_timeout_seconds,
        return_download_url=return_download_url,
        raw_response=raw_response,
    )


def get_example_query(
    model_id: str, api_base_url: str | None = None, self_hosted: bool | None = None
) -> dict[str, Any]:
    """``{"example_query": {...}}`` for a model, from the server when one is configured."""
    base_url = resolve_base_url(api_base_url, model_id)
    if base_url is None:
        return _local_example(model_id)
    return _client(base_url).get_example_query(model_id)


def list_models(api_base_url: str | None = None, self_hosted: bool | None = None) -> dict[str, Any]:
    """``{"models": [{"model_id": ...}, ...]}``, from the server when one is configured."""
    base_url = resolve_base_url(api_base_url)
    if base_url is None:
        return _local_models()
    return _client(base_url).list_models()


__all__ = [
    "get_example_query",
    "list_models",
    "predict_query",
    "resolve_base_url",
    "self_hosted_enabled",
]
