"""Multi-device training through existing engines: tf.distribute (TF backend) or
keras.distribution (JAX backend).

`distribution_scope(name)` returns a context manager under which the model is built,
compiled and loaded; `Model.fit` then runs data-parallel on every device of the engine.
"""

from __future__ import annotations

import contextlib
import os

import keras
from absl import logging

DISTRIBUTIONS = ("none", "auto", "mirrored", "multi_worker", "data_parallel")


def split_cpu(num_devices: int) -> None:
    """Splits the host CPU into `num_devices` logical devices (TF backend) so that
    multi-device training can be exercised without accelerators.

    Must run before TensorFlow initialises its devices. Under JAX, set
    `XLA_FLAGS=--xla_force_host_platform_device_count=N` before starting Python instead.

    Raises:
      RuntimeError: TensorFlow's devices are already initialised.
      ValueError: num_devices < 1.
    """
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1. Received: {num_devices}")
    if keras.backend.backend() != "tensorflow":
        raise ValueError("split_cpu configures TensorFlow devices; under JAX set "
                         "XLA_FLAGS=--xla_force_host_platform_device_count=N before starting Python. "
                         f"Received backend: {keras.backend.backend()}")
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_devices)


def _accelerators_tf():
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return gpus or tf.config.list_logical_devices("CPU")


def distribution_scope(name: str) -> contextlib.AbstractContextManager:
    """A context manager for building/compiling/loading a model under a distribution.

    Args:
      name: "none" (default device), "auto" (all local accelerators if more than one,
        else none), "mirrored" (tf.distribute.MirroredStrategy over all local GPUs, or all
        logical CPUs), "multi_worker" (tf.distribute.MultiWorkerMirroredStrategy; the cluster
        comes from TF_CONFIG), "data_parallel" (keras.distribution.DataParallel over all JAX
        devices).

    Raises:
      ValueError: unknown name, or an engine that does not exist on the current backend.
    """
    if name not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution; expected one of {DISTRIBUTIONS}. Received: {name!r}")
    backend = keras.backend.backend()
    if name == "auto":
        if backend == "jax":
            import jax

            name = "data_parallel" if len(jax.devices()) > 1 else "none"
        elif backend == "tensorflow":
            import tensorflow as tf

            name = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "none"
        else:
            name = "none"
    if name == "none":
        return contextlib.nullcontext()
    if name in ("mirrored", "multi_worker"):
        if backend != "tensorflow":
            raise ValueError(f"distribution={name!r} needs the TensorFlow backend (KERAS_BACKEND=tensorflow); "
                             f"use 'data_parallel' under JAX. Received backend: {backend}")
        import tensorflow as tf

        if name == "mirrored":
            devices = [d.name for d in _accelerators_tf()]
            strategy = tf.distribute.MirroredStrategy(devices=devices)
        else:
            if "TF_CONFIG" not in os.environ:
                logging.warning("multi_worker without TF_CONFIG runs as a single worker")
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        logging.info("distribution: %s over %d replicas", name, strategy.num_replicas_in_sync)
        return strategy.scope()
    # data_parallel
    if backend != "jax":
        raise ValueError("distribution='data_parallel' uses keras.distribution, which needs the JAX backend "
                         f"(KERAS_BACKEND=jax); use 'mirrored' under TensorFlow. Received backend: {backend}")
    devices = keras.distribution.list_devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    logging.info("distribution: data_parallel over %d JAX devices", len(devices))
    return contextlib.nullcontext()


def replicas_in_scope() -> int:
    """Replicas of the active distribution (1 when none)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.distribute.get_strategy().num_replicas_in_sync
    dist = keras.distribution.distribution()
    if dist is None:
        return 1
    return int(dist.device_mesh.shape[0]) if hasattr(dist, "device_mesh") else 1
