"""Knowledge-transfer experiments on the device: `python -m pipelines.experiments --preset=smoke|cpu|paper
--data=... --out_dir=X [--teacher=cloud/model.keras --pruned=prune/pruned.keras]`.

Trains the cloud model and prunes it (unless given), then runs the incremental and
unseen-category protocol through the device app. Writes X/transfer/results.json,
X/transfer/results.md and plots (accuracy per update, loss against on-device time).
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from absl import app, flags, logging

from pipelines import flag_utils

_PRESET = flags.DEFINE_enum("preset", "smoke", ["smoke", "cpu", "paper"], "Workflow preset.")
_DATA = flags.DEFINE_string("data", None, "Data source.", required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
_TEACHER = flags.DEFINE_string("teacher", None, "An existing cloud model (skips training one).")
_PRUNED = flags.DEFINE_string("pruned", None, "An existing pruned model (skips pruning).")
_DEVICE_PYTHON = flags.DEFINE_string("device_python", sys.executable,
                                     "Python that runs the device app (e.g. a tflite-runtime venv).")
_THREADS = flags.DEFINE_integer("threads", 1, "Interpreter threads on the device.")


def main(argv):
    flag_utils.reject_extra_args(argv)
    from edgekt import workflow

    flag_utils.log_config("experiments", {"preset": _PRESET.value, "data": _DATA.value, "out_dir": _OUT_DIR.value,
                                          "teacher": _TEACHER.value, "pruned": _PRUNED.value,
                                          "threads": _THREADS.value})
    results = workflow.run(_PRESET.value, _DATA.value, _OUT_DIR.value, teacher_path=_TEACHER.value,
                           pruned_path=_PRUNED.value, stages=("cloud", "prune", "transfer"),
                           device_python=_DEVICE_PYTHON.value, threads=_THREADS.value)
    out = results["transfer"]
    logging.info("results: %s", json.dumps({k: out[k] for k in ("old_accuracy_before", "old_accuracy_after",
                                                                "new_accuracy_after", "unseen_accuracy",
                                                                "time_to_converge_seconds")}))
    # The interface's paths: X/results.json, X/results.md and the plots (also in X/transfer/).
    for name in ("results.json", "results.md", "accuracy_per_update.png", "loss_vs_time.png"):
        shutil.copyfile(os.path.join(results["paths"]["transfer"], name), os.path.join(_OUT_DIR.value, name))


if __name__ == "__main__":
    app.run(main)
