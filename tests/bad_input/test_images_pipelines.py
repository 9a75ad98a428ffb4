"""Bad image data given to the pipeline binaries: missing path, empty folder, corrupt archive,
unsupported file, images of another size than the model's (refused, with --resize accepted),
mixed sizes, too few images for the hold-outs and one batch; and --resize where images are read."""

from __future__ import annotations

import os

import pytest

from harness import Case, check_case, run_cases, run_pipelines


def _empty(out):
    os.makedirs(os.path.join(out, "empty_data", "cat"), exist_ok=True)


def _one_class(out):
    """A real-image tree with a single class folder (train/cat, test/cat)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 4)):
        os.makedirs(os.path.join(out, "one_class", split, "cat"), exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                os.path.join(out, "one_class", split, "cat", f"{i:03d}.png"))


def _text_among_images(out):
    """A class folder holding a text file named like an image."""
    import numpy as np
    from PIL import Image

    for cls in ("cat", "dog"):
        os.makedirs(os.path.join(out, "bad_tree", cls), exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(os.path.join(out, "bad_tree", cls, "0.png"))
    with open(os.path.join(out, "bad_tree", "cat", "notes.png"), "w") as f:
        f.write("not an image")


def _corrupt(out):
    with open(os.path.join(out, "data.tar.gz"), "wb") as f:
        f.write(b"\x1f\x8b\x08\x00 not really gzip" * 20)


def _not_archive(out):
    with open(os.path.join(out, "data.rar"), "wb") as f:
        f.write(b"Rar!")


def _cifar_batches(meta):
    """A cifar-10-batches-py folder whose batches.meta pickles `meta` (or `meta(out)`)."""
    def prepare(out):
        import pickle

        import numpy as np

        folder = os.path.join(out, "batches")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "batches.meta"), "wb") as f:
            pickle.dump(meta(out) if callable(meta) else meta, f)
        with open(os.path.join(folder, "test_batch"), "wb") as f:
            pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}, f)
    return prepare


class _RunsCode:
    """Unpickling it would run a command (as a malicious data file can): it would create `path`."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


PRUNE = ["--teacher={teacher}", "--out_dir={out}"]
CASES = [
    Case("prune-data-missing", "pipelines.prune", [*PRUNE, "--data={missing}"], ["{missing}", "no such file"]),
    Case("prune-data-empty-class-folder", "pipelines.prune", [*PRUNE, "--data={out}/empty_data"], ["empty_data"],
         prepare=_empty),
    Case("prune-data-corrupt-archive", "pipelines.prune", [*PRUNE, "--data={out}/data.tar.gz"], ["data.tar.gz"],
         prepare=_corrupt),
    Case("prune-data-not-an-archive", "pipelines.prune", [*PRUNE, "--data={out}/data.rar"], ["data.rar"],
         prepare=_not_archive),
    Case("prune-data-other-size", "pipelines.prune", [*PRUNE, "--data={big}"], ["{big}", "40x40", "--resize"]),
    Case("prune-data-mixed-sizes", "pipelines.prune", [*PRUNE, "--data={mixed}"], ["--resize"]),
    Case("prune-too-few-images", "pipelines.prune", [*PRUNE, "--data={tree}"],
         ["{tree}", "60 images", "val_size=20", "--val_size"]),
    Case("train-cloud-too-few-images", "pipelines.train_cloud", ["--data={tree}", "--out_dir={out}"],
         ["{tree}", "60 images", "no training images"]),
    Case("train-cloud-one-class", "pipelines.train_cloud", ["--data={out}/one_class", "--out_dir={out}/run",
                                                            "--val_size=4"],
         ["one_class", "1 class (cat)", "at least 2"], prepare=_one_class),
    Case("train-cloud-data-missing", "pipelines.train_cloud", ["--data={missing}", "--out_dir={out}"], ["{missing}"]),
    Case("export-data-other-size", "pipelines.export_tflite", ["--model={teacher}", "--out_dir={out}", "--data={big}"],
         ["{big}", "--resize"]),
    Case("transfer-data-other-size", "pipelines.transfer",
         ["--teacher={teacher}", "--student=wrn-10-1", "--data={big}", "--out_dir={out}"], ["{big}", "--resize"]),
    Case("prune-cifar-batches-meta-not-names", "pipelines.prune", [*PRUNE, "--data={out}/batches"],
         ["batches", "label_names", "not a list of class names"], prepare=_cifar_batches({b"label_names": 5})),
    Case("prune-cifar-batches-pickle-runs-code", "pipelines.prune", [*PRUNE, "--data={out}/batches"],
         ["batches.meta", "system", "run code"], prepare=_cifar_batches(lambda out: {b"label_names": _RunsCode(os.path.join(out, "..", "pwned"))})),
    Case("prune-data-text-file-among-images", "pipelines.prune", [*PRUNE, "--data={out}/bad_tree"],
         ["notes.png", "not a readable image"], prepare=_text_among_images),
    Case("sweep-data-missing", "pipelines.sweep", ["--teacher={teacher}", "--data={missing}", "--out_dir={out}"],
         ["{missing}"]),
]


@pytest.fixture(scope="module")
def results(pipeline_inputs, tmp_path_factory):
    return run_cases(CASES, pipeline_inputs, tmp_path_factory.mktemp("images"))


@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_bad_images(results, case_id):
    line = check_case(results, case_id)
    assert "--skip_bad_files" not in line  # a flag of the device app, not of the pipelines


def test_a_pickle_that_runs_code_is_not_run(results):
    out = results["prune-cifar-batches-pickle-runs-code"][2]
    assert not os.path.exists(os.path.join(out, "..", "pwned"))


def test_resize_reads_other_and_mixed_sizes(pipeline_inputs, tmp_path):
    """With --resize, the 40x40 and the mixed trees get as far as the hold-out check (the same
    refusal as the 32x32 tree: too few images), so their images were read and resized."""
    argv = ["--teacher={teacher}", "--out_dir=" + str(tmp_path / "o"), "--resize"]
    runs = run_pipelines("pipelines.prune", [[a.format(**pipeline_inputs) for a in argv] + [f"--data={pipeline_inputs[k]}"]
                                             for k in ("big", "mixed")])
    for result in runs:
        assert result.code == 2 and "60 images" in result.stderr and "--resize" not in result.error_lines[0]


def test_tfds_without_a_prepared_copy_or_a_network_fails_at_once(tmp_path, monkeypatch):
    """`--data=tfds` on a machine that cannot download: one named error, not minutes of retries."""
    from edgekt.data import DataError, tfds_source

    monkeypatch.setattr(tfds_source, "_DOWNLOAD_HOSTS", (("127.0.0.1", 9),))  # nothing listens there
    with pytest.raises(DataError, match=r"tfds:cifar10: not prepared in .* 127\.0\.0\.1 cannot be reached"):
        tfds_source.read_tfds("cifar10", data_dir=str(tmp_path))
