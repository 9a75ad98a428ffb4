"""Saving and loading the `.keras` models that stages hand to each other."""

from __future__ import annotations

import os

import keras

from edgekt import atomic


def _float32_config(config):
    """Rewrites every layer's dtype policy in a (nested) model config to float32."""
    if isinstance(config, dict):
        out = {k: _float32_config(v) for k, v in config.items()}
        if "dtype" in out and isinstance(out.get("dtype"), (dict, str)) and "layers" not in out:
            dtype = out["dtype"]
            name = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
            if isinstance(name, str) and name.startswith("mixed_"):
                out["dtype"] = "float32"
        return out
    if isinstance(config, list):
        return [_float32_config(v) for v in config]
    return config


def float32_copy(model: keras.Model) -> keras.Model:
    """A copy of `model` with every layer in float32 and no optimizer or compile state.

    Models trained under a mixed-precision policy carry that policy in their layer
    configs; the copy is what later stages and users load.
    """
    copy = type(model).from_config(_float32_config(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


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
