"""Accuracy of exported `.tflite` models, measured in the TFLite interpreter itself."""

from __future__ import annotations

import os

import numpy as np

from edgekt.evaluation import classification_metrics


def trainable_model_metrics(model_path: str, images: np.ndarray, labels: np.ndarray, class_names=None,
                            num_threads: int = 1) -> dict:
    """Top-1 etc. of the trainable model's `infer` signature (the device app's runner)."""
    return classification_metrics(trainable_model_logits(model_path, images, num_threads), labels, class_names)


def trainable_model_logits(model_path: str, images: np.ndarray, num_threads: int = 1) -> np.ndarray:
    """Logits of the trainable model's `infer` signature (the device app's runner)."""
    from tflite_runtime_app.runner import DeviceModel

    return DeviceModel(model_path, num_threads=num_threads).logits(images)


def inference_model_metrics(model_path: str, images: np.ndarray, labels: np.ndarray, class_names=None,
                            num_threads: int = 1) -> dict:
    """Top-1 etc. of a batch-1 inference model (int8 or float16), image by image."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=model_path, num_threads=num_threads)
    runner = interpreter.get_signature_runner()
    probs = np.concatenate([runner(x=images[i:i + 1].astype(np.float32))["probabilities"] for i in range(len(images))])
    return classification_metrics(np.log(np.maximum(probs, 1e-12)), labels, class_names)


def file_size(path: str) -> int:
    return os.path.getsize(path)
