"""Convert your own Keras model: `python -m pipelines.convert --model=my.keras --data=FOLDER --out_dir=OUT
[--budget_minutes=30] [--max_accuracy_drop=1] [--preset=auto|smoke|cpu|paper] [--target_params_ratio=0.3]
[--check_only]`.

By default it removes as much as an accuracy floor allows (1 point below your model on
validation), fine-tuning by distillation from your model for epochs sized to your data, within
--budget_minutes; a ratio or a preset overrides. The last line says what it chose and what it
kept.

The model must take raw RGB pixels (0-255; put a Rescaling/Normalization layer first) and
end in a Dense classifier. Writes OUT/prune/pruned.keras and OUT/export/ (trainable .tflite,
int8 .tflite, model_meta.json for the device app), or lists every unsupported layer.
"""

from __future__ import annotations

from absl import flags, logging

from edgekt.errors import UserError
from pipelines import flag_utils

_MODEL = flags.DEFINE_string("model", None, "Your .keras model.", required=True)
_DATA = flags.DEFINE_string("data", None, "Your data: folder/archive with class folders (train/, test/).")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.")
_PRESET = flags.DEFINE_enum("preset", "auto", ["auto", "smoke", "cpu", "paper"],
                            "auto (default): remove as much as the accuracy floor allows, fine-tuning sized to the data, "
                            "within --budget_minutes; smoke / cpu / paper: the pruning preset's ratio and schedule.")
flags.DEFINE_float("target_params_ratio", None, "Keep this fraction of the parameters.")
flags.DEFINE_float("target_flops_ratio", None, "Keep this fraction of the FLOPs.")
flags.DEFINE_float("max_accuracy_drop", None, "Accuracy floor in points below the original model on validation "
                   "(auto: 1).")
_BUDGET = flags.DEFINE_float("budget_minutes", 30.0, "auto: no pruning step starts that would overrun this many "
                             "minutes with the final fine-tuning.")
_VAL_SIZE = flags.DEFINE_integer("val_size", 1000, "Validation images held out of train/ (unused when the data has "
                                 "a val/ folder, which is then the validation set).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Fixed batch size on the device.")
_CHECK_ONLY = flags.DEFINE_bool("check_only", False, "Only list what in the model is unsupported.")
_RESIZE = flag_utils.define_resize()
_FIELDS = {"target_params_ratio": "target_params_ratio", "target_flops_ratio": "target_flops_ratio",
           "max_accuracy_drop": "max_accuracy_drop"}
flags.register_validator("val_size", lambda v: v >= 1, "must be >= 1 (pruning chooses models on validation images)")
flags.register_validator("batch_size", lambda v: v >= 1, "must be >= 1")
flags.register_validator("budget_minutes", lambda v: v > 0, "must be > 0 minutes")


# Files this binary writes in --out_dir (an input there under one of these names is refused at once).
OUTPUTS = ("prune/pruned.keras", "prune/metrics.json", "export/model_trainable.tflite", "export/model_meta.json",
           "export/metrics.json", "export/model_int8.tflite", "convert.json", "metrics.json")


def main(argv):
    del argv
    if not _CHECK_ONLY.value and (not _DATA.value or not _OUT_DIR.value):
        missing = " and ".join(f"--{n}" for n, v in (("data", _DATA.value), ("out_dir", _OUT_DIR.value)) if not v)
        raise UserError(f"{missing}: required to convert; pass them, or --check_only to only check the model")
    from edgekt import compatibility
    from edgekt import convert_user
    from edgekt.prune import config as config_lib

    if not _CHECK_ONLY.value:
        if _PRESET.value == convert_user.AUTO:
            flag_utils.config_from_flags(lambda **o: convert_user.auto_config(1000, _BUDGET.value, **o), _FIELDS)
        else:
            flag_utils.config_from_flags(config_lib.preset, _FIELDS, _PRESET.value)
    found = compatibility.file_problems(_MODEL.value)
    if found:
        for p in found:
            print(f"  - {p}")
        raise compatibility.UnsupportedUserModelError(_MODEL.value, found)
    if _CHECK_ONLY.value:
        print(f"{_MODEL.value}: every layer is supported by pruning and on-device training")
        return
    summary = convert_user.convert(_MODEL.value, _DATA.value, _OUT_DIR.value, preset=_PRESET.value,
                                   val_size=_VAL_SIZE.value, batch_size=_BATCH.value, resize=_RESIZE.value,
                                   budget_minutes=_BUDGET.value,
                                   **flag_utils.overrides_from_flags(_FIELDS))
    print(summary["summary"])


if __name__ == "__main__":
    flag_utils.run(main, OUTPUTS)
