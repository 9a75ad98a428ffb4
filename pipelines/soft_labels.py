"""Soft labels of the cloud model for unlabelled device images:
`python -m pipelines.soft_labels --model=cloud/model.keras --images=FOLDER_OR_NPZ --out=soft.npz [--temperature=4]`,
or serve them over HTTP: `--serve [--host=127.0.0.1 --port=8765]` (POST /soft_labels with an .npz of images).

The .npz holds images, soft_targets [N, K], temperature and class_names: the device app's
`learn-unseen --soft_labels=soft.npz` input.
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging

from pipelines import flag_utils

_MODEL = flags.DEFINE_string("model", None, "The cloud .keras model.", required=True)
_IMAGES = flags.DEFINE_string("images", None, "Unlabelled images: a folder/archive of image files, or an .npz "
                                              "with 'images'.")
_OUT = flags.DEFINE_string("out", None, "Output .npz.")
_TEMPERATURE = flags.DEFINE_float("temperature", 4.0, "Softmax temperature of the soft labels.")
_CLASS_NAMES = flags.DEFINE_list("class_names", None, "Class names (default: the model's metrics.json).")
_SERVE = flags.DEFINE_bool("serve", False, "Serve soft labels over HTTP instead of writing a file.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to bind (localhost by default).")
_PORT = flags.DEFINE_integer("port", 8765, "Port to bind.")
_RESIZE = flags.DEFINE_bool("resize", False, "Resize images of another size to the model's input.")


def main(argv):
    from edgekt.models import saving
    from edgekt.transfer import soft_labels
    from tflite_runtime_app import data as app_data

    model = saving.load_model(_MODEL.value)
    class_names = _CLASS_NAMES.value
    if class_names is None:
        metrics = os.path.join(os.path.dirname(os.path.abspath(_MODEL.value)), "metrics.json")
        if os.path.exists(metrics):
            with open(metrics) as f:
                class_names = json.load(f).get("class_names")
    if not class_names:
        raise app.UsageError("no class names: pass --class_names or keep metrics.json beside the model")
    if _SERVE.value:
        server = soft_labels.make_server(model, class_names, _HOST.value, _PORT.value, _TEMPERATURE.value)
        logging.info("serving soft labels on http://%s:%d/soft_labels", _HOST.value, _PORT.value)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            server.shutdown()
        return
    if not _IMAGES.value or not _OUT.value:
        raise app.UsageError("--images and --out are required unless --serve")
    images = app_data.load_unlabelled(_IMAGES.value, tuple(model.input_shape[1:]), resize=_RESIZE.value)
    soft_labels.write_soft_labels(model, images, class_names, _OUT.value, _TEMPERATURE.value)
    logging.info("wrote %s: %d images, %d classes, T=%.2f", _OUT.value, len(images), len(class_names),
                 _TEMPERATURE.value)


if __name__ == "__main__":
    flag_utils.run(main)
