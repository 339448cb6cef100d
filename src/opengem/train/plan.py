"""The Lightning training plan (imported lazily: Lightning costs seconds to import)."""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch

from opengem.model import GEMModule
from opengem.train.config import TrainingSection


class TrainingPlan(L.LightningModule):
    """Optimises a :class:`GEMModule` with KL warm-up; logs every loss term."""

    def __init__(self, module: GEMModule, training: TrainingSection, steps_per_epoch: int) -> None:
        super().__init__()
        self.module = module
        self.training_cfg = training
        self.steps_per_epoch = max(1, steps_per_epoch)

    def kl_weight(self) -> float:
        warm = self.training_cfg.kl_warmup_epochs
        full = self.module.config.kl_weight
        if warm <= 0:
            return full
        progress = (
            self.current_epoch + self.global_step % self.steps_per_epoch / self.steps_per_epoch
        ) / warm
        return full * min(1.0, progress)

    def _step(self, batch: dict[str, Any], kl_weight: float) -> Any:
        return self.module.loss(
            batch["x"], batch["meta"], batch["labels"], batch["genes"], kl_weight=kl_weight
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self._step(batch, self.kl_weight())
        n = batch["x"].shape[0]
        self.log(
            "train_loss",
            out.loss,
            batch_size=n,
            on_epoch=True,
            on_step=False,
            prog_bar=True,
            sync_dist=True,
        )
        return out.loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self._step(batch, self.module.config.kl_weight)
        n = batch["x"].shape[0]
        self.log("val_loss", out.loss, batch_size=n, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log(
            "val_reconstruction",
            out.reconstruction / batch["x"].shape[1],
            batch_size=n,
            on_epoch=True,
            sync_dist=True,
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.module.parameters(),
            lr=self.training_cfg.learning_rate,
            weight_decay=self.training_cfg.weight_decay,
        )


class KeepBest(L.Callback):
    """Keeps the weights of the epoch with the lowest validation loss, in memory."""

    def __init__(self, monitor: str = "val_loss") -> None:
        self.monitor = monitor
        self.best = float("inf")
        self.best_epoch = -1
        self.state: dict[str, torch.Tensor] | None = None

    def on_validation_epoch_end(self, trainer: L.Trainer, plan: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and float(value) < self.best:
            self.best = float(value)
            self.best_epoch = trainer.current_epoch
            self.state = copy.deepcopy(plan.module.state_dict())


class EpochLog(L.Callback):
    """One line per epoch on stderr (for logs where a progress bar is off)."""

    def on_validation_epoch_end(self, trainer: L.Trainer, plan: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        import sys

        m = trainer.callback_metrics
        parts = [f"{k} {float(v):.4f}" for k, v in sorted(m.items()) if k.endswith("loss")]
        print(f"epoch {trainer.current_epoch}: " + ", ".join(parts), file=sys.stderr, flush=True)
