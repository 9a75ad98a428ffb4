"""The student-teacher training model: a Keras model whose loss combines cross-entropy, KD on
logits and attention transfer, composable by weights, on every Keras backend."""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import keras
from keras import ops

from edgekt import presets
from edgekt.models import saving
from edgekt.transfer import losses


@dataclasses.dataclass(frozen=True)
class TransferConfig:
    """Weights of the knowledge-transfer loss terms.

    loss = ce_weight * CE(labels) + kd_weight * T^2 KL(teacher_T || student_T)
           + at_weight * sum over matched layers of AT(student, teacher)
           + feature_rmse_weight * sum over matched layers of RMSE(normalised maps)
           + logit_rmse_weight * RMSE(student logits, teacher logits)
           + paper_rmse_weight * (batch RMSE of the logits + sum over matched layers of the
             batch RMSE of activations L2-normalised over the batch axis, channels zero-padded)

    Attributes:
      ce_weight: cross-entropy to the labels.
      kd_weight: KD on softened logits (needs a teacher).
      temperature: KD temperature T.
      at_weight: attention transfer (needs a teacher; the AT paper's beta/2 = 500).
      at_p: exponent of the attention maps.
      feature_rmse_weight, logit_rmse_weight: RMSE terms per example on attention maps and logits
        (need a teacher).
      paper_rmse_weight: the seed paper's code's loss, one value per batch (needs a teacher):
        `losses.batch_logit_rmse` plus `losses.batch_normalized_rmse` at each matched layer.
      label_smoothing: for the cross-entropy term.
    """

    ce_weight: float = 0.1
    kd_weight: float = 0.9
    temperature: float = 4.0
    at_weight: float = 500.0
    at_p: float = 2.0
    label_smoothing: float = 0.0
    feature_rmse_weight: float = 0.0
    logit_rmse_weight: float = 0.0
    paper_rmse_weight: float = 0.0

    def __post_init__(self):
        weights = ("ce_weight", "kd_weight", "at_weight", "feature_rmse_weight", "logit_rmse_weight",
                   "paper_rmse_weight")
        presets.check_fields(self, [(getattr(self, f) >= 0 and math.isfinite(getattr(self, f)), f, ">= 0")
                                    for f in weights + ("label_smoothing",)] + [
            (self.label_smoothing < 1, "label_smoothing", "in [0, 1)"),
            (self.temperature > 0 and math.isfinite(self.temperature), "temperature", "> 0"),
            (self.at_p > 0, "at_p", "> 0"),
            (any(getattr(self, f) > 0 for f in weights), "ce_weight",
             "> 0 when every other loss weight is 0 (at least one loss term needs a positive weight)"),
        ])

    @property
    def uses_teacher(self) -> bool:
        return self.kd_weight > 0 or self.uses_features or self.logit_rmse_weight > 0

    @property
    def uses_features(self) -> bool:
        return self.at_weight > 0 or self.feature_rmse_weight > 0 or self.paper_rmse_weight > 0

    @classmethod
    def labels_only(cls, label_smoothing: float = 0.0) -> "TransferConfig":
        """Plain cross-entropy, no teacher: the no-transfer baseline."""
        return cls(ce_weight=1.0, kd_weight=0.0, at_weight=0.0, label_smoothing=label_smoothing)


def matching_feature_layers(student: keras.Model, teacher: keras.Model) -> list[str]:
    """Layers for attention transfer: for each spatial resolution, the last 4-D layer output of
    the student at that resolution that the teacher also has (same name, same H x W).

    For a pruned WRN these are the activations that end each stage (e.g.
    `stage2_block1_relu1`, `stage3_block1_relu1`, `final_relu`).
    """
    teacher_layers = {layer.name: layer for layer in teacher.layers}
    last_at: dict[tuple[int, int], str] = {}
    for layer in student.layers:
        if isinstance(layer, keras.layers.InputLayer) or isinstance(layer, keras.layers.Normalization):
            continue
        shape = getattr(layer, "output", None)
        shape = getattr(shape, "shape", None)
        if shape is None or len(shape) != 4:
            continue
        other = teacher_layers.get(layer.name)
        if other is None or tuple(other.output.shape[1:3]) != tuple(shape[1:3]):
            continue
        last_at[tuple(shape[1:3])] = layer.name
    return list(last_at.values())


class Distiller(keras.Model):
    """Trains `student` (its layers are shared, so training updates it in place) against
    one-hot labels and, optionally, a frozen `teacher`.

    `call` returns [student logits, student features...]; the loss is computed in
    `compute_loss`, so `fit` works unchanged on TensorFlow and JAX.
    """

    def __init__(self, student: keras.Model, teacher: keras.Model | None = None,
                 config: TransferConfig = TransferConfig(), feature_layers: Sequence[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        if config.uses_teacher and teacher is None:
            raise ValueError("TransferConfig with kd_weight or at_weight > 0 needs a teacher")
        self.student = student
        self.transfer_config = config
        use_at = teacher is not None and config.uses_features
        names = list(feature_layers) if feature_layers is not None else (
            matching_feature_layers(student, teacher) if use_at else [])
        self.feature_layers = names if use_at else []
        self.student_probe = keras.Model(student.input,
                                         [student.outputs[0]] + [student.get_layer(n).output for n in self.feature_layers])
        self.teacher_probe = None
        if teacher is not None:
            teacher = saving.logits_model(teacher)  # a teacher ending in softmax: its logits
            self.teacher_probe = keras.Model(
                teacher.input, [teacher.outputs[0]] + [teacher.get_layer(n).output for n in self.feature_layers])
            self.teacher_probe.trainable = False

    def call(self, x, training=False):
        out = self.student_probe(x, training=training)
        return out if isinstance(out, (list, tuple)) else [out]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        cfg = self.transfer_config
        s_logits, s_feats = y_pred[0], list(y_pred[1:])
        per_example = ops.zeros_like(ops.cast(s_logits[:, 0], "float32"))
        if cfg.ce_weight:
            per_example = per_example + cfg.ce_weight * losses.cross_entropy(y, s_logits, cfg.label_smoothing)
        if self.teacher_probe is not None and cfg.uses_teacher:
            t_out = self.teacher_probe(x, training=False)
            t_out = t_out if isinstance(t_out, (list, tuple)) else [t_out]
            t_logits = ops.stop_gradient(t_out[0])
            if cfg.kd_weight:
                per_example = per_example + cfg.kd_weight * losses.kd_loss(s_logits, t_logits, cfg.temperature)
            if cfg.logit_rmse_weight:
                per_example = per_example + cfg.logit_rmse_weight * losses.logit_rmse(s_logits, t_logits)
            if cfg.paper_rmse_weight:
                batch_term = losses.batch_logit_rmse(s_logits, t_logits)
                for s_f, t_f in zip(s_feats, t_out[1:]):
                    batch_term = batch_term + losses.batch_normalized_rmse(s_f, ops.stop_gradient(t_f))
                per_example = per_example + cfg.paper_rmse_weight * batch_term
            for s_f, t_f in zip(s_feats, t_out[1:]):
                t_f = ops.stop_gradient(t_f)
                if cfg.at_weight:
                    per_example = per_example + cfg.at_weight * losses.attention_transfer_loss(s_f, t_f, cfg.at_p)
                if cfg.feature_rmse_weight:
                    per_example = per_example + cfg.feature_rmse_weight * losses.feature_rmse(s_f, t_f, cfg.at_p)
        if sample_weight is not None:
            w = ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
            loss = ops.sum(per_example * w) / ops.maximum(ops.sum(w), 1e-12)
        else:
            loss = ops.mean(per_example)
        if self.losses:
            loss = loss + ops.sum(ops.stack([ops.cast(v, "float32") for v in self.losses]))
        return loss
