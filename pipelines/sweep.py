"""Prunes one teacher to several budgets with each pruning method and the tfmot baseline, and
plots accuracy against parameters, FLOPs, int8 file size and latency:
`python -m pipelines.sweep --teacher=X/cloud/model.keras --data=... --out_dir=X/sweep --preset=cpu`.

Writes `sweep.json`, `sweep.md` (the table), `sweep.png` and one folder per method; a killed
run resumes. The end-to-end report shows the sweep when it lies in its folder as `sweep/`.
"""

from __future__ import annotations

from absl import flags, logging

from pipelines import flag_utils

_TEACHER = flags.DEFINE_string("teacher", None, "The unpruned .keras model.", required=True)
_DATA = flags.DEFINE_string("data", None, "Image folder/archive, cifar-10-batches-py folder, or tfds[:NAME].",
                            required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
_PRESET = flags.DEFINE_enum("preset", "smoke", ["smoke", "cpu", "paper"], "Sweep preset.")
flags.DEFINE_list("budgets", None, "Fractions of the teacher's parameters kept, e.g. 0.5,0.25,0.1,0.05,0.02.")
flags.DEFINE_list("methods", None, "Methods to run, in order (default, l1_global, l1_cost, l1_uniform, "
                  "attention_global, attention_cost, attention_uniform, default_labels_only, tfmot).")
_VAL_SIZE = flags.DEFINE_integer("val_size", None, "Validation hold-out (default: the teacher's, from its metrics.json).")
_REMEASURE = flags.DEFINE_bool("remeasure_latency", False, "Time every int8 file again in one pass (e.g. once the "
                                "machine is idle); training already done is reused.")
_PROGRESS = flags.DEFINE_enum("progress", "none", ["bar", "epoch", "none"], "Fine-tuning progress display.")
flag_utils.define_resize()


def _budgets_problem(values) -> str | None:
    """What is wrong with --budgets (checked as the flags are parsed, before TensorFlow loads)."""
    if values is None:
        return None
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        return "not a list of numbers; pass fractions of the parameters kept, e.g. --budgets=0.5,0.1"
    if not numbers or not all(0 < b < 1 for b in numbers):
        return "must be fractions in (0, 1); pass fractions of the parameters kept, e.g. --budgets=0.5,0.1"
    if len(set(numbers)) != len(numbers):
        return "must be distinct fractions; give each budget once"
    return None


def _check_budgets(values) -> bool:
    problem = _budgets_problem(values)
    if problem:
        raise flags.ValidationError(problem)
    return True


flags.register_validator("budgets", _check_budgets)


# Files this binary writes in --out_dir (an input there under one of these names is refused at once).
OUTPUTS = ("sweep.json", "sweep.md", "sweep.png", "latency.json")


def main(argv):
    from edgekt import sweep

    overrides = {}
    if flags.FLAGS["budgets"].present:  # numbers, checked as the flags were parsed
        overrides["budgets"] = tuple(float(b) for b in flags.FLAGS.budgets)
    if flags.FLAGS["methods"].present:
        overrides["methods"] = tuple(flags.FLAGS.methods)
    config = flag_utils.config_from_flags(sweep.preset, {"budgets": "budgets", "methods": "methods"}, _PRESET.value,
                                          **overrides)
    teacher, val_size, split_seed, pool_size = flag_utils.load_teacher_and_split(_TEACHER.value, _VAL_SIZE.value)
    flag_utils.log_config("sweep", config, preset=_PRESET.value, teacher=_TEACHER.value, data=_DATA.value,
                          out_dir=_OUT_DIR.value, val_size=val_size, split_seed=split_seed, device_pool_size=pool_size)
    splits = flag_utils.load_data(_DATA.value, teacher.input_shape[1:])
    summary = sweep.run(teacher, splits, _OUT_DIR.value, config, val_size=val_size, split_seed=split_seed,
                        device_pool_size=pool_size, teacher_path=_TEACHER.value,
                        remeasure_latency=_REMEASURE.value, verbose={"bar": 1, "epoch": 2, "none": 0}[_PROGRESS.value])
    logging.info("sweep: %d models in %s/sweep.md", len(summary["rows"]), _OUT_DIR.value)


if __name__ == "__main__":
    flag_utils.run(main, OUTPUTS)
