"""Prune a teacher by removing filters: `python -m pipelines.prune --teacher=DIR/model.keras --data=...
--out_dir=OUT --preset=smoke|cpu|paper [--target_params_ratio=0.05] [--target_flops_ratio=...]
[--max_accuracy_drop=POINTS] [--criterion=attention|l1]`.

Writes OUT/pruned.keras, OUT/metrics.json, OUT/prune_log.json (+ .csv), OUT/prune_plot.png and
one model per step in OUT/steps/ (a rerun resumes after the last completed step).
"""

from __future__ import annotations

from absl import flags, logging

from pipelines import flag_utils

_TEACHER = flags.DEFINE_string("teacher", None, "The unpruned .keras model.", required=True)
_DATA = flags.DEFINE_string("data", None, "Image folder/archive, cifar-10-batches-py folder, or tfds[:NAME].",
                            required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
_PRESET = flags.DEFINE_enum("preset", "smoke", ["smoke", "cpu", "paper"], "Pruning preset.")
flags.DEFINE_float("target_params_ratio", None, "Keep this fraction of the parameters (0 clears the preset's).")
flags.DEFINE_float("target_flops_ratio", None, "Keep this fraction of the FLOPs.")
flags.DEFINE_float("max_accuracy_drop", None, "Stop before validation accuracy drops more than this many points.")
flags.DEFINE_enum("criterion", None, ["attention", "l1"], "Filter importance criterion.")
flags.DEFINE_float("attention_p", None, "Exponent p of the attention sum |A|^p.")
flags.DEFINE_enum("allocation", None, ["global", "cost", "uniform"],
                  "Rank channels over all groups (by score, or by score per parameter/FLOP saved) or per group.")
flags.DEFINE_enum("transfer", None, ["kd_at", "kd", "at", "none"], "Knowledge transfer while fine-tuning.")
flags.DEFINE_float("cost_exponent", None, "With --allocation=cost: scores / (saving ** this); 1 = per unit saved.")
flags.DEFINE_enum("normalization", None, ["mean", "max", "l2", "none"], "Per-layer normalisation of the scores.")
flags.DEFINE_float("stream_floor", None, "Residual streams keep at least this fraction of their width.")
flags.DEFINE_float("layer_floor", None, "Other channel groups keep at least this fraction of their width.")
flags.DEFINE_float("min_step", None, "With --max_accuracy_drop: stop when backing off would make a step smaller.")
flags.DEFINE_integer("steps", None, "Pruning steps to the target.")
flags.DEFINE_integer("step_epochs", None, "Fine-tuning epochs after each step.")
flags.DEFINE_integer("final_epochs", None, "Fine-tuning epochs of the chosen model.")
flags.DEFINE_integer("calibration_size", None, "Images used to score filters.")
flags.DEFINE_integer("batch_size", None, "Fine-tuning batch size; overrides the preset.")
flags.DEFINE_integer("seed", None, "Random seed.")
_VAL_SIZE = flags.DEFINE_integer("val_size", None, "Validation hold-out (default: the teacher's, from its metrics.json).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Discard an earlier run's files in --out_dir instead of resuming it.")
_PROGRESS = flags.DEFINE_enum("progress", "none", ["bar", "epoch", "none"], "Fine-tuning progress display.")
flag_utils.define_resize()

_FIELDS = {n: n for n in ("target_params_ratio", "target_flops_ratio", "max_accuracy_drop", "criterion", "attention_p",
                          "allocation", "cost_exponent", "normalization", "stream_floor", "layer_floor", "min_step",
                          "transfer", "steps", "step_epochs", "final_epochs", "calibration_size", "batch_size",
                          "seed")}


# Files this binary writes in --out_dir (an input there under one of these names is refused at once).
OUTPUTS = ("pruned.keras", "metrics.json", "prune_log.json", "prune_log.csv", "prune_plot.png")


def main(argv):
    from edgekt.prune import config as config_lib
    from edgekt.prune import pruner

    cleared = {ratio: None for ratio in ("target_params_ratio", "target_flops_ratio") if flags.FLAGS[ratio].value == 0}
    # A ratio of 0 clears that target (the override wins over the flag's 0; an error names the flag).
    config = flag_utils.config_from_flags(config_lib.preset, _FIELDS, _PRESET.value, **cleared)
    teacher, val_size, split_seed, pool_size = flag_utils.load_teacher_and_split(_TEACHER.value, _VAL_SIZE.value)
    flag_utils.log_config("prune", config, preset=_PRESET.value, teacher=_TEACHER.value, data=_DATA.value,
                          out_dir=_OUT_DIR.value, val_size=val_size, split_seed=split_seed,
                          device_pool_size=pool_size)
    splits = flag_utils.load_data(_DATA.value, teacher.input_shape[1:])
    metrics = pruner.prune_and_finetune(teacher, splits, _OUT_DIR.value, config, val_size=val_size,
                                        split_seed=split_seed, device_pool_size=pool_size, preset_name=_PRESET.value, teacher_path=_TEACHER.value,
                                        overwrite=_OVERWRITE.value, verbose={"bar": 1, "epoch": 2, "none": 0}[_PROGRESS.value])
    logging.info("wrote %s/pruned.keras: %.2f%% of parameters removed, test top-1 %s", _OUT_DIR.value,
                 100 * metrics["params_removed_fraction"], metrics["test_accuracy"])


if __name__ == "__main__":
    flag_utils.run(main, OUTPUTS)
