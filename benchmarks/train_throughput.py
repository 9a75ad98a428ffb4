"""Training throughput (images/s) of WRNs with Keras `fit` on this machine.

    python benchmarks/train_throughput.py --data=../shared/datasets/cifar10.tar.gz \
        --archs=16-1,16-2,28-10 --precision=float32,mixed_bfloat16

Each measurement runs the real input pipeline (augmentation in tf.data) and the real
optimizer; the first `--warmup_steps` steps (tracing) are not timed. Prints a table and one
JSON line per measurement.
"""

from __future__ import annotations

import json
import time

from absl import app, flags

flags.DEFINE_string("data", None, "Data source for real images (default: random pixels).")
flags.DEFINE_list("archs", ["16-1", "16-2", "28-10"], "WRN depth-width pairs.")
flags.DEFINE_list("precision", ["float32", "mixed_bfloat16"], "Keras dtype policies to measure.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("steps", 20, "Timed steps per measurement (fewer for WRN-28-10 if slow).")
flags.DEFINE_integer("warmup_steps", 3, "Untimed steps first.")
flags.DEFINE_integer("max_seconds", 120, "Stop a measurement's timed loop after this many seconds.")
FLAGS = flags.FLAGS


def _step_timer(limit_seconds: float):
    """A callback recording the time at each step's end; stops after `limit_seconds`."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())
            if self.times[-1] - self.times[0] > limit_seconds:
                self.model.stop_training = True

    return StepTimer()


def measure(depth: int, width: int, precision: str, images, labels) -> dict:
    import keras

    from edgekt import flops
    from edgekt.data import pipeline
    from edgekt.train import config as config_lib
    from edgekt.train.cloud import build_and_compile

    cfg = config_lib.CloudTrainConfig(depth=depth, width=width, precision=precision, batch_size=FLAGS.batch_size,
                                      epochs=2)
    steps = FLAGS.warmup_steps + FLAGS.steps
    ds = pipeline.train_dataset(images, labels, batch_size=FLAGS.batch_size, num_classes=10, epochs=2)
    model = build_and_compile(cfg, 10, (125.0,) * 3, (63.0,) * 3, steps)
    timer = _step_timer(FLAGS.max_seconds)
    model.fit(ds.take(steps), epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer])
    times = timer.times[FLAGS.warmup_steps - 1:]
    timed = len(times) - 1
    seconds = times[-1] - times[0]
    keras.backend.clear_session()
    return {"arch": f"WRN-{depth}-{width}", "precision": precision, "batch_size": FLAGS.batch_size,
            "timed_steps": timed, "images_per_second": timed * FLAGS.batch_size / seconds,
            "seconds_per_step": seconds / timed, "params": flops.count_params(model),
            "mflops_per_image": flops.count_flops(model) / 1e6}


def main(argv):
    del argv
    import numpy as np

    if FLAGS.data:
        from edgekt import data

        train = data.load(FLAGS.data)["train"]
        n = min(len(train.labels), FLAGS.batch_size * (FLAGS.steps + FLAGS.warmup_steps + 1))
        images, labels = train.images[:n], train.labels[:n]
    else:
        rng = np.random.default_rng(0)
        n = FLAGS.batch_size * (FLAGS.steps + FLAGS.warmup_steps + 1)
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, n)
    rows = []
    for arch in FLAGS.archs:
        depth, width = (int(v) for v in arch.split("-"))
        for precision in FLAGS.precision:
            row = measure(depth, width, precision, images, labels)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'model':<10} {'precision':<15} {'params':>11} {'MFLOPs':>8} {'img/s':>8} {'s/step':>7}")
    for r in rows:
        print(f"{r['arch']:<10} {r['precision']:<15} {r['params']:>11,} {r['mflops_per_image']:>8.0f} "
              f"{r['images_per_second']:>8.1f} {r['seconds_per_step']:>7.3f}")


if __name__ == "__main__":
    app.run(main)
