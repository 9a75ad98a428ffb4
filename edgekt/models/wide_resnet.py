"""Pre-activation Wide ResNets (Zagoruyko & Komodakis, 2016) built from an explicit width spec.

`wrn_spec(depth, width)` gives the regular WRN-d-k; a pruned WRN is the same `WRNSpec` with
irregular widths, and `build_wrn(spec)` turns either into a Keras 3 functional model.
`spec_from_model(model)` reads the spec back from a built (or pruned) model.

Layer names follow one scheme so later stages can walk the graph and match weights:
`stem_conv`, `stage{s}_block{b}_{bn1,relu1,conv1,bn2,relu2,dropout,conv2,shortcut,add}`,
`final_bn`, `final_relu`, `pool`, `logits`. The model takes raw RGB pixels (float 0-255,
uint8 is cast) and standardises them in its first layer (`normalize`), and outputs logits.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import keras

CIFAR10_MEAN = (125.307, 122.950, 113.865)
CIFAR10_STD = (62.993, 62.089, 66.705)
BN_MOMENTUM = 0.9  # PyTorch's 0.1
BN_EPSILON = 1e-5


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One pre-activation basic block.

    Attributes:
      conv1: filters of the first 3x3 conv (the block's inner width).
      conv2: filters of the second 3x3 conv, i.e. the residual stream width it adds to.
      stride: stride of the first conv (and of the shortcut).
      projection: whether the shortcut is a 1x1 conv (needed when the stream width or
        resolution changes); otherwise the shortcut is the identity.
    """

    conv1: int
    conv2: int
    stride: int = 1
    projection: bool = False

    def __post_init__(self):
        for field in ("conv1", "conv2"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"BlockSpec.{field} must be a positive int. Received: {field}={value!r}")
        if self.stride not in (1, 2):
            raise ValueError(f"BlockSpec.stride must be 1 or 2. Received: stride={self.stride!r}")


@dataclasses.dataclass(frozen=True)
class WRNSpec:
    """A whole pre-activation WRN: every conv's filter count.

    Attributes:
      stem: filters of the first 3x3 conv.
      stages: blocks of each stage, in order.
      num_classes: classifier outputs.
      input_shape: (H, W, C) of the raw images.
      dropout: dropout rate between a block's two convs (0 disables).
      mean, std: per-channel input statistics (0-255 units) used by the `normalize` layer.
      name: the model's name.
    """

    stem: int
    stages: tuple[tuple[BlockSpec, ...], ...]
    num_classes: int = 10
    input_shape: tuple[int, int, int] = (32, 32, 3)
    dropout: float = 0.0
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    name: str = "wrn"

    def __post_init__(self):
        if not isinstance(self.stem, int) or self.stem < 1:
            raise ValueError(f"WRNSpec.stem must be a positive int. Received: stem={self.stem!r}")
        if not self.stages or any(len(s) == 0 for s in self.stages):
            raise ValueError(f"WRNSpec.stages needs at least one block per stage. Received: stages={self.stages!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"WRNSpec.num_classes must be a positive int. Received: {self.num_classes!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"WRNSpec.dropout must be in [0, 1). Received: dropout={self.dropout!r}")
        if len(self.mean) != self.input_shape[-1] or len(self.std) != self.input_shape[-1]:
            raise ValueError(f"WRNSpec.mean/std need {self.input_shape[-1]} values. "
                             f"Received: mean={self.mean}, std={self.std}")
        width = self.stem
        for s, stage in enumerate(self.stages, start=1):
            for b, block in enumerate(stage, start=1):
                if not block.projection and (block.stride != 1 or block.conv2 != width):
                    raise ValueError(
                        f"stage{s}_block{b}: an identity shortcut needs stride 1 and conv2 equal to the incoming "
                        f"stream width {width}. Received: {block}")
                width = block.conv2

    @property
    def blocks(self) -> list[tuple[str, BlockSpec]]:
        """(name prefix, block) for every block in order."""
        return [(f"stage{s}_block{b}", block) for s, stage in enumerate(self.stages, start=1)
                for b, block in enumerate(stage, start=1)]


def wrn_spec(depth: int = 28, width: int = 10, *, num_classes: int = 10,
             input_shape: tuple[int, int, int] = (32, 32, 3), dropout: float = 0.0,
             mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD) -> WRNSpec:
    """The spec of the regular WRN-`depth`-`width`.

    Raises:
      ValueError: depth is not 6n+4 or width is not a positive int.
    """
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...). Received: depth={depth!r}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"WRN width must be a positive int. Received: width={width!r}")
    n = (depth - 4) // 6
    stem = 16
    stages, in_width = [], stem
    for s, base in enumerate((16, 32, 64)):
        out = base * width
        stage = []
        for b in range(n):
            stride = 2 if (s > 0 and b == 0) else 1
            stage.append(BlockSpec(out, out, stride=stride, projection=(in_width != out or stride != 1)))
            in_width = out
        stages.append(tuple(stage))
    return WRNSpec(stem=stem, stages=tuple(stages), num_classes=num_classes, input_shape=tuple(input_shape),
                   dropout=dropout, mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
                   name=f"wrn_{depth}_{width}")


def _conv(filters: int, kernel: int, stride: int, name: str) -> keras.layers.Conv2D:
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                               kernel_initializer="he_normal", name=name)


def _bn(name: str) -> keras.layers.BatchNormalization:
    return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def build_wrn(spec: WRNSpec) -> keras.Model:
    """Builds the Keras 3 functional model of `spec`.

    In a block with a projection shortcut, the block's BN-ReLU pre-activation feeds both
    the residual branch and the 1x1 shortcut (as in the reference implementation); with an
    identity shortcut the un-activated input is added.
    """
    if not isinstance(spec, WRNSpec):
        raise TypeError(f"build_wrn expects a WRNSpec. Received: {type(spec).__name__}")
    inputs = keras.Input(shape=spec.input_shape, name="image")
    variance = [s * s for s in spec.std]
    x = keras.layers.Normalization(mean=list(spec.mean), variance=variance, name="normalize")(inputs)
    x = _conv(spec.stem, 3, 1, "stem_conv")(x)
    for prefix, block in spec.blocks:
        pre = _bn(f"{prefix}_bn1")(x)
        pre = keras.layers.ReLU(name=f"{prefix}_relu1")(pre)
        shortcut = _conv(block.conv2, 1, block.stride, f"{prefix}_shortcut")(pre) if block.projection else x
        y = _conv(block.conv1, 3, block.stride, f"{prefix}_conv1")(pre)
        y = _bn(f"{prefix}_bn2")(y)
        y = keras.layers.ReLU(name=f"{prefix}_relu2")(y)
        if spec.dropout > 0:
            y = keras.layers.Dropout(spec.dropout, name=f"{prefix}_dropout")(y)
        y = _conv(block.conv2, 3, 1, f"{prefix}_conv2")(y)
        x = keras.layers.Add(name=f"{prefix}_add")([shortcut, y])
    x = _bn("final_bn")(x)
    x = keras.layers.ReLU(name="final_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(spec.num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=spec.name)


def wrn(depth: int = 28, width: int = 10, *, num_classes: int = 10,
        input_shape: tuple[int, int, int] = (32, 32, 3), dropout: float = 0.0,
        mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD) -> keras.Model:
    """Builds WRN-`depth`-`width` (e.g. `wrn(28, 10)`: 36.5M parameters)."""
    return build_wrn(wrn_spec(depth, width, num_classes=num_classes, input_shape=input_shape, dropout=dropout,
                              mean=mean, std=std))


def spec_from_model(model: keras.Model) -> WRNSpec:
    """Reads the `WRNSpec` of a model built by `build_wrn`, pruned or not.

    Raises:
      ValueError: the model does not follow the WRN layer naming scheme.
    """
    names = {layer.name: layer for layer in model.layers}
    for required in ("stem_conv", "normalize", "logits"):
        if required not in names:
            raise ValueError(f"model {model.name!r} is not an edgekt WRN: it has no layer {required!r}")
    stages, s = [], 1
    while f"stage{s}_block1_conv1" in names:
        stage, b = [], 1
        while f"stage{s}_block{b}_conv1" in names:
            conv1 = names[f"stage{s}_block{b}_conv1"]
            conv2 = names[f"stage{s}_block{b}_conv2"]
            shortcut = names.get(f"stage{s}_block{b}_shortcut")
            stage.append(BlockSpec(int(conv1.filters), int(conv2.filters), stride=int(conv1.strides[0]),
                                   projection=shortcut is not None))
            b += 1
        stages.append(tuple(stage))
        s += 1
    norm_config = names["normalize"].get_config()
    # The config holds the exact Python floats; the layer's weights are float32 copies.
    mean = [round(float(v), 6) for v in _flat(norm_config["mean"])]
    std = [round(float(v) ** 0.5, 6) for v in _flat(norm_config["variance"])]
    dropouts = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    return WRNSpec(stem=int(names["stem_conv"].filters), stages=tuple(stages),
                   num_classes=int(names["logits"].units), input_shape=tuple(model.input_shape[1:]),
                   dropout=float(dropouts[0]) if dropouts else 0.0, mean=tuple(mean), std=tuple(std),
                   name=model.name)


def _flat(values) -> list:
    if isinstance(values, (list, tuple)):
        return [v for item in values for v in _flat(item)]
    return [values]
