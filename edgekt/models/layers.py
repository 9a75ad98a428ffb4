"""What edgekt knows about each Keras layer class, in one table keyed by class name.

Every part that walks a model reads this table and nothing else: the graph walk and its
structural checks (`edgekt.models.graph`), the channel groups (`edgekt.prune.graph`: how a
layer treats channels), the parameter/FLOP counts (`edgekt.flops` and the pruning budget's
`CostModel`: one cost formula per class), the surgery (which config key holds the width,
how each weight is sliced) and the on-device trainer (which classes it can express). A
class missing from the table is refused by all of them with the same list of what is known.

Channel roles:
  input: the model's input.
  create: makes a new channel space (Conv2D filters, Dense units); `width` names the key.
  follow: passes its input's channels through unchanged (activations, pooling, dropout...).
  follow_params: passes them through with one parameter slice per channel (BN, depthwise).
  merge: ties several inputs' channels into one space (Add...).
  flatten: keeps the channels, each spread over H*W features.
  None: counted, but no pruning rule (e.g. Concatenate): a model with it cannot be pruned.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import numpy as np

from edgekt.errors import UserError

ROLES = ("input", "create", "follow", "follow_params", "merge", "flatten", None)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """What a layer's cost needs besides its channel counts.

    Attributes:
      kernel_area: kh * kw of a convolution (1 for Dense).
      spatial: output positions (H*W; 1 for a Dense on [batch, features]).
      bias: whether the layer adds a bias.
      multiplier: depth multiplier of depthwise/separable convolutions.
      groups: convolution groups.
    """

    kernel_area: int = 1
    spatial: int = 1
    bias: bool = False
    multiplier: int = 1
    groups: int = 1


def _conv_cost(g: Geometry, cin: int, cout: int) -> tuple[int, int]:
    per_filter = g.kernel_area * (cin // max(g.groups, 1))
    return per_filter * cout + (cout if g.bias else 0), g.spatial * per_filter * cout


def _dense_cost(g: Geometry, cin: int, cout: int) -> tuple[int, int]:
    return cin * cout + (cout if g.bias else 0), g.spatial * cin * cout


def _depthwise_cost(g: Geometry, cin: int, cout: int) -> tuple[int, int]:
    out = cin * g.multiplier
    return g.kernel_area * out + (out if g.bias else 0), g.spatial * g.kernel_area * out


def _separable_cost(g: Geometry, cin: int, cout: int) -> tuple[int, int]:
    mid = cin * g.multiplier
    return (g.kernel_area * mid + mid * cout + (cout if g.bias else 0),
            g.spatial * (g.kernel_area * mid + mid * cout))


# --- how each weight is sliced when channels are removed --------------------------------
# (value, in_keep, out_keep, multiplier) -> value; a keep of None leaves that axis whole.

def _conv_slice(name, value, in_keep, out_keep, multiplier):
    if name == "kernel":
        if in_keep is not None:
            value = value[:, :, in_keep, :]
        if out_keep is not None:
            value = value[..., out_keep]
    elif name == "bias" and out_keep is not None:
        value = value[out_keep]
    return value


def _dense_slice(name, value, in_keep, out_keep, multiplier):
    if name == "kernel":
        if in_keep is not None:
            value = value[in_keep, :]
        if out_keep is not None:
            value = value[:, out_keep]
    elif name == "bias" and out_keep is not None:
        value = value[out_keep]
    return value


def _separable_slice(name, value, in_keep, out_keep, multiplier):
    if name == "depthwise_kernel" and in_keep is not None:
        value = value[:, :, in_keep, :]
    elif name == "pointwise_kernel":
        if in_keep is not None:
            rows = (np.asarray(in_keep)[:, None] * multiplier + np.arange(multiplier)[None, :]).reshape(-1)
            value = value[:, :, rows, :]
        if out_keep is not None:
            value = value[..., out_keep]
    elif name == "bias" and out_keep is not None:
        value = value[out_keep]
    return value


def _depthwise_slice(name, value, in_keep, out_keep, multiplier):
    if out_keep is None:
        return value
    return value[:, :, out_keep, :] if name == "kernel" else value[out_keep]


def _per_channel_slice(name, value, in_keep, out_keep, multiplier):
    # BN gamma/beta/statistics, PReLU alpha, Normalization mean/variance: the last axis.
    if out_keep is not None and value.ndim >= 1 and value.shape[-1] > 1:
        value = value[..., out_keep]
    return value


def _normalization_config(config: dict, out_keep) -> dict:
    # Constants given at construction live in the config as well as in the weights.
    config = dict(config)
    for key in ("mean", "variance"):
        value = config.get(key)
        if value is not None and np.ndim(value) >= 1 and np.shape(value)[-1] > 1:
            config[key] = np.asarray(value)[..., out_keep].tolist()
    return config


# --- structural checks before pruning: a reason, or None --------------------------------

def _check_conv(layer) -> Optional[str]:
    if getattr(layer, "groups", 1) != 1:
        return f"grouped convolution (groups={layer.groups}) is not supported"
    return None


def _check_depth_multiplier(layer) -> Optional[str]:
    if getattr(layer, "depth_multiplier", 1) != 1:
        return f"depth_multiplier={layer.depth_multiplier} is not supported (only 1)"
    return None


def _check_bn(layer) -> Optional[str]:
    if layer.axis not in (-1, len(layer.input.shape) - 1):
        return f"BatchNormalization over axis {layer.axis} (only the last, channel axis) is not supported"
    return None


def _check_softmax(layer) -> Optional[str]:
    axis = getattr(layer, "axis", -1)
    if axis not in (-1, [-1], (-1,)):
        return "Softmax over a non-channel axis is not supported"
    return None


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """One class's entry.

    Attributes:
      role: how it treats channels (see the module docstring).
      width: the config key of the channels it creates (role "create").
      cost: (geometry, in channels, out channels) -> (params, multiply-accumulates) for
        layers with kernels; None: no MACs, and parameters (if any) are per channel.
      slice: how its weights are cut when channels are removed (None: it has none to cut).
      config_slice: how its config changes when its output channels are cut (beyond `width`).
      check: a structural limit of pruning (returns why the layer is refused, or None).
      couples: whether this layer mixes all channels of its space (a softmax over channels):
        removing one would change the others, so its group is never pruned.
      activation: an activation whose output is a channel's "attention".
      device: the on-device trainer can express it with builtin TFLite ops.
    """

    role: Optional[str]
    width: Optional[str] = None
    cost: Optional[Callable[[Geometry, int, int], tuple[int, int]]] = None
    slice: Optional[Callable] = None
    config_slice: Optional[Callable[[dict, np.ndarray], dict]] = None
    check: Optional[Callable] = None
    couples: Callable = lambda layer: False
    activation: bool = False
    device: bool = False

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}. Received: {self.role!r}")


def _follow(device: bool = True, activation: bool = False, check=None, couples=None) -> LayerKind:
    return LayerKind("follow", device=device, activation=activation, check=check,
                     couples=couples or (lambda layer: False))


def _is_softmax(layer) -> bool:
    return getattr(layer, "get_config", dict)().get("activation") == "softmax"


def _merge(device: bool = True) -> LayerKind:
    return LayerKind("merge", device=device)


LAYERS: dict[str, LayerKind] = {
    "InputLayer": LayerKind("input", device=True),
    "Conv2D": LayerKind("create", width="filters", cost=_conv_cost, slice=_conv_slice, check=_check_conv, device=True),
    "SeparableConv2D": LayerKind("create", width="filters", cost=_separable_cost, slice=_separable_slice,
                                 check=_check_depth_multiplier, device=True),
    "Dense": LayerKind("create", width="units", cost=_dense_cost, slice=_dense_slice, device=True),
    "DepthwiseConv2D": LayerKind("follow_params", cost=_depthwise_cost, slice=_depthwise_slice,
                                 check=_check_depth_multiplier, device=True),
    "BatchNormalization": LayerKind("follow_params", slice=_per_channel_slice, check=_check_bn, device=True),
    "Normalization": LayerKind("follow_params", slice=_per_channel_slice, config_slice=_normalization_config,
                               device=True),
    "PReLU": LayerKind("follow_params", slice=_per_channel_slice, activation=True),
    "ReLU": _follow(activation=True),
    "Activation": _follow(activation=True, couples=_is_softmax),
    "LeakyReLU": _follow(device=False, activation=True),
    "ELU": _follow(device=False, activation=True),
    "Softmax": _follow(check=_check_softmax, couples=lambda layer: True),
    "Dropout": _follow(),
    "SpatialDropout2D": _follow(),
    "GaussianNoise": _follow(),
    "GaussianDropout": _follow(),
    "ActivityRegularization": _follow(),
    "Identity": _follow(),
    "Rescaling": _follow(),
    "MaxPooling2D": _follow(),
    "AveragePooling2D": _follow(),
    "GlobalAveragePooling2D": _follow(),
    "GlobalMaxPooling2D": _follow(),
    "ZeroPadding2D": _follow(),
    "Cropping2D": _follow(device=False),
    "Add": _merge(),
    "Subtract": _merge(),
    "Multiply": _merge(),
    "Average": _merge(),
    "Maximum": _merge(device=False),
    "Minimum": _merge(device=False),
    "Flatten": LayerKind("flatten", device=True),
    # Counted, never pruned or exported: their channels cannot be followed (Concatenate,
    # Reshape) or are coupled across the whole feature axis (LayerNormalization).
    "Concatenate": LayerKind(None),
    "Reshape": LayerKind(None),
    "LayerNormalization": LayerKind(None, slice=None),
}

KNOWN = tuple(sorted(LAYERS))
PRUNABLE = tuple(sorted(name for name, kind in LAYERS.items() if kind.role is not None))
ON_DEVICE = tuple(sorted(name for name, kind in LAYERS.items() if kind.device))
ACTIVATIONS = tuple(sorted(name for name, kind in LAYERS.items() if kind.activation))
MERGES = tuple(sorted(name for name, kind in LAYERS.items() if kind.role == "merge"))
WEIGHTED = tuple(sorted(name for name, kind in LAYERS.items() if kind.cost is not None))


def kind_of(layer_or_class) -> Optional[LayerKind]:
    """The table's entry for a layer (or a class name); None when the class is unknown."""
    name = layer_or_class if isinstance(layer_or_class, str) else type(layer_or_class).__name__
    return LAYERS.get(name)


def geometry(layer) -> Geometry:
    """A built layer's geometry (see `Geometry`)."""
    out = layer.output
    shape = tuple(out.shape) if not isinstance(out, (list, tuple)) else ()
    kernel = getattr(layer, "kernel_size", (1, 1))
    return Geometry(kernel_area=int(math.prod(kernel)), spatial=int(math.prod(shape[1:-1])) if len(shape) > 2 else 1,
                    bias=bool(getattr(layer, "use_bias", False)), multiplier=int(getattr(layer, "depth_multiplier", 1)),
                    groups=int(getattr(layer, "groups", 1)))


def macs(layer) -> int:
    """Multiply-accumulates of one image through a built layer (0 for layers without kernels).

    Raises:
      ValueError: the class is not in the table; names the layer and lists the known classes.
    """
    kind = kind_of(layer)
    if kind is None:
        raise UserError(f"layer {layer.name!r} ({type(layer).__name__}): cannot count its FLOPs, it is not in "
                        f"edgekt's layer table; use the known layer types ({', '.join(KNOWN)})")
    if kind.cost is None:
        return 0
    cin = int(layer.input.shape[-1])
    cout = int(layer.output.shape[-1])
    return int(kind.cost(geometry(layer), cin, cout)[1])
