"""The on-device trainer: a `tf.Module` that owns plain `tf.Variable`s initialised from a Keras
model and re-implements its forward pass with TF ops whose gradients are TFLite builtins.

Signatures (fixed batch size B, K classes):
  train(x[B,H,W,C], y[B] int32, w[B], lr[1])         -> loss, accuracy   (SGD step)
  distill(x, soft_targets[B,K], w, lr[1], temperature[1]) -> loss         (SGD step)
  infer(x)                                            -> probabilities[B,K], logits[B,K], features[B,F]
  get_weights()                                       -> every variable (weights, BN statistics, momenta)
  set_weights(<every variable>)                       -> ok

`w` weights each example (0 pads a short last batch: it then adds nothing to the loss or
to batch-norm statistics). Weight decay is L2 on kernels, momentum SGD; the learning rate is
an input so the app owns the schedule. The rate and the temperature are [1] tensors, not
scalars: ai-edge-litert 2.3 crashes on aarch64 when a signature has a 0-d input. The app saves weights itself through get_weights
(Save/Restore ops would need Flex).
"""

from __future__ import annotations

import dataclasses
import math
import re

import keras
import numpy as np
import tensorflow as tf

from edgekt import presets
from edgekt.errors import UserError
from edgekt.export import ops
from edgekt.models import graph as graph_walk
from edgekt.models import layers

BN_MODES = ("batch", "frozen")
SIGNATURE_VERSION = 1
# Layers that are the identity at inference and in the device's training step (noise and
# regularisers act only inside Keras' own training).
_IDENTITY = ("InputLayer", "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "Identity",
             "ActivityRegularization")
# Which classes the trainer expresses is the layer table's `device` flag; `forward` has a
# case for each of them (a test holds the two together).
DEVICE_LAYERS = layers.ON_DEVICE
DEVICE_ACTIVATIONS = ("linear", "relu", "relu6")


def _sum(tensors):
    # Pairwise ADDs rather than ADD_N, which has no int8 kernel (it would leave float islands
    # with QUANTIZE/DEQUANTIZE around them in the int8 model).
    out = tensors[0]
    for other in tensors[1:]:
        out = out + other
    return out


class UnsupportedOnDeviceError(UserError):
    """Layers or settings the on-device trainer cannot express with builtin ops; `problems`
    lists every one (layer name, type and why)."""

    def __init__(self, what: str, problems: list[str]):
        self.what, self.problems = what, list(problems)
        super().__init__(f"{what}: {len(self.problems)} part(s) cannot be trained on the device: "
                         f"{' | '.join(self.problems)}; use layer types and settings the device trainer supports "
                         f"({', '.join(DEVICE_LAYERS)}; activations {', '.join(DEVICE_ACTIVATIONS)})")

    @classmethod
    def one(cls, problem: str) -> "UnsupportedOnDeviceError":
        return cls("model", [problem])


@dataclasses.dataclass(frozen=True)
class TrainerOptions:
    """What is trained on the device and how.

    Attributes:
      batch_size: the fixed batch size of every signature.
      trainable: "all"; "bn_classifier" (BN scales/offsets and the classifier); "classifier";
        or "last:N" (the last N conv/dense layers and the BN layers after the first of them).
      bn_mode: "batch" (batch statistics while training, moving averages updated) or
        "frozen" (moving statistics always; BN is a fixed affine map).
      momentum, weight_decay: SGD momentum and L2 decay on kernels.
      num_classes: classifier outputs on the device (more than the model's grows the
        classifier for new categories; the new columns start near zero).
      seed: initialisation of new classifier columns.
    """

    batch_size: int = 32
    trainable: str = "all"
    bn_mode: str = "batch"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    num_classes: int | None = None
    seed: int = 0

    def __post_init__(self):
        presets.check_fields(self, [
            (1 <= self.batch_size <= 65536, "batch_size", "in 1..65536"),
            (self.trainable in ("all", "bn_classifier", "classifier")
             or re.fullmatch(r"last:[1-9]\d*", str(self.trainable)) is not None, "trainable",
             "'all', 'bn_classifier', 'classifier' or 'last:N' (N >= 1)"),
            (self.bn_mode in BN_MODES, "bn_mode", f"one of {BN_MODES}"),
            (0 <= self.momentum < 1, "momentum", "in [0, 1)"),
            (self.weight_decay >= 0 and math.isfinite(self.weight_decay), "weight_decay", ">= 0"),
            (self.num_classes is None or self.num_classes >= 1, "num_classes", ">= 1"),
        ])


def variable_key(layer: str, weight: str) -> str:
    """The signature name of a layer's weight (TFLite signature names must be identifiers)."""
    return re.sub(r"[^0-9A-Za-z_]", "_", f"{layer}__{weight}")


def _activation(name: str | None):
    if name in (None, "linear"):
        return lambda x: x
    if name == "relu":
        return ops.relu
    if name == "relu6":
        return lambda x: ops.relu(x, 6.0)
    if name == "softmax":
        return tf.nn.softmax
    raise UnsupportedOnDeviceError.one(f"activation {name!r} is not supported on the device "
                                       f"({', '.join(DEVICE_ACTIVATIONS)})")


@dataclasses.dataclass
class _Node:
    name: str
    cls: str
    inputs: list[str]
    config: dict
    weights: dict[str, str]   # weight name -> variable key
    trainable: set[str]       # weight names trained on the device


class DeviceTrainer(tf.Module):
    """Builds the trainer of a Keras classifier (raw-pixel input, logits output).

    Raises:
      UnsupportedOnDeviceError: a layer cannot run on the device; names it.
    """

    def __init__(self, model: keras.Model, options: TrainerOptions = TrainerOptions(), name: str = "device_trainer"):
        super().__init__(name=name)
        graph = graph_walk.walk(model)
        self.options = options
        self.input_shape = tuple(int(d) for d in graph.model.input_shape[1:])
        self.output_layer = graph.output_layer
        dense = graph.layers_of("Dense")
        if not dense:
            raise UnsupportedOnDeviceError(f"model {model.name!r}", ["it has no Dense classifier layer"])
        self.classifier = dense[-1]
        self.nodes: list[_Node] = []
        self.variables_by_key: dict[str, tf.Variable] = {}
        self.momenta: dict[str, tf.Variable] = {}
        model_classes = int(graph.model.output_shape[-1])
        self.num_classes = options.num_classes or model_classes
        if self.num_classes < model_classes:
            raise UserError(f"num_classes={self.num_classes}: fewer than the model's {model_classes} outputs; "
                            "give at least one class name per output")
        self.softmax_output = False
        trainable_layers = self._trainable_layers(graph, options.trainable)
        rng = np.random.default_rng(options.seed)
        problems = []
        for name in graph.order:
            layer = graph.model.get_layer(name)
            cls = graph.layer_class[name]
            if cls not in DEVICE_LAYERS:
                problems.append(f"layer {name!r} ({cls}) has no on-device rule")
                continue
            config = layer.get_config()
            try:
                self._check_node(name, cls, layer, config, name == self.output_layer)
            except UnsupportedOnDeviceError as e:
                problems.extend(e.problems)
                continue
            if problems:
                continue
            if cls == "Normalization":
                # Constants given at construction live in the config; adapted ones in the layer.
                mean = config.get("mean") if config.get("mean") is not None else keras.ops.convert_to_numpy(layer.mean)
                var = config.get("variance") if config.get("variance") is not None else keras.ops.convert_to_numpy(
                    layer.variance)
                config = {**config, "_mean": np.asarray(mean, np.float32).reshape(-1),
                          "_std": np.sqrt(np.maximum(np.asarray(var, np.float32).reshape(-1), 1e-12))}
            weights = {}
            trainable = set()
            for v in layer.weights:
                value = np.asarray(v.numpy(), dtype=np.float32)
                if name == self.classifier and self.num_classes > model_classes:
                    value = self._grow(v.name, value, self.num_classes - model_classes, rng)
                key = variable_key(name, v.name)
                self.variables_by_key[key] = tf.Variable(value, name=key, trainable=False)
                weights[v.name] = key
                if v.trainable and name in trainable_layers and not (cls == "BatchNormalization" and "moving" in v.name):
                    if cls in ("Normalization",):
                        continue
                    trainable.add(v.name)
                    self.momenta[key] = tf.Variable(np.zeros_like(value), name=f"{key}__momentum", trainable=False)
            self.nodes.append(_Node(name, cls, graph.inputs[name], config, weights, trainable))
        if problems:
            raise UnsupportedOnDeviceError(f"model {model.name!r}", problems)
        self._classifier_node = next(n for n in self.nodes if n.name == self.classifier)
        self.classifier_keys = dict(self._classifier_node.weights)
        self.trainable_keys = [k for n in self.nodes for w, k in n.weights.items() if w in n.trainable]
        if not self.trainable_keys:
            raise UserError(f"trainable={options.trainable!r}: selects no weights of this model; choose 'all' or "
                            "'last:N' with N at most the model's weighted layers")
        self.weight_keys = sorted(self.variables_by_key) + sorted(f"{k}__momentum" for k in self.momenta)
        self._build_signatures()

    # --- construction helpers -------------------------------------------------------------

    @staticmethod
    def _grow(weight: str, value: np.ndarray, extra: int, rng) -> np.ndarray:
        if weight == "kernel":
            scale = float(value.std()) if value.size else 0.01
            new = rng.normal(0.0, 0.1 * scale, (value.shape[0], extra)).astype(np.float32)
            return np.concatenate([value, new], axis=1)
        if weight == "bias":
            return np.concatenate([value, np.full((extra,), value.mean() if value.size else 0.0, np.float32)])
        raise UnsupportedOnDeviceError.one(f"classifier weight {weight!r} cannot be grown for new classes")

    @staticmethod
    def _trainable_layers(graph, spec: str) -> set[str]:
        weighted = graph.layers_of(*layers.WEIGHTED)
        bns = graph.layers_of("BatchNormalization")
        if spec == "all":
            return set(graph.order)
        classifier = weighted[-1]
        if spec == "classifier":
            return {classifier}
        if spec == "bn_classifier":
            return set(bns) | {classifier}
        k = int(spec.split(":")[1])
        if k > len(weighted):
            raise UserError(f"trainable={spec!r}: this model has only {len(weighted)} conv/dense layers; "
                            f"pass --trainable=last:{len(weighted)} or --trainable=all")
        chosen = weighted[-k:]
        first = graph.order.index(chosen[0])
        return set(chosen) | {b for b in bns if graph.order.index(b) > first}

    def _check_node(self, name, cls, layer, config, is_output):
        def refuse(why):
            raise UnsupportedOnDeviceError.one(f"layer {name!r} ({cls}) cannot be trained on the device: {why}")

        kind = layers.LAYERS[cls]
        if kind.check is not None and kind.check(layer):  # the table's limits (groups, multipliers, axes)
            refuse(kind.check(layer))
        if cls in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "MaxPooling2D", "AveragePooling2D"):
            strides = tuple(config.get("strides", (1, 1)))
            if strides[0] != strides[1]:
                refuse(f"unequal strides {strides}")
            if tuple(config.get("dilation_rate", (1, 1))) != (1, 1):
                refuse("dilated convolutions are not supported")
            if config.get("padding", "valid") not in ("same", "valid"):
                refuse(f"padding {config.get('padding')!r}")
        if cls in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense"):
            act = config.get("activation")
            if act == "softmax" and name == self.classifier:
                self.softmax_output = True
            elif act not in (None,) + DEVICE_ACTIVATIONS:
                refuse(f"activation {act!r} (supported: {', '.join(DEVICE_ACTIVATIONS)})")
        if cls in ("MaxPooling2D", "AveragePooling2D"):
            if tuple(config["pool_size"]) != tuple(config["strides"]) or config["pool_size"][0] != config["pool_size"][1]:
                refuse("pooling windows must be square and equal to the strides")
        if cls == "ReLU" and (config.get("negative_slope") or config.get("threshold")):
            refuse("leaky or thresholded ReLU")
        if cls == "Activation":
            if is_output and config["activation"] == "softmax":
                self.softmax_output = True
            elif config["activation"] not in (None,) + DEVICE_ACTIVATIONS:
                refuse(f"activation {config['activation']!r} (supported: {', '.join(DEVICE_ACTIVATIONS)})")
        if cls == "Softmax" and not is_output:
            refuse("softmax inside the network")
        if cls == "Softmax":
            self.softmax_output = True
        if cls == "Normalization" and (config.get("invert") or tuple(config.get("axis") or (-1,)) not in ((-1,), (3,))):
            refuse("only channel-axis, non-inverted normalisation is supported")

    # --- forward pass -----------------------------------------------------------------------

    def _v(self, node: _Node, weight: str):
        key = node.weights.get(weight)
        return self.variables_by_key[key] if key is not None else None

    def forward(self, x: tf.Tensor, training: bool, mask: tf.Tensor | None = None, features: bool = False):
        """Logits of a batch, and (variable, new value) BN statistic updates when training; with
        `features`, also the classifier's input [B, F] (the embedding a head initialiser reads)."""
        values: dict[str, tf.Tensor] = {}
        updates = []
        batch_stats = training and self.options.bn_mode == "batch"
        for node in self.nodes:
            ins = [values[i] for i in node.inputs]
            h = ins[0] if ins else x
            c, cfg = node.cls, node.config
            if c == "InputLayer":
                out = x
            elif c in _IDENTITY:
                out = h
            elif c == "Normalization":
                out = (h - tf.constant(cfg["_mean"])) / tf.constant(cfg["_std"])
            elif c == "Rescaling":
                out = h * float(cfg["scale"]) + float(cfg["offset"])
            elif c == "Conv2D":
                out = ops.conv2d(h, self._v(node, "kernel"), stride=int(cfg["strides"][0]),
                                 padding=cfg["padding"].upper(), filter_grad="kernel" in node.trainable)
                if cfg.get("use_bias"):
                    out = out + self._v(node, "bias")
                out = self._act(node, out)
            elif c == "DepthwiseConv2D":
                out = ops.depthwise_conv2d(h, self._v(node, "kernel"), stride=int(cfg["strides"][0]),
                                           padding=cfg["padding"].upper(), filter_grad="kernel" in node.trainable)
                if cfg.get("use_bias"):
                    out = out + self._v(node, "bias")
                out = self._act(node, out)
            elif c == "SeparableConv2D":
                out = ops.depthwise_conv2d(h, self._v(node, "depthwise_kernel"), stride=int(cfg["strides"][0]),
                                           padding=cfg["padding"].upper(),
                                           filter_grad="depthwise_kernel" in node.trainable)
                out = ops.conv2d(out, self._v(node, "pointwise_kernel"), filter_grad="pointwise_kernel" in node.trainable)
                if cfg.get("use_bias"):
                    out = out + self._v(node, "bias")
                out = self._act(node, out)
            elif c == "Dense":
                kernel = self._v(node, "kernel")
                flat = tf.reshape(h, [-1, h.shape[-1]]) if h.shape.rank > 2 else h
                out = tf.matmul(flat, kernel)
                if h.shape.rank > 2:
                    out = tf.reshape(out, list(h.shape[:-1]) + [kernel.shape[-1]])
                if cfg.get("use_bias"):
                    out = out + self._v(node, "bias")
                out = self._act(node, out)
            elif c == "BatchNormalization":
                gamma, beta = self._v(node, "gamma"), self._v(node, "beta")
                mm, mv = self._v(node, "moving_mean"), self._v(node, "moving_variance")
                eps = float(cfg["epsilon"])
                if batch_stats:
                    out, mean, var = ops.batch_norm_train(h, gamma, beta, mask, eps)
                    m = float(cfg["momentum"])
                    valid = tf.cast(tf.reduce_sum(mask) > 0, tf.float32)
                    updates.append((mm, mm + valid * (1.0 - m) * (mean - mm)))
                    updates.append((mv, mv + valid * (1.0 - m) * (var - mv)))
                else:
                    # One scale and one shift per channel: frozen into constants, this is a
                    # MUL and an ADD that int8 kernels run (not SUB, MUL, MUL, ADD).
                    scale = tf.math.rsqrt(mv + eps)
                    if gamma is not None:
                        scale = scale * gamma
                    shift = -mm * scale
                    if beta is not None:
                        shift = shift + beta
                    out = h * scale + shift
            elif c == "ReLU":
                out = ops.relu(h, float(cfg["max_value"]) if cfg.get("max_value") is not None else None)
            elif c == "Activation":
                out = self._act(node, h, cfg["activation"])
            elif c == "Softmax":
                out = h  # the output softmax is applied by `infer`; training uses logits
            elif c == "Add":
                out = _sum(ins)
            elif c == "Subtract":
                out = ins[0] - ins[1]
            elif c == "Multiply":
                out = ins[0]
                for other in ins[1:]:
                    out = out * other
            elif c == "Average":
                out = _sum(ins) / float(len(ins))
            elif c == "MaxPooling2D":
                out = ops.max_pool(h, int(cfg["pool_size"][0]), int(cfg["strides"][0]))
            elif c == "AveragePooling2D":
                out = ops.avg_pool(h, int(cfg["pool_size"][0]), int(cfg["strides"][0]))
            elif c == "GlobalAveragePooling2D":
                out = tf.reduce_mean(h, axis=[1, 2], keepdims=bool(cfg.get("keepdims")))
            elif c == "GlobalMaxPooling2D":
                out = tf.reduce_max(h, axis=[1, 2], keepdims=bool(cfg.get("keepdims")))
            elif c == "Flatten":
                out = tf.reshape(h, [h.shape[0], -1])
            elif c == "ZeroPadding2D":
                (t, b), (l, r) = cfg["padding"]
                out = tf.pad(h, [[0, 0], [t, b], [l, r], [0, 0]])
            else:  # pragma: no cover - guarded by DEVICE_LAYERS
                raise UnsupportedOnDeviceError.one(f"layer {node.name!r} ({c}) has no on-device rule")
            values[node.name] = out
        if not features:
            return values[self.output_layer], updates
        embedding = values[self._classifier_node.inputs[0]]
        return values[self.output_layer], updates, embedding if embedding.shape.rank == 2 else None

    def _act(self, node: _Node, x, name: str | None = None):
        name = name if name is not None else node.config.get("activation")
        if node.name in (self.output_layer, self.classifier) and name == "softmax":
            return x  # logits; probabilities come from `infer`
        return _activation(name)(x)

    # --- training step ----------------------------------------------------------------------

    def _step(self, x, w, lr, per_example_loss_fn):
        keys = self.trainable_keys
        variables = [self.variables_by_key[k] for k in keys]
        with tf.GradientTape() as tape:
            tape.watch(variables)
            logits, updates = self.forward(x, training=True, mask=w)
            per_example = per_example_loss_fn(logits)
            total_w = tf.maximum(tf.reduce_sum(w), 1e-12)
            loss = tf.reduce_sum(per_example * w) / total_w
        grads = tape.gradient(loss, variables)
        m = float(self.options.momentum)
        wd = float(self.options.weight_decay)
        for key, var, grad in zip(keys, variables, grads):
            if grad is None:
                continue
            if wd and var.shape.rank >= 2:
                grad = grad + wd * var
            slot = self.momenta[key]
            slot.assign(m * slot + grad)
            var.assign_sub(lr * slot)
        for var, value in updates:
            var.assign(value)
        return loss, logits

    def _specs(self):
        b = self.options.batch_size
        return (tf.TensorSpec([b, *self.input_shape], tf.float32, name="x"),
                tf.TensorSpec([b], tf.float32, name="w"), tf.TensorSpec([1], tf.float32, name="lr"))

    def _build_signatures(self):
        x_spec, w_spec, lr_spec = self._specs()
        b, k = self.options.batch_size, self.num_classes

        @tf.function(input_signature=[x_spec, tf.TensorSpec([b], tf.int32, name="y"), w_spec, lr_spec])
        def train(x, y, w, lr):
            lr = tf.reshape(lr, [])
            onehot = tf.one_hot(y, k)
            loss, logits = self._step(x, w, lr,
                                      lambda z: -tf.reduce_sum(onehot * tf.nn.log_softmax(z, axis=-1), axis=-1))
            correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y), tf.float32)
            accuracy = tf.reduce_sum(correct * w) / tf.maximum(tf.reduce_sum(w), 1e-12)
            return {"loss": loss, "accuracy": accuracy}

        @tf.function(input_signature=[x_spec, tf.TensorSpec([b, k], tf.float32, name="soft_targets"), w_spec, lr_spec,
                                      tf.TensorSpec([1], tf.float32, name="temperature")])
        def distill(x, soft_targets, w, lr, temperature):
            lr, temperature = tf.reshape(lr, []), tf.reshape(temperature, [])
            def loss_fn(z):
                log_p = tf.nn.log_softmax(z / temperature, axis=-1)
                return -temperature * temperature * tf.reduce_sum(soft_targets * log_p, axis=-1)

            loss, _ = self._step(x, w, lr, loss_fn)
            return {"loss": loss}

        @tf.function(input_signature=[x_spec])
        def infer(x):
            logits, _, embedding = self.forward(x, training=False, features=True)
            out = {"probabilities": tf.nn.softmax(logits, axis=-1), "logits": logits}
            return out if embedding is None else {**out, "features": embedding}

        @tf.function(input_signature=[])
        def get_weights():
            out = {key: tf.identity(v) for key, v in self.variables_by_key.items()}
            out.update({f"{key}__momentum": tf.identity(v) for key, v in self.momenta.items()})
            return out

        all_vars = {**self.variables_by_key, **{f"{k}__momentum": v for k, v in self.momenta.items()}}
        ordered = [(key, all_vars[key]) for key in self.weight_keys]

        @tf.function(input_signature=[tf.TensorSpec(v.shape, tf.float32, name=key) for key, v in ordered])
        def set_weights(*values):
            for (_, var), value in zip(ordered, values):
                var.assign(value)
            return {"ok": tf.constant(1, tf.int32)}

        self.train, self.distill, self.infer = train, distill, infer
        self.get_weights, self.set_weights = get_weights, set_weights

    def signatures(self) -> dict:
        """The concrete functions to export, by signature name."""
        return {"train": self.train.get_concrete_function(), "distill": self.distill.get_concrete_function(),
                "infer": self.infer.get_concrete_function(), "get_weights": self.get_weights.get_concrete_function(),
                "set_weights": self.set_weights.get_concrete_function()}

    def weights_numpy(self) -> dict[str, np.ndarray]:
        """Every variable (the `get_weights` signature's outputs) as numpy arrays."""
        out = {key: v.numpy() for key, v in self.variables_by_key.items()}
        out.update({f"{key}__momentum": v.numpy() for key, v in self.momenta.items()})
        return out
