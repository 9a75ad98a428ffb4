"""SGD with L2 weight decay added to the gradient, and the WRN learning-rate schedules.

Keras's `weight_decay=` is decoupled (AdamW-style: w -= lr * wd * w, outside momentum);
the WRN recipe (lr 0.1, Nesterov 0.9, wd 5e-4) uses L2 decay inside the gradient, which
momentum amplifies. `L2SGD` reproduces the recipe exactly, on every Keras backend.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="edgekt")
class L2SGD(keras.optimizers.SGD):
    """SGD whose gradient gets `l2 * w` added for every kernel (rank >= 2 weights).

    Biases and BatchNorm scales/offsets (rank 1) are not decayed.
    """

    def __init__(self, learning_rate=0.1, momentum=0.9, nesterov=True, l2=5e-4, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov, **kwargs)
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0. Received: l2={l2}")
        self.l2 = float(l2)

    def update_step(self, gradient, variable, learning_rate):
        if self.l2 and len(variable.shape) >= 2:
            gradient = ops.add(ops.cast(gradient, variable.dtype), ops.multiply(variable, self.l2))
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["l2"] = self.l2
        return config


def learning_rate_schedule(kind: str, base_lr: float, total_steps: int, *, warmup_steps: int = 0,
                           milestones: tuple[float, ...] = (0.3, 0.6, 0.8), gamma: float = 0.2,
                           ) -> keras.optimizers.schedules.LearningRateSchedule | float:
    """A learning-rate schedule over `total_steps` optimizer steps.

    Args:
      kind: "cosine" (cosine decay to 0 after a linear warm-up), "step" (the WRN paper's
        multiply-by-`gamma` at `milestones`, given as fractions of training: 60/120/160 of
        200 epochs is (0.3, 0.6, 0.8)), or "constant".
      base_lr: peak learning rate.
      total_steps: steps of the whole run.
      warmup_steps: linear warm-up from 0 (cosine only).
      milestones: fractions of `total_steps` where the step schedule decays.
      gamma: decay factor of the step schedule.

    Raises:
      ValueError: unknown kind or inconsistent steps.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1. Received: total_steps={total_steps}")
    if kind == "constant":
        return float(base_lr)
    if kind == "cosine":
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"warmup_steps must be in [0, {total_steps}). Received: {warmup_steps}")
        if warmup_steps == 0:
            return keras.optimizers.schedules.CosineDecay(base_lr, total_steps, alpha=0.0)
        return keras.optimizers.schedules.CosineDecay(0.0, total_steps - warmup_steps, alpha=0.0,
                                                      warmup_target=base_lr, warmup_steps=warmup_steps)
    if kind == "step":
        if sorted(milestones) != list(milestones) or not all(0 < m < 1 for m in milestones):
            raise ValueError(f"milestones must be increasing fractions in (0, 1). Received: {milestones}")
        boundaries = [max(1, int(round(m * total_steps))) for m in milestones]
        values = [base_lr * gamma ** i for i in range(len(boundaries) + 1)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    raise ValueError(f"unknown learning-rate schedule; expected 'cosine', 'step' or 'constant'. Received: {kind!r}")
