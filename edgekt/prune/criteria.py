"""Filter importance criteria: pure functions on numpy arrays, and their model-level drivers.

- attention: a channel's activation-based attention, the mean over calibration images of
  sum_{h,w} |A_c(h,w)|^p (p = 2 by default), measured on every activation of the group.
- l1: the L1 norm of the filters that create the channel (Li et al., 2017), a baseline.

Scores are normalised per layer (mean 1 by default) so that they compare across layers,
then averaged over the layers of a dependency group.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from edgekt.models import layers
from edgekt.prune.graph import DependencyGraph, Group

CRITERIA = ("attention", "l1")
NORMALIZATIONS = ("mean", "max", "l2", "none")


def attention(activations: np.ndarray, p: float = 2.0) -> np.ndarray:
    """Per-channel attention of a batch: mean over images of sum over positions of |A|^p.

    Args:
      activations: [N, H, W, C] (or [N, C] for dense features).
      p: the exponent.

    Returns:
      [C] scores.
    """
    a = np.abs(np.asarray(activations, dtype=np.float64)) ** p
    if a.ndim > 2:
        a = a.reshape(a.shape[0], -1, a.shape[-1]).sum(axis=1)
    return a.mean(axis=0)


def l1_norm(kernel: np.ndarray) -> np.ndarray:
    """L1 norm of each output filter of a kernel whose last axis is the output channel."""
    k = np.abs(np.asarray(kernel, dtype=np.float64))
    return k.reshape(-1, k.shape[-1]).sum(axis=0)


def normalize(scores: np.ndarray, method: str = "mean") -> np.ndarray:
    """Scales one layer's scores so that layers compare: "mean" (average channel = 1),
    "max" (largest = 1), "l2" (unit L2 norm) or "none"."""
    scores = np.asarray(scores, dtype=np.float64)
    if method == "none":
        return scores
    if method == "mean":
        denom = scores.mean()
    elif method == "max":
        denom = scores.max()
    elif method == "l2":
        denom = np.linalg.norm(scores)
    else:
        raise ValueError(f"unknown normalization; expected one of {NORMALIZATIONS}. Received: {method!r}")
    return scores / denom if denom > 0 else np.zeros_like(scores)


def aggregate(layer_scores: Sequence[np.ndarray]) -> np.ndarray:
    """A group's score: the mean of its layers' normalised scores."""
    if not layer_scores:
        raise ValueError("a group needs at least one scored layer")
    return np.mean(np.stack(layer_scores), axis=0)


def attention_layers(group: Group, graph: DependencyGraph) -> list[str]:
    """The layers whose outputs are a group's activations: its activation layers (ReLU...)
    if it has any, else the outputs of its producers and merges."""
    acts = [n for n in group.tensors if graph.layer_class[n] in layers.ACTIVATIONS]
    if acts:
        return acts
    return [n for n in group.tensors if n in group.producers or graph.layer_class[n] in layers.MERGES]


def attention_importance(graph: DependencyGraph, images: np.ndarray, p: float = 2.0, normalization: str = "mean",
                         batch_size: int = 64) -> dict[int, np.ndarray]:
    """Attention scores of every prunable group, from a calibration set.

    Args:
      graph: the model's dependency graph.
      images: uint8/float [N, H, W, C] calibration images (raw pixels, as the model takes).
      p: attention exponent.
      normalization: per-layer normalisation (see `normalize`).
      batch_size: images per forward pass.

    Returns:
      group id -> [channels] scores.
    """
    groups = graph.prunable_groups()
    capture = {g.id: attention_layers(g, graph) for g in groups}
    names = sorted({n for layers in capture.values() for n in layers}, key=graph.order.index)
    if len(images) == 0:
        raise ValueError("attention importance needs at least one calibration image")
    model = graph.model
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    sums = {n: 0.0 for n in names}
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start:start + batch_size], dtype=np.float32)
        outs = probe(batch, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for n, out in zip(names, outs):
            sums[n] = sums[n] + attention(keras.ops.convert_to_numpy(out), p) * len(batch)
    per_layer = {n: normalize(sums[n] / len(images), normalization) for n in names}
    return {gid: aggregate([per_layer[n] for n in layers]) for gid, layers in capture.items()}


def l1_importance(graph: DependencyGraph, normalization: str = "mean") -> dict[int, np.ndarray]:
    """L1-norm scores of every prunable group from its producers' output filters."""
    out = {}
    for g in graph.prunable_groups():
        per_layer = []
        for name in g.producers:
            layer = graph.model.get_layer(name)
            weights = {v.name: np.asarray(v.numpy()) for v in layer.weights}
            kernel = weights.get("pointwise_kernel", weights.get("kernel"))
            per_layer.append(normalize(l1_norm(kernel), normalization))
        out[g.id] = aggregate(per_layer)
    return out


def importance(graph: DependencyGraph, criterion: str, images: np.ndarray | None = None, p: float = 2.0,
               normalization: str = "mean", batch_size: int = 64) -> dict[int, np.ndarray]:
    """Scores of every prunable group's channels under `criterion` ("attention" or "l1")."""
    if criterion == "attention":
        if images is None:
            raise ValueError("the attention criterion needs calibration images")
        return attention_importance(graph, images, p=p, normalization=normalization, batch_size=batch_size)
    if criterion == "l1":
        return l1_importance(graph, normalization=normalization)
    raise ValueError(f"unknown criterion; expected one of {CRITERIA}. Received: {criterion!r}")
