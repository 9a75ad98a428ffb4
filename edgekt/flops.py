"""Parameter and FLOP counts of Keras models, layer by layer.

Conventions (those of the pruning literature, e.g. WRN-28-10 = 36.5M params, 5.25 GFLOPs):
- `params` counts learnable values: kernels, biases, BN gamma/beta. BN moving statistics
  and the input `Normalization` constants are state, not parameters.
- `flops` counts multiply-accumulates of one image's forward pass in the layers with kernels
  (Conv2D, DepthwiseConv2D, SeparableConv2D, Dense), by the cost formulas of the layer table
  (`edgekt.models.layers`) that the pruning budget also uses; element-wise layers (BN, ReLU,
  Add, pooling) are listed with 0 and are negligible next to them. A class missing from the
  table is refused, naming the layer.
"""

from __future__ import annotations

import dataclasses
import math

import keras

from edgekt.models import layers


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
        flops = layers.macs(layer)  # names the layer when its class is not in the table
        out_shape = _shape(layer.output) if not isinstance(layer.output, (list, tuple)) else ()
        rows.append(LayerCost(layer.name, kind, out_shape[1:], _learnable(layer), int(flops)))


def count_params(model: keras.Model) -> int:
    """Learnable parameters (kernels, biases, BN gamma/beta)."""
    return model_cost(model).params


def count_flops(model: keras.Model) -> int:
    """Multiply-accumulates of one image's forward pass."""
    return model_cost(model).flops
