"""Short pruning runs that compare importance/allocation/floor settings on validation, to pick
what the full sweep then measures: each candidate prunes the teacher to one budget in a few
steps with little fine-tuning and prints its validation top-1 (never the test split).

    python benchmarks/prune_pilot.py --teacher=runs/teacher_cpu/model.keras \
        --data=../shared/datasets/cifar10.tar.gz --out_dir=runs/pilot [--budget=0.05]

Candidates are fixed below (name -> PruneConfig fields over the `cpu` preset); runs resume.
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import app, flags

flags.DEFINE_string("teacher", None, "The teacher .keras.", required=True)
flags.DEFINE_string("data", None, "Data source.", required=True)
flags.DEFINE_string("out_dir", None, "Output folder (one sub-folder per candidate).", required=True)
flags.DEFINE_float("budget", 0.05, "Fraction of the teacher's parameters kept.")
flags.DEFINE_list("only", None, "Run only these candidates.")
FLAGS = flags.FLAGS

SHORT = {"steps": 2, "step_epochs": 1, "final_epochs": 2}
FLOORS = {"stream_floor": 0.15, "layer_floor": 0.1}
CANDIDATES = {
    "l1_global": {"criterion": "l1", "allocation": "global"},
    "att_p2_mean_global": {"criterion": "attention", "attention_p": 2.0, "allocation": "global"},
    "att_p1_mean_global": {"criterion": "attention", "attention_p": 1.0, "allocation": "global"},
    "att_p1_uniform": {"criterion": "attention", "attention_p": 1.0, "allocation": "uniform"},
    "att_p1_cost0.5_floors": {"criterion": "attention", "attention_p": 1.0, "allocation": "cost", "cost_exponent": 0.5,
                              **FLOORS},
    "att_p1_cost1_floors": {"criterion": "attention", "attention_p": 1.0, "allocation": "cost", "cost_exponent": 1.0,
                            **FLOORS},
    "l1_cost0.5_floors": {"criterion": "l1", "allocation": "cost", "cost_exponent": 0.5, **FLOORS},
    "att_p1_global_floors": {"criterion": "attention", "attention_p": 1.0, "allocation": "global", **FLOORS},
    # Streams carry the residual path: a higher floor for them only.
    "att_p1_cost0.5_s30": {"criterion": "attention", "attention_p": 1.0, "allocation": "cost", "cost_exponent": 0.5,
                           "stream_floor": 0.3, "layer_floor": 0.1},
    "l1_cost0.5_s30": {"criterion": "l1", "allocation": "cost", "cost_exponent": 0.5, "stream_floor": 0.3,
                       "layer_floor": 0.1},
    "att_p1_cost0.25_s30": {"criterion": "attention", "attention_p": 1.0, "allocation": "cost", "cost_exponent": 0.25,
                            "stream_floor": 0.3, "layer_floor": 0.1},
    "l1_uniform": {"criterion": "l1", "allocation": "uniform"},
}


def main(argv):
    del argv
    from edgekt import data
    from edgekt.prune import config as prune_config
    from edgekt.prune import pruner
    from pipelines import flag_utils

    teacher, val_size, split_seed, pool = flag_utils.load_teacher_and_split(FLAGS.teacher, None)
    prepared = data.prepare_splits(data.load(FLAGS.data), val_size=val_size, seed=split_seed, device_pool_size=pool)
    rows = {}
    for name, fields in CANDIDATES.items():
        if FLAGS.only and name not in FLAGS.only:
            continue
        config = prune_config.preset("cpu", **SHORT, **fields, target_params_ratio=FLAGS.budget)
        # The test split is dropped before anything runs: candidates are compared on validation only.
        metrics = pruner.prune_prepared(teacher, dataclasses.replace(prepared, test=None),
                                        os.path.join(FLAGS.out_dir, name), config,
                                        holdout={"val_size": val_size, "split_seed": split_seed,
                                                 **({"device_pool_size": pool} if pool else {})})
        rows[name] = {"val_accuracy": metrics["val_accuracy"], "params": metrics["params"], "flops": metrics["flops"]}
        print(json.dumps({name: rows[name]}), flush=True)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    app.run(main)
