"""TensorFlow Datasets sources (`tfds:cifar10`), for machines that can download."""

from __future__ import annotations

import numpy as np

from edgekt.data.types import DataError, DataSplits, make_split

TFDS_PREFIX = "tfds:"
DEFAULT_TFDS_NAME = "cifar10"


def tfds_name(source: str) -> str | None:
    """Returns the tfds data set name for `tfds`, `tfds:NAME`, else None."""
    if source == "tfds":
        return DEFAULT_TFDS_NAME
    if source.startswith(TFDS_PREFIX):
        name = source[len(TFDS_PREFIX):]
        if not name:
            raise DataError(f"--data={source!r}: empty tfds name; use e.g. 'tfds:cifar10'")
        return name
    return None


def read_tfds(name: str, data_dir: str | None = None, download: bool = True) -> DataSplits:
    """Loads the `train` and `test` splits of a tfds image classification data set.

    Args:
      name: tfds name, e.g. "cifar10" (a version may follow: "cifar10:3.0.2").
      data_dir: tfds data directory (None: tfds's default, ~/tensorflow_datasets).
      download: whether tfds may download and prepare the data set.

    Raises:
      DataError: tfds is not installed, the data set is unknown, or it is not prepared and
        cannot be downloaded (e.g. no internet).
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(f"--data=tfds:{name}: tensorflow-datasets is not installed; `pip install "
                        "tensorflow-datasets` or use a local archive/folder") from e
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises its own DatasetNotFoundError and friends.
        raise DataError(f"tfds:{name}: unknown data set ({type(e).__name__}: {str(e)[:120]}...); check the name "
                        "(e.g. tfds:cifar10)") from e
    if download and not _prepared(builder):
        host = _unreachable_download_host()
        if host is not None:
            raise DataError(f"--data=tfds:{name}: not prepared in {builder.data_dir} and {host} cannot be reached "
                            "(no internet?); pass a local copy: --data=PATH/cifar10.tar.gz, an image-folder tree or a "
                            "cifar-10-batches-py folder")
        try:
            builder.download_and_prepare()
        except Exception as e:
            raise DataError(
                f"tfds:{name}: could not download/prepare ({type(e).__name__}: {e}). Without internet "
                "use a local copy: --data=PATH/cifar10.tar.gz or a cifar-10-batches-py folder") from e
    features = builder.info.features
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
    if image_key not in features or label_key not in features:
        raise DataError(f"tfds:{name}: has no image and label features ({list(features)}); use an image "
                        "classification data set")
    class_names = tuple(features[label_key].names)
    out = {}
    for split in ("train", "test"):
        if split not in builder.info.splits:
            continue
        try:
            batch = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        except Exception as e:
            raise DataError(f"tfds:{name}: split {split!r} could not be read ({type(e).__name__}: {e}); prepare the "
                            "data set again or use a local copy") from e
        images = np.asarray(batch[image_key])
        if images.ndim == 4 and images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        out[split] = make_split(images.astype(np.uint8), np.asarray(batch[label_key]), class_names)
    if not out:
        raise DataError(f"tfds:{name}: has neither a 'train' nor a 'test' split; use a data set with them")
    return DataSplits(out, class_names, f"{TFDS_PREFIX}{name}")


# Where tfds downloads from; tested before a download, which would otherwise retry for minutes.
_DOWNLOAD_HOSTS = (("storage.googleapis.com", 443), ("www.cs.toronto.edu", 443))


def _prepared(builder) -> bool:
    try:
        return bool(builder.is_prepared())
    except Exception:  # noqa: BLE001 - an older tfds without is_prepared: let it try
        return False


def _unreachable_download_host(timeout: float = 5.0) -> str | None:
    """The first download host that cannot be reached within `timeout` seconds, else None."""
    import socket

    for host, port in _DOWNLOAD_HOSTS:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError:
            return host
    return None
