"""Bad flags, model files and images of `pipelines.soft_labels`: one line, exit 2, nothing
written; the flags alone are checked before the model is loaded."""

from __future__ import annotations

import json
import os
import shutil
import socket

import numpy as np
import pytest

from harness import assert_user_error, run_pipelines


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, device_export, cifar):
    """Model files (without metrics.json, with a good one, with a corrupt one), image .npz files
    good and bad, and an output folder."""
    from edgekt.models import saving

    root = tmp_path_factory.mktemp("soft_labels_flags")
    paths = {}
    for name, metrics in (("bare", None), ("named", json.dumps({"class_names": cifar.class_names})),
                          ("corrupt", "{not json")):
        folder = root / name
        folder.mkdir()
        if name == "bare":
            saving.save_model(device_export[1], folder / "model.keras")
        else:
            shutil.copy(paths["bare"], folder / "model.keras")
        if metrics is not None:
            (folder / "metrics.json").write_text(metrics)
        paths[name] = str(folder / "model.keras")
    (root / "junk.keras").write_bytes(b"not a zip archive at all")
    paths["junk"] = str(root / "junk.keras")
    images = cifar["test"].images[:3]
    nan = images.astype(np.float32)
    nan[1, 0, 0, 0] = np.nan
    for name, arrays in (("good", {"images": images}), ("nan", {"images": nan}), ("empty", {"images": images[:0]}),
                         ("small", {"images": images[:, :8, :8]}), ("unnamed", {"pixels": images})):
        paths[name] = str(root / f"{name}.npz")
        np.savez(paths[name], **arrays)
    (root / "no_images").mkdir()
    paths["no_images"] = str(root / "no_images")
    (root / "out").mkdir()
    paths["out_dir"] = str(root / "out")
    paths["out"] = str(root / "out" / "soft.npz")
    paths["root"] = str(root)
    return paths


@pytest.fixture(scope="module")
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


WRITE = ["--images={good}", "--out={out}"]
BARE = "--model={bare}"
NAMES = "--class_names=" + ",".join(f"c{i}" for i in range(10))
# (id, argv, names the error line must contain); {name} is filled in from `inputs` and `busy_port`.
CASES = [
    ("model missing", ["--model=missing/model.keras"] + WRITE, ["--model=missing/model.keras", "no such file"]),
    ("model a folder", ["--model={root}"] + WRITE, ["--model={root}", "folder"]),
    ("model not keras", ["--model={junk}"] + WRITE, ["{junk}", "not a .keras archive"]),
    ("temperature 0", [BARE, "--temperature=0"] + WRITE, ["--temperature=0.0"]),
    ("temperature negative", [BARE, "--temperature=-1"] + WRITE, ["--temperature=-1.0"]),
    ("temperature huge", [BARE, "--temperature=1e9"] + WRITE, ["--temperature=1000000000.0"]),
    ("temperature nan", [BARE, "--temperature=nan"] + WRITE, ["--temperature=nan"]),
    ("port too large", [BARE, "--serve", "--port=70000"], ["--port=70000", "0..65535"]),
    ("port negative", [BARE, "--serve", "--port=-1"], ["--port=-1"]),
    ("max_in_flight 0", [BARE, "--serve", "--max_in_flight=0"], ["--max_in_flight=0"]),
    ("read_timeout 0", [BARE, "--serve", "--read_timeout=0"], ["--read_timeout=0.0"]),
    ("max_request_mb 0", [BARE, "--serve", "--max_request_mb=0"], ["--max_request_mb=0"]),
    ("request_timeout 0", [BARE, "--serve", "--request_timeout=0"], ["--request_timeout=0.0"]),
    ("request_timeout without serve", [BARE, "--request_timeout=5"] + WRITE, ["--request_timeout=5.0", "--serve"]),
    ("serve with images", [BARE, "--serve", "--images={good}"], ["--images=", "--serve"]),
    ("serve with out", [BARE, "--serve", "--out={out}"], ["--out=", "--serve"]),
    ("read_timeout without serve", [BARE, "--read_timeout=5"] + WRITE, ["--read_timeout=5.0", "--serve"]),
    ("images missing", [BARE, "--out={out}"], ["--images", "required"]),
    ("out missing", [BARE, "--images={good}"], ["--out", "required"]),
    ("images not found", [BARE, "--images=missing_images", "--out={out}"], ["--images=missing_images", "no such"]),
    ("out folder missing", [BARE, "--images={good}", "--out={root}/nowhere/soft.npz"], ["--out=", "does not exist"]),
    ("out a folder", [BARE, "--images={good}", "--out={out_dir}"], ["--out={out_dir}", "folder"]),
    ("class name empty", [BARE, "--class_names=a,,b"] + WRITE, ["--class_names=a,,b", "empty name"]),
    ("class name repeated", [BARE, "--class_names=a,b,a"] + WRITE, ["--class_names=a,b,a", "'a'"]),
    ("class names vs outputs", [BARE, "--class_names=a,b"] + WRITE, ["--class_names=a,b", "2 names", "10 outputs"]),
    ("no class names", [BARE] + WRITE, ["--class_names", "metrics.json"]),
    ("metrics.json corrupt", ["--model={corrupt}"] + WRITE, ["metrics.json", "unreadable"]),
    ("port in use", [BARE, "--serve", "--port={busy_port}"],
     ["--port={busy_port}: address already in use; pass another --port"]),
    ("host not local", [BARE, "--serve", "--host=192.0.2.1", "--port=0"], ["--host=192.0.2.1"]),
    ("NaN pixel", [BARE, NAMES, "--images={nan}", "--out={out}"], ["{nan}", "NaN"]),
    ("no images", [BARE, NAMES, "--images={empty}", "--out={out}"], ["{empty}", "no images"]),
    ("wrong size", [BARE, NAMES, "--images={small}", "--out={out}"], ["{small}", "--resize"]),
    ("no images array", [BARE, NAMES, "--images={unnamed}", "--out={out}"], ["{unnamed}", "'images'"]),
    ("empty folder", [BARE, NAMES, "--images={no_images}", "--out={out}"], ["{no_images}"]),
]
GOOD = ["--model={named}", "--images={good}", "--out={out}", "--temperature=2"]


def fill(texts, values):
    return [t.format(**values) for t in texts]


@pytest.fixture(scope="module")
def results(inputs, busy_port):
    """Every case and then the good command line, in one process; the output folder after."""
    values = {**inputs, "busy_port": busy_port}
    out = run_pipelines("pipelines.soft_labels", [fill(argv, values) for _, argv, _ in CASES] + [fill(GOOD, values)])
    return out, sorted(os.listdir(inputs["out_dir"]))


@pytest.mark.parametrize("index", range(len(CASES)), ids=[case[0] for case in CASES])
def test_bad_flag_model_or_images_gets_one_line(results, inputs, busy_port, index):
    _, _, names = CASES[index]
    assert_user_error(results[0][index], *fill(names, {**inputs, "busy_port": busy_port}))


def test_good_run_writes_what_the_device_app_reads(results, inputs):
    good = results[0][-1]
    assert good.code == 0 and "Traceback" not in good.stderr, good.stderr[-3000:]
    assert results[1] == ["soft.npz"]  # the refused runs wrote nothing
    from tflite_runtime_app.data import load_soft_labels

    images, targets, temperature = load_soft_labels(inputs["out"], ["cat", "dog"], (32, 32, 3))
    assert images.shape == (3, 32, 32, 3) and targets.shape == (3, 2) and temperature == 2.0
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-5)


def test_the_binary_passes_its_limits_to_the_server(inputs):
    """`pipelines.soft_labels --serve` as a user starts it: its --read_timeout, --request_timeout
    and --max_in_flight reach the server (a stalled client gets 408 after the read timeout; with
    one request in flight, another gets 503), and it serves."""
    import re
    import subprocess
    import sys
    import time

    from harness import REPO_ROOT

    proc = subprocess.Popen([sys.executable, "-m", "pipelines.soft_labels", f"--model={inputs['named']}", "--serve",
                             "--port=0", "--read_timeout=1", "--request_timeout=3", "--max_in_flight=1"],
                            cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        port, deadline = None, time.monotonic() + 300
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "the server exited before serving"
            found = re.search(r"serving soft labels on http://127\.0\.0\.1:(\d+)/", line)
            port = int(found.group(1)) if found else None
        assert port
        holder = socket.create_connection(("127.0.0.1", port), timeout=30)  # sends nothing
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as other:
            other.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert other.recv(100).startswith(b"HTTP/1.0 503")
        started = time.monotonic()
        with holder:
            assert holder.recv(100).startswith(b"HTTP/1.0 408")
        assert time.monotonic() - started < 2.5
        status, deadline = b"", time.monotonic() + 10  # the slot frees once the server has closed the holder
        while b" 200 " not in status and time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                status = sock.recv(100).split(b"\r\n")[0]
            time.sleep(0.2)
        assert b" 200 " in status, status
    finally:
        proc.terminate()
        proc.wait(timeout=60)
