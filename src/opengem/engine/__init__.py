"""Inference: bundles, the predictor for every task, results, the model registry."""

from opengem.engine.bundle import Bundle, BundleError, load_bundle, save_bundle
from opengem.engine.predictor import Predictor
from opengem.engine.registry import ModelRegistry, default_models_dir, default_registry
from opengem.engine.results import ExpressionResult, MetadataResult, Result

__all__ = [
    "Bundle",
    "BundleError",
    "ExpressionResult",
    "MetadataResult",
    "ModelRegistry",
    "Predictor",
    "Result",
    "default_models_dir",
    "default_registry",
    "load_bundle",
    "save_bundle",
]
