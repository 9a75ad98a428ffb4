"""Accuracy and loss of a classifier on uint8 images, computed the same way in every stage."""

from __future__ import annotations

import numpy as np
from tflite_runtime_app.metrics import classification_metrics, log_softmax  # one implementation

__all__ = ["classification_metrics", "evaluate", "inference_latency_ms", "log_softmax", "predict_logits"]


def predict_logits(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Runs `model` (raw-pixel input) over `images` in batches; returns float32 logits (of a
    model ending in softmax, the logits before it: `saving.logits_model`)."""
    from edgekt.models import saving

    if hasattr(model, "get_config") and saving.ends_in_softmax(model):
        model = saving.logits_model(model)
    outs = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].astype(np.float32)
        outs.append(np.asarray(model(batch, training=False), dtype=np.float32))
    if not outs:
        raise ValueError("no images to evaluate")
    return np.concatenate(outs)


def evaluate(model, images: np.ndarray, labels: np.ndarray, class_names=None, batch_size: int = 256) -> dict:
    """`classification_metrics` of `model` on `images`."""
    return classification_metrics(predict_logits(model, images, batch_size), labels, class_names)


def inference_latency_ms(model, input_shape: tuple[int, ...], batch_size: int = 1, repeats: int = 30,
                         warmup: int = 3) -> float:
    """Median wall time of one forward pass of a batch, in milliseconds (Keras, this host)."""
    import time

    x = np.random.default_rng(0).uniform(0, 255, (batch_size, *input_shape)).astype(np.float32)
    call = model.predict_on_batch
    for _ in range(warmup):
        call(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)
