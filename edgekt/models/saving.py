"""Saving and loading the `.keras` models that stages hand to each other."""

from __future__ import annotations

import os

import keras

from edgekt import atomic


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


def save_model(model: keras.Model, path: str | os.PathLike) -> str:
    """Saves a float32, optimizer-free copy of `model` atomically to `path` (.keras)."""
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"model files must end with .keras. Received: {path}")
    atomic.write_with(path, float32_copy(model).save, suffix=".keras")
    return path


def load_model(path: str | os.PathLike) -> keras.Model:
    """Loads a `.keras` model without compiling it.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file is not a readable `.keras` model.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for a bad archive.
        raise ValueError(f"{path}: not a readable .keras model ({type(e).__name__}: {e})") from e


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
