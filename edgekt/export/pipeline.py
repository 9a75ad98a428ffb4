"""The export stage: a `.keras` file in, the device files and their measured accuracy out."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import numpy as np
from absl import logging

from edgekt import atomic, compatibility, data, evaluation, flops
from edgekt.errors import UserError
from edgekt.export import convert
from edgekt.export import evaluate as export_eval
from edgekt.export.device_trainer import TrainerOptions
from tflite_runtime_app.runner import NonFiniteOutputs
from edgekt.models import saving

METRICS_FILE = "metrics.json"


def device_step_times(trainable_path: str, repeats: int = 10, threads: int = 1) -> dict:
    """Median wall times of one `train` step and one `infer` batch in the TFLite interpreter."""
    import time

    from tflite_runtime_app.runner import DeviceModel

    model = DeviceModel(trainable_path, num_threads=threads)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (model.batch_size, *model.input_shape)).astype(np.float32)
    y = rng.integers(0, model.num_classes, model.batch_size)
    weights = model.get_weights()

    def median(fn):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return float(np.median(times) * 1000)

    out = {"train_step_ms": median(lambda: model.train_batch(x, y, 1e-4)),
           "infer_batch_ms": median(lambda: model.logits(x)), "timing_threads": threads}
    model.set_weights(weights)
    return out


def _check_finite(model, model_path: str, images) -> None:
    """Refuses, before anything is written, a model with NaN or inf weights or whose outputs
    overflow on `images` (or two random images): its export could only be broken."""
    for weight in model.weights:
        if not np.isfinite(np.asarray(weight)).all():
            raise UserError(f"{model_path}: weight {weight.path!r} holds NaN or inf; export a model that was trained "
                            "and saved without error")
    if images is None:
        images = np.random.default_rng(0).integers(0, 256, (2, *model.input_shape[1:]), dtype=np.uint8)
    logits = evaluation.predict_logits(model, images)
    bad = ~np.isfinite(logits).all(axis=1)
    if bad.any():
        raise UserError(f"{model_path}: its outputs are NaN or inf for {int(bad.sum())} of {len(logits)} images (its "
                        "weights overflow); export a model that was trained and saved without error")


def export_model(model_path: str, out_dir: str, *, data_source: str | data.DataSplits | None = None,
                 class_names=None, new_class_names=(), quantization: str = "int8", calibration_size: int = 300,
                 replay_per_class: int = 20, resize: bool = False, **trainer_options) -> dict:
    """Exports `model_path` and measures what was exported.

    Class names come from `class_names`, else the data, else the `metrics.json` beside the
    model. With data, int8 calibration uses training images, accuracy is measured on the
    test split (in TFLite), and `replay.npz` keeps `replay_per_class` training images of each
    class for the device's replay buffer. Data of another image size is refused, or resized
    with `resize`. Without training images, int8 falls back to the float16 inference model
    (`inference_quantization` in the metrics says which was written).

    Raises:
      UserError: an unsupported model (every problem listed), NaN or inf weights or outputs, no
        class names, or bad data; nothing is written then.

    Returns:
      The metrics written to `out_dir/metrics.json`.
    """
    options = TrainerOptions(**trainer_options)
    compatibility.check_file(model_path, prune=False)
    model = saving.load_model(model_path)
    if class_names is None and data_source is None and saving.sidecar_class_names(model_path) is None:
        raise UserError(f"{model_path}: no class names (no --class_names, no --data, no metrics.json beside the "
                        "model); pass --class_names or --data")
    splits = None
    if data_source is not None:
        splits = data.load_for(data_source, model.input_shape[1:], resize=resize)
    if class_names is None:
        class_names = splits.class_names if splits is not None else saving.sidecar_class_names(model_path)
    representative = None
    if splits is not None and "train" in splits:
        representative = data.stratified_subset(splits["train"], min(calibration_size, len(splits["train"].labels)),
                                                seed=0).images
    if quantization == "int8" and representative is None:
        if splits is not None:
            raise UserError(f"{splits.source}: no 'train' split to calibrate the int8 model (splits: "
                            f"{sorted(splits)}); pass data with train/ images, or --quantization=float16")
        logging.warning("no --data to calibrate int8: writing the float16 inference model instead "
                        "(pass --data=... for model_int8.tflite)")
        quantization = "float16"
    _check_finite(model, model_path, representative)
    # Everything is made and checked in a staging folder inside out_dir, then moved in: a run
    # that fails leaves an earlier export whole, and a new folder without a partial one.
    created = _first_missing(out_dir)  # the outermost folder this export creates, if any
    os.makedirs(out_dir, exist_ok=True)
    _remove_stale_staging(out_dir, [model_path] + ([data_source] if isinstance(data_source, str) else []))
    staging = tempfile.mkdtemp(prefix=f"{_STAGING}{os.getpid()}.", dir=out_dir)
    done = False
    try:
        try:
            metrics = _export_into(model, model_path, staging, splits, class_names, options, new_class_names,
                                   representative, quantization, replay_per_class)
        except NonFiniteOutputs as e:
            raise UserError(f"{model_path}: the exported trainable model's outputs are NaN or inf on the test images "
                            "(its weights overflow); export a model that was trained and saved without error; "
                            f"{out_dir} was left as it was") from e
        for name in sorted(os.listdir(staging)):  # every destination checked before the first move
            destination = os.path.join(out_dir, name)
            atomic.refuse_input(destination)
            if os.path.lexists(destination) and not os.path.isfile(destination):
                raise UserError(f"{destination}: is a folder or not a regular file, where the export writes its "
                                f"{name}; move it away or pass another --out_dir; {out_dir} was left as it was")
        written = set(os.listdir(staging))
        # Files of an earlier export that this one does not write (an int8 model and replay
        # images beside a float16 export made without --data) would not belong to the new
        # model: they go first, then the new files come in, metrics.json last.
        for name in sorted(set(EXPORT_FILES) - written):
            with contextlib.suppress(FileNotFoundError):
                if os.path.isfile(os.path.join(out_dir, name)):
                    os.remove(os.path.join(out_dir, name))
        for name in sorted(written, key=lambda n: n == METRICS_FILE):  # metrics.json last
            os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
        atomic.fsync_dir(out_dir)
        done = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created is not None and not done:  # a refused export into new folders leaves none (only empty ones go)
            folder = os.path.abspath(out_dir)
            while True:
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
                if folder == created or os.path.dirname(folder) == folder:
                    break
                folder = os.path.dirname(folder)
    logging.info("export: trainable %d B, %s %d B%s", metrics["trainable_bytes"], quantization,
                 metrics["inference_bytes"],
                 f", test top-1 keras {metrics['keras_test_accuracy']:.4f} / tflite {metrics['trainable_test_accuracy']:.4f}"
                 f" / {quantization} {metrics['inference_test_accuracy']:.4f}" if "keras_test_accuracy" in metrics else "")
    return metrics


def _export_into(model, model_path: str, folder: str, splits, class_names, options, new_class_names, representative,
                 quantization: str, replay_per_class: int) -> dict:
    """Writes the export and its metrics.json into `folder` (the staging folder); returns the metrics."""
    meta = convert.export(model, folder, class_names=class_names, options=options, new_class_names=new_class_names,
                          representative=representative, quantization=quantization)
    trainable_path = os.path.join(folder, meta["trainable_model"])
    inference_path = os.path.join(folder, meta["inference_model"])
    cost = flops.model_cost(model)
    metrics = {
        "model": model_path,
        "params": cost.params,
        "flops": cost.flops,
        "trainable_bytes": os.path.getsize(trainable_path),
        "inference_bytes": os.path.getsize(inference_path),
        "keras_bytes": os.path.getsize(model_path),
        "inference_quantization": quantization,
        "batch_size": options.batch_size,
        "ops": meta["ops"],
        "class_names": meta["class_names"],
    }
    if splits is not None and "train" in splits and replay_per_class > 0:
        train = splits["train"]
        per_class = min(replay_per_class, int(np.bincount(train.labels).min()))
        replay, _ = data.labelled_unlabelled(train, per_class, seed=0)
        atomic.write_with(os.path.join(folder, "replay.npz"),
                          lambda tmp: np.savez(tmp, images=replay.images, labels=replay.labels,
                                               class_names=np.asarray(list(splits.class_names))), suffix=".npz")
        metrics["replay_images"] = int(len(replay.labels))
    metrics.update(device_step_times(trainable_path))
    if splits is not None and "test" in splits and not new_class_names:
        test = splits["test"]
        keras_logits = evaluation.predict_logits(model, test.images)
        trainable_logits = export_eval.trainable_model_logits(trainable_path, test.images)
        metrics["keras_test_accuracy"] = float(np.mean(np.argmax(keras_logits, axis=1) == test.labels))
        metrics["trainable_test_accuracy"] = float(np.mean(np.argmax(trainable_logits, axis=1) == test.labels))
        # The exported model against the Keras model it came from, image by image.
        metrics["trainable_keras_top1_agreement"] = float(np.mean(np.argmax(keras_logits, axis=1)
                                                                  == np.argmax(trainable_logits, axis=1)))
        metrics["trainable_keras_max_logit_diff"] = float(np.max(np.abs(keras_logits - trainable_logits)))
        metrics["inference_test_accuracy"] = export_eval.inference_model_metrics(inference_path, test.images,
                                                                                 test.labels)["accuracy"]
        metrics["test_images"] = int(len(test.labels))
    atomic.write_json(os.path.join(folder, METRICS_FILE), metrics)
    return metrics


_STAGING = ".export-staging."

# Every file an export can write in its folder.
EXPORT_FILES = (convert.TRAINABLE_FILE, convert.META_FILE, *(f"model_{q}.tflite" for q in convert.QUANTIZATIONS),
                "replay.npz", METRICS_FILE)


def _first_missing(path: str) -> str | None:
    """The outermost folder of `path` that does not exist yet (None when `path` exists)."""
    path = os.path.abspath(path)
    missing = None
    while not os.path.exists(path):
        missing, parent = path, os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _remove_stale_staging(out_dir: str, inputs: list[str]) -> None:
    """Staging folders of killed exports (their process no longer runs); never one that is or
    holds an input (`inputs`, or a file registered as an input of the run)."""
    reals = [os.path.realpath(p) for p in inputs]
    for name in os.listdir(out_dir):
        if not name.startswith(_STAGING):
            continue
        pid = name[len(_STAGING):].split(".", 1)[0]
        folder = os.path.join(out_dir, name)
        if not pid.isdigit() or atomic.pid_alive(int(pid)) or not os.path.isdir(folder) or os.path.islink(folder):
            continue
        real = os.path.realpath(folder)
        files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
        if any(r == real or r.startswith(real + os.sep) for r in reals) or any(atomic.input_at(f) for f in files):
            continue
        shutil.rmtree(folder, ignore_errors=True)
