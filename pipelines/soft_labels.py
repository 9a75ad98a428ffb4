"""Soft labels of the cloud model for unlabelled device images:
`python -m pipelines.soft_labels --model=cloud/model.keras --images=FOLDER_OR_NPZ --out=soft.npz [--temperature=4]`,
or serve them over HTTP: `--serve [--host=127.0.0.1 --port=8765]` (POST /soft_labels with an .npz of images).

The .npz holds images, soft_targets [N, K], temperature and class_names: the device app's
`learn-unseen --soft_labels=soft.npz` input. The flags, the output folder and (with --serve) the
address are checked before the model is loaded.
"""

from __future__ import annotations

import errno
import os
import socket

from absl import flags, logging

from edgekt.errors import UserError, describe
from pipelines import flag_utils

_MODEL = flags.DEFINE_string("model", None, "The cloud .keras model.", required=True)
_IMAGES = flags.DEFINE_string("images", None, "Unlabelled images: a folder/archive of image files, or an .npz "
                                              "with 'images'.")
_OUT = flags.DEFINE_string("out", None, "Output .npz.")
_TEMPERATURE = flags.DEFINE_float("temperature", 4.0, "Softmax temperature of the soft labels.")
_CLASS_NAMES = flags.DEFINE_list("class_names", None, "Class names (default: the model's metrics.json).")
_SERVE = flags.DEFINE_bool("serve", False, "Serve soft labels over HTTP instead of writing a file.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to bind (localhost by default).")
_PORT = flags.DEFINE_integer("port", 8765, "Port to bind (0: any free port).")
_RESIZE = flag_utils.define_resize()
_MAX_IN_FLIGHT = flags.DEFINE_integer("max_in_flight", 8, "With --serve: requests served at once; more get 503.")
_READ_TIMEOUT = flags.DEFINE_float("read_timeout", 10.0, "With --serve: seconds a client may send nothing before "
                                                         "its request is refused with 408.")
_MAX_REQUEST_MB = flags.DEFINE_integer("max_request_mb", 64, "With --serve: the largest request body in MiB (413 "
                                                             "beyond); images may decompress to twice that.")
_REQUEST_TIMEOUT = flags.DEFINE_float("request_timeout", 120.0, "With --serve: seconds a client may take to send a "
                                                               "request body (408 beyond); the request line and "
                                                               "headers must come within twice --read_timeout.")
_SERVE_ONLY = ("max_in_flight", "read_timeout", "request_timeout", "max_request_mb")


def main(argv):
    from edgekt.transfer import soft_labels

    _check_flags(soft_labels)
    if _SERVE.value:
        _check_address(_HOST.value, _PORT.value)
    model = _load_model(_MODEL.value)
    class_names = _class_names(model)
    try:
        if _SERVE.value:
            return _serve(soft_labels, model, class_names)
        images = _load_images(soft_labels, model)
        soft_labels.write_soft_labels(model, images, class_names, _OUT.value, _TEMPERATURE.value)
    except soft_labels.ModelOutputError as e:
        raise UserError(f"--model={_MODEL.value}: {describe(e).split(': ', 1)[1]}") from e
    logging.info("wrote %s: %d images, %d classes, T=%.2f", _OUT.value, len(images), len(class_names),
                 _TEMPERATURE.value)


def _check_flags(soft_labels) -> None:
    """Every check the flags alone allow, before the model is loaded."""
    low, high = soft_labels.MIN_TEMPERATURE, soft_labels.MAX_TEMPERATURE
    flag_utils.check(low <= _TEMPERATURE.value <= high, "temperature", f"in [{low:g}, {high:g}]")
    flag_utils.check(0 <= _PORT.value <= 65535, "port", "in 0..65535")
    flag_utils.check(1 <= _MAX_IN_FLIGHT.value <= 1024, "max_in_flight", "in 1..1024")
    flag_utils.check(0 < _READ_TIMEOUT.value <= 3600, "read_timeout", "in (0, 3600] seconds")
    flag_utils.check(0 < _REQUEST_TIMEOUT.value <= 86400, "request_timeout", "in (0, 86400] seconds")
    flag_utils.check(1 <= _MAX_REQUEST_MB.value <= 2048, "max_request_mb", "in 1..2048")
    if _CLASS_NAMES.value is not None:
        names = _CLASS_NAMES.value
        if not names or any(not n.strip() for n in names):
            raise UserError(f"--class_names={','.join(names)}: {'has an empty name' if names else 'no names'}; pass "
                            "names separated by commas, one per model output")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise UserError(f"--class_names={','.join(names)}: names {repeated} repeat; pass each class once")
    model = _MODEL.value
    if os.path.isdir(model):
        raise UserError(f"--model={model}: is a folder; pass the .keras file in it (e.g. {model.rstrip('/')}/"
                        "model.keras)")
    if not os.path.isfile(model):
        raise UserError(f"--model={model}: no such file; pass the cloud model's .keras file "
                        "(pipelines.train_cloud writes OUT_DIR/model.keras)")
    if _SERVE.value:
        for name in ("images", "out", "resize"):
            if flags.FLAGS[name].present:
                raise UserError(f"--{name}={flags.FLAGS[name].value}: not used with --serve; drop --{name}, or "
                                "drop --serve to write a file")
        if not _HOST.value:
            raise UserError("--host: empty; pass an address of this machine such as 127.0.0.1")
        return
    for name in _SERVE_ONLY:
        if flags.FLAGS[name].present:
            raise UserError(f"--{name}={flags.FLAGS[name].value}: only used with --serve; drop --{name}, or add "
                            "--serve")
    if not _IMAGES.value:
        raise UserError("--images: required unless --serve; pass --images=FOLDER_OR_NPZ, or --serve")
    if not _OUT.value:
        raise UserError("--out: required unless --serve; pass --out=soft.npz, or --serve")
    if not os.path.exists(_IMAGES.value):
        raise UserError(f"--images={_IMAGES.value}: no such file or folder; check the path")
    out = _OUT.value
    folder = os.path.dirname(os.path.abspath(out))
    if out.endswith(os.sep) or os.path.isdir(out):
        raise UserError(f"--out={out}: is a folder; pass a file name such as {os.path.join(out, 'soft.npz')}")
    if not os.path.isdir(folder):
        raise UserError(f"--out={out}: folder {folder} does not exist; create it or pass another --out")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"--out={out}: folder {folder} is not writable; pass an --out in a writable folder")
    flag_utils.probe_writable("--out", out, folder)
    name_max = 255
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        pass
    if len(os.fsencode(os.path.basename(out))) > name_max:
        raise UserError(f"--out={out[:80]}...: a file name of {len(os.fsencode(os.path.basename(out)))} bytes, more "
                        f"than the {name_max} the file system allows; pass a shorter name")


def _check_address(host: str, port: int) -> None:
    """Refuses an address the server could not bind, before the model is loaded."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        probe.bind((host, port))
    except OSError as e:
        error = _address_error(e, host, port)
        if error is None:
            raise
        raise error from e
    finally:
        probe.close()


def _address_error(error: OSError, host: str, port: int) -> UserError | None:
    """The user error for an address the server cannot bind, or None (a bug keeps its traceback)."""
    if error.errno == errno.EADDRINUSE:
        return UserError(f"--port={port}: address already in use; pass another --port")
    if error.errno in (errno.EACCES, errno.EPERM):
        return UserError(f"--port={port}: permission denied (ports below 1024 need privileges); pass a --port "
                         "above 1023")
    if isinstance(error, socket.gaierror) or error.errno == errno.EADDRNOTAVAIL:
        return UserError(f"--host={host}: not an address of this machine ({describe(error)}); pass one such as "
                         "127.0.0.1, or 0.0.0.0 for every interface")
    return None


def _load_model(path: str):
    from edgekt.models import saving

    return saving.load_model(path)


def _class_names(model) -> list[str]:
    """--class_names, or those of the metrics.json beside the model, one per model output."""
    from edgekt.transfer import soft_labels

    try:
        soft_labels.check_model(model)
    except UserError as e:
        raise UserError(f"--model={_MODEL.value}: is not an image classifier ({describe(e)}); pass the cloud "
                        "model saved by pipelines.train_cloud") from e
    outputs = int(model.output_shape[-1])
    if _CLASS_NAMES.value is not None:
        names = list(_CLASS_NAMES.value)
        if len(names) != outputs:
            raise UserError(f"--class_names={','.join(names)}: {len(names)} names for a model with {outputs} "
                            f"outputs; pass {outputs} names, in the model's order")
        return names
    from edgekt.models import saving

    names = saving.sidecar_class_names(_MODEL.value)
    metrics = os.path.join(os.path.dirname(os.path.abspath(_MODEL.value)), saving.SIDECAR)
    if names is None:
        raise UserError(f"--class_names: not given, and no class names in a metrics.json beside {_MODEL.value}; "
                        "pass --class_names=NAME,NAME,... (one per model output)")
    if len(names) != outputs:
        raise UserError(f"{metrics}: {len(names)} class names for a model with {outputs} outputs; fix it or pass "
                        f"--class_names with {outputs} names")
    return names


def _load_images(soft_labels, model):
    from tflite_runtime_app import data as app_data

    try:
        images = app_data.load_unlabelled(_IMAGES.value, tuple(model.input_shape[1:]), resize=_RESIZE.value,
                                          offer_skip=False)
        return soft_labels.check_images(images, model, _IMAGES.value)
    except UserError as e:
        raise soft_labels.with_advice(e, "check --images") from e


def _serve(soft_labels, model, class_names) -> None:
    try:
        server = soft_labels.make_server(model, class_names, _HOST.value, _PORT.value, _TEMPERATURE.value,
                                         max_bytes=_MAX_REQUEST_MB.value << 20, max_in_flight=_MAX_IN_FLIGHT.value,
                                         read_timeout=_READ_TIMEOUT.value, request_timeout=_REQUEST_TIMEOUT.value)
    except OSError as e:
        error = _address_error(e, _HOST.value, _PORT.value)
        if error is None:
            raise
        raise error from e
    host, port = server.server_address[:2]
    logging.info("serving soft labels on http://%s:%d/soft_labels", host, port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    flag_utils.run(main)
