"""The TensorFlow Model Optimization Toolkit baseline: magnitude pruning (weights zeroed, not
removed) at the same parameter budget as a filter-pruned model, fine-tuned for the same
number of epochs, measured the same way (accuracy, real .tflite size, latency). `run` prunes
to one budget; `run_trajectory` follows the filter pruning's sweep: sparsity ramps from one
budget to the next in `step_epochs`, and each budget branches into `final_epochs` of
fine-tuning at constant sparsity, as each of our budgets does.

tfmot 0.8 works only with `tf_keras` (Keras 2) models, so the Keras 3 model is rebuilt layer
by layer in tf_keras and its weights copied; all tf_keras/tfmot code lives in this module.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from edgekt import atomic, data, evaluation
from edgekt.data import pipeline
from edgekt.models import graph as graph_walk
from edgekt.errors import UserError


@dataclasses.dataclass(frozen=True)
class MagnitudeConfig:
    """Fine-tuning of the magnitude-pruned model.

    The optimizer is ours (`edgekt.train.optimizers.L2SGD`, cosine decay over each phase):
    callers pass the filter pruning's settings, so the two differ in the pruning and the loss
    only.

    Attributes:
      epochs: fine-tuning epochs (the same budget as the filter pruning's fine-tuning).
      batch_size, learning_rate, momentum, nesterov: SGD; `learning_rate` is the peak of each
        phase's cosine decay (`run`, and the ramps of `run_trajectory`).
      final_learning_rate: the peak of `run_trajectory`'s final fine-tunings (None: learning_rate).
      weight_decay: L2 added to the gradient of every kernel (rank >= 2), as `L2SGD` does.
      ramp_fraction: sparsity grows polynomially from 0 to the target over this fraction of
        the steps (tfmot's recommended schedule), then stays.
      train_size: a class-balanced subset of the training split (None: all).
      precision: tf_keras mixed-precision policy while fine-tuning ("mixed_bfloat16" is ~2x
        faster on CPUs with AVX512-BF16); the measured model is float32.
      seed: data order.
    """

    epochs: int = 4
    batch_size: int = 128
    learning_rate: float = 0.05
    final_learning_rate: float | None = None
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = True
    ramp_fraction: float = 0.6
    train_size: int | None = None
    precision: str = "float32"
    seed: int = 0


def to_tf_keras(model: keras.Model):
    """Rebuilds a Keras 3 functional model in tf_keras with the same weights.

    Raises:
      ValueError: a layer type without a translation.
    """
    import tf_keras

    graph = graph_walk.walk(model)
    L = tf_keras.layers
    tensors = {}
    for name in graph.order:
        layer = graph.model.get_layer(name)
        cls, c = graph.layer_class[name], layer.get_config()
        ins = [tensors[i] for i in graph.inputs[name]]
        if cls == "InputLayer":
            tensors[name] = tf_keras.Input(shape=tuple(layer.output.shape[1:]), name=name)
            continue
        if cls == "Conv2D":
            new = L.Conv2D(c["filters"], c["kernel_size"], strides=c["strides"], padding=c["padding"],
                           use_bias=c["use_bias"], activation=c["activation"], name=name)
        elif cls == "DepthwiseConv2D":
            new = L.DepthwiseConv2D(c["kernel_size"], strides=c["strides"], padding=c["padding"],
                                    depth_multiplier=c["depth_multiplier"], use_bias=c["use_bias"],
                                    activation=c["activation"], name=name)
        elif cls == "Dense":
            new = L.Dense(c["units"], use_bias=c["use_bias"], activation=c["activation"], name=name)
        elif cls == "BatchNormalization":
            new = L.BatchNormalization(axis=c["axis"], momentum=c["momentum"], epsilon=c["epsilon"],
                                       center=c["center"], scale=c["scale"], name=name)
        elif cls == "ReLU":
            new = L.ReLU(max_value=c.get("max_value"), negative_slope=c.get("negative_slope", 0.0),
                         threshold=c.get("threshold", 0.0), name=name)
        elif cls == "Activation":
            new = L.Activation(c["activation"], name=name)
        elif cls in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"):
            new = getattr(L, cls)(name=name)
        elif cls in ("MaxPooling2D", "AveragePooling2D"):
            new = getattr(L, cls)(pool_size=c["pool_size"], strides=c["strides"], padding=c["padding"], name=name)
        elif cls in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
            new = getattr(L, cls)(keepdims=c.get("keepdims", False), name=name)
        elif cls == "Flatten":
            new = L.Flatten(name=name)
        elif cls in ("Dropout", "SpatialDropout2D"):
            new = getattr(L, cls)(c["rate"], name=name)
        elif cls == "ZeroPadding2D":
            new = L.ZeroPadding2D(c["padding"], name=name)
        elif cls == "Rescaling":
            new = L.Rescaling(c["scale"], offset=c["offset"], name=name)
        elif cls == "Normalization":
            mean = c.get("mean") if c.get("mean") is not None else keras.ops.convert_to_numpy(layer.mean)
            var = c.get("variance") if c.get("variance") is not None else keras.ops.convert_to_numpy(layer.variance)
            new = L.Normalization(mean=np.reshape(mean, (-1,)), variance=np.reshape(var, (-1,)), name=name)
        elif cls in ("Identity", "Softmax"):
            new = L.Activation("linear" if cls == "Identity" else "softmax", name=name)
        else:
            raise ValueError(f"layer {name!r} ({cls}) has no tf_keras translation for the tfmot baseline")
        tensors[name] = new(ins if len(ins) > 1 else ins[0])
        if layer.weights and cls != "Normalization":
            new.set_weights([np.asarray(v.numpy()) for v in layer.weights])
    return tf_keras.Model(tensors[graph.order[0]], tensors[graph.output_layer], name=f"{model.name}_tf_keras")


def to_float32_tf_keras(tk_model):
    """A float32 copy of a tf_keras model trained under a mixed policy (same weights)."""
    import tf_keras

    config = tk_model.get_config()
    for layer in config["layers"]:
        if "dtype" in layer.get("config", {}):
            layer["config"]["dtype"] = "float32"
    copy = tf_keras.Model.from_config(config)
    copy.set_weights(tk_model.get_weights())
    return copy


def _prunable_counts(tk_model) -> tuple[int, int]:
    """(values in kernels tfmot prunes, all learnable values)."""
    kernels = sum(int(np.prod(w.shape)) for layer in tk_model.layers for w in layer.trainable_weights
                  if "kernel" in w.name and "depthwise" not in w.name)
    total = sum(int(np.prod(w.shape)) for w in tk_model.trainable_weights)
    return kernels, total


def sparsity_for_budget(tk_model, budget_params: int) -> float:
    """The kernel sparsity that leaves `budget_params` non-zero learnable values.

    Raises:
      ValueError: the budget is below what the unprunable values (biases, BN) need.
    """
    kernels, total = _prunable_counts(tk_model)
    fixed = total - kernels
    if budget_params <= fixed:
        raise UserError(f"budget of {budget_params:,} parameters: below the {fixed:,} values tfmot does not prune; "
                        "choose a larger budget for the baseline")
    return float(min(max(1.0 - (budget_params - fixed) / kernels, 0.0), 0.999))


def tflite_bytes(tk_or_fn, input_shape, quantization: str = "float32", representative: np.ndarray | None = None
                 ) -> bytes:
    """An inference .tflite of a tf_keras model (batch 1): float32, or int8 weights and
    activations (float input/output) calibrated on `representative` images."""
    @tf.function(input_signature=[tf.TensorSpec([1, *input_shape], tf.float32)])
    def infer(x):
        return tk_or_fn(x, training=False)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([infer.get_concrete_function()], tk_or_fn)
    if quantization == "int8":
        if representative is None or len(representative) == 0:
            raise ValueError("int8 quantization needs representative images")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([np.asarray(x, np.float32)[None]] for x in representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    elif quantization != "float32":
        raise ValueError(f"quantization must be 'float32' or 'int8'. Received: {quantization!r}")
    return converter.convert()


def _imports():
    try:
        import tensorflow_model_optimization as tfmot
        import tf_keras
    except ImportError as e:
        raise ImportError("the tfmot baseline needs tf_keras and tensorflow-model-optimization: "
                          "pip install -e '.[baseline]' (or run_all --skip_baseline)") from e
    return tfmot, tf_keras


def _base(teacher: keras.Model, precision: str):
    _, tf_keras = _imports()
    tf_keras.mixed_precision.set_global_policy(precision)
    try:
        return to_tf_keras(teacher)
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")


def _l2_sgd(tf_keras, learning_rate, config: MagnitudeConfig):
    """tf_keras SGD with `config.weight_decay * w` added to every kernel's gradient: the
    update of `edgekt.train.optimizers.L2SGD`, which tf_keras models cannot use."""

    class L2SGD(tf_keras.optimizers.SGD):
        def update_step(self, gradient, variable):
            if config.weight_decay and len(variable.shape) >= 2:
                gradient = gradient + tf.cast(config.weight_decay, variable.dtype) * variable
            return super().update_step(gradient, variable)

    return L2SGD(learning_rate, momentum=config.momentum, nesterov=config.nesterov)


def _fine_tune(base, weights, schedule, epochs: int, prepared: data.PreparedData, config: MagnitudeConfig,
               seed: int, learning_rate: float | None = None) -> tuple[list, float]:
    """Trains `base` (from `weights`) with its kernels magnitude-pruned by `schedule`, with a
    cosine decay from `learning_rate` (default `config.learning_rate`); returns the stripped
    weights and the seconds it took."""
    tfmot, tf_keras = _imports()
    start = time.perf_counter()   # wrapping and compiling count, as our steps' scoring and surgery do
    base.set_weights(weights)
    prunable = (tf_keras.layers.Conv2D, tf_keras.layers.Dense)

    def wrap(layer):
        # Only kernels are pruned (tfmot cannot wrap e.g. Normalization); other layers are
        # reused as they are, weights included.
        if isinstance(layer, prunable) and not isinstance(layer, tf_keras.layers.DepthwiseConv2D):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    def loss(y_true, logits):  # in float32 under a bfloat16 policy, as our distiller computes it
        return tf_keras.losses.categorical_crossentropy(y_true, tf.cast(logits, tf.float32), from_logits=True)

    pruned = tf_keras.models.clone_model(base, clone_function=wrap)
    steps = pipeline.steps_per_epoch(len(prepared.train.labels), config.batch_size)
    lr = tf_keras.optimizers.schedules.CosineDecay(learning_rate or config.learning_rate, max(steps * epochs, 1))
    pruned.compile(optimizer=_l2_sgd(tf_keras, lr, config), loss=loss, metrics=["accuracy"])
    ds = pipeline.train_dataset(prepared.train.images, prepared.train.labels, batch_size=config.batch_size,
                                num_classes=len(prepared.class_names), epochs=epochs, seed=seed)
    pruned.fit(ds, epochs=epochs, steps_per_epoch=steps, verbose=2, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    seconds = time.perf_counter() - start
    return tfmot.sparsity.keras.strip_pruning(pruned).get_weights(), seconds


def _measure(base, weights, teacher: keras.Model, prepared: data.PreparedData, representative: np.ndarray,
             out_dir: str, latency_repeats: int = 50) -> dict:
    """Accuracy (Keras, float32), non-zero parameters and the float32 and int8 files' figures."""
    from edgekt.export import measure

    base.set_weights(weights)
    final = to_float32_tf_keras(base)
    nonzero = int(sum(np.count_nonzero(w) for w in final.trainable_weights))
    val = evaluation.evaluate(final, prepared.val.images, prepared.val.labels) if prepared.val else None
    test = evaluation.evaluate(final, prepared.test.images, prepared.test.labels) if prepared.test else None
    shape = tuple(teacher.input_shape[1:])
    blob = tflite_bytes(final, shape)
    atomic.write_bytes(os.path.join(out_dir, "model_magnitude.tflite"), blob)
    int8 = tflite_bytes(final, shape, "int8", representative)
    atomic.write_bytes(os.path.join(out_dir, "model_magnitude_int8.tflite"), int8)
    f32 = measure.file_figures(blob, repeats=latency_repeats)
    q8 = measure.file_figures(int8, prepared.test.images if prepared.test else None,
                              prepared.test.labels if prepared.test else None, repeats=latency_repeats)
    return {
        "nonzero_params": nonzero,
        "stored_params": int(sum(int(np.prod(w.shape)) for w in final.trainable_weights)),
        "val_accuracy": val["accuracy"] if val else None,
        "test_accuracy": test["accuracy"] if test else None,
        "tflite_bytes": f32["bytes"], "tflite_gzip_bytes": f32["gzip_bytes"], "tflite_latency_ms": f32["latency_ms"],
        "int8_bytes": q8["bytes"], "int8_gzip_bytes": q8["gzip_bytes"], "int8_latency_ms": q8["latency_ms"],
        "int8_test_accuracy": q8.get("test_accuracy"),
    }


def run(teacher: keras.Model, budget_params: int, splits: data.DataSplits, out_dir: str, config: MagnitudeConfig,
        *, val_size: int = 5000, split_seed: int = 0, device_pool_size: int = 0) -> dict:
    """Magnitude-prunes `teacher` to `budget_params` non-zero parameters with tfmot, fine-tunes,
    and measures it. Writes `out_dir/metrics.json` and `out_dir/model_magnitude*.tflite`."""
    tfmot, _ = _imports()
    os.makedirs(out_dir, exist_ok=True)
    prepared = data.prepare_splits(splits, val_size=val_size, seed=split_seed, train_size=config.train_size,
                                   device_pool_size=device_pool_size, batch_size=config.batch_size)
    base = _base(teacher, config.precision)
    sparsity = sparsity_for_budget(base, budget_params)
    steps = pipeline.steps_per_epoch(len(prepared.train.labels), config.batch_size)
    end_step = max(1, int(config.ramp_fraction * steps * config.epochs))
    schedule = tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0,
                                                    end_step=end_step, frequency=max(1, min(100, end_step // 10)))
    weights, seconds = _fine_tune(base, base.get_weights(), schedule, config.epochs, prepared, config, config.seed)
    representative = data.stratified_subset(prepared.train, min(256, len(prepared.train.labels)), seed=0).images
    metrics = {"method": "tfmot magnitude pruning (prune_low_magnitude, PolynomialDecay)",
               "target_sparsity": sparsity, "budget_params": int(budget_params),
               **_measure(base, weights, teacher, prepared, representative, out_dir),
               "epochs": config.epochs, "finetune_seconds": seconds}
    atomic.write_json(os.path.join(out_dir, "metrics.json"), metrics)
    logging.info("tfmot baseline: sparsity %.4f, %s non-zero of %s, test top-1 %s, .tflite %d B", sparsity,
                 f"{metrics['nonzero_params']:,}", f"{metrics['stored_params']:,}", metrics["test_accuracy"],
                 metrics["tflite_bytes"])
    return metrics


def check_translation(teacher: keras.Model, images: np.ndarray | None = None) -> None:
    """Fails early when the tf_keras copy of `teacher` is missing or computes something else.

    Raises:
      ValueError: a layer without a translation, or outputs that differ (names the gap).
    """
    copy = to_tf_keras(teacher)
    x = images if images is not None else np.random.default_rng(0).uniform(0, 255, (4, *teacher.input_shape[1:]))
    x = np.asarray(x, np.float32)
    ours = keras.ops.convert_to_numpy(teacher(x, training=False))
    theirs = copy(x, training=False).numpy()
    gap = float(np.max(np.abs(ours - theirs)))
    if gap > 1e-3 * max(1.0, float(np.max(np.abs(ours)))):
        raise ValueError(f"the tf_keras copy of {teacher.name!r} for the tfmot baseline differs from it by up to {gap:.3g} "
                         "in its outputs; the baseline would prune another network")


def run_trajectory(teacher: keras.Model, budgets: list[tuple[float, int, int]], prepared: data.PreparedData,
                   out_dir: str, config: MagnitudeConfig, *, final_epochs: int, representative: np.ndarray,
                   latency_repeats: int = 50) -> list[dict]:
    """Magnitude pruning through several budgets, as the filter-pruning sweep goes through them.

    Args:
      teacher: the unpruned model.
      budgets: (ratio, non-zero parameters, ramp epochs) per budget, largest first; the ramp
        takes the sparsity from the previous budget's to this one's in that many epochs (the
        epochs our pruning spends between the two budgets).
      prepared: the data (train for fine-tuning; val and test measured).
      out_dir: writes `budget_<ratio>/` per budget (`ramp.npz` the weights after the ramp,
        `metrics.json`, the `.tflite` files); a killed run resumes from them when
        `identity.json` (teacher, data, settings) matches.
      config: SGD settings (its `epochs` is not used).
      final_epochs: epochs of each budget's fine-tuning at constant sparsity.

    Raises:
      ValueError: `out_dir` holds a run of another setup.
      representative: calibration images of the int8 files.

    Returns:
      Each reached budget's metrics, largest first.
    """
    from edgekt.models import saving

    tfmot, _ = _imports()
    os.makedirs(out_dir, exist_ok=True)
    identity = {"teacher": saving.fingerprint(teacher), "data": prepared.source, "train": len(prepared.train.labels),
                "budgets": [list(b) for b in budgets], "final_epochs": final_epochs,
                "config": dataclasses.asdict(config)}
    identity_path = os.path.join(out_dir, "identity.json")
    if os.path.exists(identity_path):
        with open(identity_path) as f:
            if json.load(f) != json.loads(json.dumps(identity)):
                raise UserError(f"{out_dir}: holds a tfmot run of another setup; use another folder or delete it")
    else:
        atomic.write_json(identity_path, identity)
    base = _base(teacher, config.precision)
    weights = base.get_weights()
    previous, ramp_seconds, results = 0.0, 0.0, []
    steps = pipeline.steps_per_epoch(len(prepared.train.labels), config.batch_size)
    for i, (ratio, budget, step_epochs) in enumerate(budgets):
        folder = os.path.join(out_dir, f"budget_{ratio:g}")
        os.makedirs(folder, exist_ok=True)
        sparsity = sparsity_for_budget(base, budget)
        ramp_path = os.path.join(folder, "ramp.npz")
        if os.path.exists(ramp_path):
            with np.load(ramp_path) as saved:
                weights = [saved[f"w{j}"] for j in range(len(saved.files) - 1)]
                seconds = float(saved["seconds"])
        else:
            end_step = max(1, int(config.ramp_fraction * steps * step_epochs))
            schedule = tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=previous, final_sparsity=sparsity,
                                                            begin_step=0, end_step=end_step,
                                                            frequency=max(1, min(100, end_step // 10)))
            weights, seconds = _fine_tune(base, weights, schedule, step_epochs, prepared, config, config.seed + i)
            atomic.write_with(ramp_path, lambda tmp, w=weights, s=seconds: np.savez(
                tmp, seconds=np.float64(s), **{f"w{j}": v for j, v in enumerate(w)}), suffix=".npz")
        ramp_seconds += seconds
        metrics_path = os.path.join(folder, "metrics.json")
        if os.path.exists(metrics_path):
            with open(metrics_path) as f:
                results.append(json.load(f))
        else:
            # Masks are recomputed every few steps; between updates the masked weights stay zero.
            schedule = tfmot.sparsity.keras.ConstantSparsity(sparsity, begin_step=0,
                                                             frequency=max(1, min(10, steps // 10)))
            final, final_seconds = _fine_tune(base, weights, schedule, final_epochs, prepared, config,
                                              config.seed + 100 + i, config.final_learning_rate)
            metrics = {"method": "tfmot", "budget_ratio": ratio, "budget_params": int(budget),
                       "target_sparsity": sparsity, "trajectory_seconds": ramp_seconds, "final_seconds": final_seconds,
                       "step_epochs": step_epochs, "final_epochs": final_epochs,
                       **_measure(base, final, teacher, prepared, representative, folder, latency_repeats)}
            atomic.write_json(metrics_path, metrics)
            results.append(metrics)
            logging.info("tfmot %g: %s non-zero, val top-1 %.4f, test top-1 %.4f", ratio,
                         f"{metrics['nonzero_params']:,}", metrics["val_accuracy"] or 0, metrics["test_accuracy"] or 0)
        previous = sparsity
    return results


__all__ = ["MagnitudeConfig", "run", "run_trajectory", "sparsity_for_budget", "to_tf_keras"]
