"""What `pipelines.convert` does with its defaults to user-style models: each model is trained
the way a user would (Adam, no augmentation) on real images, then converted with the default
command, and the original and converted models are measured on the test images.

    python benchmarks/convert_user_models.py --data=../shared/datasets/cifar10.tar.gz \
        --out_dir=runs/convert_acceptance [--models=vgg_style,mobilenet_style,resnet_style]

Models (`edgekt.models.user_style`):
  vgg_style, mobilenet_style: 32x32, the 10 classes, 1,200 training images per class (12,000);
  resnet_style: 64x64 (the images upscaled 2x), 5 classes, 1,200 training images per class.
Each user's folder has train/ (what the model is trained on), val/ (100 other training images
per class, never trained on: convert's floor is measured there) and test/ (the archive's test
images of those classes, only measured). The convert command is the default one:
`python -m pipelines.convert --model=M --data=FOLDER --out_dir=OUT` (auto policy: 1-point floor,
30-minute budget), timed from start to exit.

Each model's results are kept in OUT/<model>/result.json (a finished model is not redone);
prints one JSON line per model and writes OUT/results.md (the table).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

from absl import app, flags

flags.DEFINE_string("data", None, "CIFAR-10 archive (train and test splits).", required=True)
flags.DEFINE_string("out_dir", None, "Output folder (resumes: finished models are kept).", required=True)
flags.DEFINE_list("models", ["vgg_style", "mobilenet_style", "resnet_style"], "Models to convert.")
flags.DEFINE_integer("train_per_class", 1200, "Training images per class (the user's train/).")
flags.DEFINE_integer("val_per_class", 100, "The user's own validation images per class (val/).")
flags.DEFINE_integer("epochs", 15, "The user's training epochs (Adam, batch 64).")
flags.DEFINE_list("convert_flags", [], "Extra flags for pipelines.convert (default: none, the default command).")
FLAGS = flags.FLAGS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# model -> (image side, classes)
SETUPS = {
    "vgg_style": (32, ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")),
    "mobilenet_style": (32, ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")),
    "resnet_style": (64, ("airplane", "bird", "cat", "ship", "truck")),
}


def _write_tree(folder: str, splits: dict, class_names) -> None:
    from PIL import Image

    for name, (images, labels) in splits.items():
        for label, cls in enumerate(class_names):
            sub = os.path.join(folder, name, cls)
            os.makedirs(sub, exist_ok=True)
            for i, image in enumerate(images[labels == label]):
                buf = io.BytesIO()
                Image.fromarray(image).save(buf, format="PNG")
                with open(os.path.join(sub, f"{i:05d}.png"), "wb") as f:
                    f.write(buf.getvalue())


def _user_data(cifar, side: int, classes, train_per_class: int, val_per_class: int) -> dict:
    import numpy as np

    from edgekt import data

    out = {}
    for name, split, skip, per in (("train", cifar["train"], 0, train_per_class),
                                   ("val", cifar["train"], train_per_class, val_per_class),
                                   ("test", cifar["test"], 0, None)):
        sub = data.select_classes(split, list(classes), relabel=True)
        idx = np.concatenate([np.flatnonzero(sub.labels == c)[skip:None if per is None else skip + per]
                              for c in range(len(classes))])
        images = sub.images[idx]
        if side != images.shape[1]:
            factor = side // images.shape[1]
            images = np.repeat(np.repeat(images, factor, axis=1), factor, axis=2)
        out[name] = (images, sub.labels[idx])
    return out


def _int8_figures(model, representative, test) -> dict:
    from edgekt.export import measure

    figures = measure.file_figures(measure.inference_file(model, "int8", representative), *test)
    return {"int8_bytes": figures["bytes"], "int8_latency_ms": figures["latency_ms"],
            "int8_test_accuracy": figures["test_accuracy"]}


def run_model(name: str, cifar, out_dir: str) -> dict:
    import keras
    import numpy as np

    from edgekt import evaluation, flops
    from edgekt.models import saving, user_style

    folder = os.path.join(out_dir, name)
    result_path = os.path.join(folder, "result.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            return json.load(f)
    side, classes = SETUPS[name]
    splits = _user_data(cifar, side, classes, FLAGS.train_per_class, FLAGS.val_per_class)
    data_dir = os.path.join(folder, "user_data")
    if not os.path.exists(os.path.join(data_dir, ".complete")):
        _write_tree(data_dir, splits, classes)
        open(os.path.join(data_dir, ".complete"), "w").close()
    model_path = os.path.join(folder, "user.keras")
    train_seconds = None
    if not os.path.exists(model_path):
        keras.utils.set_random_seed(0)
        builder = user_style.BUILDERS[name]
        model = builder(num_classes=len(classes), size=side) if name == "resnet_style" else builder(len(classes))
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        start = time.perf_counter()
        model.fit(splits["train"][0].astype(np.float32), splits["train"][1], epochs=FLAGS.epochs, batch_size=64,
                  verbose=2)
        train_seconds = time.perf_counter() - start
        model.save(model_path)
        with open(os.path.join(folder, "user_train.json"), "w") as f:
            json.dump({"seconds": train_seconds, "epochs": FLAGS.epochs}, f)
    elif os.path.exists(os.path.join(folder, "user_train.json")):
        with open(os.path.join(folder, "user_train.json")) as f:
            train_seconds = json.load(f)["seconds"]
    convert_dir = os.path.join(folder, "convert")
    command = [sys.executable, "-m", "pipelines.convert", f"--model={model_path}", f"--data={data_dir}",
               f"--out_dir={convert_dir}", *FLAGS.convert_flags]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    wall = time.perf_counter() - start
    with open(os.path.join(folder, "convert.log"), "w") as f:
        f.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: convert failed (exit {proc.returncode}); see {folder}/convert.log")
    with open(os.path.join(convert_dir, "metrics.json")) as f:
        metrics = json.load(f)
    original = saving.load_model(model_path)
    converted = saving.load_model(os.path.join(convert_dir, "prune", "pruned.keras"))
    test = splits["test"]
    representative = splits["train"][0][np.random.default_rng(0).choice(len(splits["train"][1]), min(300, len(splits["train"][1])), replace=False)]
    p, e = metrics["prune"], metrics["export"]
    result = {
        "model": name, "input": f"{side}x{side}x3", "classes": len(classes), "train_images": len(splits["train"][1]),
        "val_images": len(splits["val"][1]), "test_images": len(test[1]), "user_epochs": FLAGS.epochs,
        "user_train_seconds": train_seconds, "convert_command": " ".join(command[1:]), "convert_wall_seconds": wall,
        "original": {"test_accuracy": evaluation.evaluate(original, *test)["accuracy"],
                     "val_accuracy": p["teacher_val_accuracy"], "params": flops.model_cost(original).params,
                     "flops": p["teacher_flops"], "keras_bytes": p["teacher_file_bytes"],
                     "keras_latency_ms": p["teacher_latency_ms_batch1"],
                     **_int8_figures(original, representative, test)},
        "converted": {"test_accuracy": evaluation.evaluate(converted, *test)["accuracy"],
                      "val_accuracy": p["val_accuracy"], "params": p["params"], "flops": p["flops"],
                      "keras_bytes": p["file_bytes"], "keras_latency_ms": p["latency_ms_batch1"],
                      "trainable_tflite_test_accuracy": e["trainable_test_accuracy"],
                      "trainable_tflite_bytes": e["trainable_bytes"],
                      "trainable_keras_top1_agreement": e.get("trainable_keras_top1_agreement"),
                      **_int8_figures(converted, representative, test)},
        "floor": p["accuracy_floor"], "stopped": p["stopped"], "unpruned": p.get("unpruned"),
        "summary": metrics["summary"],
    }
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)
    return result


def table(results: list[dict]) -> str:
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}%"

    lines = ["| model | input, classes | test top-1 original -> converted (Keras / trainable .tflite / int8) | "
             "val top-1 (floor) | params | int8 .tflite | int8 latency, batch 1 | convert wall time |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        o, c = r["original"], r["converted"]
        lines.append(
            f"| {r['model']} | {r['input']}, {r['classes']} | {pct(o['test_accuracy'])} -> {pct(c['test_accuracy'])} / "
            f"{pct(c['trainable_tflite_test_accuracy'])} / {pct(c['int8_test_accuracy'])} (original int8 "
            f"{pct(o['int8_test_accuracy'])}) | {pct(o['val_accuracy'])} -> {pct(c['val_accuracy'])} "
            f"({pct(r['floor'])}) | {o['params']:,} -> {c['params']:,} | {o['int8_bytes'] / 1e3:.1f} -> "
            f"{c['int8_bytes'] / 1e3:.1f} KB | {o['int8_latency_ms']:.3f} -> {c['int8_latency_ms']:.3f} ms | "
            f"{r['convert_wall_seconds'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    from edgekt import data

    unknown = [m for m in FLAGS.models if m not in SETUPS]
    if unknown:
        raise app.UsageError(f"--models: unknown {unknown}; choose from {sorted(SETUPS)}")
    out_dir = os.path.expanduser(FLAGS.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    cifar = data.load(FLAGS.data)
    results = []
    for name in FLAGS.models:
        result = run_model(name, cifar, out_dir)
        print(json.dumps({k: v for k, v in result.items() if k != "summary"}), flush=True)
        results.append(result)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(table(results))
    print(table(results))


if __name__ == "__main__":
    app.run(main)
