"""The canonical `cifar-10-batches-py` / `cifar-100-python` pickle folders."""

from __future__ import annotations

import os
import pickle

import numpy as np

from edgekt.data.types import DataError, DataSplits, make_split

_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


def is_cifar_batches_dir(path: str) -> bool:
    return os.path.isdir(path) and (
        os.path.exists(os.path.join(path, "batches.meta")) or os.path.exists(os.path.join(path, "meta")))


# The only classes a CIFAR batch pickle needs (numpy arrays); anything else in a pickle could
# run code when it is loaded, so it is refused.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR batch never holds (a pickle that "
                                         "names other classes can run code when loaded); it was not loaded")
        return super().find_class(module, name)


def _unpickle(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnly(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError, MemoryError) as e:
        raise DataError(f"{path}: not a readable CIFAR batch pickle ({type(e).__name__}: {e}); restore the file from "
                        "the original cifar-10-batches-py archive") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: holds a pickled {type(obj).__name__}, not a dict; restore the file from the original "
                        "cifar-10-batches-py archive")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _batch_arrays(path: str, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    if "data" not in batch or label_key not in batch:
        raise DataError(f"{path}: missing 'data' or {label_key!r} (keys: {sorted(batch)}); restore the file from the "
                        "original archive")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise DataError(f"{path}: 'data' is {data.dtype} {data.shape}, not uint8 [N, 3072] (32x32 RGB, channels "
                        "first); restore the file from the original archive")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {data.shape[0]} images but {labels.shape} labels; restore the file from the original "
                        "archive")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: label {int(labels.max() if labels.max() >= num_classes else labels.min())} "
                        f"outside the {num_classes} classes named in the meta file; restore the files from the original "
                        "archive")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def read_cifar_batches(path: str) -> DataSplits:
    """Reads CIFAR-10 (`batches.meta`, `data_batch_1..5`, `test_batch`) or CIFAR-100
    (`meta`, `train`, `test`, fine labels).

    Raises:
      DataError: a file is missing, unreadable or has the wrong shapes; names the file.
    """
    if os.path.exists(os.path.join(path, "batches.meta")):
        meta = _unpickle(os.path.join(path, "batches.meta"))
        names_key, label_key = "label_names", "labels"
        train_files = [f for f in _CIFAR10_TRAIN if os.path.exists(os.path.join(path, f))]
        test_files = ["test_batch"] if os.path.exists(os.path.join(path, "test_batch")) else []
    else:
        meta = _unpickle(os.path.join(path, "meta"))
        names_key, label_key = "fine_label_names", "fine_labels"
        train_files = ["train"] if os.path.exists(os.path.join(path, "train")) else []
        test_files = ["test"] if os.path.exists(os.path.join(path, "test")) else []
    if names_key not in meta:
        raise DataError(f"{path}: meta file has no {names_key!r} (keys: {sorted(meta)}); restore it from the original "
                        "archive")
    names = meta[names_key]
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{path}: the meta file's {names_key!r} is {type(names).__name__} "
                        f"{str(names)[:60]}, not a list of class names; restore it from the original archive")
    class_names = tuple(n.decode(errors="replace") if isinstance(n, bytes) else n for n in names)
    if not train_files and not test_files:
        raise DataError(f"{path}: no batch files (data_batch_1..5, test_batch, or train/test); pass the extracted "
                        "cifar-10-batches-py folder")
    out = {}
    for split, names in (("train", train_files), ("test", test_files)):
        if not names:
            continue
        arrays = [_batch_arrays(os.path.join(path, n), label_key, len(class_names)) for n in names]
        out[split] = make_split(np.concatenate([a[0] for a in arrays]),
                                np.concatenate([a[1] for a in arrays]), class_names)
    return DataSplits(out, class_names, path)


def write_cifar_batches(path: str, splits: DataSplits, train_batches: int = 5) -> None:
    """Writes splits in the `cifar-10-batches-py` format (used to make test fixtures and to
    hand data to tools that expect that format)."""
    os.makedirs(path, exist_ok=True)

    def dump(name, images, labels):
        data = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))
        with open(os.path.join(path, name), "wb") as f:
            pickle.dump({b"data": data, b"labels": [int(v) for v in labels]}, f)

    with open(os.path.join(path, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in splits.class_names]}, f)
    if "train" in splits:
        tr = splits["train"]
        for i, idx in enumerate(np.array_split(np.arange(len(tr.labels)), train_batches), start=1):
            dump(f"data_batch_{i}", tr.images[idx], tr.labels[idx])
    if "test" in splits:
        dump("test_batch", splits["test"].images, splits["test"].labels)
