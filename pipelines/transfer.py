"""Knowledge transfer from the cloud model to a student: `python -m pipelines.transfer
--teacher=DIR/model.keras --student=OUT/pruned.keras|wrn-16-1 --data=... --out_dir=T
--preset=smoke|cpu|paper [--ce_weight=...] [--kd_weight=...] [--temperature=...] [--at_weight=...]`.

The loss is composable: cross-entropy to the labels, KD on softened logits and attention
transfer between stages of equal resolution; a zero weight drops a term (`--kd_weight=0
--at_weight=0 --ce_weight=1` is plain training). Writes T/student.keras, T/metrics.json and
T/history.csv.
"""

from __future__ import annotations

from absl import flags

from edgekt.errors import UserError
from pipelines import flag_utils

_TEACHER = flags.DEFINE_string("teacher", None, "The cloud .keras model.", required=True)
_STUDENT = flags.DEFINE_string("student", None, "The student: a .keras model (e.g. the pruned one) or wrn-DEPTH-WIDTH "
                               "for a new WRN trained from scratch.", required=True)
_DATA = flags.DEFINE_string("data", None, "Image folder/archive, cifar-10-batches-py folder, or tfds[:NAME].",
                            required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
_PRESET = flags.DEFINE_enum("preset", "smoke", ["smoke", "cpu", "paper"], "Transfer preset.")
flags.DEFINE_float("ce_weight", None, "Weight of cross-entropy to the labels.")
flags.DEFINE_float("kd_weight", None, "Weight of KD on softened logits (0 drops it).")
flags.DEFINE_float("temperature", None, "KD temperature.")
flags.DEFINE_float("at_weight", None, "Weight of attention transfer (0 drops it).")
flags.DEFINE_float("at_p", None, "Exponent p of the attention maps.")
flags.DEFINE_float("label_smoothing", None, "Label smoothing of the cross-entropy term.")
flags.DEFINE_integer("epochs", None, "Training epochs.")
flags.DEFINE_integer("batch_size", None, "Batch size.")
flags.DEFINE_float("learning_rate", None, "Peak learning rate (cosine decay).")
flags.DEFINE_float("warmup_epochs", None, "Linear warm-up epochs.")
flags.DEFINE_float("weight_decay", None, "L2 weight decay on kernels.")
flags.DEFINE_enum("precision", None, ["float32", "mixed_bfloat16", "mixed_float16"], "Training dtype policy.")
flags.DEFINE_integer("train_size", None, "Class-balanced subset of the training split.")
flags.DEFINE_integer("test_size", None, "Class-balanced subset of the test split.")
flags.DEFINE_integer("seed", None, "Random seed.")
_VAL_SIZE = flags.DEFINE_integer("val_size", None, "Validation hold-out (default: the teacher's, from its metrics.json).")
_PROGRESS = flags.DEFINE_enum("progress", "none", ["bar", "epoch", "none"], "Training progress display.")
flag_utils.define_resize()

_FIELDS = {n: n for n in ("ce_weight", "kd_weight", "temperature", "at_weight", "at_p", "label_smoothing", "epochs",
                          "batch_size", "learning_rate", "warmup_epochs", "weight_decay", "precision", "train_size",
                          "test_size", "seed")}


# Files this binary writes in --out_dir (an input there under one of these names is refused at once).
OUTPUTS = ("student.keras", "metrics.json", "history.csv")


def main(argv):
    from edgekt.transfer import config as config_lib
    from edgekt.transfer import stage

    stage.check_student(_STUDENT.value)   # before the teacher and the data are loaded
    config = flag_utils.config_from_flags(config_lib.preset, _FIELDS, _PRESET.value)
    teacher, val_size, split_seed, pool_size = flag_utils.load_teacher_and_split(_TEACHER.value, _VAL_SIZE.value)
    flag_utils.log_config("transfer", config, preset=_PRESET.value, teacher=_TEACHER.value, student=_STUDENT.value,
                          data=_DATA.value, out_dir=_OUT_DIR.value, val_size=val_size, split_seed=split_seed,
                          device_pool_size=pool_size)
    splits = flag_utils.load_data(_DATA.value, teacher.input_shape[1:])
    train_images = splits["train"].images if "train" in splits else None
    if train_images is None:
        raise UserError(f"{_DATA.value}: no 'train' split (splits: {sorted(splits)}); put the training images under "
                        "train/<class>/")
    student = stage.make_student(_STUDENT.value, num_classes=len(splits.class_names), train_images=train_images,
                                 input_shape=train_images.shape[1:], seed=config.optimization.seed)
    stage.distill(teacher, student, splits, _OUT_DIR.value, config, val_size=val_size, split_seed=split_seed,
                  device_pool_size=pool_size,
                  preset_name=_PRESET.value, teacher_path=_TEACHER.value, student_name=_STUDENT.value,
                  verbose={"bar": 1, "epoch": 2, "none": 0}[_PROGRESS.value])


if __name__ == "__main__":
    flag_utils.run(main, OUTPUTS)
