"""Throughput (images/s) of the never-seen transfer's training step on this machine: a student
distilled from a cloud model with the stage's own input pipeline (augmentation per image in
tf.data), loss and optimiser, per precision and augmentation.

    python benchmarks/never_seen_throughput.py --data=../shared/datasets/cifar10.tar.gz \
        --teacher=CLOUD/model.keras --students=wrn-16-1,pruned --precision=float32,mixed_bfloat16

Without --teacher, an untrained WRN-16-2 stands in (the same cost). The first steps (tracing)
are not timed. Prints one JSON line per measurement and the hours a 200-epoch run of 15,000
images would take at that rate.
"""

from __future__ import annotations

import json
import time

from absl import app, flags

flags.DEFINE_string("data", None, "Data source (real images of the paper's first split).", required=True)
flags.DEFINE_string("teacher", None, "Cloud model (.keras); default: an untrained WRN-16-2.")
flags.DEFINE_list("students", ["wrn-16-1", "pruned"], "Never-seen students.")
flags.DEFINE_list("losses", ["paper", "both"], "Never-seen losses.")
flags.DEFINE_list("precision", ["float32", "mixed_bfloat16"], "Keras dtype policies.")
flags.DEFINE_list("augment", ["policy_cutout"], "Augmentations (none, flip_crop, policy_cutout).")
flags.DEFINE_integer("steps", 15, "Timed steps per measurement.")
flags.DEFINE_integer("warmup_steps", 3, "Untimed steps first.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import keras
    import numpy as np

    from edgekt import data, models
    from edgekt.data import pipeline
    from edgekt.device_learning import config as dl_config
    from edgekt.device_learning import never_seen
    from edgekt.models import saving
    from edgekt.train.optimizers import L2SGD
    from edgekt.transfer.distiller import Distiller

    splits = data.load(FLAGS.data)
    keras.utils.set_random_seed(0)
    teacher = saving.load_model(FLAGS.teacher) if FLAGS.teacher else models.wrn(16, 2, num_classes=10)
    batch = 128
    for student_kind in FLAGS.students:
        for loss in FLAGS.losses:
            for augment in FLAGS.augment:
                run = dl_config.NeverSeenRun(dl_config.PAPER_NEVER_SEEN[0], student_kind, loss, augment=augment)
                images, _ = never_seen.transfer_set(splits["train"], run)
                for precision in FLAGS.precision:
                    student = never_seen.student_model(student_kind, teacher, images, 0.05, 10, seed=0)
                    work = saving.with_dtype_policy(student, precision)
                    d = Distiller(work, saving.with_dtype_policy(teacher, precision), never_seen.LOSSES[loss](4.0))
                    d.compile(optimizer=L2SGD(learning_rate=0.1), jit_compile=False)
                    steps = FLAGS.warmup_steps + FLAGS.steps
                    ds = pipeline.train_dataset(images, np.zeros(len(images), np.int64), batch_size=batch,
                                                num_classes=10, epochs=1, augment=augment != "none",
                                                policy=augment == "policy_cutout",
                                                cutout=never_seen.CUTOUT_PIXELS if augment == "policy_cutout" else 0)
                    times = []

                    class Timer(keras.callbacks.Callback):
                        def on_train_batch_end(self, b, logs=None):
                            times.append(time.perf_counter())

                    d.fit(ds.take(steps), epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[Timer()])
                    timed = times[FLAGS.warmup_steps - 1:]
                    rate = batch * (len(timed) - 1) / (timed[-1] - timed[0])
                    print(json.dumps({"student": student_kind, "params": int(student.count_params()), "loss": loss,
                                      "augment": augment, "precision": precision, "images_per_second": round(rate, 1),
                                      "hours_for_200_epochs_of_15000": round(200 * 15000 / rate / 3600, 2)}),
                          flush=True)


if __name__ == "__main__":
    app.run(main)
