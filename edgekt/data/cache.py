"""Decoded-array cache: a data source is decoded once, later loads read one .npz file."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile

import numpy as np
from absl import logging

from edgekt import atomic
from edgekt.data.types import DataSplits, Split

# Bump when the decoded form changes, so old cache files are not reused.
CACHE_FORMAT = 2
CACHE_DIR_ENV = "EDGEKT_CACHE_DIR"


def default_cache_dir() -> str:
    """$EDGEKT_CACHE_DIR, else ~/.cache/edgekt/data."""
    return os.environ.get(CACHE_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "edgekt", "data")


def fingerprint(path: str) -> list:
    """What identifies a file or folder's contents: every file's relative name, size and a
    digest of its bytes (not its mtime, which copies keep), following links to files and
    folders as the image reader does (a folder reached twice counts once)."""
    path = os.path.abspath(path)
    if os.path.isfile(path):
        return [path, os.path.getsize(path), _digest(path)]
    entries = []
    seen = set()
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back into a folder already read: the reader refuses it
            entries.append([os.path.relpath(dirpath, path) + os.sep, "seen"])
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            file = os.path.join(dirpath, name)
            try:
                entries.append([os.path.relpath(file, path), os.path.getsize(file), _digest(file)])
            except OSError:  # a dangling link or an unreadable file: the reader reports it
                entries.append([os.path.relpath(file, path), None])
        for name in dirnames:  # empty folders matter: they are an error the loader reports
            entries.append([os.path.relpath(os.path.join(dirpath, name), path) + os.sep])
    return [path, entries]


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(source_id: object, options: dict) -> str:
    blob = json.dumps([CACHE_FORMAT, source_id, options], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cache_path(cache_dir: str, key: str) -> str:
    return os.path.join(cache_dir, f"{key}.npz")


def read(cache_dir: str, key: str) -> DataSplits | None:
    """Returns the cached splits, or None if absent or unreadable (then it is rebuilt)."""
    path = cache_path(cache_dir, key)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            class_names = tuple(meta["class_names"])
            splits = {s: Split(z[f"{s}__images"], z[f"{s}__labels"], class_names) for s in meta["splits"]}
        return DataSplits(splits, class_names, meta["source"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        logging.warning("ignoring unreadable data cache %s (%s); decoding the source again", path, e)
        return None


def write(cache_dir: str, key: str, splits: DataSplits) -> str:
    """Writes the splits atomically; returns the cache file's path."""
    arrays = {}
    for name, split in splits.items():
        arrays[f"{name}__images"] = split.images
        arrays[f"{name}__labels"] = split.labels
    meta = {"class_names": list(splits.class_names), "splits": sorted(splits), "source": splits.source}
    arrays["meta"] = np.asarray(json.dumps(meta))
    path = cache_path(cache_dir, key)
    atomic.write_with(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")
    return path
