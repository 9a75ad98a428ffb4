"""Surgery: kept channel indices -> a new, smaller Keras model with the kept weight slices.

The caller's model is never changed. The new model has the same layers and names with fewer
filters/units; every kernel, bias, BN parameter and statistic, depthwise kernel and Dense
input row of a removed channel is dropped, so nothing is masked or zeroed. Which config key
holds a layer's width and how each weight is cut come from the layer table
(`edgekt.models.layers`).
"""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import keras
import numpy as np

from edgekt.models import layers
from edgekt.prune.graph import DependencyGraph, build_graph


def _check_keep(graph: DependencyGraph, keep: Mapping[int, Sequence[int]]) -> dict[int, np.ndarray]:
    out = {}
    for gid, idx in keep.items():
        if not 0 <= gid < len(graph.groups):
            raise ValueError(f"no group {gid}; the model has groups 0..{len(graph.groups) - 1}")
        group = graph.groups[gid]
        arr = np.unique(np.asarray(idx, dtype=np.int64))
        if len(arr) == group.channels and np.array_equal(arr, np.arange(group.channels)):
            continue
        if not group.prunable:
            raise ValueError(f"group {gid} ({group.name}) cannot be pruned: {group.reason}")
        if len(arr) == 0:
            raise ValueError(f"group {gid} ({group.name}) would keep 0 of {group.channels} channels; "
                             "every group keeps at least one")
        if arr[0] < 0 or arr[-1] >= group.channels:
            raise ValueError(f"group {gid} ({group.name}) has channels 0..{group.channels - 1}. "
                             f"Received: index {int(arr[-1] if arr[-1] >= group.channels else arr[0])}")
        out[gid] = arr
    return out


def _features(keep: np.ndarray | None, channels: int, per: int) -> np.ndarray | None:
    """Flattened-feature indices of kept channels (NHWC flatten: feature = s * C + c)."""
    if keep is None:
        return None
    if per == 1:
        return keep
    return (np.arange(per)[:, None] * channels + keep[None, :]).reshape(-1)


def prune_model(model: keras.Model, keep: Mapping[int, Sequence[int]],
                graph: DependencyGraph | None = None) -> keras.Model:
    """Builds a new model that keeps, for each group id in `keep`, only those channels.

    Args:
      model: a functional or Sequential Keras model (not changed).
      keep: group id -> channel indices to keep (groups not listed keep everything).
      graph: `build_graph(model)`, if already computed.

    Returns:
      A new functional model with the same layer names and smaller widths.

    Raises:
      ValueError: a group is unprunable, would keep no channel, or an index is out of range.
    """
    graph = graph or build_graph(model)
    base = graph.model
    keep_idx = _check_keep(graph, keep)
    config = copy.deepcopy(base.get_config())
    for layer_config in config["layers"]:
        # Layers are rebuilt from their new inputs; the stored build shapes are the old ones.
        layer_config.pop("build_config", None)
        name = layer_config["name"]
        cls = graph.layer_class[name]
        kind, out_gid = layers.LAYERS[cls], graph.output_group[name][0]
        if out_gid in keep_idx and kind.width:
            layer_config["config"][kind.width] = int(len(keep_idx[out_gid]))
        if out_gid in keep_idx and kind.config_slice:
            layer_config["config"] = kind.config_slice(layer_config["config"], keep_idx[out_gid])
    new_model = keras.Model.from_config(config)
    for name in graph.order:
        old = base.get_layer(name)
        if not old.weights:
            continue
        cls = graph.layer_class[name]
        in_keep = None
        if name in graph.input_group:
            gid, per = graph.input_group[name]
            in_keep = _features(keep_idx.get(gid), graph.groups[gid].channels, per)
        out_keep = keep_idx.get(graph.output_group[name][0])
        dm = getattr(old, "depth_multiplier", 1)
        cut = layers.LAYERS[cls].slice
        if cut is None:
            raise ValueError(f"layer {name!r} ({cls}) has weights but the layer table has no rule to cut them")
        values = [cut(v.name, np.asarray(v.numpy()), in_keep, out_keep, dm) for v in old.weights]
        new_model.get_layer(name).set_weights(values)
    return new_model
