"""Can a user's Keras model be pruned and trained on the device? Every problem, at once."""

from __future__ import annotations

import keras

from edgekt.export.device_trainer import DeviceTrainer, TrainerOptions, UnsupportedOnDeviceError
from edgekt.prune.graph import UnsupportedModelError, as_functional, build_graph, refusal


def problems(model: keras.Model) -> list[str]:
    """Every reason the model cannot go through pruning and on-device training (empty: it can).

    Each entry names the layer and why; all layers are checked, not just the first bad one.
    """
    try:
        functional = as_functional(model)
    except UnsupportedModelError as e:
        return [str(e)]
    found = []
    for layer in functional.layers:
        message = refusal(layer)
        if message:
            found.append(message)
    if found:
        return found
    try:
        build_graph(functional)
    except UnsupportedModelError as e:
        return [str(e)]
    if len(functional.input_shape) != 4:
        return [f"the model's input must be images [batch, H, W, C]. Received: {functional.input_shape}"]
    try:
        DeviceTrainer(functional, TrainerOptions(batch_size=1))
    except (UnsupportedOnDeviceError, ValueError) as e:
        return [str(e)]
    return []
