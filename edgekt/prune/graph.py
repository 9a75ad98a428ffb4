"""Dependency groups: the channels of a Keras functional model that must be pruned together.

Every tensor has a channel space. How a layer treats it comes from the layer table
(`edgekt.models.layers`): "create" layers (Conv2D, SeparableConv2D, Dense) make a new space
(their filters/units); "follow" layers (BN, depthwise, activations, pooling, dropout,
padding) pass their input's space through; merges (Add...) tie all their inputs' spaces into
one; Flatten keeps the space but multiplies each channel into H*W features. A *group* is one
space after these ties: removing channel c of a group removes output filter c of every
producer, slice c of every pass-through layer, and input c (or its flattened features) of
every consumer. The group of a WRN stage's residual stream holds the stem or shortcut conv,
every block's second conv, every Add and every block's first BN.

The layer graph itself comes from `edgekt.models.graph.walk`.
"""

from __future__ import annotations

import dataclasses
import math

import keras

from edgekt.models import graph as graph_walk
from edgekt.models import layers
from edgekt.models.graph import UnsupportedModelError, as_functional  # noqa: F401 (re-exported)


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


def layer_problem(layer) -> str | None:
    """Why a layer cannot be pruned (None: it can): its structure, its class missing from the
    layer table or without a channel rule, or the class's own limit."""
    why = graph_walk.structure_problem(layer)
    if why:
        return why
    kind = layers.kind_of(layer)
    if kind is None or kind.role is None:
        return f"layer type {type(layer).__name__} has no pruning rule"
    return kind.check(layer) if kind.check else None


def refusal(layer) -> str | None:
    """The error message for a layer that cannot be pruned (None: it can)."""
    why = layer_problem(layer)
    if not why:
        return None
    return f"layer {layer.name!r} ({type(layer).__name__}) cannot be pruned: {why}"


def build_graph(model: keras.Model) -> DependencyGraph:
    """Finds the dependency groups of a functional (or Sequential) Keras model.

    Raises:
      UnsupportedModelError: a layer type or structure is not supported; the message names
        the layer and says why. Raised before any work is done.
    """
    walked = graph_walk.walk(model)
    model = walked.model
    refused = [m for m in (refusal(model.get_layer(name)) for name in walked.order) if m]
    shape = tuple(model.input_shape)
    if len(shape) == 4 and (shape[1] is None or shape[2] is None):
        refused.append(f"the model's input {shape} has no fixed image size (pruning measures costs at one size, e.g. "
                       "keras.Input((32, 32, 3)))")
    if refused:
        raise UnsupportedModelError(refused)
    order, classes = walked.order, walked.layer_class
    inbound = walked.inputs
    layer_objs = {layer.name: layer for layer in model.layers}

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
        layer, cls = layer_objs[name], classes[name]
        role = layers.LAYERS[cls].role
        srcs = [out_space[src] for src in inbound[name]]
        roles[name] = role
        if role == "input":
            out_space[name] = (new_space(int(layer.output.shape[-1])), 1)
            continue
        if not srcs:
            raise UnsupportedModelError(f"layer {name!r} has no inputs")
        if role == "merge":
            first = srcs[0]
            for other in srcs[1:]:
                if other[1] != first[1] or sizes[find(other[0])] != sizes[find(first[0])]:
                    raise UnsupportedModelError(f"layer {name!r} ({cls}) merges tensors of different channel layouts")
                parent[find(other[0])] = find(first[0])
            out_space[name] = first
            continue
        if len(srcs) != 1:
            raise UnsupportedModelError(f"layer {name!r} ({cls}) has {len(srcs)} inputs; only merge layers may have several")
        src = srcs[0]
        in_space[name] = src
        if role == "create":
            if cls == "Dense":
                per = src[1] if len(layer.input.shape) == 2 else 1
                in_space[name] = (src[0], per)
            elif src[1] != 1:
                raise UnsupportedModelError(f"layer {name!r} ({cls}) follows a Flatten")
            out_space[name] = (new_space(int(layer.get_config()[layers.LAYERS[cls].width])), 1)
        elif role == "flatten":
            out_space[name] = (src[0], src[1] * int(math.prod(layer.input.shape[1:-1])))
        else:  # follow, with or without per-channel parameters
            if src[1] != 1 and role == "follow_params":
                raise UnsupportedModelError(f"layer {name!r} ({cls}) follows a Flatten; per-channel parameters on "
                                            "flattened features are not supported")
            out_space[name] = src

    # Collect groups.
    roots = sorted({find(s) for s, _ in list(out_space.values())})
    index = {r: i for i, r in enumerate(roots)}
    groups = [Group(id=i, channels=sizes[r]) for i, r in enumerate(roots)]
    output_group = {n: (index[find(s)], per) for n, (s, per) in out_space.items()}
    input_group = {n: (index[find(s)], per) for n, (s, per) in in_space.items()}
    for name in order:
        g = groups[output_group[name][0]]
        g.tensors.append(name)
        if roles[name] == "create":
            g.producers.append(name)
        elif roles[name] == "follow_params":
            g.passthrough.append(name)
        if roles[name] == "input":
            g.prunable, g.reason = False, "model input"
        if name in input_group and roles[name] == "create":
            gi, per = input_group[name]
            groups[gi].consumers.append((name, per))
    g = groups[output_group[walked.output_layer][0]]
    g.prunable, g.reason = False, "model output"
    for name in order:
        g = groups[output_group[name][0]]
        if g.prunable and layers.LAYERS[classes[name]].couples(layer_objs[name]):
            g.prunable, g.reason = False, f"{name!r} ({classes[name]}) mixes all of these channels"
    for g in groups:
        if g.prunable and not g.producers:
            g.prunable, g.reason = False, "no layer creates these channels"
    return DependencyGraph(model=model, groups=groups, order=order, input_group=input_group,
                           output_group=output_group, layer_class=classes, inputs=inbound,
                           output_layer=walked.output_layer)
