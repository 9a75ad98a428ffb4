"""Can a user's Keras model be pruned and trained on the device? Every problem, at once."""

from __future__ import annotations

import keras

from edgekt.errors import UserError

from edgekt.export.device_trainer import DeviceTrainer, TrainerOptions, UnsupportedOnDeviceError
from edgekt.models import layers, saving
from edgekt.prune.graph import UnsupportedModelError, as_functional, build_graph, refusal

_CONTAINERS = ("Functional", "Sequential", "Model")


INPUT_PROBLEM = "the model's input"


def problems(model: keras.Model, prune: bool = True) -> list[str]:
    """Every reason the model cannot go through pruning (if `prune`) and on-device training
    (empty: it can).

    Each entry names the layer and why; all layers are checked, not just the first bad one.
    """
    try:
        functional = as_functional(model)
    except UnsupportedModelError as e:
        return e.problems
    found = []
    shape = tuple(functional.input_shape)
    if len(shape) == 4 and (shape[1] is None or shape[2] is None):  # nothing else can be measured
        return [m for m in (refusal(layer) for layer in functional.layers) if m] + [
            f"{INPUT_PROBLEM} {shape} has no fixed image size (the device model needs one, e.g. "
            "keras.Input((32, 32, 3)))"]
    if prune:
        found = [m for m in (refusal(layer) for layer in functional.layers) if m]
        if not found:
            try:
                build_graph(functional)
            except UnsupportedModelError as e:
                found += e.problems
    if len(functional.input_shape) != 4:
        return found + [f"the model's input must be images [batch, H, W, C]; it is {functional.input_shape}"]
    channels = functional.input_shape[-1]
    if channels != 3:
        found.append(f"{INPUT_PROBLEM} has {channels} channel(s) (the device app feeds RGB images, 3 channels)")
    try:
        DeviceTrainer(functional, TrainerOptions(batch_size=1))
    except (UnsupportedOnDeviceError, UnsupportedModelError) as e:
        named = {_layer_of(p) for p in found} - {None}
        found += [p for p in e.problems if p not in found and _layer_of(p) not in named]
    return found


def _layer_of(problem: str) -> str | None:
    """The `layer 'NAME'` a problem is about (one entry per layer in a listing)."""
    return problem.split(" (", 1)[0] if problem.startswith("layer '") else None


def file_problems(path: str, prune: bool = True) -> list[str]:
    """`problems` of a `.keras` file. Layer types outside edgekt's layer table (a Lambda, a
    custom layer) are listed from the file's config first, without loading the model, so a
    file Keras would refuse to load (or that would run code) is still described in full.

    Raises:
      UserError: the file is missing or not a `.keras` archive.
    """
    unknown, loadable = [], True
    for name, cls in saving.layer_classes(path):
        if cls in _CONTAINERS:
            unknown.append(f"layer {name!r} ({cls}) is a nested model (build the model flat)")
        elif cls == "Lambda":
            loadable = False
            unknown.append(f"layer {name!r} (Lambda) holds Python code, which cannot be pruned, exported or loaded "
                           "safely (replace it with built-in layers)")
        elif cls not in layers.KNOWN:
            unknown.append(f"layer {name!r} ({cls}) is not in edgekt's layer table")
    if unknown and loadable:
        try:
            model = saving.load_model(path)
        except UserError:  # a custom layer Keras cannot rebuild: the listing from the config is all there is
            return unknown
        found = problems(model, prune=prune)
        named = {_layer_of(p) for p in found}
        return [p for p in unknown if _layer_of(p) not in named] + found
    if unknown:
        return unknown
    return problems(saving.load_model(path), prune=prune)


def check_file(path: str, prune: bool = True) -> None:
    """Raises UnsupportedUserModelError listing every problem of the model file, if any."""
    found = file_problems(path, prune=prune)
    if found:
        raise UnsupportedUserModelError(path, found, prune=prune)


class UnsupportedUserModelError(UnsupportedModelError):
    """A user's model file cannot be converted (or exported); `problems` lists every reason."""

    def __init__(self, path: str, problems: list[str], prune: bool = True):
        self.path = path
        about_input = [p.startswith(INPUT_PROBLEM) for p in problems]
        advice = (f"use the supported layer types ({', '.join(layers.KNOWN)}) and structures"
                  if not all(about_input) else "build the model for fixed-size RGB images")
        if any(about_input) and not all(about_input):
            advice += ", for fixed-size RGB images"
        UserError.__init__(self, f"{path}: {len(problems)} problem(s) for "
                                 f"{'pruning and ' if prune else ''}on-device training: {' | '.join(problems)}; "
                                 f"{advice}")
        self.problems = list(problems)
