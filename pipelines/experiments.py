"""The on-device learning benchmark: `python -m pipelines.experiments --preset=smoke|cpu|paper
--data=... --out_dir=X [--teacher=cloud/model.keras] [--only=never_seen]`.

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

_PRESET = flags.DEFINE_enum("preset", "smoke", ["smoke", "cpu", "paper", "never_seen", "never_seen_ablation"],
                            "Benchmark preset (never_seen*: the never-seen stage's runs; use them with "
                            "--only=never_seen).")
_ONLY = flags.DEFINE_enum("only", None, ["never_seen"], "Run one stage alone: never_seen (the seed paper's "
                          "never-seen transfer; any cloud model will do, with or without a device pool).")
_DATA = flags.DEFINE_string("data", None, "Data source.", required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
_TEACHER = flags.DEFINE_string("teacher", None, "An existing cloud model trained with a device pool "
                               "(pipelines.train_cloud --device_pool_size=...); default: train one in X/cloud.")
_SHARD = flags.DEFINE_string("shard", None, "K/N: with --only=never_seen, train only the runs whose index is K "
                             "modulo N (start N processes on the same --out_dir, K = 0..N-1, to use N cores); each "
                             "writes results.json with every run finished so far and lists the others as pending.")
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
    shard = flag_utils.parse_shard(_SHARD.value)
    if shard is not None and _ONLY.value != "never_seen":
        raise UserError(f"--shard={_SHARD.value}: shards split the never-seen runs only; add --only=never_seen or drop "
                        "--shard")
    if shard is not None and _TEACHER.value is None:
        raise UserError(f"--shard={_SHARD.value}: every shard would train its own cloud model into --out_dir; train "
                        "it once (pipelines.train_cloud) and pass it with --teacher")
    if _ONLY.value is None and config.device_pool_size == 0:
        raise UserError(f"--preset={_PRESET.value}: has no device pool, which only the never-seen stage can do "
                        "without; pass --only=never_seen, or a preset with a device pool (smoke, cpu, paper)")
    flag_utils.log_config("experiments", config, preset=_PRESET.value, data=_DATA.value, out_dir=_OUT_DIR.value,
                          teacher=_TEACHER.value, device_python=_DEVICE_PYTHON.value)
    results = device_learning.run(config, flag_utils.load_data(_DATA.value), _OUT_DIR.value,
                                  teacher_path=_TEACHER.value, device_python=_DEVICE_PYTHON.value,
                                  preset_name=_PRESET.value, only=_ONLY.value, shard=shard)
    if _ONLY.value == "never_seen":
        logging.info("never-seen recall (device app, last epoch): %s", json.dumps(
            {f"{split}/{student}/{loss}": round(rec["never_seen_recall"], 4)
             for split, by_student in results["never_seen"].items() for student, by_loss in by_student.items()
             for loss, rec in by_loss.items()} | {f"ablation/{rec['loss']}/{rec['variant']}": round(
                 rec["never_seen_recall"], 4) for rec in results["never_seen_ablation"]}))
        logging.info("wrote %s/results.json and %s/results.md", _OUT_DIR.value, _OUT_DIR.value)
        return
    logging.info("results (means over splits and seeds): %s", json.dumps(
        {name: {k: m[k] for k in ("old_recall", "new_recall", "unseen_recall", "accuracy", "total_device_seconds")}
         for name, m in results["methods"].items()}))
    logging.info("wrote %s/results.json and %s/results.md", _OUT_DIR.value, _OUT_DIR.value)


if __name__ == "__main__":
    flag_utils.run(main, OUTPUTS)
