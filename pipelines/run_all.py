"""From data to a device model that learns, with a report:
`python -m pipelines.run_all --preset=smoke|cpu|paper --data=... --out_dir=X`.

Stages: cloud model (device pool held out) -> filter pruning (+ transfer) -> TFLite export ->
the on-device learning benchmark (device models built from old classes only learn new and
unseen classes through the device app) -> tfmot magnitude-pruning baseline -> report. Writes
X/report.md, X/report.html, X/summary.json and each stage's outputs in X/cloud, X/prune,
X/export, X/device_learning, X/baseline (and X/sweep with --sweep: the Pareto sweep of
pipelines.sweep on the cloud model). Stages whose inputs did not change are
reused (X/manifest.json); a killed run resumes.
"""

from __future__ import annotations

import os
import sys

from absl import flags, logging

from edgekt.errors import UserError
from pipelines import flag_utils

_PRESET = flags.DEFINE_enum("preset", "smoke", ["smoke", "cpu", "paper"], "Workflow preset.")
_DATA = flags.DEFINE_string("data", None, "Data source (folder/archive, cifar-10-batches-py, tfds[:NAME]).",
                            required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
_TEACHER = flags.DEFINE_string("teacher", None, "An existing cloud model (skips training one).")
_PRUNED = flags.DEFINE_string("pruned", None, "An existing pruned model (skips pruning).")
_SKIP_BASELINE = flags.DEFINE_bool("skip_baseline", False, "Do not run the tfmot baseline.")
_SWEEP = flags.DEFINE_bool("sweep", False, "Also prune the cloud model to several budgets by every method and tfmot "
                           "(pipelines.sweep's preset of the same name; hours on the cpu preset) for the report's "
                           "Pareto figure.")
_DEVICE_PYTHON = flags.DEFINE_string("device_python", sys.executable,
                                     "Python that runs the device app (e.g. a tflite-runtime venv).")
_THREADS = flags.DEFINE_integer("threads", 1, "Interpreter threads on the device.", lower_bound=1, upper_bound=1024)
_RESIZE = flag_utils.define_resize()


# Files this binary writes in --out_dir (an input there under one of these names is refused at once).
OUTPUTS = ("report.md", "report.html", "summary.json", "manifest.json")


def main(argv):
    from edgekt import workflow

    for flag in ("teacher", "pruned"):
        path = flags.FLAGS[flag].value
        if path is not None and not os.path.isfile(path):
            raise UserError(f"--{flag}={path}: no such model file; pass the path of a .keras file")
    from edgekt.device_learning.device_runs import check_device_python

    check_device_python(_DEVICE_PYTHON.value)

    stages = (("cloud", "prune", "export", "device_learning") + (() if _SKIP_BASELINE.value else ("baseline",))
              + (("sweep",) if _SWEEP.value else ()) + ("report",))
    flag_utils.log_config("run_all", {"preset": _PRESET.value, "data": _DATA.value, "out_dir": _OUT_DIR.value,
                                      "teacher": _TEACHER.value, "pruned": _PRUNED.value, "stages": stages})
    results = workflow.run(_PRESET.value, _DATA.value, _OUT_DIR.value, teacher_path=_TEACHER.value,
                           pruned_path=_PRUNED.value, stages=stages, device_python=_DEVICE_PYTHON.value,
                           threads=_THREADS.value, resize=_RESIZE.value)
    summary = results["report"]
    p, t = summary["pruned"], summary["teacher"]
    logging.info("params %s -> %s (%.2f%% removed), test top-1 %.4f -> %.4f; report: %s/report.html",
                 f"{t['params']:,}", f"{p['params']:,}", 100 * (p["params_removed_fraction"] or 0),
                 t["test_accuracy"] or 0, p["test_accuracy"] or 0, _OUT_DIR.value)


if __name__ == "__main__":
    flag_utils.run(main, OUTPUTS)
