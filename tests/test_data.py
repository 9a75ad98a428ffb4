"""edgekt.data: sources, cache, error messages, class splits and the tf.data pipeline."""

from __future__ import annotations

import os
import tarfile
import zipfile

import numpy as np
import pytest

from edgekt import data
from edgekt.data import cifar_batches, pipeline

from conftest import encode_png, write_tree


def _same(a: data.DataSplits, b: data.DataSplits):
    assert sorted(a) == sorted(b)
    assert a.class_names == b.class_names
    for k in a:
        np.testing.assert_array_equal(a[k].images, b[k].images)
        np.testing.assert_array_equal(a[k].labels, b[k].labels)


def test_real_archive_has_cifar10_splits_and_sorted_class_names(cifar):
    assert cifar["train"].images.shape == (50000, 32, 32, 3)
    assert cifar["test"].images.shape == (5000, 32, 32, 3)
    assert cifar["train"].images.dtype == np.uint8
    assert cifar.class_names == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                 "ship", "truck")
    assert np.bincount(cifar["train"].labels).tolist() == [5000] * 10
    assert np.bincount(cifar["test"].labels).tolist() == [500] * 10
    assert cifar["train"].class_names == cifar.class_names


def test_second_load_of_archive_reads_the_cache_not_the_archive(cifar, cache_dir, monkeypatch):
    from conftest import CIFAR10_ARCHIVE

    from edgekt.data import image_tree

    def decode(*args, **kwargs):
        raise AssertionError("the archive was decoded again instead of read from the cache")

    monkeypatch.setattr(image_tree, "read_splits", decode)
    monkeypatch.setattr(image_tree, "iter_archive", decode)
    again = data.load(CIFAR10_ARCHIVE, cache_dir=cache_dir)
    _same(cifar, again)


def test_folder_tar_gz_and_zip_of_one_tree_load_identically(small_tree, small_cifar, tmp_path):
    folder = data.load(small_tree, use_cache=False)
    _same(folder, small_cifar)
    tgz = str(tmp_path / "tree.tar.gz")
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(small_tree, arcname="mydata")
    _same(data.load(tgz, use_cache=False), small_cifar)
    zpath = str(tmp_path / "tree.zip")
    with zipfile.ZipFile(zpath, "w") as zf:
        for dirpath, _, files in os.walk(small_tree):
            for f in files:
                full = os.path.join(dirpath, f)
                zf.write(full, os.path.relpath(full, str(tmp_path)))
    _same(data.load(zpath, use_cache=False), small_cifar)


def test_cache_is_rebuilt_when_a_file_changes(small_tree, tmp_path):
    cache = str(tmp_path / "cache")
    first = data.load(small_tree, cache_dir=cache)
    assert len(os.listdir(cache)) == 1
    victim = os.path.join(small_tree, "train", "cat", "0000.png")
    with open(victim, "wb") as f:
        f.write(encode_png(np.zeros((32, 32, 3), np.uint8)))
    second = data.load(small_tree, cache_dir=cache)
    idx = np.flatnonzero(second["train"].labels == second.class_names.index("cat"))[0]
    assert second["train"].images[idx].max() == 0
    assert first["train"].images[idx].max() > 0


def _linked_tree(tmp_path, small_cifar):
    """(a flat class-folder tree, a folder of links to its class folders)."""
    top = write_tree(str(tmp_path), {"x": small_cifar["train"]}, small_cifar.class_names, per_class=8, wrapper=None)
    flat = os.path.join(top, "x")
    linked = tmp_path / "linked"
    linked.mkdir()
    for cls in small_cifar.class_names:
        os.symlink(os.path.join(flat, cls), linked / cls)
    return flat, linked


def test_cache_follows_linked_class_folders_and_content_not_mtimes(tmp_path, small_cifar):
    """The cache's key follows links to class folders as the reader does (before, an image added
    in a linked folder was silently not read), and changes with a file's bytes even when its
    size and mtime are kept (a copy with `cp -p` or `rsync -t`)."""
    flat, linked = _linked_tree(tmp_path, small_cifar)
    cache = str(tmp_path / "cache")
    first = data.load(str(linked), cache_dir=cache)
    new = os.path.join(flat, small_cifar.class_names[1], "zz_new.png")
    with open(new, "wb") as f:
        f.write(encode_png(np.full((32, 32, 3), 7, np.uint8)))
    second = data.load(str(linked), cache_dir=cache)
    assert len(second["all"].labels) == len(first["all"].labels) + 1
    victim = os.path.join(flat, small_cifar.class_names[1], "zz_new.png")
    st = os.stat(victim)
    with open(victim, "wb") as f:
        f.write(encode_png(np.full((32, 32, 3), 9, np.uint8)))  # the same size: a constant image
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.path.getsize(victim) == st.st_size
    third = data.load(str(linked), cache_dir=cache)
    assert 9 in third["all"].images[:, 0, 0, 0] and 7 not in third["all"].images[:, 0, 0, 0]


def test_flat_class_folder_tree_is_one_split(tmp_path, small_cifar):
    top = write_tree(str(tmp_path), {"x": small_cifar["train"]}, small_cifar.class_names, per_class=8, wrapper=None)
    flat = os.path.join(top, "x")
    loaded = data.load(flat, use_cache=False)
    assert list(loaded) == [data.FLAT_SPLIT]
    np.testing.assert_array_equal(loaded["all"].images, small_cifar["train"].images)


def test_flat_tree_may_have_classes_named_like_splits(tmp_path):
    """A class folder called "test" or "val" that holds images is a class, not a split."""
    root = tmp_path / "flat"
    for i, cls in enumerate(("cat", "test", "val")):
        (root / cls).mkdir(parents=True)
        (root / cls / "a.png").write_bytes(encode_png(np.full((8, 8, 3), 40 * i, np.uint8)))
    loaded = data.load(str(root), use_cache=False)
    assert list(loaded) == [data.FLAT_SPLIT] and loaded.class_names == ("cat", "test", "val")
    np.testing.assert_array_equal(loaded["all"].images[:, 0, 0, 0], [0, 40, 80])


def test_linked_class_folders_are_read_and_link_loops_refused(tmp_path, small_cifar):
    flat, linked = _linked_tree(tmp_path, small_cifar)
    loaded = data.load(str(linked), use_cache=False)
    np.testing.assert_array_equal(loaded["all"].images, small_cifar["train"].images)
    os.symlink(str(linked), linked / small_cifar.class_names[0] / "loop")
    with pytest.raises(data.DataError, match="loop"):
        data.load(str(linked), use_cache=False)


def test_cifar_batches_folder_loads(small_cifar, tmp_path):
    folder = str(tmp_path / "cifar-10-batches-py")
    cifar_batches.write_cifar_batches(folder, small_cifar)
    assert sorted(os.listdir(folder))[:2] == ["batches.meta", "data_batch_1"]
    _same(data.load(folder, use_cache=False), small_cifar)


def test_tfds_source_reads_a_prepared_dataset(tmp_path, small_cifar):
    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow as tf

    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(32, 32, 3)),
        "label": tfds.features.ClassLabel(names=list(small_cifar.class_names))})
    splits = {k: tf.data.Dataset.from_tensor_slices({"image": v.images, "label": v.labels})
              for k, v in small_cifar.items()}
    tfds.dataset_builders.store_as_tfds_dataset(name="edgekt_fixture", version="1.0.0", features=features,
                                                split_datasets=splits, data_dir=str(tmp_path / "tfds"),
                                                disable_shuffling=True)
    loaded = data.load("tfds:edgekt_fixture", tfds_data_dir=str(tmp_path / "tfds"), cache_dir=str(tmp_path / "c"))
    _same(loaded, small_cifar)


@pytest.mark.parametrize("source", ["does/not/exist", "missing.tar.gz"])
def test_missing_path_names_it(source):
    with pytest.raises(data.DataError, match=f"{source}: no such file or folder"):
        data.load(source, use_cache=False)


def test_empty_class_folder_names_it(small_tree):
    os.makedirs(os.path.join(small_tree, "train", "dog"))
    with pytest.raises(data.DataError, match=r"train/dog: class folder is empty"):
        data.load(small_tree, use_cache=False)


def test_non_image_file_names_it(small_tree):
    bad = os.path.join(small_tree, "test", "ship", "notes.txt")
    with open(bad, "w") as f:
        f.write("not a picture")
    with pytest.raises(data.DataError, match=r"test/ship/notes.txt: not a readable image file"):
        data.load(small_tree, use_cache=False)


def test_wrong_image_size_names_file_and_sizes_unless_resize(small_tree):
    from PIL import Image

    odd = os.path.join(small_tree, "train", "cat", "0003.png")
    Image.new("RGB", (40, 28)).save(odd)
    with pytest.raises(data.DataError, match=r"train/cat/0003.png: image is 28x40 \(HxW\), expected 32x32"):
        data.load(small_tree, use_cache=False)
    resized = data.load(small_tree, use_cache=False, resize=True)
    assert resized["train"].images.shape[1:] == (32, 32, 3)


def test_corrupted_archive_names_it(small_tree, tmp_path):
    tgz = str(tmp_path / "tree.tar.gz")
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(small_tree, arcname="mydata")
    blob = open(tgz, "rb").read()
    cut = str(tmp_path / "cut.tar.gz")
    with open(cut, "wb") as f:
        f.write(blob[: len(blob) // 2])
    with pytest.raises(data.DataError, match=r"cut.tar.gz: corrupted, truncated or unreadable archive"):
        data.load(cut, use_cache=False)
    garbage = str(tmp_path / "garbage.tar.gz")
    with open(garbage, "wb") as f:
        f.write(b"this is not an archive" * 50)
    with pytest.raises(data.DataError, match=r"garbage.tar.gz: corrupted"):
        data.load(garbage, use_cache=False)


def test_unsupported_file_type_is_refused(tmp_path):
    p = tmp_path / "images.rar"
    p.write_bytes(b"x")
    with pytest.raises(data.DataError, match=r"images.rar: not a supported archive"):
        data.load(str(p), use_cache=False)


def test_corrupt_cache_file_is_ignored_and_rebuilt(small_tree, tmp_path):
    cache = str(tmp_path / "cache")
    first = data.load(small_tree, cache_dir=cache)
    (path,) = [os.path.join(cache, f) for f in os.listdir(cache)]
    with open(path, "wb") as f:
        f.write(b"broken")
    _same(data.load(small_tree, cache_dir=cache), first)


def test_stratified_subset_and_val_split_are_balanced_and_seeded(cifar):
    train, val = data.train_val_split(cifar["train"], 5000, seed=3)
    assert len(val.labels) == 5000 and len(train.labels) == 45000
    assert np.bincount(val.labels).tolist() == [500] * 10
    _, val_again = data.train_val_split(cifar["train"], 5000, seed=3)
    np.testing.assert_array_equal(val.images, val_again.images)
    _, val_other = data.train_val_split(cifar["train"], 5000, seed=4)
    assert not np.array_equal(val.images, val_other.images)
    sub = data.stratified_subset(train, 1000, seed=0)
    assert np.bincount(sub.labels).tolist() == [100] * 10


def test_class_helpers(small_cifar):
    train = small_cifar["train"]
    two = data.select_classes(train, ["ship", "airplane"], relabel=True)
    assert two.class_names == ("ship", "airplane")
    assert sorted(set(two.labels.tolist())) == [0, 1] and len(two.labels) == 16
    np.testing.assert_array_equal(two.images[two.labels == 0], train.images[train.labels == 2])
    kept, held = data.hold_out_classes(train, ["cat"])
    assert set(held.labels.tolist()) == {1} and 1 not in set(kept.labels.tolist())
    assert len(kept.labels) + len(held.labels) == len(train.labels)
    lab, unl = data.labelled_unlabelled(train, 3, seed=1)
    assert np.bincount(lab.labels).tolist() == [3, 3, 3] and np.bincount(unl.labels).tolist() == [5, 5, 5]
    lab2, _ = data.labelled_unlabelled(train, 3, seed=1)
    np.testing.assert_array_equal(lab.images, lab2.images)
    with pytest.raises(data.DataError, match=r"class 'dog': not a class of the data"):
        data.select_classes(train, ["dog"])
    with pytest.raises(data.DataError, match=r"cannot keep 9 labelled"):
        data.labelled_unlabelled(train, 9)


def test_train_stream_is_a_function_of_seed_and_epoch(small_cifar):
    tr = small_cifar["train"]
    full = [x.numpy() for x, _ in pipeline.train_dataset(tr.images, tr.labels, batch_size=8, num_classes=3,
                                                          epochs=3, seed=5)]
    assert len(full) == 9
    resumed = [x.numpy() for x, _ in pipeline.train_dataset(tr.images, tr.labels, batch_size=8, num_classes=3,
                                                             epochs=3, start_epoch=1, seed=5)]
    for a, b in zip(full[3:], resumed):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(full[0], full[3])  # each epoch is reshuffled/augmented anew


def test_augmentation_is_a_shifted_window_of_the_padded_image_possibly_flipped(small_cifar):
    import tensorflow as tf

    images = small_cifar["train"].images[:16].astype(np.float32)
    out = pipeline.augment_batch(tf.constant(images), tf.constant([7, 9], tf.int64)).numpy()
    padded = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)])
    for img, aug in zip(padded, out):
        found = any(np.array_equal(cand[dy:dy + 32, dx:dx + 32], aug)
                    for cand in (img, img[:, ::-1]) for dy in range(9) for dx in range(9))
        assert found


def test_eval_dataset_keeps_order_and_last_partial_batch(small_cifar):
    te = small_cifar["test"]
    batches = list(pipeline.eval_dataset(te.images, te.labels, batch_size=5, num_classes=3, one_hot=False))
    assert [len(y) for _, y in batches] == [5, 5, 2]
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), te.labels)
    np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), te.images.astype(np.float32))


def test_train_dataset_mixes_images_and_one_hot_targets_alike():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 8, 8, 3)).astype(np.uint8)
    labels = np.arange(16) % 4
    plain = pipeline.train_dataset(images, labels, batch_size=8, num_classes=4, epochs=1, augment=False)
    mixed = pipeline.train_dataset(images, labels, batch_size=8, num_classes=4, epochs=1, augment=False, mix="mixup")
    for (x0, y0), (x1, y1) in zip(plain, mixed):
        x0, y0, x1, y1 = x0.numpy(), y0.numpy(), x1.numpy(), y1.numpy()
        np.testing.assert_allclose(y1.sum(axis=1), 1.0, rtol=1e-6)
        # Mixing with the reversed batch: image and target weights agree for every example.
        lam = y1[np.arange(8), y0.argmax(1)]
        same = y0.argmax(1) == y0[::-1].argmax(1)
        expected = lam[:, None, None, None] * x0 + (1 - lam[:, None, None, None]) * x0[::-1]
        np.testing.assert_allclose(x1[~same], expected[~same], rtol=1e-4, atol=1e-3)
    with pytest.raises(data.DataError, match="mix must be one of"):
        pipeline.train_dataset(images, labels, batch_size=8, num_classes=4, epochs=1, mix="blend")
