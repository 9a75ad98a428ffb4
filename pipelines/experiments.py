"""The on-device learning benchmark: `python -m pipelines.experiments --preset=smoke|cpu|paper
--data=... --out_dir=X [--teacher=cloud/model.keras]`.

Trains the cloud model with a device pool held out (unless --teacher names one trained so),
builds a device model per class split from old-class images only, runs every method through
the device app for each seed, runs the seed paper's never-seen transfer, and writes
X/results.json, X/results.md and plots. A killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags, logging

from edgekt.errors import UserError
from pipelines import flag_utils

_PRESET = flags.DEFINE_enum("preset", "smoke", ["smoke", "cpu", "paper"], "Benchmark preset.")
_DATA = flags.DEFINE_string("data", None, "Data source.", required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
_TEACHER = flags.DEFINE_string("teacher", None, "An existing cloud model trained with a device pool "
                               "(pipelines.train_cloud --device_pool_size=...); default: train one in X/cloud.")
_DEVICE_PYTHON = flags.DEFINE_string("device_python", sys.executable,
                                     "Python that runs the device app (e.g. a tflite-runtime venv).")
_THREADS = flags.DEFINE_integer("threads", None, "Interpreter threads on the device; overrides the preset.")
flag_utils.define_resize()


# Files this binary writes in --out_dir (an input there under one of these names is refused at once).
OUTPUTS = ("results.json", "results.md")


def main(argv):
    del argv
    from edgekt import device_learning

    if _TEACHER.value is not None and not os.path.isfile(_TEACHER.value):
        raise UserError(f"--teacher={_TEACHER.value}: no such model file; pass the cloud model's .keras file")
    from edgekt.device_learning.device_runs import check_device_python

    check_device_python(_DEVICE_PYTHON.value)
    config = flag_utils.config_from_flags(device_learning.preset, {"threads": "threads"}, _PRESET.value)
    flag_utils.log_config("experiments", config, preset=_PRESET.value, data=_DATA.value, out_dir=_OUT_DIR.value,
                          teacher=_TEACHER.value, device_python=_DEVICE_PYTHON.value)
    results = device_learning.run(config, flag_utils.load_data(_DATA.value), _OUT_DIR.value,
                                  teacher_path=_TEACHER.value, device_python=_DEVICE_PYTHON.value,
                                  preset_name=_PRESET.value)
    logging.info("results (means over splits and seeds): %s", json.dumps(
        {name: {k: m[k] for k in ("old_recall", "new_recall", "unseen_recall", "accuracy", "total_device_seconds")}
         for name, m in results["methods"].items()}))
    logging.info("wrote %s/results.json and %s/results.md", _OUT_DIR.value, _OUT_DIR.value)


if __name__ == "__main__":
    flag_utils.run(main, OUTPUTS)
