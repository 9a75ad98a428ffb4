"""Saving and loading the `.keras` models that stages hand to each other."""

from __future__ import annotations

import os

import keras

from edgekt import atomic
from edgekt.errors import UserError


def _policy_config(config, policy: str):
    """Rewrites every layer's dtype policy in a (nested) model config to `policy`."""
    if isinstance(config, dict):
        out = {k: _policy_config(v, policy) for k, v in config.items()}
        dtype = out.get("dtype")
        if "layers" not in out and "inbound_nodes" not in out and isinstance(dtype, dict) \
                and dtype.get("class_name") == "DTypePolicy":
            out["dtype"] = policy
        return out
    if isinstance(config, list):
        return [_policy_config(v, policy) for v in config]
    return config


def with_dtype_policy(model: keras.Model, policy: str) -> keras.Model:
    """A copy of `model` whose layers all use the Keras dtype policy `policy` (e.g.
    "mixed_bfloat16" to fine-tune fast, "float32" to save), with the same weights and no
    optimizer or compile state."""
    copy = type(model).from_config(_policy_config(model.get_config(), policy))
    copy.set_weights(model.get_weights())
    return copy


def float32_copy(model: keras.Model) -> keras.Model:
    """A float32 copy of `model` without optimizer or compile state: what stages save and
    users load (a model trained under mixed precision carries that policy in its configs)."""
    return with_dtype_policy(model, "float32")


def _output_layer(model: keras.Model):
    if isinstance(model, keras.Sequential):
        return model.layers[-1] if model.layers else None
    history = getattr(model.outputs[0], "_keras_history", None) if getattr(model, "outputs", None) else None
    return getattr(history, "operation", None) if history is not None else None


def ends_in_softmax(model: keras.Model) -> bool:
    """Whether `model`'s output layer applies a softmax (a Softmax layer, or any layer with
    `activation="softmax"`): its outputs are probabilities, not logits."""
    layer = _output_layer(model)
    if layer is None:
        return False
    return isinstance(layer, keras.layers.Softmax) or getattr(layer, "get_config", dict)().get("activation") == "softmax"


def _linear_output_config(config, name: str):
    if isinstance(config, dict):
        if config.get("config", {}).get("name") == name and "class_name" in config:
            return {**config, "config": {**config["config"], "activation": "linear"}}
        return {k: _linear_output_config(v, name) for k, v in config.items()}
    if isinstance(config, list):
        return [_linear_output_config(v, name) for v in config]
    return config


def logits_model(model: keras.Model) -> keras.Model:
    """`model` itself when it outputs logits; when its output layer applies a softmax, a model
    of the same weights (a copy, or for a Softmax layer the model up to it) whose output is linear, so its outputs are the logits. The one place
    that makes a softmax-ending model usable where logits are meant (soft labels, distillation,
    pruning, evaluation)."""
    if not ends_in_softmax(model):
        return model
    layer = _output_layer(model)
    if isinstance(layer, keras.layers.Softmax):  # no weights: the model up to its input
        if isinstance(model, keras.Sequential):
            return keras.Sequential([keras.Input(model.input_shape[1:]), *model.layers[:-1]], name=model.name)
        return keras.Model(model.inputs, layer.input, name=model.name)
    copy = type(model).from_config(_linear_output_config(model.get_config(), _output_layer(model).name))
    copy.set_weights(model.get_weights())
    return copy


def save_model(model: keras.Model, path: str | os.PathLike) -> str:
    """Saves a float32, optimizer-free copy of `model` atomically to `path` (.keras)."""
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise UserError(f"{path}: model files must end with .keras; name the output file *.keras")
    bad = nonfinite_weights(model)
    if bad:
        raise UserError(f"{path}: not written, the model holds NaN or inf in {len(bad)} weight(s) (first: {bad[0]}), "
                        "so training diverged; run again with a lower learning rate")
    atomic.write_with(path, float32_copy(model).save, suffix=".keras")
    return path


def load_model(path: str | os.PathLike) -> keras.Model:
    """Loads a `.keras` model without compiling it.

    Raises:
      UserError: the file does not exist or is not a readable `.keras` model.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such model file{' (it is a folder)' if os.path.isdir(path) else ''}; "
                        "pass the path of a .keras file")
    if not path.endswith(".keras"):
        raise UserError(f"{path}: not a .keras file; pass a model saved by Keras 3 as .keras "
                        "(convert .h5/SavedModel models with keras.models.load_model(...).save('model.keras'))")
    import zipfile

    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a .keras archive (not a zip file); pass a model saved by Keras 3 as .keras")
    lambdas = [name for name, cls in layer_classes(path) if cls == "Lambda"]
    if lambdas:
        raise UserError(f"{path}: holds Lambda layer(s) {lambdas}, whose Python code is not loaded from a file (it "
                        "could run anything); replace them with built-in layers")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for a bad archive.
        why = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        raise UserError(f"{path}: not a readable .keras model ({why}); pass a model saved by Keras 3 as .keras, "
                        "with any custom layers registered") from e
    bad = nonfinite_weights(model)
    if bad:
        raise UserError(f"{path}: holds NaN or inf in {len(bad)} weight(s) (first: {bad[0]}), from training that "
                        "diverged; train it again with a lower learning rate")
    return model


def nonfinite_weights(model: keras.Model) -> list[str]:
    """Paths of the model's weights that hold NaN or inf."""
    import numpy as np

    return [v.path for v in model.weights if not np.isfinite(keras.ops.convert_to_numpy(v)).all()]


SIDECAR = "metrics.json"


def read_sidecar(model_path: str | os.PathLike, required: bool = False) -> dict:
    """The `metrics.json` a stage writes beside its model (class names, the validation split and
    device pool the model was trained without); {} when there is none and it is not required.

    Raises:
      UserError: it is required and missing, or it is not a JSON object.
    """
    import json

    path = os.path.join(os.path.dirname(os.path.abspath(os.fspath(model_path))), SIDECAR)
    if not os.path.exists(path):
        if required:
            raise UserError(f"{path}: missing; keep the metrics.json the stage wrote beside {model_path} (it holds the "
                            "validation split and device pool the model was trained without)")
        return {}
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({type(e).__name__}: {e}); restore the metrics.json the stage wrote, "
                        "or remove it and pass what it held by flags") from e
    if not isinstance(info, dict):
        raise UserError(f"{path}: not a JSON object; restore the metrics.json the stage wrote")
    for key, fields in (("config", ("val_size", "seed")), ("device_pool", ("size",))):
        part = info.get(key)
        if part is None:
            continue
        if not isinstance(part, dict):
            raise UserError(f"{path}: {key!r} is {json.dumps(part)[:60]}, not a JSON object; restore the metrics.json "
                            "the stage wrote")
        for field in fields:
            value = part.get(field)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise UserError(f"{path}: {key}.{field} is {json.dumps(value)[:60]}, not an integer >= 0; restore "
                                "the metrics.json the stage wrote")
    return info


def sidecar_class_names(model_path: str | os.PathLike) -> list[str] | None:
    """The class names in the metrics.json beside a model (None: no such file or no names).

    Raises:
      UserError: the file is unreadable, or its `class_names` is not a list of distinct,
        non-empty strings.
    """
    names = read_sidecar(model_path).get("class_names")
    if names is None:
        return None
    if not (isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)
            and len(set(names)) == len(names)):
        path = os.path.join(os.path.dirname(os.path.abspath(os.fspath(model_path))), SIDECAR)
        raise UserError(f"{path}: its class_names is not a list of distinct, non-empty names; fix it or pass "
                        "--class_names")
    return names


def layer_classes(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(name, class name) of every layer in a `.keras` file, read from its config without
    running any code the file holds (a Lambda's Python code is never loaded). Layers of nested
    models are listed after their model.

    Raises:
      UserError: the file is missing or not a `.keras` archive.
    """
    import json
    import zipfile

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such model file; pass the path of a .keras file")
    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
        raise UserError(f"{path}: not a .keras archive ({type(e).__name__}); pass a model saved by Keras 3 as "
                        ".keras") from e
    found = []

    def visit(entry):
        if not isinstance(entry, dict):
            return
        body = entry.get("config") if isinstance(entry.get("config"), dict) else {}
        found.append((str(body.get("name", "?")), str(entry.get("class_name", "?"))))
        for layer in body.get("layers", []) or []:
            visit(layer)

    body = config.get("config") if isinstance(config, dict) else None
    for layer in (body or {}).get("layers", []) or []:
        visit(layer)
    return found


def fingerprint(model: keras.Model) -> str:
    """sha256 of a model's weights (values and shapes, in layer order): what identifies the
    model a resumed run must match, whatever file it came from."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for v in model.weights:
        value = np.ascontiguousarray(np.asarray(v.numpy(), dtype=np.float32))
        h.update(str(value.shape).encode())
        h.update(value.tobytes())
    return h.hexdigest()
