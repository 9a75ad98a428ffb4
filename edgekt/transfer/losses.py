"""Knowledge-transfer losses (keras.ops, every backend): cross-entropy, KD on softened
logits (Hinton et al., 2015), attention transfer (Zagoruyko & Komodakis, 2017), and the RMSE
terms of the seed paper (Zhao, Chen & Zhao, 2022): between L2-normalised activation maps at
matching stages, and between logits.

All return one value per example, so callers can weight examples (padding masks) and average,
except the `batch_*` terms of the seed paper's code, which are one value per batch.
"""

from __future__ import annotations

from keras import ops


def cross_entropy(targets, logits, label_smoothing: float = 0.0):
    """Softmax cross-entropy per example. `targets` are one-hot (or soft) [B, K]."""
    targets = ops.cast(targets, "float32")
    if label_smoothing:
        k = ops.cast(ops.shape(targets)[-1], "float32")
        targets = targets * (1.0 - label_smoothing) + label_smoothing / k
    return -ops.sum(targets * ops.log_softmax(ops.cast(logits, "float32"), axis=-1), axis=-1)


def kd_loss(student_logits, teacher_logits, temperature: float = 4.0):
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)) per example.

    The T^2 factor keeps gradient magnitudes comparable across temperatures.
    """
    t = float(temperature)
    s_log = ops.log_softmax(ops.cast(student_logits, "float32") / t, axis=-1)
    t_log = ops.log_softmax(ops.cast(teacher_logits, "float32") / t, axis=-1)
    t_prob = ops.exp(t_log)
    return (t * t) * ops.sum(t_prob * (t_log - s_log), axis=-1)


def soft_target_loss(student_logits, soft_targets, temperature: float = 1.0):
    """Cross-entropy to teacher probabilities given as numbers (no teacher model at hand):
    -sum p_t * log softmax(student / T), times T^2."""
    t = float(temperature)
    s_log = ops.log_softmax(ops.cast(student_logits, "float32") / t, axis=-1)
    return -(t * t) * ops.sum(ops.cast(soft_targets, "float32") * s_log, axis=-1)


def attention_map(features, p: float = 2.0):
    """Spatial attention of [B, H, W, C] features: mean over channels of |A|^p, flattened
    to [B, H*W] and L2-normalised per example."""
    a = ops.mean(ops.power(ops.abs(ops.cast(features, "float32")), p), axis=-1)
    a = ops.reshape(a, (ops.shape(a)[0], -1))
    return a / (ops.sqrt(ops.sum(a * a, axis=-1, keepdims=True)) + 1e-12)


def attention_transfer_loss(student_features, teacher_features, p: float = 2.0):
    """Mean squared difference of normalised attention maps per example (the maps must have
    the same spatial size; channel counts may differ)."""
    diff = attention_map(student_features, p) - attention_map(teacher_features, p)
    return ops.mean(diff * diff, axis=-1)


def feature_rmse(student_features, teacher_features, p: float = 2.0):
    """Root-mean-square difference of the L2-normalised activation maps (channel mean of
    |A|^p, so channel counts may differ) per example."""
    diff = attention_map(student_features, p) - attention_map(teacher_features, p)
    return ops.sqrt(ops.mean(diff * diff, axis=-1) + 1e-12)


def logit_rmse(student_logits, teacher_logits):
    """Root-mean-square difference of the logits per example."""
    diff = ops.cast(student_logits, "float32") - ops.cast(teacher_logits, "float32")
    return ops.sqrt(ops.mean(diff * diff, axis=-1) + 1e-12)


def _match_channels(a, b):
    """Zero-pads the narrower of two [..., C] tensors to the other's channel count (the seed
    paper's code pads the student)."""
    ca, cb = int(a.shape[-1]), int(b.shape[-1])
    pad = [[0, 0]] * (len(a.shape) - 1)
    if ca < cb:
        a = ops.pad(a, pad + [[0, cb - ca]])
    elif cb < ca:
        b = ops.pad(b, pad + [[0, ca - cb]])
    return a, b


def batch_normalized_rmse(student_features, teacher_features):
    """The seed paper's code's feature term: each activation L2-normalised over the batch axis
    (every unit's vector of activations across the batch has norm 1), the narrower tensor's
    channels zero-padded, then one RMSE over the whole batch. One value per batch."""

    def normalise(x):
        x = ops.cast(x, "float32")
        return x / ops.sqrt(ops.maximum(ops.sum(x * x, axis=0, keepdims=True), 1e-12))

    s, t = _match_channels(normalise(student_features), normalise(teacher_features))
    diff = t - s
    return ops.sqrt(ops.mean(diff * diff) + 1e-12)


def batch_logit_rmse(student_logits, teacher_logits):
    """The seed paper's code's logit term: one RMSE over every logit of the batch."""
    diff = ops.cast(student_logits, "float32") - ops.cast(teacher_logits, "float32")
    return ops.sqrt(ops.mean(diff * diff) + 1e-12)
