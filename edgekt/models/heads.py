"""Classifier heads: keep a subset of a model's outputs (e.g. the classes a device starts with)."""

from __future__ import annotations

import copy
from typing import Sequence

import keras
import numpy as np

from edgekt.models import graph as graph_walk


def select_outputs(model: keras.Model, indices: Sequence[int]) -> keras.Model:
    """A new model whose classifier (the last Dense layer) keeps only `indices` of its outputs,
    in that order, with the matching kernel columns and biases. The caller's model is unchanged.

    Raises:
      ValueError: no Dense classifier, or an index out of range.
    """
    graph = graph_walk.walk(model)
    head = graph_walk.classifier(graph)
    units = int(graph.model.get_layer(head).units)
    idx = np.asarray(list(indices), dtype=np.int64)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= units:
        raise ValueError(f"output indices must be in 0..{units - 1}. Received: {list(indices)}")
    config = copy.deepcopy(graph.model.get_config())
    for layer_config in config["layers"]:
        layer_config.pop("build_config", None)
        if layer_config["name"] == head:
            layer_config["config"]["units"] = int(idx.size)
    new = keras.Model.from_config(config)
    for layer in graph.model.layers:
        if not layer.weights:
            continue
        values = [np.asarray(v.numpy()) for v in layer.weights]
        if layer.name == head:
            values = [v[:, idx] if v.ndim == 2 else v[idx] for v in values]
        new.get_layer(layer.name).set_weights(values)
    return new


def reinitialized(model: keras.Model, seed: int = 0, num_outputs: int | None = None,
                  mean_std: tuple | None = None) -> keras.Model:
    """The same architecture with fresh initial weights (the from-scratch baseline), optionally
    with a classifier (the last Dense layer) of `num_outputs` units and, with `mean_std`
    ((mean, std) per channel), input normalisation constants of its own instead of the model's
    (which come from the images it was trained on)."""
    keras.utils.set_random_seed(seed)
    config = copy.deepcopy(model.get_config())
    head = None
    if num_outputs is not None:
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1. Received: {num_outputs}")
        head = graph_walk.classifier(graph_walk.walk(model))
    for layer_config in config["layers"]:
        layer_config.pop("build_config", None)
        if head is not None and layer_config["name"] == head:
            layer_config["config"]["units"] = int(num_outputs)
        if mean_std is not None and layer_config["class_name"] == "Normalization":
            layer_config["config"]["mean"] = [float(m) for m in mean_std[0]]
            layer_config["config"]["variance"] = [float(v) ** 2 for v in mean_std[1]]
    return type(model).from_config(config)
