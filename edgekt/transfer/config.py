"""Transfer-stage configuration and its presets (smoke / cpu / paper): distilling a cloud
model into a student (a pruned model, or a small architecture trained from scratch)."""

from __future__ import annotations

import dataclasses
from typing import Optional

from edgekt import presets
from edgekt.transfer.distiller import TransferConfig
from edgekt.transfer.training import FinetuneConfig

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass(frozen=True)
class TransferStageConfig:
    """How a student learns from the teacher.

    Loss (composable; a zero weight drops the term):
      ce_weight * CE(labels, label_smoothing) + kd_weight * T^2 KL(teacher_T || student_T)
      + at_weight * attention transfer (p = at_p) between stages of equal resolution.

    Optimisation: `epochs` of SGD (Nesterov, `weight_decay` L2) with `learning_rate` decayed
    by a cosine after `warmup_epochs`; `precision` is the training dtype policy (the saved
    student is float32). `train_size` / `test_size` take class-balanced subsets.
    """

    ce_weight: float = 0.1
    kd_weight: float = 0.9
    temperature: float = 4.0
    at_weight: float = 500.0
    at_p: float = 2.0
    label_smoothing: float = 0.0
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 0.05
    warmup_epochs: float = 0.0
    weight_decay: float = 5e-4
    precision: str = "float32"
    augment: bool = True
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    seed: int = 0

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"TransferStageConfig.precision must be one of {PRECISIONS}. "
                             f"Received: precision={self.precision!r}")
        if self.train_size is not None and self.train_size < self.batch_size:
            raise ValueError(f"TransferStageConfig.train_size must be >= batch_size ({self.batch_size}). "
                             f"Received: train_size={self.train_size}")
        if self.test_size is not None and self.test_size < 1:
            raise ValueError(f"TransferStageConfig.test_size must be >= 1. Received: test_size={self.test_size}")
        # The loss and optimiser configs run their own checks.
        self.transfer_config()
        self.finetune_config()

    def transfer_config(self) -> TransferConfig:
        return TransferConfig(ce_weight=self.ce_weight, kd_weight=self.kd_weight, temperature=self.temperature,
                              at_weight=self.at_weight, at_p=self.at_p, label_smoothing=self.label_smoothing)

    def finetune_config(self) -> FinetuneConfig:
        return FinetuneConfig(epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
                              warmup_epochs=self.warmup_epochs, weight_decay=self.weight_decay,
                              precision=self.precision, augment=self.augment, seed=self.seed)


PRESETS: dict[str, TransferStageConfig] = {
    # A minute on a 2-core CPU: one epoch on a 5k-image subset.
    "smoke": TransferStageConfig(epochs=1, batch_size=64, learning_rate=0.02, train_size=5000, test_size=1000),
    # A pruned WRN-16-2 student (~35k parameters) on a 2-core CPU in about 15 minutes.
    "cpu": TransferStageConfig(epochs=10, learning_rate=0.02, precision="mixed_bfloat16"),
    # The paper-scale student of WRN-28-10 on a GPU.
    "paper": TransferStageConfig(epochs=100, learning_rate=0.05, warmup_epochs=1.0, precision="mixed_bfloat16"),
}


def preset(name: str, **overrides) -> TransferStageConfig:
    """A preset with some fields replaced."""
    return presets.choose(PRESETS, name, overrides)
