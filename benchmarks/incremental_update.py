"""Time to converge of an incremental update in the device app (TFLite, no TensorFlow), with one
and with two interpreter threads, and accuracy before/after on the classes of the new data and
on the others.

    # 1,000 new labelled images of existing classes (from the validation hold-out, which no
    # stage trained on), for the model exported by run_all:
    python benchmarks/incremental_update.py --model=runs/all_cpu/export/model_trainable.tflite \
        --from_data=../shared/datasets/cifar10.tar.gz --out_dir=runs/bench/incremental

    # new classes: a device model and device data of the on-device learning benchmark
    # (pipelines.experiments), whose device model never saw the new classes
    D=runs/exp_cpu/splits/new-deer+dog+frog_unseen-horse+ship  # one split's folder
    python benchmarks/incremental_update.py --model=$D/export/model_trainable.tflite \
        --new=$D/seed0/data/new.npz --val=$D/seed0/data/val.npz --test=$D/test.npz \
        --replay=$D/seed0/data/replay_old.npz --lr=0.01 --old_classes=airplane,automobile,bird,cat,truck \
        --out_dir=runs/bench/incremental_new_classes

The Raspberry Pi 4 figure is an estimate, not a Pi measurement: time here x --pi_factor (the
ratio of the published Pi 4 time of MobileNet v1 to this machine's, from benchmarks/pi_scale.py).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

flags.DEFINE_string("model", None, "model_trainable.tflite (metadata beside it).", required=True)
flags.DEFINE_string("new", None, "New labelled images (.npz with images, labels, or a class-folder tree).")
flags.DEFINE_string("val", None, "Validation data for the convergence rule (default: a split of --new).")
flags.DEFINE_string("test", None, "Test data for accuracy before/after.")
flags.DEFINE_string("replay", None, "Old-class replay buffer (default: replay.npz beside the model, if any).")
flags.DEFINE_string("from_data", None, "Instead of --new/--val/--test: take them from this data source "
                    "(new and val from the validation hold-out, test from the test split).")
flags.DEFINE_integer("new_images", 1000, "With --from_data: new labelled images.")
flags.DEFINE_integer("val_images", 1000, "With --from_data: validation images for the convergence rule.")
flags.DEFINE_integer("val_size", 5000, "With --from_data: the cloud stage's validation hold-out.")
flags.DEFINE_list("old_classes", None, "Classes the model knew before (default: those not in the new data).")
flags.DEFINE_list("threads", ["1", "2"], "Interpreter thread counts.")
flags.DEFINE_float("lr", 0.003, "Peak learning rate.")
flags.DEFINE_integer("epochs", 15, "At most this many epochs.")
flags.DEFINE_float("replay_ratio", 0.5, "Share of each batch taken from the replay buffer.")
flags.DEFINE_integer("patience", 3, "Convergence rule: epochs without improvement.")
flags.DEFINE_float("pi_factor", 2.6, "Pi 4 time / this machine's time (benchmarks/pi_scale.py).")
flags.DEFINE_string("device_python", sys.executable, "Python that runs the device app.")
flags.DEFINE_string("out_dir", None, "Folder for data, checkpoints and results.json.", required=True)
FLAGS = flags.FLAGS


def _prepare_from_data(source: str, out_dir: str) -> tuple[str, str, str]:
    import numpy as np

    from edgekt import data

    splits = data.load(source)
    prepared = data.prepare_splits(splits, val_size=FLAGS.val_size, seed=0)  # validation: no stage trained on it
    order = np.random.default_rng(1).permutation(len(prepared.val.labels))
    need = FLAGS.new_images + FLAGS.val_images
    if need > len(order):
        raise ValueError(f"--new_images + --val_images = {need} exceeds the {len(order)} hold-out images")
    paths = []
    for name, idx in (("new", order[:FLAGS.new_images]), ("val", order[FLAGS.new_images:need])):
        path = os.path.join(out_dir, f"{name}.npz")
        np.savez(path, images=prepared.val.images[idx], labels=prepared.val.labels[idx],
                 class_names=np.asarray(prepared.class_names))
        paths.append(path)
    path = os.path.join(out_dir, "test.npz")
    np.savez(path, images=prepared.test.images, labels=prepared.test.labels,
             class_names=np.asarray(prepared.class_names))
    return paths[0], paths[1], path


def _group(per_class: dict, names) -> float | None:
    values = [per_class[c] for c in names if c in per_class]
    return sum(values) / len(values) if values else None


def main(argv):
    del argv
    import numpy as np

    from edgekt.device_learning.device_runs import DeviceApp

    os.makedirs(FLAGS.out_dir, exist_ok=True)
    if FLAGS.from_data:
        new, val, test = _prepare_from_data(FLAGS.from_data, FLAGS.out_dir)
    else:
        if not FLAGS.new or not FLAGS.test:
            raise app.UsageError("give --new and --test, or --from_data")
        new, val, test = FLAGS.new, FLAGS.val, FLAGS.test
    replay = FLAGS.replay or os.path.join(os.path.dirname(FLAGS.model), "replay.npz")
    replay = replay if os.path.exists(replay) else None
    with open(os.path.join(os.path.dirname(FLAGS.model), "model_meta.json")) as f:
        meta = json.load(f)
    class_names = meta["class_names"]
    new_classes = [class_names[i] for i in sorted(set(np.load(new)["labels"].tolist()))] if new.endswith(".npz") else []
    other = FLAGS.old_classes or [c for c in class_names if c not in new_classes]
    runs = []
    for threads in (int(t) for t in FLAGS.threads):
        run_app = DeviceApp(FLAGS.device_python, threads)

        def device(*args):
            return run_app(*args)[0]

        before = device("evaluate", f"--model={FLAGS.model}", f"--data={test}")
        checkpoint = os.path.join(FLAGS.out_dir, f"checkpoint_threads{threads}.npz")
        args = ["learn", f"--model={FLAGS.model}", f"--data={new}", f"--checkpoint={checkpoint}", "--restart",
                f"--lr={FLAGS.lr}", f"--epochs={FLAGS.epochs}", f"--patience={FLAGS.patience}"]
        args += [f"--val_data={val}"] if val else []
        args += [f"--replay={replay}", f"--replay_ratio={FLAGS.replay_ratio}"] if replay else []
        learned = device(*args)
        after = device("evaluate", f"--model={FLAGS.model}", f"--data={test}", f"--checkpoint={checkpoint}")
        runs.append({"threads": threads, "learn": {k: v for k, v in learned.items() if k != "history"},
                     "history": learned.get("history"),
                     "before": {"all": before["accuracy"], "new_data_classes": _group(before["per_class"], new_classes),
                                "other_classes": _group(before["per_class"], other),
                                "per_class": before["per_class"]},
                     "after": {"all": after["accuracy"], "new_data_classes": _group(after["per_class"], new_classes),
                               "other_classes": _group(after["per_class"], other),
                               "per_class": after["per_class"]}})
    export_metrics = os.path.join(os.path.dirname(FLAGS.model), "metrics.json")
    flops = None
    if os.path.exists(export_metrics):
        with open(export_metrics) as f:
            flops = json.load(f).get("flops")
    batch = int(meta["batch_size"])
    result = {"model": FLAGS.model, "new": new, "new_images": int(len(np.load(new)["labels"])) if new.endswith(".npz")
              else None, "new_data_classes": new_classes, "batch_size": batch, "lr": FLAGS.lr,
              "forward_macs_per_image": flops,
              "train_step_macs_upper_bound": 3 * flops * batch if flops else None,
              "pi_factor": FLAGS.pi_factor, "runs": runs}
    with open(os.path.join(FLAGS.out_dir, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    print(f"{FLAGS.model}: {result['new_images']} new images of {new_classes}, batch {batch}, lr {FLAGS.lr}")
    if flops:
        print(f"  train step <= 3 x {flops / 1e6:.2f}M MACs x {batch} = {3 * flops * batch / 1e6:.0f}M MACs")
    for r in runs:
        lr_ = r["learn"]
        per_step = lr_["total_seconds"] / max(lr_["steps"], 1)
        print(f"  {r['threads']} thread(s): converged in {lr_['time_to_converge_seconds']:.1f} s "
              f"(epoch {lr_['best_epoch']} of {lr_['epochs']}, {lr_['steps']} steps, {1000 * per_step:.0f} ms/step "
              f"incl. validation, total {lr_['total_seconds']:.1f} s); Pi 4 estimate "
              f"{FLAGS.pi_factor * lr_['time_to_converge_seconds']:.0f} s to converge")
        print(f"    accuracy before -> after: all {pct(r['before']['all'])} -> {pct(r['after']['all'])}; "
              f"classes of the new data {pct(r['before']['new_data_classes'])} -> {pct(r['after']['new_data_classes'])}; "
              f"{'old' if FLAGS.old_classes else 'other'} classes {pct(r['before']['other_classes'])} -> {pct(r['after']['other_classes'])}")


if __name__ == "__main__":
    app.run(main)
