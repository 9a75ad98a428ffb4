"""Dependency groups: the channels of a Keras functional model that must be pruned together.

Every tensor has a channel space. Conv2D, SeparableConv2D and Dense create a new space (their
filters/units); BatchNormalization, DepthwiseConv2D, activations, pooling, dropout and
padding pass their input's space through; Add-like merges tie all their inputs' spaces into
one; Flatten keeps the space but multiplies each channel into H*W features. A *group* is one
space after these ties: removing channel c of a group removes output filter c of every
producer, slice c of every pass-through layer, and input c (or its flattened features) of
every consumer. The group of a WRN stage's residual stream holds the stem or shortcut conv,
every block's second conv, every Add and every block's first BN.

The graph is read from the model's public config (`inbound_nodes`) and layer objects.
"""

from __future__ import annotations

import dataclasses
import math

import keras

# How each supported layer type treats channels.
PRODUCERS = ("Conv2D", "SeparableConv2D", "Dense")
PASS_WITH_PARAMS = ("BatchNormalization", "DepthwiseConv2D", "Normalization", "PReLU")
PASS_THROUGH = ("ReLU", "Activation", "LeakyReLU", "ELU", "Softmax", "Dropout", "SpatialDropout2D",
                "GaussianNoise", "GaussianDropout", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D",
                "GlobalMaxPooling2D", "ZeroPadding2D", "Cropping2D", "Identity", "Rescaling", "ActivityRegularization")
MERGES = ("Add", "Subtract", "Maximum", "Minimum", "Average", "Multiply")
SUPPORTED = tuple(sorted(("InputLayer", "Flatten") + PRODUCERS + PASS_WITH_PARAMS + PASS_THROUGH + MERGES))
ACTIVATIONS = ("ReLU", "Activation", "LeakyReLU", "ELU", "PReLU")


class UnsupportedModelError(ValueError):
    """The model has a layer or structure filter pruning cannot handle; names the layer."""


@dataclasses.dataclass
class Group:
    """Channels pruned together.

    Attributes:
      id: index of the group.
      channels: number of channels.
      producers: layers whose output filters/units are these channels.
      passthrough: layers with one parameter slice per channel (BN, depthwise, PReLU).
      consumers: (layer, features per channel) for layers whose input axis holds these
        channels; features per channel is H*W after a Flatten, else 1.
      tensors: every layer whose output lies in this space, in graph order.
      prunable: False for the model's input and output spaces.
      reason: why not prunable.
    """

    id: int
    channels: int
    producers: list[str] = dataclasses.field(default_factory=list)
    passthrough: list[str] = dataclasses.field(default_factory=list)
    consumers: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    tensors: list[str] = dataclasses.field(default_factory=list)
    prunable: bool = True
    reason: str = ""

    @property
    def name(self) -> str:
        """A readable name: the first producer (e.g. `stem_conv` for WRN stage 1's stream)."""
        return self.producers[0] if self.producers else (self.tensors[0] if self.tensors else f"group{self.id}")


@dataclasses.dataclass
class DependencyGraph:
    """The groups of a model plus, per layer, the group of its input and of its output."""

    model: keras.Model
    groups: list[Group]
    order: list[str]
    input_group: dict[str, tuple[int, int]]   # layer -> (group id, features per channel) of its input
    output_group: dict[str, tuple[int, int]]  # layer -> (group id, features per channel) of its output
    layer_class: dict[str, str]
    inputs: dict[str, list[str]]               # layer -> the layers feeding it, in call order
    output_layer: str                          # the layer producing the model's output

    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def group_of_output(self, layer_name: str) -> Group:
        return self.groups[self.output_group[layer_name][0]]

    def table(self) -> str:
        """A readable table of the groups."""
        rows = [f"{'group':>5} {'channels':>8} {'prunable':>8}  producers / consumers"]
        for g in self.groups:
            prod = ", ".join(g.producers) or "-"
            cons = ", ".join(c for c, _ in g.consumers) or "-"
            rows.append(f"{g.id:>5} {g.channels:>8} {str(g.prunable):>8}  {prod} -> {cons}"
                        + (f"  ({g.reason})" if not g.prunable else ""))
        return "\n".join(rows)


def _inbound(layer_config: dict) -> list[tuple[str, int, int]]:
    """(layer, node, tensor) triples feeding a layer, from its config's inbound nodes."""
    found = []

    def walk(obj):
        if isinstance(obj, dict):
            if obj.get("class_name") == "__keras_tensor__":
                found.append(tuple(obj["config"]["keras_history"]))
                return
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    nodes = layer_config.get("inbound_nodes", [])
    if len(nodes) > 1:
        raise UnsupportedModelError(f"layer {layer_config['name']!r} is called {len(nodes)} times (a shared layer); "
                                    "filter pruning needs each layer used once")
    walk(nodes)
    return found


def as_functional(model: keras.Model) -> keras.Model:
    """Returns `model` itself if functional; a functional model over the same layers if
    Sequential.

    Raises:
      UnsupportedModelError: subclassed models, or several inputs/outputs.
    """
    if isinstance(model, keras.Sequential):
        inputs = keras.Input(shape=model.input_shape[1:], name="input")
        x = inputs
        for layer in model.layers:
            x = layer(x)
        return keras.Model(inputs, x, name=model.name)
    if not hasattr(model, "get_config") or "layers" not in (model.get_config() or {}):
        raise UnsupportedModelError(f"model {model.name!r} ({type(model).__name__}) is not a functional or Sequential "
                                    "Keras model; filter pruning reads the layer graph from the functional config")
    return model


def _check_layer(layer, cls: str) -> None:
    why = None
    if isinstance(layer, keras.Model):
        why = "nested models are not supported; build the model flat (e.g. from the base model's layers)"
    elif cls not in SUPPORTED:
        why = f"layer type {cls} has no pruning rule"
    elif getattr(layer, "data_format", "channels_last") != "channels_last":
        why = "only channels_last is supported"
    elif cls == "Conv2D" and getattr(layer, "groups", 1) != 1:
        why = f"grouped convolution (groups={layer.groups}) is not supported"
    elif cls in ("DepthwiseConv2D",) and layer.depth_multiplier != 1:
        why = f"depth_multiplier={layer.depth_multiplier} is not supported (only 1)"
    elif cls == "BatchNormalization" and layer.axis not in (-1, len(layer.input.shape) - 1):
        why = f"BatchNormalization over axis {layer.axis} (only the last, channel axis) is not supported"
    elif cls == "Softmax" and getattr(layer, "axis", -1) not in (-1,):
        why = "Softmax over a non-channel axis is not supported"
    if why:
        raise UnsupportedModelError(f"layer {layer.name!r} ({cls}) cannot be pruned: {why}. Supported layer types: "
                                    f"{', '.join(SUPPORTED)}")


def build_graph(model: keras.Model) -> DependencyGraph:
    """Finds the dependency groups of a functional (or Sequential) Keras model.

    Raises:
      UnsupportedModelError: a layer type or structure is not supported; the message names
        the layer and says why. Raised before any work is done.
    """
    model = as_functional(model)
    config = model.get_config()
    layer_configs = {lc["name"]: lc for lc in config["layers"]}
    inbound = {name: _inbound(lc) for name, lc in layer_configs.items()}
    layers = {layer.name: layer for layer in model.layers}
    classes = {name: type(layers[name]).__name__ for name in layer_configs}
    for name in layer_configs:
        _check_layer(layers[name], classes[name])
    for name, ins in inbound.items():
        for src, node, tensor in ins:
            if node != 0 or tensor != 0:
                raise UnsupportedModelError(f"layer {name!r} reads output {tensor} of node {node} of {src!r}; "
                                            "only single-output, single-use layers are supported")
    outputs = config["output_layers"]
    output_names = [outputs[0]] if isinstance(outputs[0], str) else [o[0] for o in outputs]
    inputs = config["input_layers"]
    input_names = [inputs[0]] if isinstance(inputs[0], str) else [i[0] for i in inputs]
    if len(input_names) != 1 or len(output_names) != 1:
        raise UnsupportedModelError(f"model {model.name!r} has {len(input_names)} inputs and {len(output_names)} "
                                    "outputs; filter pruning supports one of each")

    # Topological order (Kahn), stable in config order.
    order, done = [], set()
    pending = list(layer_configs)
    while pending:
        progressed = False
        for name in list(pending):
            if all(src in done for src, _, _ in inbound[name]):
                order.append(name)
                done.add(name)
                pending.remove(name)
                progressed = True
        if not progressed:
            raise UnsupportedModelError(f"model {model.name!r} has a cycle or a dangling input at {pending[0]!r}")

    parent: list[int] = []
    sizes: list[int] = []

    def new_space(channels: int) -> int:
        parent.append(len(parent))
        sizes.append(channels)
        return len(parent) - 1

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    out_space: dict[str, tuple[int, int]] = {}   # layer -> (space, features per channel)
    in_space: dict[str, tuple[int, int]] = {}
    roles: dict[str, str] = {}
    for name in order:
        layer, cls = layers[name], classes[name]
        srcs = [out_space[src] for src, _, _ in inbound[name]]
        if cls == "InputLayer":
            shape = layer.output.shape
            out_space[name] = (new_space(int(shape[-1])), 1)
            roles[name] = "input"
            continue
        if not srcs:
            raise UnsupportedModelError(f"layer {name!r} has no inputs")
        if cls in MERGES:
            first = srcs[0]
            for other in srcs[1:]:
                if other[1] != first[1] or sizes[find(other[0])] != sizes[find(first[0])]:
                    raise UnsupportedModelError(f"layer {name!r} ({cls}) merges tensors of different channel layouts")
                parent[find(other[0])] = find(first[0])
            out_space[name] = first
            roles[name] = "merge"
            continue
        if len(srcs) != 1:
            raise UnsupportedModelError(f"layer {name!r} ({cls}) has {len(srcs)} inputs; only merge layers may have several")
        src = srcs[0]
        in_space[name] = src
        if cls in PRODUCERS:
            if cls == "Dense":
                in_shape = layer.input.shape
                per = src[1] if len(in_shape) == 2 else 1
                in_space[name] = (src[0], per)
                out_space[name] = (new_space(int(layer.units)), 1)
            else:
                if src[1] != 1:
                    raise UnsupportedModelError(f"layer {name!r} ({cls}) follows a Flatten")
                out_space[name] = (new_space(int(layer.filters)), 1)
            roles[name] = "producer"
        elif cls == "Flatten":
            shape = layer.input.shape
            out_space[name] = (src[0], src[1] * int(math.prod(shape[1:-1])))
            roles[name] = "flatten"
        else:  # pass-through, with or without parameters
            if src[1] != 1 and cls in PASS_WITH_PARAMS:
                raise UnsupportedModelError(f"layer {name!r} ({cls}) follows a Flatten; per-channel parameters on "
                                            "flattened features are not supported")
            out_space[name] = src
            roles[name] = "params" if cls in PASS_WITH_PARAMS else "pass"

    # Collect groups.
    roots = sorted({find(s) for s, _ in list(out_space.values())})
    index = {r: i for i, r in enumerate(roots)}
    groups = [Group(id=i, channels=sizes[r]) for i, r in enumerate(roots)]
    output_group = {n: (index[find(s)], per) for n, (s, per) in out_space.items()}
    input_group = {n: (index[find(s)], per) for n, (s, per) in in_space.items()}
    for name in order:
        g = groups[output_group[name][0]]
        g.tensors.append(name)
        if roles[name] == "producer":
            g.producers.append(name)
        elif roles[name] == "params":
            g.passthrough.append(name)
        if roles[name] == "input":
            g.prunable, g.reason = False, "model input"
        if name in input_group and roles[name] == "producer":
            gi, per = input_group[name]
            groups[gi].consumers.append((name, per))
    for name in output_names:
        g = groups[output_group[name][0]]
        g.prunable, g.reason = False, "model output"
    for g in groups:
        if g.prunable and not g.producers:
            g.prunable, g.reason = False, "no layer creates these channels"
    return DependencyGraph(model=model, groups=groups, order=order, input_group=input_group,
                           output_group=output_group, layer_class=classes,
                           inputs={n: [src for src, _, _ in inbound[n]] for n in order}, output_layer=output_names[0])
