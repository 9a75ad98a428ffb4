"""What a model costs on the device, measured in the TFLite interpreter: file bytes, batch-1
latency on one thread, and the top-1 of the file itself (after quantisation)."""

from __future__ import annotations

import gzip
import time

import keras
import numpy as np


def _interpreter(blob: bytes, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=blob, num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def tflite_latency_ms(blob: bytes, repeats: int = 50, threads: int = 1) -> float:
    """Median batch-1 inference time in the TFLite interpreter (after 5 warm-up runs)."""
    interpreter = _interpreter(blob, threads)
    detail = interpreter.get_input_details()[0]
    x = np.random.default_rng(0).uniform(0, 255, detail["shape"]).astype(np.float32)
    times = []
    for i in range(repeats + 5):
        interpreter.set_tensor(detail["index"], x)
        start = time.perf_counter()
        interpreter.invoke()
        if i >= 5:
            times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def tflite_scores(blob: bytes, images: np.ndarray, threads: int = 1) -> np.ndarray:
    """The outputs of a batch-1 model (float input of raw pixels) for every image, float32."""
    interpreter = _interpreter(blob, threads)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    scores = []
    for image in images:
        interpreter.set_tensor(inp["index"], np.asarray(image, np.float32)[None])
        interpreter.invoke()
        scores.append(np.asarray(interpreter.get_tensor(out["index"]), np.float32)[0])
    return np.stack(scores)


def top1_figures(scores: np.ndarray, labels: np.ndarray) -> dict:
    """Top-1 of `scores` (logits or probabilities: the same arg-max) as the app takes it (a tie
    goes to the lowest class index), how many images have a tied top score (quantised outputs
    tie often), and the top-1 with every tie split evenly between the tied classes."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    top = scores.max(axis=-1, keepdims=True)
    tied = scores == top
    ways = tied.sum(axis=-1)
    return {"accuracy": float(np.mean(np.argmax(scores, axis=-1) == labels)),
            "tied": int(np.sum(ways > 1)),
            "accuracy_ties_split": float(np.mean(tied[np.arange(len(labels)), labels] / ways))}


def inference_file(model: keras.Model, quantization: str = "int8", representative: np.ndarray | None = None) -> bytes:
    """The batch-1 inference `.tflite` of a Keras classifier as `export` writes it (builtin
    ops, float input and output): "int8" (calibrated on `representative`) or "float32"."""
    from edgekt.export.convert import convert_inference
    from edgekt.export.device_trainer import DeviceTrainer, TrainerOptions

    return convert_inference(DeviceTrainer(model, TrainerOptions(batch_size=1)), representative, quantization)


def file_figures(blob: bytes, test_images: np.ndarray | None = None, test_labels: np.ndarray | None = None,
                 repeats: int = 50, threads: int = 1) -> dict:
    """Bytes, gzip bytes, latency and (given test images) top-1 of a `.tflite` file (with its tie
    count and tie-split top-1: `top1_figures`)."""
    out = {"bytes": len(blob), "gzip_bytes": len(gzip.compress(blob)),
           "latency_ms": tflite_latency_ms(blob, repeats=repeats, threads=threads)}
    if test_images is not None:
        top1 = top1_figures(tflite_scores(blob, test_images, threads), test_labels)
        out.update(test_accuracy=top1["accuracy"], test_tied=top1["tied"],
                   test_accuracy_ties_split=top1["accuracy_ties_split"])
    return out
