"""Small user-style Keras models for the pruning and export tests (not WRN)."""

from __future__ import annotations

import keras
import numpy as np

from edgekt.models.user_style import mobilenet_style, resnet_style, vgg_style  # noqa: F401 (re-exported)


def randomize_batchnorm(model: keras.Model, seed: int = 0) -> None:
    """Gives every BN layer non-trivial parameters and statistics."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, v.shape) if "variance" in v.name or "gamma" in v.name
                               else rng.normal(0, 0.2, v.shape) for v in layer.weights])


def zero_channels(model: keras.Model, graph, group_id: int, channels) -> None:
    """Makes `channels` of a group identically zero everywhere (producers' filters and biases,
    BN scale/offset, depthwise kernels) and unread (consumers' input rows), so removing them
    must not change the output."""
    group = graph.groups[group_id]
    for name, per in group.consumers:
        layer = model.get_layer(name)
        rows = (np.arange(per)[:, None] * group.channels + np.asarray(channels)[None, :]).reshape(-1)
        values = []
        for v in layer.weights:
            a = np.array(v.numpy())
            if v.name in ("kernel", "pointwise_kernel") and a.ndim == 4:
                a[:, :, rows, :] = 0
            elif v.name == "depthwise_kernel":
                a[:, :, rows, :] = 0
            elif v.name == "kernel" and a.ndim == 2:
                a[rows, :] = 0
            values.append(a)
        layer.set_weights(values)
    for name in group.producers + group.passthrough:
        layer = model.get_layer(name)
        cls = type(layer).__name__
        values = []
        for v in layer.weights:
            a = np.array(v.numpy())
            if cls == "DepthwiseConv2D" and v.name == "kernel":
                a[:, :, channels, :] = 0
            elif v.name in ("kernel", "pointwise_kernel", "bias", "gamma", "beta"):
                a[..., channels] = 0
            values.append(a)
        layer.set_weights(values)
