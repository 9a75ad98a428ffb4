"""The device app on an (emulated) aarch64 board, against the same commands on this machine.

    python benchmarks/arm_check.py                      # builds and prunes a small WRN
    python benchmarks/arm_check.py --model=runs/all_cpu/prune/pruned.keras

Exports a small pruned model for on-device training, then runs `info`, `learn` (a few hundred
real CIFAR-10 images, two epochs), `learn-unseen` (cloud soft labels), `evaluate` and `predict`
of `python -m tflite_runtime_app` under each runtime (ai-edge-litert, tflite-runtime) both on
x86 here and on the emulated Raspberry Pi 4 userland of `../shared/arm64` (the board's own
aarch64 wheels and kernels, under QEMU). It checks that the board gives the same results:
the same runtime and version and the same ops on XNNPACK, equal accuracies and top-1
predictions, and the weights after the last training step equal to --rtol relative (per weight
tensor: max |board - x86| / max |x86|; the optimizer's momentum buffers are shown, not judged).
Weights are compared after the last step, not after `learn` restores its best-validation
weights (which can be the exported ones), and training must have moved them (||w - w0|| /
||w0||, all weights together) at least 100 times as far as the machines are apart by the same
measure; evaluate and predict use them too. One training step from the exported
weights shows how far the kernels differ before training compounds the difference. It also
kills one `learn` on the board with SIGKILL while a checkpoint is being written, resumes it,
and checks that the run resumed at the step it was killed after and ends with the weights and
momentum of an uninterrupted one. One table is printed; exit code 1 if anything differs, 2 if
the userland or a runtime is missing (`../shared/arm64/setup` builds the userland).

Times are wall seconds of each command; the board's are emulated (100-400x slower than a real
board, unevenly), so they prove nothing about speed.
"""

from __future__ import annotations

import concurrent.futures
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from absl import app, flags, logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # run as a script from a checkout: the checkout's edgekt and app

flags.DEFINE_string("model", None, "A pruned .keras model (default: a WRN-10-1 trained briefly and L1-pruned "
                                   "to half its channels here).")
flags.DEFINE_string("data", os.environ.get("EDGEKT_CIFAR10", os.path.join(REPO, "..", "shared", "datasets",
                                                                          "cifar10.tar.gz")), "CIFAR-10.")
flags.DEFINE_string("out_dir", os.path.join(REPO, "runs", "arm_check"),
                    "Work folder inside the checkout (the board sees the checkout at /board).")
flags.DEFINE_string("trainable", "all", "What trains on the device (export_tflite --trainable).")
flags.DEFINE_string("bn_mode", "batch", "BN mode of the training signatures.")
flags.DEFINE_integer("images", 300, "Training images of learn and of learn-unseen.")
flags.DEFINE_integer("test_images", 200, "Images evaluated.")
flags.DEFINE_integer("epochs", 2, "Epochs of learn and learn-unseen.")
flags.DEFINE_integer("batch_size", 16, "Fixed batch size of the signatures.")
flags.DEFINE_float("rtol", 1e-4, "Largest relative weight difference board vs x86.")
flags.DEFINE_list("runtimes", ["ai_edge_litert", "tflite_runtime"], "Runtimes to check.")
flags.DEFINE_string("arm64_run", os.environ.get("EDGEKT_ARM64_RUN", os.path.join(REPO, "..", "shared", "arm64", "run")),
                    "The userland's `run` script.")
flags.DEFINE_string("tflite_runtime_python", os.path.join(REPO, ".venv-tflite-runtime", "bin", "python"),
                    "A Python with tflite-runtime 2.14 on this machine.")
flags.DEFINE_string("json_out", None, "Also write the results here (default OUT_DIR/arm_check.json).")
FLAGS = flags.FLAGS

_TIMEOUT = 3 * 3600


class Missing(Exception):
    """Something the check needs is not installed."""


# --------------------------------------------------------------------------- the model and data
def _small_pruned_model(cifar):
    """A WRN-10-1 trained for two epochs on 4,000 images, L1-pruned to half of every prunable
    group's channels and fine-tuned one epoch: the shapes a pruned model has, in a minute."""
    import keras

    from edgekt import data, models
    from edgekt.prune import build_graph, prune_model
    from edgekt.prune.criteria import l1_importance

    keras.utils.set_random_seed(0)
    sub = data.stratified_subset(cifar["train"], 4000, seed=0)
    x, y = sub.images.astype(np.float32), sub.labels

    def fit(model, epochs):
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
        return model

    teacher = fit(models.wrn(10, 1, num_classes=cifar.num_classes), 2)
    graph = build_graph(teacher)
    scores = l1_importance(graph)
    keep = {g.id: np.sort(np.argsort(-scores[g.id])[:max(2, g.channels // 2)]) for g in graph.prunable_groups()}
    return teacher, fit(prune_model(teacher, keep, graph), 1)


def prepare(out_dir: str) -> dict:
    """Exports the model and writes the data files; returns their paths."""
    import keras

    from edgekt import data
    from edgekt.export import TrainerOptions, export
    from edgekt.transfer import soft_labels

    cifar = data.load(FLAGS.data)
    if FLAGS.model:
        student = keras.models.load_model(FLAGS.model, compile=False)
        teacher = student
    else:
        teacher, student = _small_pruned_model(cifar)
    export_dir = os.path.join(out_dir, "export")
    export(student, export_dir, class_names=cifar.class_names, quantization="float16",
           options=TrainerOptions(batch_size=FLAGS.batch_size, trainable=FLAGS.trainable, bn_mode=FLAGS.bn_mode))
    from tflite_runtime_app.runner import DeviceModel

    files = {"model": os.path.join(export_dir, "model_trainable.tflite"),
             "learn": os.path.join(out_dir, "learn.npz"), "soft": os.path.join(out_dir, "soft.npz"),
             "test": os.path.join(out_dir, "test.npz"), "predict": os.path.join(out_dir, "predict")}
    # The exported weights, to show that training moved the weights the machines compare.
    files["exported_weights"] = os.path.join(out_dir, "exported_weights.npz")
    exported = DeviceModel(files["model"], runtime="ai_edge_litert").get_weights()
    np.savez(files["exported_weights"], **{"w/" + k: v for k, v in exported.items()})
    learn = data.stratified_subset(cifar["train"], FLAGS.images, seed=11)
    np.savez(files["learn"], images=learn.images, labels=learn.labels)
    files["one_step"] = os.path.join(out_dir, "one_step.npz")
    np.savez(files["one_step"], images=learn.images[:FLAGS.batch_size], labels=learn.labels[:FLAGS.batch_size])
    files["one_step_val"] = os.path.join(out_dir, "one_step_val.npz")
    np.savez(files["one_step_val"], images=learn.images[-64:], labels=learn.labels[-64:])
    unlabelled = data.stratified_subset(cifar["train"], FLAGS.images, seed=12).images
    soft_labels.write_soft_labels(teacher, unlabelled, cifar.class_names, files["soft"], temperature=4.0)
    test = data.stratified_subset(cifar["test"], FLAGS.test_images, seed=13)
    np.savez(files["test"], images=test.images, labels=test.labels)
    from PIL import Image

    os.makedirs(files["predict"], exist_ok=True)
    for i in range(4):
        Image.fromarray(test.images[i]).save(os.path.join(files["predict"], f"img{i}.png"))
    return {"files": files, "params": int(student.count_params()), "teacher_params": int(teacher.count_params())}


# --------------------------------------------------------------------------- running the app
def _board_path(path: str) -> str:
    return "/board/" + os.path.relpath(path, REPO)


class Place:
    """Where a command runs: this machine or the board, with one runtime."""

    def __init__(self, where: str, runtime: str):
        self.where, self.runtime = where, runtime

    def argv(self, args: list[str], env: dict | None = None) -> list[str]:
        env_args = [f"{k}={v}" for k, v in (env or {}).items()]
        if self.where == "board":
            paths = [a if "=" not in a or not a.split("=", 1)[1].startswith(REPO) else
                     a.split("=", 1)[0] + "=" + _board_path(a.split("=", 1)[1]) for a in args]
            return [FLAGS.arm64_run, REPO, "env", *env_args, "python", "-m", "tflite_runtime_app", *paths,
                    f"--runtime={self.runtime}"]
        python = sys.executable if self.runtime == "ai_edge_litert" else FLAGS.tflite_runtime_python
        return ["env", *env_args, python, "-m", "tflite_runtime_app", *args, f"--runtime={self.runtime}"]

    def run(self, *args: str) -> tuple[dict, float]:
        start = time.perf_counter()
        proc = subprocess.run(self.argv(list(args)), cwd=REPO, capture_output=True, text=True, timeout=_TIMEOUT,
                              env={**os.environ, "PYTHONPATH": REPO})
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{self.where}/{self.runtime}: {' '.join(args[:1])} exited {proc.returncode}:\n"
                               f"{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        if result.get("runtime", self.runtime) != self.runtime:
            raise RuntimeError(f"{self.where}: --runtime={self.runtime} ran under {result['runtime']}")
        return result, seconds


def _weights(path: str, momentum: bool = False) -> dict[str, np.ndarray]:
    """The model's weights in a checkpoint (with `momentum`, the optimizer's buffers too)."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files if k.startswith("w/") and (momentum or not k.endswith("__momentum"))}


def rel_diff(a_path: str, b_path: str, momentum: bool = False) -> float:
    """max over weight tensors of max |a - b| / max |b|."""
    a, b = _weights(a_path, momentum), _weights(b_path, momentum)
    if set(a) != set(b):
        return float("inf")
    return max(float(np.max(np.abs(a[k] - b[k])) / max(float(np.max(np.abs(b[k]))), 1e-12)) for k in b)


def last_step(checkpoint: str, steps: int) -> str:
    """The checkpoint holding the weights after the last training step: `learn` ends by
    restoring its best-validation weights (which may be the starting ones) and writes them over
    the checkpoint, rotating the last step's into NAME.prev.npz."""
    path = checkpoint[: -len(".npz")] + ".prev.npz"
    with np.load(path) as z:
        state = json.loads(str(z["__state__"]))
    if state.get("restored_best") or int(state["global_step"]) != steps:
        raise RuntimeError(f"{path}: not the last step's checkpoint (step {state['global_step']} of {steps}, "
                           f"restored_best={state.get('restored_best')})")
    return path


def global_rel_diff(a_path: str, b_path: str) -> float:
    """||a - b|| / ||b|| over all weights together (momentum excluded): how far training moved
    the weights as a whole, which tensors that start at zero cannot inflate."""
    a, b = _weights(a_path), _weights(b_path)
    if set(a) != set(b):
        return float("inf")
    num = sum(float(np.sum((a[k].astype(np.float64) - b[k]) ** 2)) for k in b)
    den = sum(float(np.sum(b[k].astype(np.float64) ** 2)) for k in b)
    return float(np.sqrt(num / max(den, 1e-30)))


def run_place(place: Place, files: dict, folder: str) -> dict:
    """Every command at one place; returns {command: (result, seconds)} and checkpoint paths."""
    os.makedirs(folder, exist_ok=True)
    model = f"--model={files['model']}"
    train = ["--quiet", "--restart", f"--epochs={FLAGS.epochs}", "--patience=5", "--lr=0.01", "--seed=0",
             "--checkpoint_every=4"]
    out = {"info": place.run("info", model, "--quiet")}
    learn_ck, unseen_ck = os.path.join(folder, "learn.npz"), os.path.join(folder, "unseen.npz")
    step_ck = os.path.join(folder, "one_step.npz")
    # One step from the exported weights: how far the two machines' kernels differ before
    # training compounds it.
    out["learn, 1 step"] = place.run("learn", model, f"--data={files['one_step']}", f"--val_data={files['one_step_val']}",
                                     f"--checkpoint={step_ck}", *train[:2], "--epochs=1", "--augment=none",
                                     "--lr=0.01", "--seed=0")
    out["learn"] = place.run("learn", model, f"--data={files['learn']}", f"--checkpoint={learn_ck}", *train)
    # From the exported weights too (not from learn's result), so that it compares this command alone.
    out["learn-unseen"] = place.run("learn-unseen", model, f"--soft_labels={files['soft']}",
                                    f"--checkpoint={unseen_ck}", *train)
    # evaluate and predict use the weights after the last step of learn (not its best-validation
    # choice, which may be the exported weights).
    trained = last_step(learn_ck, out["learn"][0]["steps"])
    out["evaluate"] = place.run("evaluate", model, f"--data={files['test']}", f"--checkpoint={trained}", "--quiet")
    out["predict"] = place.run("predict", model, f"--images={files['predict']}", f"--checkpoint={trained}",
                               "--top_k=3", "--quiet")
    return {"results": out, "learn_ck": trained, "unseen_ck": last_step(unseen_ck, out["learn-unseen"][0]["steps"]),
            "one_step_ck": last_step(step_ck, out["learn, 1 step"][0]["steps"])}


def kill_and_resume(files: dict, folder: str, runtime: str) -> dict:
    """`learn` on the board, SIGKILLed while its second checkpoint is being written, then
    resumed with the same command; the caller compares it with the uninterrupted run."""
    os.makedirs(folder, exist_ok=True)
    place = Place("board", runtime)
    ck = os.path.join(folder, "killed.npz")
    for stale in glob.glob(os.path.join(folder, "*killed.npz*")):
        os.remove(stale)
    args = ["learn", f"--model={files['model']}", f"--data={files['learn']}", f"--checkpoint={ck}", "--quiet",
            f"--epochs={FLAGS.epochs}", "--patience=5", "--lr=0.01", "--seed=0", "--checkpoint_every=4"]
    start = time.perf_counter()
    proc = subprocess.Popen(place.argv(args, env={"EDGEKT_APP_CHECKPOINT_WRITE_DELAY": "3"}), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    tmp = os.path.join(folder, ".killed.npz.*.tmp")
    caught = False
    while proc.poll() is None:
        if os.path.exists(ck) and glob.glob(tmp):
            caught = True
            break
        time.sleep(0.1)
    if not caught:
        raise RuntimeError(f"board/{runtime}: learn ended before a checkpoint write could be interrupted:\n"
                           f"{proc.stderr.read()[-2000:]}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with np.load(ck) as z:
        killed_at = int(json.loads(str(z["__state__"]))["global_step"])
    resumed, _ = place.run(*args)
    return {"killed_at_step": killed_at, "resumed": resumed, "checkpoint": ck,
            "seconds": time.perf_counter() - start, "leftovers": glob.glob(tmp)}


# --------------------------------------------------------------------------- comparing
def compare(x86: dict, board: dict, runtime: str, exported: str) -> list[dict]:
    rows = []
    xr, br = x86["results"], board["results"]
    xi, bi = xr["info"][0], br["info"][0]
    info_same = (xi["signatures"] == bi["signatures"] and xi["batch_size"] == bi["batch_size"]
                 and xi["runtime"] == bi["runtime"] == runtime and xi["runtime_version"] == bi["runtime_version"]
                 and xi.get("kernels") == bi.get("kernels") and xi["threads"] == bi["threads"])
    kernels = lambda r: (f"{r['runtime']} {r['runtime_version']}, {r['kernels']['delegated']}/{r['kernels']['ops']} "
                         "ops on XNNPACK" if r.get("kernels") else f"{r['runtime']} {r['runtime_version']}, no node list")
    rows.append({"command": "info", "x86": kernels(xr["info"][0]), "board": kernels(br["info"][0]),
                 "equal": info_same, "x86_s": xr["info"][1], "board_s": br["info"][1]})
    for command, ck in (("learn, 1 step", "one_step_ck"), ("learn", "learn_ck"), ("learn-unseen", "unseen_ck")):
        diff = rel_diff(board[ck], x86[ck])
        moved = global_rel_diff(x86[ck], exported)
        apart = global_rel_diff(board[ck], x86[ck])
        xs, bs = xr[command][0], br[command][0]
        rows.append({"command": command,
                     "x86": f"{xs['steps']} steps, val {xs['best_val']:.4f}",
                     "board": f"{bs['steps']} steps, val {bs['best_val']:.4f}",
                     "equal": bool(diff <= FLAGS.rtol and moved > 0 and moved > 100 * apart and xs["steps"] == bs["steps"]
                                   and abs(xs["best_val"] - bs["best_val"]) < 1e-9),
                     "detail": f"weights after the last step: rel diff {diff:.1e} (momentum "
                               f"{rel_diff(board[ck], x86[ck], momentum=True):.1e}); as a whole they moved {moved:.1e} "
                               f"from the export, the machines are {apart:.1e} apart",
                     "x86_s": xr[command][1], "board_s": br[command][1]})
    xa, ba = xr["evaluate"][0]["accuracy"], br["evaluate"][0]["accuracy"]
    rows.append({"command": "evaluate", "x86": f"accuracy {xa:.4f}", "board": f"accuracy {ba:.4f}",
                 "equal": xa == ba, "x86_s": xr["evaluate"][1], "board_s": br["evaluate"][1]})
    xp, bp = xr["predict"][0]["predictions"], br["predict"][0]["predictions"]
    top1 = [p["top"][0]["class"] for p in xp] == [p["top"][0]["class"] for p in bp]
    prob = max(abs(a["probability"] - b["probability"]) for pa, pb in zip(xp, bp) for a, b in zip(pa["top"], pb["top"]))
    rows.append({"command": "predict", "x86": "top-1 " + ",".join(p["top"][0]["class"] for p in xp),
                 "board": "top-1 " + ",".join(p["top"][0]["class"] for p in bp), "equal": bool(top1 and prob < 1e-4),
                 "detail": f"max prob diff {prob:.1e}", "x86_s": xr["predict"][1], "board_s": br["predict"][1]})
    return rows


def _board_versions() -> dict:
    code = ("import json, platform, importlib.metadata as m; print(json.dumps({'machine': platform.machine(), "
            "'python': platform.python_version(), 'numpy': m.version('numpy'), 'ai_edge_litert': "
            "m.version('ai-edge-litert'), 'tflite_runtime': m.version('tflite-runtime'), "
            "'cpu': [l for l in open('/proc/cpuinfo') if l.startswith('Model')][:1]}))")
    proc = subprocess.run([FLAGS.arm64_run, REPO, "python", "-c", code], capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise Missing(f"the arm64 userland did not run: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if not os.path.isfile(FLAGS.arm64_run):
        print(f"error: --arm64_run={FLAGS.arm64_run}: no such script; pass the arm64 userland's `run`", file=sys.stderr)
        return 2
    if "tflite_runtime" in FLAGS.runtimes and not os.path.exists(FLAGS.tflite_runtime_python):
        print(f"error: --tflite_runtime_python={FLAGS.tflite_runtime_python}: not found; create the venv "
              "(.ci/run does) or pass --runtimes=ai_edge_litert", file=sys.stderr)
        return 2
    try:
        versions = _board_versions()
    except Missing as e:
        print(f"error: arm64 userland: {e}; run ../shared/arm64/setup", file=sys.stderr)
        return 2
    if versions["machine"] != "aarch64":
        print(f"error: --arm64_run={FLAGS.arm64_run}: its Python runs on {versions['machine']}, not aarch64; "
              "build the userland with ../shared/arm64/setup", file=sys.stderr)
        return 2
    out_dir = os.path.abspath(FLAGS.out_dir)
    if not out_dir.startswith(REPO + os.sep):
        print(f"error: --out_dir={out_dir}: outside the checkout {REPO}; the board sees only the checkout",
              file=sys.stderr)
        return 2
    logging.set_verbosity(logging.WARNING)
    started = time.perf_counter()
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    prepared = prepare(out_dir)
    files = prepared["files"]
    prep_s = time.perf_counter() - started
    print(f"exported {files['model']} ({prepared['params']:,} params; the model it was pruned from "
          f"{prepared['teacher_params']:,}); {prep_s:.0f} s", flush=True)

    jobs = {}
    # The board is the slow side: its runs go in parallel (one per runtime, plus the kill).
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(FLAGS.runtimes) * 2 + 1) as pool:
        for runtime in FLAGS.runtimes:
            for where in ("board", "x86"):
                jobs[(where, runtime)] = pool.submit(run_place, Place(where, runtime), files,
                                                     os.path.join(out_dir, where, runtime))
        killed_rt = FLAGS.runtimes[0]
        killed = pool.submit(kill_and_resume, files, os.path.join(out_dir, "board", killed_rt + "_kill"), killed_rt)
        results = {key: job.result() for key, job in jobs.items()}
        kill = killed.result()

    rows = []
    for runtime in FLAGS.runtimes:
        for row in compare(results[("x86", runtime)], results[("board", runtime)], runtime,
                           files["exported_weights"]):
            rows.append({"runtime": runtime, **row})
    reference = results[("board", killed_rt)]
    kill_last = last_step(kill["checkpoint"], kill["resumed"]["steps"])
    kill_diff = max(rel_diff(kill_last, reference["learn_ck"], momentum=True),
                    rel_diff(kill["checkpoint"], reference["learn_ck"][: -len(".prev.npz")] + ".npz"))
    ref_learn = reference["results"]["learn"][0]
    rows.append({"runtime": killed_rt, "command": "learn, SIGKILL + resume (board)",
                 "x86": f"uninterrupted: {ref_learn['steps']} steps",
                 "board": f"killed at step {kill['killed_at_step']}, resumed to {kill['resumed']['steps']}",
                 "equal": bool(kill_diff <= 1e-5 and kill["resumed"]["steps"] == ref_learn["steps"]
                               and kill["resumed"].get("resumed_at_step") == kill["killed_at_step"]
                               and 0 < kill["killed_at_step"] < ref_learn["steps"] and not kill["leftovers"]),
                 "detail": f"resumed at step {kill['resumed'].get('resumed_at_step')}; last-step weights and momentum, "
                           f"and final weights, vs uninterrupted {kill_diff:.1e}", "x86_s": None, "board_s": kill["seconds"]})
    total_s = time.perf_counter() - started

    print(f"\nboard: {versions['machine']}, Python {versions['python']}, numpy {versions['numpy']}, "
          f"ai-edge-litert {versions['ai_edge_litert']}, tflite-runtime {versions['tflite_runtime']}, "
          f"{(versions['cpu'] or ['?'])[0].strip()} (QEMU cortex-a72)")
    print(f"model: {prepared['params']:,} params, trainable={FLAGS.trainable}, bn={FLAGS.bn_mode}, "
          f"batch {FLAGS.batch_size}; learn/learn-unseen {FLAGS.images} images x {FLAGS.epochs} epochs; "
          f"evaluate {FLAGS.test_images} test images; predict 4 images; weight tolerance {FLAGS.rtol:g}\n")
    print("| runtime | command | x86 | board (aarch64) | equal | detail | x86 s | board s |")
    print("|---|---|---|---|---|---|---:|---:|")
    fmt = lambda s: "" if s is None else f"{s:.1f}"
    for r in rows:
        print(f"| {r['runtime']} | {r['command']} | {r['x86']} | {r['board']} | {'yes' if r['equal'] else 'NO'} | "
              f"{r.get('detail', '')} | {fmt(r['x86_s'])} | {fmt(r['board_s'])} |")
    ok = all(r["equal"] for r in rows)
    print(f"\n{'all equal' if ok else 'DIFFERENCES FOUND'}; the whole check took {total_s / 60:.1f} min")
    with open(FLAGS.json_out or os.path.join(out_dir, "arm_check.json"), "w") as f:
        json.dump({"versions": versions, "rows": rows, "ok": ok, "total_seconds": total_s,
                   "model_params": prepared["params"], "flags": {k: FLAGS[k].value for k in
                                                                 ("model", "trainable", "bn_mode", "images",
                                                                  "test_images", "epochs", "batch_size", "rtol")}},
                  f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
