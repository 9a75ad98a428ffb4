"""The exported model's signatures behind a small numpy API (no TensorFlow).

Uses `ai_edge_litert` or `tflite_runtime` (`runtime`: "auto" takes `ai_edge_litert` when both are
installed). Batches are padded to the model's fixed batch size with zero-weight examples, so
callers pass any number of images.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile

import numpy as np

from tflite_runtime_app.errors import UserError, from_os_error


# model_meta.json holds names and shapes: a few KiB, up to a few MiB for a large network.
MAX_META_BYTES = 64 << 20


class ModelError(UserError):
    """The model or its metadata is missing, unreadable or inconsistent."""


class NonFiniteOutputs(ModelError):
    """The model's outputs overflow to NaN or inf (weights finite but far too large)."""


RUNTIMES = ("auto", "ai_edge_litert", "tflite_runtime")
_PACKAGES = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}


def _interpreter_class(runtime: str = "auto"):
    """(Interpreter class, package name) of `runtime`; "auto" takes ai_edge_litert when both
    are installed."""
    if runtime not in RUNTIMES:
        raise ModelError(f"--runtime={runtime}: not one of {', '.join(RUNTIMES)}; pass one of them")
    for name in (("ai_edge_litert", "tflite_runtime") if runtime == "auto" else (runtime,)):
        try:
            if name == "ai_edge_litert":
                from ai_edge_litert.interpreter import Interpreter
            else:
                from tflite_runtime.interpreter import Interpreter
            return Interpreter, name
        except ImportError:
            continue
    if runtime == "auto":
        raise ModelError("TFLite interpreter: neither ai_edge_litert nor tflite_runtime is installed; install "
                         "`ai-edge-litert` or `tflite-runtime` (see BUILD_NOTES.md)")
    other = "tflite_runtime" if runtime == "ai_edge_litert" else "ai_edge_litert"
    raise ModelError(f"--runtime={runtime}: the {_PACKAGES[runtime]} package is not installed in this Python; install "
                     f"it, or pass --runtime=auto (or {other})")


def runtime_name(runtime: str = "auto") -> str:
    """Which interpreter package `runtime` resolves to."""
    return _interpreter_class(runtime)[1]


def runtime_version(name: str) -> str | None:
    """The installed version of the interpreter package `name` (None if unknown)."""
    try:
        from importlib import metadata

        return metadata.version(_PACKAGES[name])
    except Exception:  # noqa: BLE001 - a version is informative only
        return None


# The signature version this app speaks (`signature_version` in model_meta.json).
SIGNATURE_VERSION = 1
_SIGNATURES = {
    # name: (inputs, outputs) the app uses
    "train": ({"x", "y", "w", "lr"}, {"loss", "accuracy"}),
    "distill": ({"x", "soft_targets", "w", "lr", "temperature"}, {"loss"}),
    "infer": ({"x"}, {"logits"}),
    "get_weights": (set(), set()),
    "set_weights": (set(), set()),
}
_EXPORT_AGAIN = "export the model again (model_meta.json is written next to model_trainable.tflite)"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _string_list(meta: dict, key: str, meta_path: str, *, required: bool = True, unique: bool = True) -> list[str]:
    value = meta.get(key, None if required else [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ModelError(f"{meta_path}: {key!r} must be a list of non-empty strings. Received: "
                         f"{json.dumps(value)[:120]}; {_EXPORT_AGAIN}")
    if unique:
        twice = sorted({v for v in value if value.count(v) > 1})
        if twice:
            raise ModelError(f"{meta_path}: {key!r} lists {twice[:5]} more than once; {_EXPORT_AGAIN}")
    return value


def read_meta(model_path: str, meta_path: str | None = None) -> dict:
    """Reads and checks the metadata JSON written beside the model (model_meta.json).

    Raises:
      ModelError: missing, unreadable or malformed file, or fields of the wrong type or
        meaning; the message names the file and the field.
    """
    meta_path = meta_path or os.path.join(os.path.dirname(os.path.abspath(model_path)), "model_meta.json")
    if os.path.isdir(meta_path):
        raise ModelError(f"{meta_path}: is a folder, not a metadata file; pass the model_meta.json inside it to --meta")
    if not os.path.exists(meta_path):
        raise ModelError(f"{meta_path}: metadata file not found; keep the model_meta.json exported with the model "
                         "beside it, or pass it with --meta")
    if not os.path.isfile(meta_path):
        raise ModelError(f"{meta_path}: not a regular file (a pipe, device or socket); pass the model_meta.json file")
    size = os.path.getsize(meta_path)
    if size > MAX_META_BYTES:
        raise ModelError(f"{meta_path}: {size} bytes, more than the {MAX_META_BYTES} a metadata file may have; pass "
                         "the model_meta.json exported with the model")
    try:
        with open(meta_path, "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
    except OSError as e:
        error = from_os_error(e, path=meta_path)
        if error is None:
            raise
        raise ModelError(str(error)) from e
    except UnicodeDecodeError as e:
        raise ModelError(f"{meta_path}: not UTF-8 text ({e}); {_EXPORT_AGAIN}") from e
    except ValueError as e:  # invalid JSON, or a number too long to convert
        raise ModelError(f"{meta_path}: not valid JSON ({' '.join(str(e).split())[:160]}); {_EXPORT_AGAIN}") from e
    except RecursionError as e:
        raise ModelError(f"{meta_path}: JSON nested too deeply; {_EXPORT_AGAIN}") from e
    if not isinstance(meta, dict):
        raise ModelError(f"{meta_path}: holds a JSON {type(meta).__name__}, not an object; {_EXPORT_AGAIN}")
    missing = [k for k in ("class_names", "batch_size", "input", "weight_names", "signature_version") if k not in meta]
    if missing:
        raise ModelError(f"{meta_path}: metadata has no {', '.join(repr(k) for k in missing)}; {_EXPORT_AGAIN}")
    if type(meta["signature_version"]) is not int or meta["signature_version"] != SIGNATURE_VERSION:
        raise ModelError(f"{meta_path}: signature_version is {json.dumps(meta['signature_version'])}, this app "
                         f"speaks version {SIGNATURE_VERSION}; export the model with the matching edgekt version")
    names = _string_list(meta, "class_names", meta_path)
    if not names:
        raise ModelError(f"{meta_path}: 'class_names' is empty; {_EXPORT_AGAIN}")
    new = _string_list(meta, "new_class_names", meta_path, required=False)
    if set(new) - set(names):
        raise ModelError(f"{meta_path}: new_class_names {sorted(set(new) - set(names))} are not in class_names; "
                         f"{_EXPORT_AGAIN}")
    if "num_classes" in meta and meta["num_classes"] != len(names):
        raise ModelError(f"{meta_path}: num_classes is {json.dumps(meta['num_classes'])} but class_names lists "
                         f"{len(names)}; {_EXPORT_AGAIN}")
    batch = meta["batch_size"]
    if not _is_int(batch) or batch < 1:
        raise ModelError(f"{meta_path}: batch_size must be an integer >= 1. Received: {json.dumps(batch)}; "
                         f"{_EXPORT_AGAIN}")
    shape = meta["input"].get("shape") if isinstance(meta["input"], dict) else None
    if not isinstance(shape, list) or len(shape) != 3 or not all(_is_int(d) and d >= 1 for d in shape):
        received = shape if isinstance(meta["input"], dict) else meta["input"]
        raise ModelError(f"{meta_path}: input.shape must be [height, width, channels] of integers >= 1. Received: "
                         f"{json.dumps(received)[:120]}; {_EXPORT_AGAIN}")
    if shape[-1] != 3:
        raise ModelError(f"{meta_path}: input.shape {shape} has {shape[-1]} channel(s); the app feeds RGB images (3 "
                         "channels), so export an RGB model")
    weights = _string_list(meta, "weight_names", meta_path)
    classifier = meta.get("classifier_weights")
    if classifier is not None:
        if (not isinstance(classifier, dict) or not all(isinstance(v, str) for v in classifier.values())
                or set(classifier) - {"kernel", "bias"}):
            raise ModelError(f"{meta_path}: classifier_weights must map 'kernel' (and 'bias') to weight names. "
                             f"Received: {json.dumps(classifier)[:120]}; {_EXPORT_AGAIN}")
        unknown = sorted(set(classifier.values()) - set(weights))
        if unknown:
            raise ModelError(f"{meta_path}: classifier_weights names {unknown}, which are not in weight_names; "
                             f"{_EXPORT_AGAIN}")
    for key, kind in (("inference_model", str), ("options", dict), ("signatures", dict)):
        if key in meta and not isinstance(meta[key], kind):
            raise ModelError(f"{meta_path}: {key!r} must be a JSON {'string' if kind is str else 'object'}. "
                             f"Received: {json.dumps(meta[key])[:120]}; {_EXPORT_AGAIN}")
    inference = meta.get("inference_model")
    if inference is not None and (inference in ("", ".", "..") or os.path.basename(inference) != inference
                                  or "/" in inference or "\\" in inference):
        raise ModelError(f"{meta_path}: 'inference_model' must name a file beside the model, not a path. Received: "
                         f"{json.dumps(inference)[:120]}; {_EXPORT_AGAIN}")
    _string_list(meta, "trainable_weights", meta_path, required=False)
    return meta


# What the runtimes print on stderr when all is well (their C++ logging, which Python cannot
# configure); kept off stderr so that an error is the only line there.
_NOTICES = re.compile(r"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.\s*|"
                      r"INFO: Initialized TensorFlow Lite runtime\.\s*")


@contextlib.contextmanager
def _quiet_runtime_notices():
    """Captures what the runtime writes to stderr (file descriptor 2) meanwhile and passes it on,
    less the routine notices (`_NOTICES`); without a temporary file, passes everything."""
    try:
        capture = tempfile.TemporaryFile()
        saved = os.dup(2)
    except OSError:
        yield
        return
    sys.stderr.flush()
    os.dup2(capture.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        capture.seek(0)
        text = _NOTICES.sub("", capture.read().decode("utf-8", "replace"))
        capture.close()
        if text.strip():
            sys.stderr.write(text)
            sys.stderr.flush()


class _QuietFirstCall:
    """A signature runner whose first call (where the runtime applies its delegate and says so
    on stderr) runs under `_quiet_runtime_notices`."""

    def __init__(self, runner):
        self._runner, self._first = runner, True

    def __call__(self, **inputs):
        if self._first:
            self._first = False
            with _quiet_runtime_notices():
                return self._runner(**inputs)
        return self._runner(**inputs)

    def __getattr__(self, name):
        return getattr(self._runner, name)


def _check_model_file(model_path: str) -> None:
    """Refuses what is plainly not a TFLite model before the interpreter sees it."""
    if os.path.isdir(model_path):
        inside = os.path.join(model_path, "model_trainable.tflite")
        todo = f"pass {inside}" if os.path.isfile(inside) else "pass the model_trainable.tflite file"
        raise ModelError(f"{model_path}: is a folder, not a model file; {todo}")
    if not os.path.exists(model_path):
        raise ModelError(f"{model_path}: model file not found; check the path (the export writes "
                         "model_trainable.tflite)")
    if not os.path.isfile(model_path):
        raise ModelError(f"{model_path}: not a regular file (a pipe, device or socket); pass the "
                         "model_trainable.tflite file")
    try:
        with open(model_path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        error = from_os_error(e, path=model_path)
        if error is None:
            raise
        raise ModelError(str(error)) from e
    if not head:
        raise ModelError(f"{model_path}: the file is empty; copy the exported model_trainable.tflite again")
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise ModelError(f"{model_path}: not a TFLite model (no TFL3 identifier); pass the model_trainable.tflite "
                         "written by the export")


class DeviceModel:
    """A trainable exported model: infer, train, distill, and weights in and out.

    Args:
      model_path: the `model_trainable.tflite` file.
      meta_path: its metadata (default: `model_meta.json` beside it).
      num_threads: interpreter threads.
      runtime: "auto" (ai_edge_litert if installed, else tflite_runtime), "ai_edge_litert" or
        "tflite_runtime".

    Raises:
      ModelError: missing/corrupt model or metadata, signatures that do not match, or metadata
        that disagrees with the model (classes, batch size, input shape, weight names).
    """

    def __init__(self, model_path: str, meta_path: str | None = None, num_threads: int = 1, runtime: str = "auto"):
        _check_model_file(model_path)
        self.path = model_path
        self.meta = read_meta(model_path, meta_path)
        self.meta_path = meta_path or os.path.join(os.path.dirname(os.path.abspath(model_path)), "model_meta.json")
        interpreter_cls, self.runtime = _interpreter_class(runtime)
        try:
            with _quiet_runtime_notices():
                self.interpreter = interpreter_cls(model_path=model_path, num_threads=num_threads)
                # tflite-runtime applies its default delegate (XNNPACK) to every subgraph only here:
                # signature runners alone would leave every op on the builtin kernels.
                self.interpreter.allocate_tensors()
            signatures = self.interpreter.get_signature_list()
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"{model_path}: not a loadable TFLite model ({' '.join(str(e).split())}); copy the "
                             "exported model_trainable.tflite again") from e
        missing = [s for s in _SIGNATURES if s not in signatures]
        if missing:
            raise ModelError(f"{model_path}: not a trainable edgekt model (missing signatures {missing}; has "
                             f"{sorted(signatures)}); pass the model_trainable.tflite written by the export")
        try:
            self._runners = {name: _QuietFirstCall(self.interpreter.get_signature_runner(name))
                             for name in _SIGNATURES}
            details = {name: (runner.get_input_details(), runner.get_output_details())
                       for name, runner in self._runners.items()}
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"{model_path}: its signatures cannot be prepared ({' '.join(str(e).split())}); copy the "
                             "exported model_trainable.tflite again") from e
        for name, (inputs, outputs) in _SIGNATURES.items():
            lacking = sorted((inputs - set(details[name][0])) | (outputs - set(details[name][1])))
            if lacking:
                raise ModelError(f"{model_path}: signature {name!r} lacks {lacking}; pass a model_trainable.tflite "
                                 "exported by this edgekt version")
        self.batch_size = int(self.meta["batch_size"])
        self.class_names = list(self.meta["class_names"])
        self.num_classes = len(self.class_names)
        self.input_shape = tuple(int(d) for d in self.meta["input"]["shape"])
        x_shape = tuple(int(d) for d in details["train"][0]["x"]["shape"])
        meta_name = os.path.basename(self.meta_path)
        if x_shape[:1] != (self.batch_size,):
            raise ModelError(f"{self.meta_path}: batch_size is {self.batch_size} but {os.path.basename(model_path)} "
                             f"takes batches of {x_shape[0]}; use the {meta_name} exported with this model")
        if x_shape[1:] != self.input_shape:
            raise ModelError(f"{self.meta_path}: input shape is {list(self.input_shape)} but "
                             f"{os.path.basename(model_path)} takes {list(x_shape[1:])}; use the {meta_name} exported "
                             "with this model")
        logits = tuple(int(d) for d in details["infer"][1]["logits"]["shape"])
        if logits[-1:] != (self.num_classes,):
            raise ModelError(f"{self.meta_path}: names {self.num_classes} classes but {os.path.basename(model_path)} "
                             f"has {logits[-1] if logits else 0} outputs; use the {meta_name} exported with this model")
        self.weight_shapes = {k: tuple(int(d) for d in v["shape"]) for k, v in details["set_weights"][0].items()}
        self.signature_inputs = {name: {k: [int(d) for d in v["shape"]] for k, v in sorted(ins.items())}
                                 for name, (ins, _) in details.items()}
        if set(self.meta["weight_names"]) != set(self.weight_shapes) or set(details["get_weights"][1]) != set(
                self.weight_shapes):
            differ = sorted(set(self.meta["weight_names"]) ^ set(self.weight_shapes))
            raise ModelError(f"{self.meta_path}: weight_names differ from the weights of "
                             f"{os.path.basename(model_path)} ({len(differ)} differ, e.g. {differ[:3]}); use the "
                             f"{meta_name} exported with this model")
        classifier = self.meta.get("classifier_weights") or {}
        kernel = self.weight_shapes.get(classifier.get("kernel"))
        bias = self.weight_shapes.get(classifier.get("bias")) if "bias" in classifier else None
        if (kernel is not None and (len(kernel) != 2 or kernel[1] != self.num_classes)) or \
                (bias is not None and bias != (self.num_classes,)):
            raise ModelError(f"{self.meta_path}: classifier_weights names {classifier.get('kernel')!r} of shape "
                             f"{list(kernel or ())}" + (f" and {classifier.get('bias')!r} of shape {list(bias)}"
                                                       if bias is not None else "")
                             + f", not a classifier's [features, {self.num_classes}] kernel and "
                             f"[{self.num_classes}] bias; use the {meta_name} exported with this model")
        for name, value in sorted(self.get_weights().items()):
            bad = int(np.count_nonzero(~np.isfinite(value))) if value.dtype.kind == "f" else 0
            if bad:
                raise ModelError(f"{model_path}: its weight {name!r} holds NaN or inf ({bad} value"
                                 f"{'s' if bad > 1 else ''}); export the model again from a sound Keras model")

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
        logits = np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)
        bad = ~np.isfinite(logits).all(axis=1)
        if bad.any():
            raise NonFiniteOutputs(f"{self.path}: its outputs are NaN or inf for {int(bad.sum())} of {len(logits)} images "
                             "(its weights, or the checkpoint's, are too large: finite but overflowing); use another "
                             "checkpoint, or export the model again")
        return logits

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
                raise ModelError(f"{self.path}: its infer signature has no features output; export it again with this "
                                 "version to initialise new classes from their images, or pass --head_init=none")
            out.append(result["features"][: len(chunk)])
        return np.concatenate(out)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities [N, K]."""
        z = self.logits(images)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def _number(self, signature: str, name: str, value: float) -> np.ndarray:
        """`value` in the shape the signature's input has: [1] in current exports (ai-edge-litert
        2.3 crashes on aarch64 when a 0-d input is set), 0-d in models exported before."""
        return np.full(self.signature_inputs[signature][name], value, np.float32)

    def train_batch(self, images: np.ndarray, labels: np.ndarray, lr: float) -> tuple[float, float]:
        """One SGD step on up to `batch_size` labelled images; returns (loss, accuracy)."""
        x, w, (y,) = self._pad(images, np.asarray(labels, np.int32))
        out = self._runners["train"](x=x, y=y, w=w, lr=self._number("train", "lr", lr))
        return float(out["loss"]), float(out["accuracy"])

    def distill_batch(self, images: np.ndarray, soft_targets: np.ndarray, lr: float, temperature: float) -> float:
        """One SGD step towards soft targets (teacher probabilities at `temperature`)."""
        x, w, (t,) = self._pad(images, np.asarray(soft_targets, np.float32))
        out = self._runners["distill"](x=x, soft_targets=t, w=w, lr=self._number("distill", "lr", lr),
                                       temperature=self._number("distill", "temperature", temperature))
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
            raise ModelError(f"{self.path}: the weights do not match it (missing {missing[:5]}"
                             f"{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
                             f"{'...' if len(extra) > 5 else ''}); use weights saved from this model")
        for k, shape in self.weight_shapes.items():
            if tuple(np.shape(weights[k])) != shape:
                raise ModelError(f"{self.path}: weight {k!r} has shape {tuple(np.shape(weights[k]))}, the model needs "
                                 f"{shape}; use weights saved from this model")
        self._runners["set_weights"](**{k: np.asarray(v, np.float32) for k, v in weights.items()})
