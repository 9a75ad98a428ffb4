"""Example user-style Keras classifiers (not WRN): the kinds of model users bring to
`pipelines.convert`. Each takes raw RGB pixels (0-255) and outputs logits."""

from __future__ import annotations

import keras


def vgg_style(num_classes: int = 10, dropout: float = 0.2) -> keras.Model:
    """Conv-BN-ReLU blocks, max pooling, Flatten and a hidden Dense layer."""
    inp = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0, name="scale")(inp)
    for i, filters in enumerate((12, 16, 24)):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(32, activation="relu", name="fc1")(x)
    x = keras.layers.Dropout(dropout, name="drop")(x)
    out = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inp, out, name="vgg_style")


def mobilenet_style(num_classes: int = 10) -> keras.Model:
    """Inverted residual blocks: expand 1x1 -> depthwise 3x3 -> project 1x1, with Add."""
    inp = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="scale")(inp)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    for i, (filters, stride) in enumerate(((16, 1), (24, 2), (24, 1))):
        shortcut = x
        y = keras.layers.Conv2D(filters * 3, 1, use_bias=False, name=f"b{i}_expand")(x)
        y = keras.layers.BatchNormalization(name=f"b{i}_expand_bn")(y)
        y = keras.layers.ReLU(6.0, name=f"b{i}_expand_relu")(y)
        y = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"b{i}_dw")(y)
        y = keras.layers.BatchNormalization(name=f"b{i}_dw_bn")(y)
        y = keras.layers.ReLU(6.0, name=f"b{i}_dw_relu")(y)
        y = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"b{i}_project")(y)
        y = keras.layers.BatchNormalization(name=f"b{i}_project_bn")(y)
        if stride == 1 and shortcut.shape[-1] == filters:
            y = keras.layers.Add(name=f"b{i}_add")([shortcut, y])
        x = y
    x = keras.layers.SeparableConv2D(32, 3, padding="same", name="head_sep")(x)
    x = keras.layers.Activation("relu", name="head_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inp, out, name="mobilenet_style")


def resnet_style(num_classes: int = 4, size: int = 64) -> keras.Model:
    """Pre-activation-free residual blocks (conv-BN-ReLU-conv-BN + shortcut, a 1x1 projection
    where the shape changes) on `size` x `size` inputs, with a Normalization layer first."""
    inp = keras.Input((size, size, 3), name="image")
    x = keras.layers.Normalization(mean=[125.3, 123.0, 113.9], variance=[63.0 ** 2, 62.1 ** 2, 66.7 ** 2],
                                   name="normalize")(inp)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for i, (filters, stride) in enumerate(((16, 1), (32, 2), (32, 1))):
        y = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"r{i}_conv1")(x)
        y = keras.layers.BatchNormalization(name=f"r{i}_bn1")(y)
        y = keras.layers.ReLU(name=f"r{i}_relu1")(y)
        y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"r{i}_conv2")(y)
        y = keras.layers.BatchNormalization(name=f"r{i}_bn2")(y)
        shortcut = x
        if stride != 1 or x.shape[-1] != filters:
            shortcut = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"r{i}_proj")(x)
            shortcut = keras.layers.BatchNormalization(name=f"r{i}_proj_bn")(shortcut)
        x = keras.layers.ReLU(name=f"r{i}_out")(keras.layers.Add(name=f"r{i}_add")([shortcut, y]))
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inp, out, name="resnet_style")


BUILDERS = {"vgg_style": vgg_style, "mobilenet_style": mobilenet_style, "resnet_style": resnet_style}
