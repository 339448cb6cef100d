"""Training: config, corpus batches, the Lightning plan (lazy), ``train_bundle``.

Importing this package does not import Lightning; :func:`train_bundle` does.
"""

from opengem.train.config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config", "train_bundle"]


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    if name == "train_bundle":
        from opengem.train.fit import train_bundle

        return train_bundle
    raise AttributeError(name)
