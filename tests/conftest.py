"""Shared fixtures: the real CIFAR-10 archive and small real-image trees built from it."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR10_ARCHIVE = os.environ.get("EDGEKT_CIFAR10", os.path.join(REPO_ROOT, "..", "shared", "datasets",
                                                                   "cifar10.tar.gz"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~30 s; run with -m slow")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("edgekt_cache"))


@pytest.fixture(scope="session")
def cifar(cache_dir):
    """The real CIFAR-10 archive (train 50,000 / test 5,000), decoded once per session."""
    if not os.path.exists(CIFAR10_ARCHIVE):
        pytest.skip(f"CIFAR-10 archive not found at {CIFAR10_ARCHIVE} (set EDGEKT_CIFAR10)")
    from edgekt import data

    return data.load(CIFAR10_ARCHIVE, cache_dir=cache_dir)


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_tree(root: str, splits: dict, class_names, per_class: int, wrapper: str | None = "mydata") -> str:
    """Writes `split/class/NNNN.png` from real images; returns the tree's top folder."""
    top = os.path.join(root, wrapper) if wrapper else root
    for split_name, split in splits.items():
        for label, cls in enumerate(class_names):
            folder = os.path.join(top, split_name, cls)
            os.makedirs(folder, exist_ok=True)
            for i, idx in enumerate(np.flatnonzero(split.labels == label)[:per_class]):
                with open(os.path.join(folder, f"{i:04d}.png"), "wb") as f:
                    f.write(encode_png(split.images[idx]))
    return top


def _three_class_subset(cifar, train_per_class: int, test_per_class: int, name: str):
    """The first images of airplane, cat and ship in each split, relabelled 0..2."""
    from edgekt import data

    out = {}
    for split_name, per_class in (("train", train_per_class), ("test", test_per_class)):
        split = data.select_classes(cifar[split_name], ["airplane", "cat", "ship"], relabel=True)
        idx = np.concatenate([np.flatnonzero(split.labels == c)[:per_class] for c in range(3)])
        out[split_name] = data.Split(split.images[idx], split.labels[idx], split.class_names)
    return data.DataSplits(out, out["train"].class_names, name)


@pytest.fixture(scope="session")
def small_cifar(cifar):
    """A class-balanced real subset: 3 classes, 8 train and 4 test images each."""
    return _three_class_subset(cifar, 8, 4, "small_cifar")


@pytest.fixture
def small_tree(tmp_path, small_cifar):
    """`mydata/{train,test}/{airplane,cat,ship}/*.png` under tmp_path; returns mydata's path."""
    return write_tree(str(tmp_path), dict(small_cifar), small_cifar.class_names, per_class=8)


def quick_wrn(split, images: int, seed: int = 0, depth: int = 10, epochs: int = 1, batch_size: int = 64):
    """A WRN-depth-1 trained briefly on a class-balanced subset of real images."""
    import keras

    from edgekt import data, models

    keras.utils.set_random_seed(seed)
    model = models.wrn(depth, 1, num_classes=split.num_classes)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    sub = data.stratified_subset(split, images, seed=seed)
    model.fit(sub.images.astype(np.float32), sub.labels, batch_size=batch_size, epochs=epochs, verbose=0)
    return model


@pytest.fixture(scope="session")
def three_classes(cifar):
    """Real images of 3 classes: 600 for training (and validation), 150 for test."""
    return _three_class_subset(cifar, 200, 50, "three_classes")


@pytest.fixture(scope="session")
def device_export(tmp_path_factory, cifar):
    """An untrained WRN-10-1 for the 10 CIFAR-10 classes exported for the device (batch 8,
    float16 inference model), for the bad-input suite: (export folder, Keras model)."""
    import keras

    from edgekt import models
    from edgekt.export import TrainerOptions, export

    keras.utils.set_random_seed(0)
    model = models.wrn(10, 1, num_classes=10)
    out = tmp_path_factory.mktemp("bad_input_device")
    export(model, str(out), class_names=cifar.class_names, options=TrainerOptions(batch_size=8),
           quantization="float16")
    return str(out), model


@pytest.fixture(scope="session")
def pipeline_inputs(tmp_path_factory, cifar):
    """Inputs for the pipelines' bad-input cases (tests/bad_input), as a dict of paths: an
    untrained WRN-10-1 teacher with its metrics.json ("teacher"); real-image trees: 10 classes
    ("tree", 6 train / 2 test images per class), the same with one image 40x40 ("mixed"), all
    40x40 ("big"), 3 classes ("three"); model files that are not models or not supported."""
    import json

    import keras
    from PIL import Image

    from edgekt import data, models
    from edgekt.models import saving

    root = tmp_path_factory.mktemp("pipeline_inputs")
    out = {}
    keras.utils.set_random_seed(0)
    teacher = models.wrn(10, 1, num_classes=10)
    out["teacher"] = saving.save_model(teacher, str(root / "teacher" / "model.keras"))
    (root / "teacher" / "metrics.json").write_text(json.dumps({"class_names": list(cifar.class_names),
                                                               "config": {"val_size": 20, "seed": 0}}))
    small = {name: data.stratified_subset(cifar[name], per * 10, seed=0) for name, per in (("train", 6), ("test", 2))}
    out["tree"] = write_tree(str(root / "tree"), small, cifar.class_names, per_class=6, wrapper=None)
    big = {k: data.Split(np.stack([np.asarray(Image.fromarray(im).resize((40, 40))) for im in s.images]), s.labels,
                         s.class_names) for k, s in small.items()}
    out["big"] = write_tree(str(root / "big"), big, cifar.class_names, per_class=6, wrapper=None)
    out["mixed"] = write_tree(str(root / "mixed"), small, cifar.class_names, per_class=6, wrapper=None)
    first = sorted(os.listdir(os.path.join(out["mixed"], "train", "cat")))[0]
    with open(os.path.join(out["mixed"], "train", "cat", first), "wb") as f:
        f.write(encode_png(big["train"].images[np.flatnonzero(big["train"].labels == 3)[0]]))
    three = {k: data.select_classes(s, ["airplane", "cat", "ship"], relabel=True) for k, s in small.items()}
    out["three"] = write_tree(str(root / "three"), three, ("airplane", "cat", "ship"), per_class=6, wrapper=None)

    def user_model(path, *middle, shape=(32, 32, 3)):
        inp = keras.Input(shape)
        x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(keras.layers.Rescaling(1 / 255.0)(inp))
        for layer in middle:
            x = layer(x)
        x = keras.layers.Dense(10, name="logits")(keras.layers.GlobalAveragePooling2D()(x))
        keras.Model(inp, x).save(path)
        return path

    out["lambda"] = user_model(str(root / "lambda.keras"), keras.layers.Lambda(lambda t: t * 2.0, name="double"))
    out["off_device"] = user_model(str(root / "off_device.keras"), keras.layers.LayerNormalization(name="norm"),
                                   keras.layers.ELU(name="elu"))
    out["gray"] = user_model(str(root / "gray.keras"), shape=(32, 32, 1))
    out["any_size"] = user_model(str(root / "any_size.keras"), shape=(None, None, 3))
    diverged = models.wrn(10, 1, num_classes=10)
    diverged.layers[-1].kernel.assign(np.full(diverged.layers[-1].kernel.shape, np.nan, np.float32))
    out["nan_weights"] = str(root / "nan_weights.keras")
    diverged.save(out["nan_weights"])  # as a diverged run outside edgekt would (saving.save_model refuses)
    overflowing = models.wrn(10, 1, num_classes=10)
    head = overflowing.layers[-1]
    head.kernel.assign(np.asarray(head.kernel) * np.float32(1e38))  # finite weights, outputs overflow to inf
    out["overflowing"] = str(root / "overflowing.keras")
    overflowing.save(out["overflowing"])
    out["not_zip"] = str(root / "not_zip.keras")
    (root / "not_zip.keras").write_bytes(b"this is not a model")
    out["empty_model"] = str(root / "empty.keras")
    (root / "empty.keras").write_bytes(b"")
    vectors = keras.Input((10,))
    out["not_images"] = saving.save_model(keras.Model(vectors, keras.layers.Dense(10)(vectors)),
                                          str(root / "not_images.keras"))
    (root / "bad_meta").mkdir()
    out["bad_meta"] = saving.save_model(teacher, str(root / "bad_meta" / "model.keras"))
    (root / "bad_meta" / "metrics.json").write_text("{not json")
    for name, text in (("meta_config_text", '{"config": "cpu"}'), ("meta_pool_list", '{"device_pool": [2000]}'),
                       ("meta_val_size_text", '{"config": {"val_size": "5000"}}')):
        (root / name).mkdir()
        out[name] = saving.save_model(teacher, str(root / name / "model.keras"))
        (root / name / "metrics.json").write_text(text)
    return out
