"""Transfer-stage configuration and its presets (smoke / cpu / paper): distilling a cloud
model into a student (a pruned model, or a small architecture trained from scratch)."""

from __future__ import annotations

import dataclasses
from typing import Optional

from edgekt import presets
from edgekt.errors import UserError
from edgekt.transfer.distiller import TransferConfig
from edgekt.transfer.training import FinetuneConfig


@dataclasses.dataclass(frozen=True)
class TransferStageConfig:
    """How a student learns from the teacher.

    Attributes:
      loss: the composable loss (cross-entropy, KD on logits, attention transfer).
      optimization: epochs, batch size, learning rate schedule, weight decay, precision.
      train_size, test_size: class-balanced subsets (None: the whole split).
    """

    loss: TransferConfig = TransferConfig()
    optimization: FinetuneConfig = FinetuneConfig(epochs=10)
    train_size: Optional[int] = None
    test_size: Optional[int] = None

    def __post_init__(self):
        presets.check_fields(self, [
            (self.train_size is None or self.train_size >= self.optimization.batch_size, "train_size",
             f">= batch_size ({self.optimization.batch_size})"),
            (self.test_size is None or self.test_size >= 1, "test_size", ">= 1"),
        ])


PRESETS: dict[str, TransferStageConfig] = {
    # A minute on a 2-core CPU: one epoch on a 5k-image subset.
    "smoke": TransferStageConfig(optimization=FinetuneConfig(epochs=1, batch_size=64, learning_rate=0.02),
                                 train_size=5000, test_size=1000),
    # A pruned WRN-16-2 student (~35k parameters) on a 2-core CPU in about 10 minutes.
    "cpu": TransferStageConfig(optimization=FinetuneConfig(epochs=10, learning_rate=0.02, precision="mixed_bfloat16")),
    # The paper-scale student of WRN-28-10 on a GPU.
    "paper": TransferStageConfig(optimization=FinetuneConfig(epochs=100, learning_rate=0.05, warmup_epochs=1.0,
                                                             precision="mixed_bfloat16")),
}


def preset(name: str, **overrides) -> TransferStageConfig:
    """A preset with some fields replaced; each override goes to the part that has the field
    (`temperature` to the loss, `epochs` to the optimisation, `train_size` to the stage).

    Raises:
      ValueError: unknown preset or field, or a value the configs refuse.
    """
    base = presets.choose(PRESETS, name, {})
    parts = {"loss": TransferConfig, "optimization": FinetuneConfig}
    routed: dict[str, dict] = {part: {} for part in parts}
    own = {}
    own_fields = {f.name for f in dataclasses.fields(TransferStageConfig)} - set(parts)
    for key, value in overrides.items():
        part = next((p for p, cls in parts.items() if key in {f.name for f in dataclasses.fields(cls)}), None)
        if part is not None:
            routed[part][key] = value
        elif key in own_fields:
            own[key] = value
        else:
            known = sorted(own_fields.union(*({f.name for f in dataclasses.fields(c)} for c in parts.values())))
            raise UserError(f"transfer setting {key!r}: unknown; use settings among {known}")
    return dataclasses.replace(base, loss=dataclasses.replace(base.loss, **routed["loss"]),
                               optimization=dataclasses.replace(base.optimization, **routed["optimization"]), **own)
