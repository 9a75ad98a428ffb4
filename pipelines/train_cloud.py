"""Train the cloud (teacher) WRN: `python -m pipelines.train_cloud --preset=cpu --data=... --out_dir=...`.

Writes OUT_DIR/model.keras (float32, raw-RGB input, logits output), OUT_DIR/metrics.json,
OUT_DIR/history.csv, and per-epoch checkpoints in OUT_DIR/checkpoints (a rerun resumes).
Multi-device: --distribution=mirrored (TensorFlow) or data_parallel (KERAS_BACKEND=jax);
--cpu_devices=N splits the CPU into N logical devices to try it without accelerators.
"""

from __future__ import annotations

from absl import flags, logging

from pipelines import flag_utils

_PRESET = flags.DEFINE_enum("preset", "smoke", ["smoke", "cpu", "paper"], "Training preset.")
_DATA = flags.DEFINE_string("data", None, "Image folder/archive, cifar-10-batches-py folder, or tfds[:NAME].",
                            required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
flags.DEFINE_integer("depth", None, "WRN depth (6n+4); overrides the preset.")
flags.DEFINE_integer("width", None, "WRN widening factor; overrides the preset.")
flags.DEFINE_float("dropout", None, "Dropout between a block's convs; overrides the preset.")
flags.DEFINE_integer("epochs", None, "Epochs; overrides the preset.")
flags.DEFINE_integer("batch_size", None, "Global batch size; overrides the preset.")
flags.DEFINE_float("learning_rate", None, "Peak learning rate; overrides the preset.")
flags.DEFINE_enum("schedule", None, ["cosine", "step", "constant"], "LR schedule; overrides the preset.")
flags.DEFINE_float("weight_decay", None, "L2 weight decay on kernels; overrides the preset.")
flags.DEFINE_float("label_smoothing", None, "Label smoothing; overrides the preset.")
flags.DEFINE_integer("train_size", None, "Class-balanced training subset size; overrides the preset.")
flags.DEFINE_integer("val_size", None, "Validation images held out of train; overrides the preset.")
flags.DEFINE_integer("device_pool_size", None, "Class-balanced images held out of train for on-device learning "
                     "experiments (the cloud never trains on them); overrides the preset.")
flags.DEFINE_enum("precision", None, ["float32", "mixed_bfloat16", "mixed_float16"],
                  "Dtype policy; overrides the preset.")
flags.DEFINE_integer("seed", None, "Random seed; overrides the preset.")
_DISTRIBUTION = flags.DEFINE_enum("distribution", "none", ["none", "auto", "mirrored", "multi_worker", "data_parallel"],
                                  "Multi-device engine.")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", None,
                                    "Split the CPU into N logical TensorFlow devices (for --distribution=mirrored).")
_PROGRESS = flags.DEFINE_enum("progress", "auto", ["auto", "bar", "epoch", "none"],
                              "Progress display: a bar per step, a line per epoch, or none (auto: bar on a terminal).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Discard an existing checkpoint instead of resuming.")
flag_utils.define_resize()
flags.register_validator("cpu_devices", lambda v: v is None or v >= 1, "must be >= 1")

_FIELDS = {name: name for name in ("depth", "width", "dropout", "epochs", "batch_size", "learning_rate", "schedule",
                                   "weight_decay", "label_smoothing", "train_size", "val_size", "device_pool_size", "precision",
                                   "seed")}


# Files this binary writes in --out_dir (an input there under one of these names is refused at once).
OUTPUTS = ("model.keras", "metrics.json", "history.csv")


def main(argv):
    if _CPU_DEVICES.value:
        from edgekt.train import distribution

        distribution.split_cpu(_CPU_DEVICES.value)
    from edgekt.train import cloud
    from edgekt.train import config as config_lib
    from edgekt.train import train_and_evaluate

    config = flag_utils.config_from_flags(config_lib.preset, _FIELDS, _PRESET.value)
    cloud.check_out_dir(_OUT_DIR.value, _OVERWRITE.value)  # before the data is read
    flag_utils.log_config("train_cloud", config, preset=_PRESET.value, data=_DATA.value, out_dir=_OUT_DIR.value,
                          distribution=_DISTRIBUTION.value)
    metrics = train_and_evaluate(config, flag_utils.load_data(_DATA.value), _OUT_DIR.value, distribution=_DISTRIBUTION.value,
                                 preset_name=_PRESET.value, overwrite=_OVERWRITE.value,
                                 verbose={"auto": "auto", "bar": 1, "epoch": 2, "none": 0}[_PROGRESS.value])
    logging.info("wrote %s/model.keras and %s/metrics.json (test accuracy %s)", _OUT_DIR.value, _OUT_DIR.value,
                 metrics["test_accuracy"])


if __name__ == "__main__":
    flag_utils.run(main, OUTPUTS)
