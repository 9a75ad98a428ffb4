"""How times measured here map to a Raspberry Pi 4: the same TFLite interpreter runs MobileNet
v1 1.0 224 (float32, 569M multiply-adds; random weights — only speed matters) on this machine,
and the ratio to the published Pi 4 CPU time of that model gives a scale factor.

    python benchmarks/pi_scale.py [--pi4_ms=87]

Basis: MobileNet v1 1.0_224 float TFLite inference on a Raspberry Pi 4 CPU: 87 ms (TildAlice,
"MobileNet vs EfficientNet-Lite: Pi 4 First Model 38ms Gap", dev.to, 2026). The factor is an
estimate for compute-bound TFLite work, not a Pi measurement.
"""

from __future__ import annotations

import json
import time

from absl import app, flags

flags.DEFINE_float("pi4_ms", 87.0, "Published Pi 4 CPU time of MobileNet v1 1.0 224 float TFLite inference (ms).")
flags.DEFINE_integer("repeats", 20, "Timed runs.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import keras
    import numpy as np
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    model = keras.applications.MobileNet(weights=None, input_shape=(224, 224, 3), classes=1000)

    @tf.function(input_signature=[tf.TensorSpec([1, 224, 224, 3], tf.float32)])
    def infer(x):
        return model(x, training=False)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([infer.get_concrete_function()], model)
    blob = converter.convert()
    out = {"pi4_published_ms": FLAGS.pi4_ms}
    for threads in (1, 2):
        it = Interpreter(model_content=blob, num_threads=threads)
        it.allocate_tensors()
        detail = it.get_input_details()[0]
        x = np.random.default_rng(0).uniform(-1, 1, detail["shape"]).astype(np.float32)
        times = []
        for i in range(FLAGS.repeats + 3):
            it.set_tensor(detail["index"], x)
            start = time.perf_counter()
            it.invoke()
            if i >= 3:
                times.append(time.perf_counter() - start)
        here = float(np.median(times) * 1000)
        out[f"here_ms_{threads}_threads"] = here
        out[f"pi4_factor_{threads}_threads"] = FLAGS.pi4_ms / here
    print(json.dumps(out))
    print(f"MobileNet v1 224 float TFLite here: {out['here_ms_1_threads']:.1f} ms (1 thread), "
          f"{out['here_ms_2_threads']:.1f} ms (2 threads); Pi 4 published {FLAGS.pi4_ms:.0f} ms -> "
          f"a Pi 4 takes about {out['pi4_factor_1_threads']:.1f}x this machine's 1-thread time")


if __name__ == "__main__":
    app.run(main)
