"""The layer graph of a Keras functional (or Sequential) model, read from its public config.

`walk` gives the layers in topological order, each layer's class and the layers feeding it,
and the output layer. It checks only structure (one input, one output, every layer called
once, no nested models, channels last); what each class may do is in `edgekt.models.layers`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import keras

from edgekt.errors import UserError


class UnsupportedModelError(UserError):
    """The model has layers or a structure edgekt cannot handle; `problems` names each layer
    and why."""

    def __init__(self, problem: str | list[str]):
        self.problems = [problem] if isinstance(problem, str) else list(problem)
        super().__init__(" | ".join(self.problems) + "; build the model from supported layers and structures "
                         "(`python -m pipelines.convert --model=MODEL --check_only` lists every problem)")


@dataclasses.dataclass
class LayerGraph:
    """A functional model's layers in topological order.

    Attributes:
      model: the functional model (a Sequential model's functional twin).
      order: layer names, inputs first, stable in config order.
      layer_class: layer name -> class name.
      inputs: layer name -> the layers feeding it, in call order.
      input_layer: the model's input layer.
      output_layer: the layer producing the model's output.
    """

    model: keras.Model
    order: list[str]
    layer_class: dict[str, str]
    inputs: dict[str, list[str]]
    input_layer: str
    output_layer: str

    def layers_of(self, *classes: str) -> list[str]:
        """Names of the layers of these classes, in graph order."""
        return [n for n in self.order if self.layer_class[n] in classes]


def as_functional(model: keras.Model) -> keras.Model:
    """Returns `model` itself if functional; a functional model over the same layers if
    Sequential.

    Raises:
      UnsupportedModelError: subclassed models.
    """
    if isinstance(model, keras.Sequential):
        inputs = keras.Input(shape=model.input_shape[1:], name="input")
        x = inputs
        for layer in model.layers:
            x = layer(x)
        return keras.Model(inputs, x, name=model.name)
    if not hasattr(model, "get_config") or "layers" not in (model.get_config() or {}):
        raise UnsupportedModelError(f"model {model.name!r} ({type(model).__name__}) is not a functional or Sequential "
                                    "Keras model; edgekt reads the layer graph from the functional config")
    return model


def structure_problem(layer) -> Optional[str]:
    """Why a layer's structure is refused whatever its class (None: it is not)."""
    if isinstance(layer, keras.Model):
        return "nested models are not supported; build the model flat (e.g. from the base model's layers)"
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return "only channels_last is supported"
    return None


def _inbound(layer_config: dict) -> list[tuple[str, int, int]]:
    """(layer, node, tensor) triples feeding a layer, from its config's inbound nodes."""
    found = []

    def visit(obj):
        if isinstance(obj, dict):
            if obj.get("class_name") == "__keras_tensor__":
                found.append(tuple(obj["config"]["keras_history"]))
                return
            for v in obj.values():
                visit(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v)

    nodes = layer_config.get("inbound_nodes", [])
    if len(nodes) > 1:
        raise UnsupportedModelError(f"layer {layer_config['name']!r} is called {len(nodes)} times (a shared layer); "
                                    "each layer must be used once")
    visit(nodes)
    return found


def walk(model: keras.Model) -> LayerGraph:
    """The layer graph of a functional or Sequential model.

    Raises:
      UnsupportedModelError: a structure edgekt cannot follow; names the layer and why.
    """
    model = as_functional(model)
    config = model.get_config()
    layer_configs = {lc["name"]: lc for lc in config["layers"]}
    inbound = {name: _inbound(lc) for name, lc in layer_configs.items()}
    layers = {layer.name: layer for layer in model.layers}
    classes = {name: type(layers[name]).__name__ for name in layer_configs}
    for name in layer_configs:
        why = structure_problem(layers[name])
        if why:
            raise UnsupportedModelError(f"layer {name!r} ({classes[name]}): {why}")
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
                                    "outputs; edgekt supports one of each")
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
    return LayerGraph(model=model, order=order, layer_class=classes,
                      inputs={n: [src for src, _, _ in inbound[n]] for n in order},
                      input_layer=input_names[0], output_layer=output_names[0])


def classifier(graph: LayerGraph) -> str:
    """The classifier: the last Dense layer.

    Raises:
      UnsupportedModelError: the model has no Dense layer.
    """
    dense = graph.layers_of("Dense")
    if not dense:
        raise UnsupportedModelError(f"model {graph.model.name!r} has no Dense classifier layer")
    return dense[-1]
