"""Parameter and FLOP counts of Keras models, layer by layer.

Conventions (those of the pruning literature, e.g. WRN-28-10 = 36.5M params, 5.25 GFLOPs):
- `params` counts learnable values: kernels, biases, BN gamma/beta. BN moving statistics
  and the input `Normalization` constants are state, not parameters.
- `flops` counts multiply-accumulates of one image's forward pass in Conv2D,
  DepthwiseConv2D, SeparableConv2D and Dense layers; element-wise layers (BN, ReLU, Add,
  pooling) are listed with 0 and are negligible next to them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import keras


@dataclasses.dataclass(frozen=True)
class LayerCost:
    name: str
    kind: str
    output_shape: tuple
    params: int
    flops: int


@dataclasses.dataclass(frozen=True)
class ModelCost:
    params: int
    flops: int
    layers: tuple[LayerCost, ...]

    def table(self) -> str:
        """A readable per-layer table."""
        rows = [f"{'layer':<32} {'kind':<24} {'output':<20} {'params':>10} {'FLOPs':>14}"]
        for c in self.layers:
            rows.append(f"{c.name:<32} {c.kind:<24} {str(c.output_shape):<20} {c.params:>10,} {c.flops:>14,}")
        rows.append(f"{'total':<32} {'':<24} {'':<20} {self.params:>10,} {self.flops:>14,}")
        return "\n".join(rows)


def _learnable(layer) -> int:
    return int(sum(math.prod(v.shape) for v in layer.weights if v.trainable))


def _spatial(shape) -> int:
    return int(math.prod(shape[1:-1]))


def _conv_flops(layer, in_shape, out_shape) -> int:
    kh, kw = layer.kernel_size
    groups = getattr(layer, "groups", 1)
    return _spatial(out_shape) * kh * kw * (in_shape[-1] // groups) * out_shape[-1]


def _depthwise_flops(layer, in_shape, out_shape) -> int:
    kh, kw = layer.kernel_size
    return _spatial(out_shape) * kh * kw * out_shape[-1]


def _separable_flops(layer, in_shape, out_shape) -> int:
    kh, kw = layer.kernel_size
    mid = in_shape[-1] * layer.depth_multiplier
    return _spatial(out_shape) * (kh * kw * mid + mid * out_shape[-1])


def _dense_flops(layer, in_shape, out_shape) -> int:
    return int(math.prod(in_shape[1:])) * out_shape[-1]


def _zero(layer, in_shape, out_shape) -> int:
    return 0


_FLOP_RULES: dict[str, Callable] = {
    "Conv2D": _conv_flops,
    "DepthwiseConv2D": _depthwise_flops,
    "SeparableConv2D": _separable_flops,
    "Dense": _dense_flops,
}
_ZERO_COST = (
    "InputLayer", "BatchNormalization", "ReLU", "Activation", "Softmax", "LeakyReLU", "ELU", "PReLU",
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Concatenate", "MaxPooling2D", "AveragePooling2D",
    "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten", "Reshape", "Dropout", "SpatialDropout2D",
    "Normalization", "Rescaling", "ZeroPadding2D", "Cropping2D", "Identity", "LayerNormalization",
)
SUPPORTED_LAYERS = tuple(sorted(set(_FLOP_RULES) | set(_ZERO_COST) | {"Functional", "Sequential"}))


def _shape(tensor_or_shape) -> tuple:
    shape = getattr(tensor_or_shape, "shape", tensor_or_shape)
    return tuple(shape)


def model_cost(model: keras.Model) -> ModelCost:
    """Counts parameters and FLOPs of a built Keras model, layer by layer.

    Nested functional/sequential models are counted through their layers.

    Raises:
      ValueError: a layer type has no counting rule; the message names the layer and lists
        the supported types.
    """
    rows: list[LayerCost] = []
    _collect(model, rows)
    return ModelCost(params=sum(r.params for r in rows), flops=sum(r.flops for r in rows), layers=tuple(rows))


def _collect(model, rows):
    for layer in model.layers:
        kind = type(layer).__name__
        if isinstance(layer, keras.Model):
            _collect(layer, rows)
            continue
        if kind in _FLOP_RULES:
            in_shape = _shape(layer.input)
            out_shape = _shape(layer.output)
            flops = _FLOP_RULES[kind](layer, in_shape, out_shape)
        elif kind in _ZERO_COST:
            out_shape = _shape(layer.output) if not isinstance(layer.output, (list, tuple)) else ()
            flops = 0
        else:
            raise ValueError(f"cannot count FLOPs of layer {layer.name!r} of type {kind}; supported layer "
                             f"types: {', '.join(SUPPORTED_LAYERS)}")
        rows.append(LayerCost(layer.name, kind, out_shape[1:], _learnable(layer), int(flops)))


def count_params(model: keras.Model) -> int:
    """Learnable parameters (kernels, biases, BN gamma/beta)."""
    return model_cost(model).params


def count_flops(model: keras.Model) -> int:
    """Multiply-accumulates of one image's forward pass."""
    return model_cost(model).flops
