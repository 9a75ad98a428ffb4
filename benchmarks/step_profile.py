"""Where the time of an exported train step goes, by kernel: `perf` samples a process that runs
the `train` signature, and the samples are grouped by the kernels they fall in (XNNPACK, the
builtin GEMM behind dynamic-weight CONV_2D / TRANSPOSE_CONV / BATCH_MATMUL, im2col, other
builtin ops, memory copies, Python).

    python benchmarks/step_profile.py --model=EXPORT/model_trainable.tflite [--runtime=ai_edge_litert]

The runtimes' Python API has no op profiler; sampling the native code names the kernels by
their symbols instead. Needs Linux `perf` (Debian: linux-perf).
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from absl import app, flags

flags.DEFINE_string("model", None, "An exported model_trainable.tflite.", required=True)
flags.DEFINE_string("runtime", "ai_edge_litert", "ai_edge_litert or tflite_runtime.")
flags.DEFINE_string("python", sys.executable, "The Python that runs the step (e.g. .venv-tflite-runtime/bin/python).")
flags.DEFINE_integer("steps", 60, "Train steps sampled.")
flags.DEFINE_integer("threads", 1, "Interpreter threads.")
flags.DEFINE_integer("top", 12, "Symbols listed.")
FLAGS = flags.FLAGS

_CHILD = r'''
import sys, numpy as np
from tflite_runtime_app import runner
path, runtime, steps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
m = runner.DeviceModel(path, num_threads=threads, runtime=runtime)
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (m.batch_size, *m.input_shape)).astype(np.float32)
y = rng.integers(0, m.num_classes, m.batch_size)
for _ in range(3):
    m.train_batch(x, y, 1e-4)
open(sys.argv[5], "w").write("go")  # the sampled part starts here
for _ in range(steps):
    m.train_batch(x, y, 1e-4)
'''

# (category, pattern on the symbol or library), first match wins.
CATEGORIES = (
    ("XNNPACK (delegated ops)", r"xnn_|xnnpack|XNNPack|pthreadpool"),
    ("builtin GEMM (dynamic-weight CONV_2D, TRANSPOSE_CONV, BATCH_MATMUL, FULLY_CONNECTED)",
     r"gebp_kernel|gemm_pack|general_matrix_matrix|ruy::|GemmImpl|TensorContraction"),
    ("builtin im2col / col2im", r"Im2col|ExtractPatch|Col2im|DilatedIm2col"),
    ("builtin TRANSPOSE_CONV (other than GEMM)", r"TransposeConv"),
    ("builtin elementwise and reductions", r"tflite::(reference_ops|optimized_ops|ops::builtin)|BroadcastBinary|Reduce|"
                                           r"Mul|Add|Sub|Sum"),
    ("memory copies and zeroing", r"memmove|memcpy|memset|clear_page"),
    ("Python and numpy", r"libpython|_multiarray|numpy|PyEval|_Py"),
    ("kernel (page faults, scheduling)", r"\[kernel|kallsyms"),
)


def _category(dso: str, symbol: str) -> str:
    text = f"{dso} {symbol}"
    for name, pattern in CATEGORIES:
        if re.search(pattern, text):
            return name
    return "other"


def main(argv):
    del argv
    if shutil.which("perf") is None:
        raise app.UsageError("perf is not installed (Debian: apt-get install linux-perf)")
    tmp = tempfile.mkdtemp()
    marker, data = os.path.join(tmp, "go"), os.path.join(tmp, "perf.data")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    child = subprocess.Popen([FLAGS.python, "-c", _CHILD, FLAGS.model, FLAGS.runtime, str(FLAGS.steps),
                              str(FLAGS.threads), marker], env=env, stderr=subprocess.DEVNULL)
    while not os.path.exists(marker) and child.poll() is None:
        import time

        time.sleep(0.05)
    perf = subprocess.Popen(["perf", "record", "-q", "-F", "2000", "-p", str(child.pid), "-o", data],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    child.wait()
    perf.wait()
    report = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso,symbol",
                             "--field-separator", "\t"], capture_output=True, text=True).stdout
    by_category, by_symbol = collections.Counter(), collections.Counter()
    for line in report.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        share = float(parts[0].strip().rstrip("%"))
        dso, symbol = parts[1].strip(), parts[2].strip()
        symbol = re.sub(r"^\[\.\] |^\[k\] ", "", symbol)
        by_category[_category(dso, symbol)] += share
        by_symbol[(symbol[:110], _category(dso, symbol))] += share
    out = {"model": FLAGS.model, "runtime": FLAGS.runtime, "threads": FLAGS.threads, "steps": FLAGS.steps,
           "categories": dict(by_category.most_common()),
           "symbols": [{"symbol": s, "category": c, "percent": p} for (s, c), p in by_symbol.most_common(FLAGS.top)]}
    print(json.dumps(out))
    print(f"\n{FLAGS.model} under {FLAGS.runtime}, {FLAGS.threads} thread(s), {FLAGS.steps} train steps:")
    for name, share in by_category.most_common():
        print(f"  {share:5.1f}%  {name}")
    print("top symbols:")
    for (symbol, category), share in by_symbol.most_common(FLAGS.top):
        print(f"  {share:5.1f}%  {symbol}")


if __name__ == "__main__":
    app.run(main)
