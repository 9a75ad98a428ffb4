"""Classification metrics from logits (numpy only): the one place where accuracy, recall,
precision and the confusion matrix are computed, for the device app and the library alike."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted] as int64 [num_classes, num_classes]."""
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return counts


def classification_metrics(logits: np.ndarray, labels: np.ndarray, class_names: Sequence[str] | None = None,
                           groups: Mapping[str, Sequence[str]] | None = None) -> dict:
    """Top-1 accuracy, cross-entropy, per-class recall and precision, confusion matrix, and per
    group of classes: recall (accuracy on the group's images) and macro precision.

    Args:
      logits: [N, C] scores.
      labels: [N] int labels in 0..C-1.
      class_names: names of the C outputs (default "0".."C-1").
      groups: named lists of class names (e.g. old / new / unseen).

    Returns:
      accuracy, loss, n_images, per_class (recall of each class present), per_class_precision
      (None for a class never predicted), confusion (rows true, columns predicted), class_names,
      and for each group G: G_recall, G_images, G_precision (mean over the group's classes, a
      class never predicted counting as 0).

    Raises:
      ValueError: logits and labels disagree in length, or labels are out of range.
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0] if logits.ndim else 0} predictions for {labels.shape[0]} labels "
                         f"(logits shape {logits.shape})")
    if labels.size == 0:
        raise ValueError("no images to evaluate")
    n_classes = logits.shape[-1]
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must be in 0..{n_classes - 1}. Received: {int(labels.min())}..{int(labels.max())}")
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    pred = logits.argmax(axis=-1)
    correct = pred == labels
    loss = float(-log_softmax(logits.astype(np.float64))[np.arange(len(labels)), labels].mean())
    confusion = confusion_matrix(labels, pred, n_classes)
    predicted = confusion.sum(axis=0)
    per_class = {names[c]: float(correct[labels == c].mean()) for c in range(n_classes) if (labels == c).any()}
    precision = {names[c]: (float(confusion[c, c] / predicted[c]) if predicted[c] else None)
                 for c in range(n_classes)}
    out = {"accuracy": float(correct.mean()), "loss": loss, "n_images": int(len(labels)), "per_class": per_class,
           "per_class_precision": precision, "confusion": confusion.tolist(), "class_names": names}
    for group, members in (groups or {}).items():
        unknown = [c for c in members if c not in names]
        if unknown:
            raise ValueError(f"group {group!r} names classes {unknown} that are not among {names}")
        idx = [names.index(c) for c in members]
        mask = np.isin(labels, idx)
        out[f"{group}_recall"] = float(correct[mask].mean()) if mask.any() else None
        out[f"{group}_images"] = int(mask.sum())
        # A class of the group that is never predicted counts as precision 0 (not skipped).
        out[f"{group}_precision"] = float(np.mean([precision[names[i]] or 0.0 for i in idx])) if idx else None
    return out
