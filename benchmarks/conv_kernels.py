"""Per-op cost of the convolutions in an on-device train step, in the TFLite interpreter.

    python benchmarks/conv_kernels.py [--channels=16,3] [--batch_size=32] [--size=32]

A train signature reads its kernels from variables, so every CONV_2D / TRANSPOSE_CONV in it
has *dynamic* weights; this script times those ops against the same conv with constant weights
(what an inference model has, and what the XNNPACK delegate accelerates), and against the
matmul formulations one could use instead. Medians over --repeats runs, one thread.
"""

from __future__ import annotations

import json
import time

from absl import app, flags

flags.DEFINE_list("channels", ["16", "3"], "Channel counts (in = out) to time.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("size", 32, "Feature-map height and width.")
flags.DEFINE_integer("repeats", 25, "Timed runs per op.")
FLAGS = flags.FLAGS


def _time_ms(fn, shapes, repeats: int) -> float:
    import numpy as np
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    concrete = tf.function(fn, input_signature=[tf.TensorSpec(s, tf.float32) for s in shapes],
                           autograph=False).get_concrete_function()
    blob = tf.lite.TFLiteConverter.from_concrete_functions([concrete]).convert()
    it = Interpreter(model_content=blob, num_threads=1)
    it.allocate_tensors()
    rng = np.random.default_rng(0)
    for detail, shape in zip(it.get_input_details(), shapes):
        it.set_tensor(detail["index"], rng.random(shape, dtype=np.float32))
    times = []
    for i in range(repeats + 5):
        start = time.perf_counter()
        it.invoke()
        if i >= 5:
            times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.ERROR)
    import tensorflow as tf

    from edgekt.export import ops

    b, s = FLAGS.batch_size, FLAGS.size
    rows = []
    for c in (int(v) for v in FLAGS.channels):
        x, w, dy = [b, s, s, c], [3, 3, c, c], [b, s, s, c]

        def im2col_matmul(a, k):
            p = tf.pad(a, [[0, 0], [1, 1], [1, 1], [0, 0]])
            cols = tf.concat([p[:, i:i + s, j:j + s, :] for i in range(3) for j in range(3)], axis=-1)
            return tf.matmul(tf.reshape(cols, [-1, 9 * c]), tf.reshape(k, [9 * c, c]))

        timings = {
            "conv2d, constant weights (inference models)": _time_ms(
                lambda a: tf.nn.conv2d(a, tf.ones(w), 1, "SAME"), [x], FLAGS.repeats),
            "conv2d, weights from a tensor (train forward)": _time_ms(
                lambda a, k: tf.nn.conv2d(a, k, 1, "SAME"), [x, w], FLAGS.repeats),
            "transpose_conv (input gradient)": _time_ms(
                lambda g, k: tf.nn.conv2d_transpose(g, k, x, 1, "SAME"), [dy, w], FLAGS.repeats),
            "filter gradient, one conv2d over transposed tensors": _time_ms(
                lambda a, g: ops.conv2d_filter_grad(a, g, (3, 3), 1, "SAME"), [x, dy], FLAGS.repeats),
            "im2col + matmul (alternative forward)": _time_ms(im2col_matmul, [x, w], FLAGS.repeats),
        }
        mflop = 2 * b * s * s * 9 * c * c / 1e6
        print(f"3x3 conv {c}->{c}, batch {b}, {s}x{s} ({mflop:.0f} MFLOP):")
        for name, ms in timings.items():
            print(f"  {name:55s} {ms:7.3f} ms  ({mflop / ms:6.1f} GFLOP/s)")
        rows.append({"channels": c, "mflop": mflop, "ms": timings})
    print(json.dumps(rows))


if __name__ == "__main__":
    app.run(main)
