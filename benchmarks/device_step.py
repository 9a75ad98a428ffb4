"""On-device train-step benchmark: for each device setting (what trains, BN mode), the exported
`train` signature under ai-edge-litert and tflite-runtime against the same step in TensorFlow
and in PyTorch eager, per thread count, with peak memory, file sizes and how many of the step's
ops XNNPACK runs.

    python benchmarks/device_step.py --model=runs/all_cpu/prune/pruned.keras \
        --settings=all:batch,last:3:frozen --threads=1,2
    # before/after a change: an earlier commit's checkout, interleaved, 3 runs each
    git worktree add /tmp/before COMMIT
    python benchmarks/device_step.py --model=runs/all_cpu/prune/pruned.keras --baseline_tree=/tmp/before --repeats=3

Every measurement runs in its own process (so peak RSS is the step's own, and no library is
loaded that the measured stack would not load); figures are medians over --steps steps after
--warmup. TensorFlow runs the device trainer's own graph (the same ops and gradients the
export converts), with 1 and 2 intra-op threads and with oneDNN off and on
(TF_ENABLE_ONEDNN_OPTS; TensorFlow turns it on by default only on some CPUs); the ratios use
the fastest TensorFlow at the same thread count. PyTorch runs the same network, the same
weights trained and the same BN mode (`benchmarks/torch_reference.py`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags

flags.DEFINE_string("model", None, "The .keras model to export and time.", required=True)
flags.DEFINE_list("settings", ["all:batch", "last:3:frozen", "bn_classifier:batch", "classifier:frozen"],
                  "Device settings, each TRAINABLE:BN_MODE (trainable as in export_tflite --trainable).")
flags.DEFINE_integer("batch_size", 32, "Fixed batch size of the signatures.")
flags.DEFINE_integer("steps", 20, "Timed steps.")
flags.DEFINE_integer("warmup", 3, "Untimed steps first.")
flags.DEFINE_list("threads", ["1", "2"], "Thread counts.")
flags.DEFINE_string("tflite_runtime_python", os.path.join(".venv-tflite-runtime", "bin", "python"),
                    "A Python with tflite-runtime 2.14 (skipped if missing).")
flags.DEFINE_bool("torch", True, "Also time PyTorch eager (skipped if torch is not installed).")
flags.DEFINE_string("json_out", None, "Also write every figure to this JSON file.")
flags.DEFINE_string("trainable", None, "One device setting's trainable part (with --bn_mode; replaces --settings).")
flags.DEFINE_enum("bn_mode", None, ["batch", "frozen"], "One device setting's BN mode (with --trainable).")
flags.DEFINE_bool("json", False, "Print one JSON line of the headline figures (tf_step_ms, tflite_step_ms per runtime "
                  "and thread count, torch_step_ms, peak_rss_mib per runtime) instead of the tables.")
flags.DEFINE_integer("repeats", 1, "Runs of every measurement, interleaved; the median run is reported.")
flags.DEFINE_string("baseline_tree", None, "Another checkout (e.g. `git worktree add /tmp/before COMMIT`): its "
                    "code exports and runs the same TFLite steps, interleaved with this checkout's (before/after).")
FLAGS = flags.FLAGS

_HWM = r'''
def hwm_mib():
    # VmHWM is this process's own peak RSS (ru_maxrss can carry the parent's over exec).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
'''

_TFLITE_CHILD = _HWM + r'''
import json, sys, time
import numpy as np
path, batch, steps, warmup, threads, runtime = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
from tflite_runtime_app import runner
before = hwm_mib()
try:
    model = runner.DeviceModel(path, num_threads=threads, runtime=runtime)
except TypeError:  # an app from before --runtime: the package installed in this Python
    model = runner.DeviceModel(path, num_threads=threads)
try:
    from tflite_runtime_app import kernels
    report = kernels.delegation(model.interpreter)
except ImportError:
    report = None
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (batch, *model.input_shape)).astype(np.float32)
y = rng.integers(0, model.num_classes, batch).astype(np.int32)
def med(fn):
    for _ in range(warmup): fn()
    t = []
    for _ in range(steps):
        s = time.perf_counter(); fn(); t.append(time.perf_counter() - s)
    return float(np.median(t))
step = med(lambda: model.train_batch(x, y, 1e-4))
step_peak = hwm_mib()
inf = med(lambda: model.logits(x))
print(json.dumps({"train_step_s": step, "infer_batch_s": inf, "peak_rss_mib": step_peak,
                  "peak_rss_with_infer_mib": hwm_mib(), "rss_before_load_mib": before,
                  "train_ops": report["ops"] if report else None, "train_delegated": report["delegated"] if report else None}))
'''

_TF_CHILD = _HWM + r'''
import json, os, sys, time
model_path, trainable, bn_mode, batch, steps, warmup, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(1)
from edgekt.export import DeviceTrainer, TrainerOptions
from edgekt.models import saving
trainer = DeviceTrainer(saving.load_model(model_path), TrainerOptions(batch_size=batch, trainable=trainable, bn_mode=bn_mode))
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (batch, *trainer.input_shape)).astype(np.float32)
y = rng.integers(0, trainer.num_classes, batch).astype(np.int32)
w = np.ones(batch, np.float32)
lr = np.full((1,), 1e-4, np.float32)
try:
    trainer.train(x, y, w, lr)
except (TypeError, ValueError):  # a trainer from before the [1]-shaped learning rate
    lr = np.float32(1e-4)
for _ in range(warmup): trainer.train(x, y, w, lr)
t = []
for _ in range(steps):
    s = time.perf_counter(); trainer.train(x, y, w, lr)["loss"].numpy(); t.append(time.perf_counter() - s)
print(json.dumps({"train_step_s": float(np.median(t)), "peak_rss_mib": hwm_mib()}))
'''


def _child(argv, env=None, tree=None):
    proc = subprocess.run(argv, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": tree or os.getcwd(), "TF_CPP_MIN_LOG_LEVEL": "3",
                               **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])}...: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


_EXPORT_CHILD = r'''
import sys
from edgekt.export import TrainerOptions, convert
from edgekt.models import saving
model_path, trainable, bn_mode, batch, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
model = saving.load_model(model_path)
convert.export(model, out, class_names=[f"c{i}" for i in range(model.output_shape[-1])],
               options=TrainerOptions(batch_size=batch, trainable=trainable, bn_mode=bn_mode), quantization="float32")
print("{}")
'''


def _median_of(runs: list[dict]) -> dict:
    """The run whose train step is the median of `runs` (its other figures come with it), with
    every run's step time kept."""
    ordered = sorted(runs, key=lambda r: r["train_step_s"])
    return {**ordered[(len(ordered) - 1) // 2], "repeat_steps_s": [r["train_step_s"] for r in runs]}


def _settings():
    if FLAGS.trainable or FLAGS.bn_mode:
        if not (FLAGS.trainable and FLAGS.bn_mode):
            raise app.UsageError("--trainable and --bn_mode: give both (one setting) or neither (--settings)")
        return [(FLAGS.trainable, FLAGS.bn_mode)]
    out = []
    for text in FLAGS.settings:
        trainable, _, bn_mode = text.rpartition(":")
        if not trainable or bn_mode not in ("batch", "frozen"):
            raise app.UsageError(f"--settings: {text!r} is not TRAINABLE:BN_MODE (e.g. all:batch, last:3:frozen)")
        out.append((trainable, bn_mode))
    return out


def headline(results: dict) -> dict:
    """The figures the one-line --json output holds, in milliseconds and MiB."""
    ms = lambda s: round(1000 * s, 3)  # noqa: E731
    out = {"model": results["model"], "params": results["params"], "batch_size": results["batch_size"], "settings": []}
    for row in results["settings"]:
        item = {"setting": row["setting"], "tf_step_ms": {}, "tflite_step_ms": {}, "torch_step_ms": {},
                "peak_rss_mib": {}}
        for r in row["tensorflow"]:
            key = str(r["threads"])
            item["tf_step_ms"][key] = min(item["tf_step_ms"].get(key, float("inf")), ms(r["train_step_s"]))
        for r in row["interpreters"]:
            item["tflite_step_ms"].setdefault(r["runtime"], {})[str(r["threads"])] = ms(r["train_step_s"])
            item["peak_rss_mib"].setdefault(r["runtime"], {})[str(r["threads"])] = round(r["peak_rss_mib"], 1)
        for r in row["torch"]:
            item["torch_step_ms"][str(r["threads"])] = ms(r["train_step_s"])
        if not row["torch"]:
            item["torch_step_ms"] = None  # torch not installed, or --notorch
        out["settings"].append(item)
    return out


def main(argv):
    del argv
    import importlib.util

    from edgekt import flops
    from edgekt.export import DeviceTrainer, TrainerOptions
    from edgekt.models import saving

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_reference

    model = saving.load_model(FLAGS.model)
    cost = flops.model_cost(model)
    tmp = tempfile.mkdtemp()
    threads = [int(t) for t in FLAGS.threads]
    runtimes = [(sys.executable, "ai_edge_litert")]
    if os.path.exists(FLAGS.tflite_runtime_python):
        runtimes.append((FLAGS.tflite_runtime_python, "tflite_runtime"))
    use_torch = FLAGS.torch and importlib.util.find_spec("torch") is not None
    trees = [("this", os.getcwd())] + ([("baseline", os.path.abspath(FLAGS.baseline_tree))] if FLAGS.baseline_tree
                                        else [])
    common = [str(FLAGS.batch_size), str(FLAGS.steps), str(FLAGS.warmup)]
    results = {"model": FLAGS.model, "params": cost.params, "flops": cost.flops, "batch_size": FLAGS.batch_size,
               "repeats": FLAGS.repeats, "baseline_tree": trees[1][1] if len(trees) > 1 else None, "settings": []}
    for trainable, bn_mode in _settings():
        name = f"{trainable}:{bn_mode}"
        trainer = DeviceTrainer(model, TrainerOptions(batch_size=FLAGS.batch_size, trainable=trainable, bn_mode=bn_mode))
        paths = {}
        for tree_name, tree in trees:  # each checkout exports with its own code
            folder = os.path.join(tmp, tree_name, name.replace(":", "_"))
            os.makedirs(folder)
            _child([sys.executable, "-c", _EXPORT_CHILD, os.path.abspath(FLAGS.model), trainable, bn_mode,
                    str(FLAGS.batch_size), folder], tree=tree)
            paths[tree_name] = os.path.join(folder, "model_trainable.tflite")
        row = {"setting": name, "trainable_weights": sum(int(trainer.variables_by_key[k].shape.num_elements())
                                                          for k in trainer.trainable_keys),
               "variables": len(trainer.variables_by_key), "trainable_tflite_bytes": os.path.getsize(paths["this"]),
               "baseline_tflite_bytes": os.path.getsize(paths["baseline"]) if "baseline" in paths else None,
               "tensorflow": [], "interpreters": [], "baseline_interpreters": [], "torch": []}
        spec = os.path.join(tmp, name.replace(":", "_") + "_torch_spec.npz")
        if use_torch:
            torch_reference.write_spec(spec, trainer)
        for t in threads:
            # Repeats are interleaved (every measurement once, then again), so that a slow
            # moment of the machine does not fall on one column only.
            runs = {}
            for _ in range(FLAGS.repeats):
                for onednn in ("0", "1"):
                    runs.setdefault(("tf", onednn), []).append(_child(
                        [sys.executable, "-c", _TF_CHILD, FLAGS.model, trainable, bn_mode, *common, str(t)],
                        env={"TF_ENABLE_ONEDNN_OPTS": onednn, "OMP_NUM_THREADS": str(t)}))
                if use_torch:
                    runs.setdefault(("torch",), []).append(_child(
                        [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_reference.py"),
                         spec, *common, str(t)]))
                for tree_name, tree in trees:
                    for python, runtime in runtimes:
                        runs.setdefault((tree_name, runtime), []).append(_child(
                            [python, "-c", _TFLITE_CHILD, paths[tree_name], *common, str(t), runtime], tree=tree))
            for onednn in ("0", "1"):
                row["tensorflow"].append({"threads": t, "onednn": onednn == "1", **_median_of(runs[("tf", onednn)])})
            best_tf = min(r["train_step_s"] for r in row["tensorflow"] if r["threads"] == t)
            if use_torch:
                r = _median_of(runs[("torch",)])
                row["torch"].append({"threads": t, **r, "ratio_to_tf": r["train_step_s"] / best_tf})
            for tree_name, _ in trees:
                for _, runtime in runtimes:
                    r = _median_of(runs[(tree_name, runtime)])
                    r.update(runtime=runtime, threads=t, ratio_to_tf=r["train_step_s"] / best_tf)
                    row["interpreters" if tree_name == "this" else "baseline_interpreters"].append(r)
        results["settings"].append(row)
        del trainer
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump(results, f, indent=1)
    if FLAGS.json:
        print(json.dumps(headline(results)))
        return
    print(json.dumps(results))
    print(f"\n{FLAGS.model}: {cost.params:,} params, {cost.flops / 1e6:.1f} M multiply-adds/image, batch "
          f"{FLAGS.batch_size}; train step in ms (ratio to the fastest TensorFlow at the same threads); peak RSS "
          "MiB of the process after its train steps (TFLite: in parentheses, after the infer signature ran "
          "too, as in `learn` with validation)")
    print("| setting | threads | TF | TF oneDNN | PyTorch eager | ai-edge-litert | tflite-runtime | XNNPACK ops (train) "
          "| peak MiB (litert / tflite-rt / TF / torch) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for row in results["settings"]:
        for t in threads:
            tf_rows = {r["onednn"]: r for r in row["tensorflow"] if r["threads"] == t}
            its = {r["runtime"]: r for r in row["interpreters"] if r["threads"] == t}
            tor = next((r for r in row["torch"] if r["threads"] == t), None)

            def cell(r):
                return "n/a" if r is None else f"{1000 * r['train_step_s']:.1f} ({r['ratio_to_tf']:.2f}x)"

            lite = its.get("ai_edge_litert")
            ops = f"{lite['train_delegated']}/{lite['train_ops']}" if lite and lite.get("train_ops") else "n/a"
            def peak(r):
                if r is None:
                    return "n/a"
                return f"{r['peak_rss_mib']:.0f}" + (f" ({r['peak_rss_with_infer_mib']:.0f})"
                                                     if "peak_rss_with_infer_mib" in r else "")

            mem = " / ".join(peak(r) for r in (lite, its.get("tflite_runtime"),
                                               min(tf_rows.values(), key=lambda r: r["train_step_s"]), tor))
            print(f"| {row['setting']} | {t} | {1000 * tf_rows[False]['train_step_s']:.1f} | "
                  f"{1000 * tf_rows[True]['train_step_s']:.1f} | {cell(tor)} | {cell(lite)} | "
                  f"{cell(its.get('tflite_runtime'))} | {ops} | {mem} |")
    if FLAGS.baseline_tree:
        print(f"\nbefore ({FLAGS.baseline_tree}) -> after (this checkout), same TensorFlow column; train step ms "
              "(ratio to the fastest TensorFlow), XNNPACK ops of the train step")
        print("| setting | threads | ai-edge-litert before | after | tflite-runtime before | after | XNNPACK before | after |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for row in results["settings"]:
            for t in threads:
                after = {r["runtime"]: r for r in row["interpreters"] if r["threads"] == t}
                before = {r["runtime"]: r for r in row["baseline_interpreters"] if r["threads"] == t}

                def ms(r):
                    return "n/a" if r is None else f"{1000 * r['train_step_s']:.1f} ({r['ratio_to_tf']:.2f}x)"

                def ops(r):
                    return f"{r['train_delegated']}/{r['train_ops']}" if r and r.get("train_ops") else "n/a"

                print(f"| {row['setting']} | {t} | {ms(before.get('ai_edge_litert'))} | {ms(after.get('ai_edge_litert'))} "
                      f"| {ms(before.get('tflite_runtime'))} | {ms(after.get('tflite_runtime'))} | "
                      f"{ops(before.get('ai_edge_litert'))} | {ops(after.get('ai_edge_litert'))} |")
    print("\n.tflite sizes: " + ", ".join(f"{r['setting']} {r['trainable_tflite_bytes'] / 1024:.0f} KiB "
                                          f"({r['trainable_weights']:,} weights train)" for r in results["settings"]))


if __name__ == "__main__":
    app.run(main)
