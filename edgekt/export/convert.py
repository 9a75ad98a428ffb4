"""Conversion to TFLite: the trainable model (TFLITE_BUILTINS only, checked op by op), the
int8 / float16 inference model, and the metadata the device app reads."""

from __future__ import annotations

import dataclasses
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from edgekt import atomic
from edgekt.errors import UserError
from edgekt.export import op_check
from edgekt.export.device_trainer import SIGNATURE_VERSION, DeviceTrainer, TrainerOptions

TRAINABLE_FILE = "model_trainable.tflite"
META_FILE = "model_meta.json"
QUANTIZATIONS = ("int8", "float16", "float32")


def convert_trainer(trainer: DeviceTrainer) -> bytes:
    """Converts the trainer's signatures with TFLITE_BUILTINS only.

    Raises:
      op_check.NonBuiltinOpsError: an op is not a builtin (also raised by the converter).
    """
    signatures = trainer.signatures()
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, "saved_model")
        tf.saved_model.save(trainer, saved, signatures=signatures)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=list(signatures))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.experimental_enable_resource_variables = True
        try:
            model = converter.convert()
        except Exception as e:  # the converter's error lists the ops it could not lower
            raise op_check.NonBuiltinOpsError(f"the trainable model needs non-builtin ops: {e}") from e
    op_check.check_builtin_only(model, TRAINABLE_FILE)
    return model


def convert_inference(trainer: DeviceTrainer, representative: np.ndarray | None, quantization: str = "int8") -> bytes:
    """An inference-only model of batch 1 (input raw float pixels, output probabilities),
    with the trainer's current weights frozen in.

    Args:
      trainer: the device trainer (its plain tf.Variables freeze cleanly; Keras 3 variables
        would stay unread resource variables in the flatbuffer).
      representative: calibration images for int8 (a few hundred suffice).
      quantization: "int8" (weights and activations int8, float input/output), "float16"
        (float16 weights) or "float32" (no quantization).
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}. Received: {quantization!r}")
    shape = trainer.input_shape

    @tf.function(input_signature=[tf.TensorSpec([1, *shape], tf.float32, name="x")])
    def infer(x):
        logits, _ = trainer.forward(x, training=False)
        return {"probabilities": tf.nn.softmax(logits, axis=-1)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([infer.get_concrete_function()], trainer)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "int8":
        if representative is None or len(representative) == 0:
            raise ValueError("int8 quantization needs representative images")

        def gen():
            for image in representative:
                yield [np.asarray(image, np.float32)[None]]

        converter.representative_dataset = gen
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    elif quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    else:
        converter.optimizations = []
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    tflite = converter.convert()
    op_check.check_builtin_only(tflite, f"model_{quantization}.tflite")
    return tflite


def signature_table(trainer: DeviceTrainer) -> dict:
    """Inputs and outputs of every signature with shapes and dtypes, for the metadata."""
    out = {}
    for name, fn in trainer.signatures().items():
        ins = {spec.name: {"shape": spec.shape.as_list(), "dtype": spec.dtype.name}
               for spec in fn.structured_input_signature[1].values()} if fn.structured_input_signature[1] else {
            spec.name: {"shape": spec.shape.as_list(), "dtype": spec.dtype.name}
            for spec in fn.structured_input_signature[0]}
        outs = {k: {"shape": v.shape.as_list(), "dtype": v.dtype.name} for k, v in fn.structured_outputs.items()}
        out[name] = {"inputs": ins, "outputs": outs}
    return out


def export(model: keras.Model, out_dir: str, *, class_names, options: TrainerOptions = TrainerOptions(),
           new_class_names=(), representative: np.ndarray | None = None, quantization: str = "int8") -> dict:
    """Writes the trainable model, the quantised inference model and the metadata.

    Args:
      model: the Keras model (raw-pixel input, logits output).
      out_dir: output folder.
      class_names: names of the model's outputs.
      options: on-device training options; `num_classes` is set from the class names.
      new_class_names: extra categories the device will learn (grows the classifier).
      representative: calibration images for int8.
      quantization: "int8" or "float16" for the inference model.

    Returns:
      The metadata written to `model_meta.json`.
    """
    class_names = list(class_names) + list(new_class_names)
    if len(set(class_names)) != len(class_names):
        raise UserError(f"class names {class_names}: some are given twice; name each class once")
    if int(model.output_shape[-1]) + len(new_class_names) != len(class_names):
        raise UserError(f"{len(class_names) - len(new_class_names)} class names: the model has "
                        f"{model.output_shape[-1]} outputs; give one class name per output (new categories go in "
                        "--new_classes)")
    options = dataclasses.replace(options, num_classes=len(class_names))
    trainer = DeviceTrainer(model, options)
    trainable = convert_trainer(trainer)
    os.makedirs(out_dir, exist_ok=True)
    atomic.write_bytes(os.path.join(out_dir, TRAINABLE_FILE), trainable)
    inference_file = f"model_{quantization}.tflite"
    inference = convert_inference(trainer, representative, quantization)
    atomic.write_bytes(os.path.join(out_dir, inference_file), inference)
    meta = {
        "format": "edgekt-device-model",
        "signature_version": SIGNATURE_VERSION,
        "trainable_model": TRAINABLE_FILE,
        "inference_model": inference_file,
        "inference_quantization": quantization,
        "inference_classes": int(model.output_shape[-1]),
        "class_names": class_names,
        "new_class_names": list(new_class_names),
        "num_classes": len(class_names),
        "batch_size": options.batch_size,
        "input": {"shape": list(trainer.input_shape), "dtype": "float32", "pixel_range": [0, 255],
                  "color": "RGB", "normalization": "inside the model (feed raw pixels)"},
        "options": dataclasses.asdict(options),
        "trainable_weights": trainer.trainable_keys,
        # The classifier's kernel [F, K] and bias [K] (head initialisers on the device).
        "classifier_weights": trainer.classifier_keys,
        "weight_names": trainer.weight_keys,
        "signatures": signature_table(trainer),
        "ops": dict(sorted(op_check.list_ops(trainable).items())),
        "sizes_bytes": {TRAINABLE_FILE: len(trainable), inference_file: len(inference)},
    }
    atomic.write_json(os.path.join(out_dir, META_FILE), meta)
    logging.info("exported %s (%d bytes, %d ops kinds, builtin only) and %s (%d bytes)", TRAINABLE_FILE,
                 len(trainable), len(meta["ops"]), inference_file, len(inference))
    return meta
