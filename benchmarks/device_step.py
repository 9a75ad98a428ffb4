"""On-device train-step benchmark: the exported train signature in the TFLite interpreter vs the
same step in TensorFlow, peak memory, .tflite sizes and inference latency.

    python benchmarks/device_step.py --model=runs/prune_cpu_attention/pruned.keras --batch_size=32

Each interpreter measurement runs in its own process (so peak RSS is the step's own); figures
are medians over --steps steps after --warmup.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_string("model", None, "The .keras model to export and time.", required=True)
flags.DEFINE_integer("batch_size", 32, "Fixed batch size of the signatures.")
flags.DEFINE_integer("steps", 20, "Timed steps.")
flags.DEFINE_integer("warmup", 3, "Untimed steps first.")
flags.DEFINE_list("threads", ["1", "2"], "Interpreter thread counts.")
flags.DEFINE_string("tflite_runtime_python", os.path.join(".venv-tflite-runtime", "bin", "python"),
                    "A Python with tflite-runtime 2.14 (skipped if missing).")
FLAGS = flags.FLAGS

_CHILD = r'''
import json, sys, time
import numpy as np
def hwm_mib():
    # VmHWM is this process's own peak RSS (ru_maxrss can carry the parent's over exec).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
path, batch, steps, warmup, threads, runtime = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
if runtime == "tflite_runtime":
    from tflite_runtime.interpreter import Interpreter
else:
    from ai_edge_litert.interpreter import Interpreter
before = hwm_mib()
it = Interpreter(model_path=path, num_threads=threads)
train = it.get_signature_runner("train")
infer = it.get_signature_runner("infer")
shape = train.get_input_details()["x"]["shape"]
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, shape).astype(np.float32)
y = rng.integers(0, 10, shape[0]).astype(np.int32)
w = np.ones(shape[0], np.float32)
loaded = hwm_mib()
def med(fn):
    for _ in range(warmup): fn()
    t = []
    for _ in range(steps):
        s = time.perf_counter(); fn(); t.append(time.perf_counter() - s)
    return float(np.median(t))
step = med(lambda: train(x=x, y=y, w=w, lr=np.full(1, 1e-4, np.float32)))
inf = med(lambda: infer(x=x))
peak = hwm_mib()
print(json.dumps({"train_step_s": step, "infer_batch_s": inf, "peak_rss_mib": peak,
                  "rss_after_load_mib": loaded, "rss_before_load_mib": before}))
'''


def _child(python, path, threads, runtime):
    proc = subprocess.run([python, "-c", _CHILD, path, str(FLAGS.batch_size), str(FLAGS.steps), str(FLAGS.warmup),
                           str(threads), runtime], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    import numpy as np

    from edgekt import flops
    from edgekt.export import DeviceTrainer, TrainerOptions, convert_inference, convert_trainer
    from edgekt.models import saving

    model = saving.load_model(FLAGS.model)
    trainer = DeviceTrainer(model, TrainerOptions(batch_size=FLAGS.batch_size))
    blob = convert_trainer(trainer)
    int8 = convert_inference(trainer, np.random.default_rng(0).uniform(0, 255, (64, *trainer.input_shape)), "int8")
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "model_trainable.tflite")
    with open(path, "wb") as f:
        f.write(blob)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (FLAGS.batch_size, *trainer.input_shape)).astype(np.float32)
    y = rng.integers(0, 10, FLAGS.batch_size).astype(np.int32)
    w = np.ones(FLAGS.batch_size, np.float32)
    for _ in range(FLAGS.warmup):
        trainer.train(x, y, w, np.full(1, 1e-4, np.float32))
    times = []
    for _ in range(FLAGS.steps):
        start = time.perf_counter()
        trainer.train(x, y, w, np.full(1, 1e-4, np.float32))
        times.append(time.perf_counter() - start)
    tf_step = float(np.median(times))
    cost = flops.model_cost(model)
    rows = {"model": FLAGS.model, "params": cost.params, "flops": cost.flops, "batch_size": FLAGS.batch_size,
            "trainable_tflite_bytes": len(blob), "int8_tflite_bytes": len(int8), "tf_train_step_s": tf_step,
            "interpreters": []}
    runs = [(sys.executable, "ai_edge_litert")]
    if os.path.exists(FLAGS.tflite_runtime_python):
        runs.append((FLAGS.tflite_runtime_python, "tflite_runtime"))
    for python, runtime in runs:
        for threads in FLAGS.threads:
            r = _child(python, path, int(threads), runtime)
            r.update(runtime=runtime, threads=int(threads), ratio_to_tf=r["train_step_s"] / tf_step)
            rows["interpreters"].append(r)
    print(json.dumps(rows))
    print(f"\n{FLAGS.model}: {cost.params:,} params, {cost.flops / 1e6:.1f} MFLOPs/image, batch {FLAGS.batch_size}")
    print(f"  .tflite: trainable {len(blob) / 1024:.0f} KiB, int8 {len(int8) / 1024:.0f} KiB")
    print(f"  TensorFlow train step: {1000 * tf_step:.1f} ms")
    for r in rows["interpreters"]:
        print(f"  {r['runtime']:<15} {r['threads']} thread(s): train step {1000 * r['train_step_s']:.1f} ms "
              f"({r['ratio_to_tf']:.2f}x TF), infer batch {1000 * r['infer_batch_s']:.1f} ms, "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB ({r['rss_before_load_mib']:.0f} before loading the model)")


if __name__ == "__main__":
    app.run(main)
