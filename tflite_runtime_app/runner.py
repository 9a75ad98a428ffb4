"""The exported model's signatures behind a small numpy API (no TensorFlow).

Uses `ai_edge_litert` if installed, else `tflite_runtime`. Batches are padded to the model's
fixed batch size with zero-weight examples, so callers pass any number of images.
"""

from __future__ import annotations

import json
import os

import numpy as np

from tflite_runtime_app.errors import UserError


class ModelError(UserError):
    """The model or its metadata is missing, unreadable or inconsistent."""


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite_runtime"
    except ImportError as e:
        raise ModelError("no TFLite interpreter: install `ai-edge-litert` or `tflite-runtime` "
                         "(see BUILD_NOTES.md)") from e


def runtime_name() -> str:
    """Which interpreter package is used."""
    return _interpreter_class()[1]


def read_meta(model_path: str, meta_path: str | None = None) -> dict:
    """Reads the metadata JSON written beside the model (model_meta.json)."""
    meta_path = meta_path or os.path.join(os.path.dirname(os.path.abspath(model_path)), "model_meta.json")
    if not os.path.exists(meta_path):
        raise ModelError(f"{meta_path}: metadata file not found (it is written by the export next to the model)")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{meta_path}: unreadable metadata ({e})") from e
    for key in ("class_names", "batch_size", "input", "weight_names", "signature_version"):
        if key not in meta:
            raise ModelError(f"{meta_path}: metadata has no {key!r}")
    return meta


class DeviceModel:
    """A trainable exported model: infer, train, distill, and weights in and out.

    Args:
      model_path: the `model_trainable.tflite` file.
      meta_path: its metadata (default: `model_meta.json` beside it).
      num_threads: interpreter threads.

    Raises:
      ModelError: missing/corrupt model or metadata, or signatures that do not match.
    """

    def __init__(self, model_path: str, meta_path: str | None = None, num_threads: int = 1):
        if not os.path.isfile(model_path):
            raise ModelError(f"{model_path}: model file not found")
        self.path = model_path
        self.meta = read_meta(model_path, meta_path)
        interpreter_cls, self.runtime = _interpreter_class()
        try:
            self.interpreter = interpreter_cls(model_path=model_path, num_threads=num_threads)
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"{model_path}: not a loadable TFLite model ({e})") from e
        signatures = self.interpreter.get_signature_list()
        needed = ("train", "distill", "infer", "get_weights", "set_weights")
        missing = [s for s in needed if s not in signatures]
        if missing:
            raise ModelError(f"{model_path}: missing signatures {missing}; has {sorted(signatures)}")
        self._runners = {name: self.interpreter.get_signature_runner(name) for name in needed}
        self.batch_size = int(self.meta["batch_size"])
        self.class_names = list(self.meta["class_names"])
        self.num_classes = len(self.class_names)
        self.input_shape = tuple(int(d) for d in self.meta["input"]["shape"])
        inputs = self._runners["train"].get_input_details()
        if tuple(inputs["x"]["shape"]) != (self.batch_size, *self.input_shape):
            raise ModelError(f"{model_path}: train input is {tuple(inputs['x']['shape'])}, metadata says "
                             f"{(self.batch_size, *self.input_shape)}")
        self.weight_shapes = {k: tuple(v["shape"]) for k, v in self._runners["set_weights"].get_input_details().items()}

    # -- batching -----------------------------------------------------------------------------

    def _pad(self, x: np.ndarray, *others: np.ndarray):
        n = len(x)
        if n > self.batch_size:
            raise ValueError(f"a batch holds at most {self.batch_size} images. Received: {n}")
        pad = self.batch_size - n
        w = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
        xs = np.concatenate([x.astype(np.float32), np.zeros((pad, *x.shape[1:]), np.float32)]) if pad else \
            x.astype(np.float32)
        rest = [np.concatenate([o, np.zeros((pad, *o.shape[1:]), o.dtype)]) if pad else o for o in others]
        return xs, w, rest

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Logits [N, K] of any number of raw-pixel images [N, H, W, C]."""
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            x, _, _ = self._pad(chunk)
            out.append(self._runners["infer"](x=x)["logits"][: len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)

    def features(self, images: np.ndarray) -> np.ndarray:
        """The classifier's input [N, F] of any number of raw-pixel images.

        Raises:
          ModelError: the model was exported without a `features` output.
        """
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            x, _, _ = self._pad(chunk)
            result = self._runners["infer"](x=x)
            if "features" not in result:
                raise ModelError(f"{self.path}: its infer signature has no features output (export it again with this "
                                 "version to initialise new classes from their images)")
            out.append(result["features"][: len(chunk)])
        return np.concatenate(out)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities [N, K]."""
        z = self.logits(images)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def train_batch(self, images: np.ndarray, labels: np.ndarray, lr: float) -> tuple[float, float]:
        """One SGD step on up to `batch_size` labelled images; returns (loss, accuracy)."""
        x, w, (y,) = self._pad(images, np.asarray(labels, np.int32))
        out = self._runners["train"](x=x, y=y, w=w, lr=np.float32(lr))
        return float(out["loss"]), float(out["accuracy"])

    def distill_batch(self, images: np.ndarray, soft_targets: np.ndarray, lr: float, temperature: float) -> float:
        """One SGD step towards soft targets (teacher probabilities at `temperature`)."""
        x, w, (t,) = self._pad(images, np.asarray(soft_targets, np.float32))
        out = self._runners["distill"](x=x, soft_targets=t, w=w, lr=np.float32(lr),
                                       temperature=np.float32(temperature))
        return float(out["loss"])

    # -- persistence --------------------------------------------------------------------------

    def get_weights(self) -> dict[str, np.ndarray]:
        """Every variable (weights, BN statistics, momenta) as numpy arrays."""
        return {k: np.array(v) for k, v in self._runners["get_weights"]().items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Restores variables saved by `get_weights`.

        Raises:
          ModelError: names or shapes do not match this model.
        """
        missing = sorted(set(self.weight_shapes) - set(weights))
        extra = sorted(set(weights) - set(self.weight_shapes))
        if missing or extra:
            raise ModelError(f"weights do not match {self.path}: missing {missing[:5]}{'...' if len(missing) > 5 else ''}"
                             f", unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}")
        for k, shape in self.weight_shapes.items():
            if tuple(np.shape(weights[k])) != shape:
                raise ModelError(f"weight {k!r} has shape {tuple(np.shape(weights[k]))}, the model needs {shape}")
        self._runners["set_weights"](**{k: np.asarray(v, np.float32) for k, v in weights.items()})
