"""Cloud-stage training configuration and its presets (smoke / cpu / paper)."""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

from edgekt import presets

SCHEDULES = ("cosine", "step", "constant")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass(frozen=True)
class CloudTrainConfig:
    """How the cloud (teacher) model is trained.

    Attributes:
      depth, width, dropout: the WRN-depth-width architecture.
      epochs, batch_size: length of training and global batch size.
      learning_rate, schedule, warmup_epochs, milestones, gamma: peak LR and its schedule
        ("cosine" with linear warm-up, or the WRN paper's "step" decay by `gamma` at the
        `milestones` fractions of training, or "constant").
      momentum, nesterov, weight_decay: SGD with L2 decay on kernels (the WRN recipe).
      label_smoothing: 0 disables.
      train_size: a class-balanced subset of the training split (None: all of it).
      val_size: class-balanced images held out of the training split for validation;
        later stages choose with this split, never with the test split.
      test_size: a class-balanced subset of the test split (None: all of it).
      device_pool_size: class-balanced images held out of the training split (after the
        validation hold-out) for the on-device learning experiments: the cloud never trains
        on them, so its soft labels on them are honest. Recorded in metrics.json.
      augment: pad-4 crop + horizontal flip.
      precision: Keras dtype policy; "mixed_bfloat16" doubles speed on CPUs with AVX512-BF16
        and on GPUs. The saved model is always float32.
      jit_compile: XLA compilation of the train step ("auto" lets Keras decide; on a CPU,
        TensorFlow runs these conv nets faster without it).
      seed: initialisation, validation split and data order.
    """

    depth: int = 16
    width: int = 2
    dropout: float = 0.0
    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 0.1
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    milestones: tuple[float, ...] = (0.3, 0.6, 0.8)
    gamma: float = 0.2
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    train_size: Optional[int] = None
    val_size: int = 5000
    test_size: Optional[int] = None
    device_pool_size: int = 0
    augment: bool = True
    precision: str = "float32"
    jit_compile: Union[bool, str] = False
    seed: int = 0

    def __post_init__(self):
        checks = [
            (self.depth >= 10 and (self.depth - 4) % 6 == 0, "depth", "6n+4 >= 10"),
            (self.width >= 1, "width", ">= 1"),
            (0.0 <= self.dropout < 1.0, "dropout", "in [0, 1)"),
            (self.epochs >= 1, "epochs", ">= 1"),
            (self.batch_size >= 1, "batch_size", ">= 1"),
            (self.learning_rate > 0, "learning_rate", "> 0"),
            (self.schedule in SCHEDULES, "schedule", f"one of {SCHEDULES}"),
            (0 <= self.warmup_epochs < self.epochs, "warmup_epochs", "in [0, epochs)"),
            (0 < self.gamma <= 1, "gamma", "in (0, 1]"),
            (0 <= self.momentum < 1, "momentum", "in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", ">= 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "in [0, 1)"),
            (self.train_size is None or self.train_size >= self.batch_size, "train_size",
             f">= batch_size ({self.batch_size})", "pass a smaller --batch_size or a larger --train_size"),
            (self.val_size >= 0, "val_size", ">= 0"),
            (self.test_size is None or self.test_size >= 1, "test_size", ">= 1"),
            (self.device_pool_size >= 0, "device_pool_size", ">= 0"),
            (self.precision in PRECISIONS, "precision", f"one of {PRECISIONS}"),
            (self.jit_compile in (True, False, "auto"), "jit_compile", "True, False or 'auto'"),
        ]
        presets.check_fields(self, checks)

    @property
    def architecture(self) -> str:
        return f"WRN-{self.depth}-{self.width}"


PRESETS: dict[str, CloudTrainConfig] = {
    # Minutes on a 2-core CPU: a small WRN on a 10k-image subset.
    "smoke": CloudTrainConfig(depth=16, width=1, epochs=5, batch_size=64, learning_rate=0.05,
                              train_size=10000, val_size=1000, warmup_epochs=0.5),
    # The best teacher a 2-core CPU trains in about an hour (bf16 doubles the speed there).
    "cpu": CloudTrainConfig(depth=16, width=2, epochs=40, batch_size=128, learning_rate=0.1,
                            precision="mixed_bfloat16", warmup_epochs=1.0),
    # The WRN paper's WRN-28-10 recipe: 200 epochs, step decay at 60/120/160, dropout 0.3 (GPU).
    "paper": CloudTrainConfig(depth=28, width=10, dropout=0.3, epochs=200, batch_size=128, learning_rate=0.1,
                              schedule="step", milestones=(0.3, 0.6, 0.8), gamma=0.2, warmup_epochs=0.0,
                              precision="mixed_bfloat16", jit_compile="auto"),
}


def preset(name: str, **overrides) -> CloudTrainConfig:
    """A preset with some fields replaced."""
    return presets.choose(PRESETS, name, overrides)
