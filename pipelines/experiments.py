"""The on-device learning benchmark: `python -m pipelines.experiments --preset=smoke|cpu|paper
--data=... --out_dir=X [--teacher=cloud/model.keras]`.

Trains the cloud model with a device pool held out (unless --teacher names one trained so),
builds a device model per class split from old-class images only, runs every method through
the device app for each seed, runs the seed paper's never-seen transfer, and writes
X/results.json, X/results.md and plots. A killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging

from pipelines import flag_utils

_PRESET = flags.DEFINE_enum("preset", "smoke", ["smoke", "cpu", "paper"], "Benchmark preset.")
_DATA = flags.DEFINE_string("data", None, "Data source.", required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
_TEACHER = flags.DEFINE_string("teacher", None, "An existing cloud model trained with a device pool "
                               "(pipelines.train_cloud --device_pool_size=...); default: train one in X/cloud.")
_DEVICE_PYTHON = flags.DEFINE_string("device_python", sys.executable,
                                     "Python that runs the device app (e.g. a tflite-runtime venv).")
_THREADS = flags.DEFINE_integer("threads", None, "Interpreter threads on the device; overrides the preset.")


def main(argv):
    from edgekt import data, device_learning

    overrides = {"threads": _THREADS.value} if _THREADS.value is not None else {}
    try:
        config = device_learning.preset(_PRESET.value, **overrides)
    except ValueError as e:
        raise app.UsageError(str(e))
    flag_utils.log_config("experiments", config, preset=_PRESET.value, data=_DATA.value, out_dir=_OUT_DIR.value,
                          teacher=_TEACHER.value, device_python=_DEVICE_PYTHON.value)
    try:
        results = device_learning.run(config, _DATA.value, _OUT_DIR.value, teacher_path=_TEACHER.value,
                                      device_python=_DEVICE_PYTHON.value, preset_name=_PRESET.value)
    except data.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    logging.info("results (means over splits and seeds): %s", json.dumps(
        {name: {k: m[k] for k in ("old_recall", "new_recall", "unseen_recall", "accuracy", "total_device_seconds")}
         for name, m in results["methods"].items()}))
    logging.info("wrote %s/results.json and %s/results.md", _OUT_DIR.value, _OUT_DIR.value)


if __name__ == "__main__":
    flag_utils.run(main)
