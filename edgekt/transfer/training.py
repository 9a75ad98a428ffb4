"""Fine-tuning a student with knowledge transfer (used after each pruning step and by the
transfer stage)."""

from __future__ import annotations

import dataclasses
import math

import keras

from edgekt import presets
from edgekt.data import Split, pipeline
from edgekt.models import saving
from edgekt.train.config import PRECISIONS
from edgekt.train.optimizers import L2SGD, learning_rate_schedule
from edgekt.transfer.distiller import Distiller, TransferConfig


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Optimisation of one fine-tuning run.

    Attributes:
      epochs: passes over the training split.
      batch_size: batch size.
      learning_rate: peak learning rate (cosine decay to 0 over the run after warm-up).
      warmup_epochs: linear warm-up.
      weight_decay: L2 on kernels.
      momentum, nesterov: SGD momentum.
      precision: Keras dtype policy for training ("mixed_bfloat16" is ~2x faster on CPUs with
        AVX512-BF16); the returned model is float32.
      augment: pad-4 crop + flip.
      mix: "none", "mixup" or "cutmix" within each batch (edgekt.data.pipeline.mix_batch).
      seed: data order and augmentation.
    """

    epochs: int = 1
    batch_size: int = 128
    learning_rate: float = 0.05
    warmup_epochs: float = 0.0
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = True
    precision: str = "float32"
    augment: bool = True
    mix: str = "none"
    seed: int = 0

    def __post_init__(self):
        presets.check_fields(self, [
            (self.epochs >= 1, "epochs", ">= 1"),
            (self.batch_size >= 1, "batch_size", ">= 1"),
            (self.learning_rate > 0 and math.isfinite(self.learning_rate), "learning_rate", "> 0"),
            (self.warmup_epochs >= 0, "warmup_epochs", ">= 0"),
            (self.weight_decay >= 0 and math.isfinite(self.weight_decay), "weight_decay", ">= 0"),
            (0 <= self.momentum < 1, "momentum", "in [0, 1)"),
            (self.precision in PRECISIONS, "precision", f"one of {PRECISIONS}"),
            (self.mix in ("none", "mixup", "cutmix"), "mix", "'none', 'mixup' or 'cutmix'"),
        ])


def fit_student(student: keras.Model, train: Split, *, teacher: keras.Model | None = None,
                transfer: TransferConfig = TransferConfig(), config: FinetuneConfig = FinetuneConfig(),
                verbose: int | str = 0) -> tuple[keras.Model, list[dict]]:
    """Trains a copy of `student` on `train` (labels, and the teacher if the transfer config
    uses one).

    Returns:
      (the trained student as a new float32 model, per-epoch logs).
    """
    if not transfer.uses_teacher:
        teacher = None
    num_classes = int(student.output_shape[-1])
    steps = pipeline.steps_per_epoch(len(train.labels), config.batch_size)
    if steps < 1:
        raise ValueError(f"the training split has {len(train.labels)} images, fewer than one batch of "
                         f"{config.batch_size}")
    work = saving.with_dtype_policy(student, config.precision)
    teacher_work = saving.with_dtype_policy(teacher, config.precision) if teacher is not None else None
    distiller = Distiller(work, teacher_work, transfer)
    total = config.epochs * steps
    lr = learning_rate_schedule("cosine", config.learning_rate, total,
                                warmup_steps=int(round(config.warmup_epochs * steps)))
    distiller.compile(optimizer=L2SGD(learning_rate=lr, momentum=config.momentum, nesterov=config.nesterov,
                                      l2=config.weight_decay), jit_compile=False)
    ds = pipeline.train_dataset(train.images, train.labels, batch_size=config.batch_size, num_classes=num_classes,
                                epochs=config.epochs, seed=config.seed, augment=config.augment,
                                mix=config.mix)
    history = distiller.fit(ds, epochs=config.epochs, steps_per_epoch=steps, verbose=verbose, shuffle=False)
    logs = [{k: float(v[i]) for k, v in history.history.items()} for i in range(len(history.epoch))]
    return saving.float32_copy(work), logs
