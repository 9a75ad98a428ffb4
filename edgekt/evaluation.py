"""Accuracy and loss of a classifier on uint8 images, computed the same way in every stage."""

from __future__ import annotations

import numpy as np


def predict_logits(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Runs `model` (raw-pixel input) over `images` in batches; returns float32 logits."""
    outs = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].astype(np.float32)
        outs.append(np.asarray(model(batch, training=False), dtype=np.float32))
    if not outs:
        raise ValueError("no images to evaluate")
    return np.concatenate(outs)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def classification_metrics(logits: np.ndarray, labels: np.ndarray, class_names=None) -> dict:
    """Top-1 accuracy, cross-entropy loss and per-class accuracy from logits."""
    labels = np.asarray(labels, dtype=np.int64)
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} predictions for {labels.shape[0]} labels")
    pred = logits.argmax(axis=-1)
    correct = pred == labels
    loss = float(-log_softmax(logits.astype(np.float64))[np.arange(len(labels)), labels].mean())
    n_classes = logits.shape[-1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    per_class = {}
    for c in range(n_classes):
        mask = labels == c
        if mask.any():
            per_class[names[c]] = float(correct[mask].mean())
    return {"accuracy": float(correct.mean()), "loss": loss, "n_images": int(len(labels)), "per_class": per_class}


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
