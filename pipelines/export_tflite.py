"""Export a Keras model to TFLite with on-device training signatures:
`python -m pipelines.export_tflite --model=OUT/pruned.keras --out_dir=EXP [--data=...]`.

Writes EXP/model_trainable.tflite (train, distill, infer, get_weights, set_weights; builtin
ops only), EXP/model_int8.tflite (or model_float16.tflite), EXP/model_meta.json, and
EXP/metrics.json (sizes, ops, train-step and inference times, and with --data the test
accuracy of the Keras model and of both .tflite files measured in the TFLite interpreter),
and with --data EXP/replay.npz (a few training images per class for the device's replay).
"""

from __future__ import annotations

import json

from absl import flags, logging

from edgekt.errors import UserError
from pipelines import flag_utils

_MODEL = flags.DEFINE_string("model", None, "The .keras model (raw-pixel input, logits output).", required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
_DATA = flags.DEFINE_string("data", None, "Data for int8 calibration and test accuracy (folder/archive/tfds).")
_CLASS_NAMES = flags.DEFINE_list("class_names", None, "Class names (default: from --data or the model's metrics.json).")
_NEW_CLASSES = flags.DEFINE_list("new_classes", [], "Extra categories the device will learn (grows the classifier).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Fixed batch size of the on-device signatures.")
_TRAINABLE = flags.DEFINE_string("trainable", "all", "all | bn_classifier | classifier | last:N")
_BN_MODE = flags.DEFINE_enum("bn_mode", "batch", ["batch", "frozen"], "BN statistics while training on the device.")
_MOMENTUM = flags.DEFINE_float("momentum", 0.9, "SGD momentum on the device.")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 5e-4, "L2 weight decay on the device.")
_QUANT = flags.DEFINE_enum("quantization", "int8", ["int8", "float16"], "The inference-only model's format (int8 "
                           "needs --data to calibrate; without it the float16 model is written).")
_CALIBRATION = flags.DEFINE_integer("calibration_size", 300, "Images for int8 calibration.")
_REPLAY = flags.DEFINE_integer("replay_per_class", 20, "Training images per class kept in replay.npz for the device.")
_RESIZE = flag_utils.define_resize()
_OPTION_FLAGS = {"batch_size": "batch_size", "trainable": "trainable", "bn_mode": "bn_mode", "momentum": "momentum",
                 "weight_decay": "weight_decay"}


# Files this binary writes in --out_dir (an input there under one of these names is refused at once).
OUTPUTS = ("model_trainable.tflite", "model_meta.json", "model_int8.tflite", "model_float16.tflite", "metrics.json",
           "replay.npz")


def main(argv):
    del argv
    from edgekt.export import pipeline
    from edgekt.export.device_trainer import TrainerOptions

    flag_utils.check(_CALIBRATION.value >= 1, "calibration_size", ">= 1")
    flag_utils.check(_REPLAY.value >= 0, "replay_per_class", ">= 0")
    for flag in ("class_names", "new_classes"):
        names = flags.FLAGS[flag].value or []
        flag_utils.check(all(n.strip() for n in names) and len(set(names)) == len(names), flag,
                         "distinct, non-empty names")
    clash = sorted(set(_NEW_CLASSES.value) & set(_CLASS_NAMES.value or []))
    if clash:
        raise UserError(f"--new_classes={','.join(_NEW_CLASSES.value)}: {clash} are already among --class_names; "
                        "list only categories the model does not have")
    options = flag_utils.config_from_flags(TrainerOptions, _OPTION_FLAGS)
    flag_utils.log_config("export_tflite", options, model=_MODEL.value, out_dir=_OUT_DIR.value, data=_DATA.value,
                          quantization=_QUANT.value, new_classes=_NEW_CLASSES.value)
    metrics = pipeline.export_model(_MODEL.value, _OUT_DIR.value, data_source=_DATA.value,
                                    class_names=_CLASS_NAMES.value, new_class_names=_NEW_CLASSES.value,
                                    quantization=_QUANT.value, calibration_size=_CALIBRATION.value,
                                    replay_per_class=_REPLAY.value, resize=_RESIZE.value,
                                    **{field: getattr(options, field) for field in _OPTION_FLAGS.values()})
    if metrics["inference_quantization"] != _QUANT.value:
        logging.warning("wrote the %s inference model (no --data to calibrate %s)", metrics["inference_quantization"],
                        _QUANT.value)
    logging.info("wrote %s: %s", _OUT_DIR.value, json.dumps({k: metrics[k] for k in sorted(metrics)
                                                               if k.endswith("accuracy") or k.endswith("bytes")}))


if __name__ == "__main__":
    flag_utils.run(main, OUTPUTS)
