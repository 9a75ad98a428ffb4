"""The Pareto sweep: one teacher pruned to several budgets by each criterion/allocation and by
the tfmot magnitude baseline, every model measured the same way (validation and test top-1,
parameters, FLOPs, int8 `.tflite` bytes, batch-1 one-thread TFLite latency), with a table
and a plot of test top-1 against each cost.

Each method is one pruning run that stops at every budget (`pruner.prune_milestones`); each
budget's model then gets the preset's final fine-tuning on its own. tfmot follows the same
budgets with the same epochs (`tfmot_magnitude.run_trajectory`). Everything resumes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import keras
import numpy as np
from absl import logging

from edgekt import atomic, data, evaluation, presets

# Methods: PruneConfig fields over the pruning preset. "default" is the preset as shipped;
# the others are one criterion with one allocation at every step and no floors beyond
# `min_channels`.
_PLAIN = {"stream_floor": 0.0, "layer_floor": 0.0, "candidates": ()}
METHODS: dict[str, dict | None] = {
    "default": {},
    "l1_global": {"criterion": "l1", "allocation": "global", **_PLAIN},
    "l1_cost": {"criterion": "l1", "allocation": "cost", **_PLAIN},
    "l1_uniform": {"criterion": "l1", "allocation": "uniform", **_PLAIN},
    "attention_global": {"criterion": "attention", "allocation": "global", **_PLAIN},
    "attention_cost": {"criterion": "attention", "allocation": "cost", **_PLAIN},
    "attention_uniform": {"criterion": "attention", "allocation": "uniform", **_PLAIN},
    # The default fine-tuned on labels only, as tfmot is: what distillation adds.
    "default_labels_only": {"transfer": "none"},
    "tfmot": None,  # the magnitude-pruning baseline
}
SWEEP_FILE = "sweep.json"
TABLE_FILE = "sweep.md"
PLOT_FILE = "sweep.png"
LATENCY_FILE = "latency.json"


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """What the sweep runs.

    Attributes:
      budgets: fractions of the teacher's parameters kept.
      methods: names in `METHODS`, run in this order.
      prune_preset: the pruning preset every method starts from (its fine-tuning epochs, KD).
      prune_overrides: PruneConfig fields over the preset for every method, e.g.
        (("final_epochs", 20),); the baseline gets the resulting epochs, batch size and
        optimizer (learning rates, weight decay) too.
      representative_size: training images that calibrate the int8 files.
      latency_repeats: timed runs per latency figure.
    """

    budgets: tuple = (0.5, 0.25, 0.1, 0.05, 0.02)
    methods: tuple = ("default", "l1_global", "tfmot")
    prune_preset: str = "cpu"
    prune_overrides: tuple = ()
    representative_size: int = 256
    latency_repeats: int = 50

    def __post_init__(self):
        presets.check_fields(self, [
            (len(self.budgets) >= 1 and all(0 < b < 1 for b in self.budgets), "budgets", "fractions in (0, 1)"),
            (len(set(self.budgets)) == len(self.budgets), "budgets", "distinct fractions"),
            (len(self.methods) >= 1 and all(m in METHODS for m in self.methods), "methods", f"names in {list(METHODS)}"),
            (self.representative_size >= 1, "representative_size", ">= 1"),
            (self.latency_repeats >= 1, "latency_repeats", ">= 1"),
        ])


PRESETS: dict[str, SweepConfig] = {
    # Minutes: two budgets of a small teacher with the smoke pruning preset.
    "smoke": SweepConfig(budgets=(0.5, 0.25), prune_preset="smoke", latency_repeats=5, representative_size=32),
    # The cpu teacher (WRN-16-2) to 50, 25, 10, 5 and 2% of its parameters by every method.
    "cpu": SweepConfig(methods=("default", "l1_global", "tfmot", "attention_global", "attention_cost", "l1_cost",
                                "attention_uniform", "l1_uniform", "default_labels_only")),
    # The paper's WRN-28-10 down to its 0.64%.
    "paper": SweepConfig(budgets=(0.1, 0.05, 0.02, 0.0064), prune_preset="paper"),
}


def preset(name: str, **overrides) -> SweepConfig:
    """A preset with some fields replaced."""
    return presets.choose(PRESETS, name, overrides)


def method_config(config: SweepConfig, method: str):
    """The PruneConfig of one of our methods: the preset, the method's fields, the budgets as
    the target (the smallest) and milestones (the others)."""
    from edgekt.prune import config as prune_config

    budgets = sorted(config.budgets, reverse=True)
    return prune_config.preset(config.prune_preset, **{**dict(config.prune_overrides), **METHODS[method]},
                               target_params_ratio=budgets[-1], target_flops_ratio=None,
                               milestones=tuple(budgets[:-1]))


def run(teacher: keras.Model, source: str | data.DataSplits, out_dir: str, config: SweepConfig, *,
        val_size: int = 5000, split_seed: int = 0, device_pool_size: int = 0, teacher_path: str | None = None,
        remeasure_latency: bool = False, verbose: int | str = 0) -> dict:
    """Runs the sweep into `out_dir` (one folder per method) and writes `sweep.json`,
    `sweep.md` and `sweep.png`; the int8 latencies come from one pass over all files at the
    end (`latency_pass`; `remeasure_latency` redoes it, e.g. on an idle machine). Returns what
    `sweep.json` holds."""
    from edgekt.baselines import tfmot_magnitude
    from edgekt.flops import model_cost
    from edgekt.prune import pruner
    from edgekt.prune.graph import build_graph

    build_graph(teacher)  # an unsupported model fails before any work
    if "tfmot" in config.methods:
        tfmot_magnitude.check_translation(teacher)
    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    splits = source if isinstance(source, data.DataSplits) else data.load(source)
    prune_cfg = method_config(config, config.methods[0] if config.methods[0] != "tfmot" else "default")
    prepared = data.prepare_splits(splits, val_size=val_size, seed=split_seed, train_size=prune_cfg.train_size,
                                   device_pool_size=device_pool_size, batch_size=prune_cfg.batch_size)
    holdout = {"val_size": val_size, "split_seed": split_seed}
    if device_pool_size:
        holdout["device_pool_size"] = device_pool_size
    representative = data.stratified_subset(prepared.train, min(config.representative_size,
                                                                len(prepared.train.labels)), seed=0).images
    teacher_cost = model_cost(teacher)
    teacher_params = teacher_cost.params
    teacher_info = {"path": teacher_path, "params": teacher_params, "flops": teacher_cost.flops,
                    "test_images": len(prepared.test.labels) if prepared.test is not None else 0,
                    "val_images": len(prepared.val.labels) if prepared.val is not None else 0,
                    **{f"{name}_accuracy": evaluation.evaluate(teacher, split.images, split.labels)["accuracy"]
                       for name, split in (("val", prepared.val), ("test", prepared.test)) if split is not None}}
    rows, seconds = [], {}
    for method in config.methods:
        method_dir = os.path.join(out_dir, method)
        t0 = time.perf_counter()
        if METHODS[method] is None:
            pcfg = method_config(config, "default")
            steps = steps_to_budgets(pcfg, teacher_params, teacher_cost.flops)
            done = sorted((r for r in rows if r["method"] == "default"), key=lambda r: -r["budget"])
            if done and [r["budget"] for r in done] == sorted(config.budgets, reverse=True):
                # The steps the default really took (an accuracy floor may have discarded some).
                steps = [r["steps"] for r in done]
            ratios = sorted(config.budgets, reverse=True)[:len(steps)]
            budgets = [(b, int(b * teacher_params), (n - prev) * pcfg.step_epochs)
                       for b, n, prev in zip(ratios, steps, [0] + steps[:-1])]
            results = tfmot_magnitude.run_trajectory(
                teacher, budgets, prepared, method_dir,
                tfmot_magnitude.MagnitudeConfig(batch_size=pcfg.batch_size, learning_rate=pcfg.learning_rate,
                                                final_learning_rate=pcfg.final_learning_rate,
                                                weight_decay=pcfg.weight_decay, precision=pcfg.precision),
                final_epochs=pcfg.final_epochs, representative=representative,
                latency_repeats=config.latency_repeats)
            for r, n in zip(results, steps):
                rows.append({"method": method, "budget": r["budget_ratio"], "params": r["nonzero_params"],
                             "int8_file": os.path.join(method, f"budget_{r['budget_ratio']:g}",
                                                       "model_magnitude_int8.tflite"),
                             "stored_params": r["stored_params"], "flops": teacher_cost.flops,
                             "epochs": n * pcfg.step_epochs + pcfg.final_epochs,
                             "compute_epochs": n * pcfg.step_epochs + pcfg.final_epochs,
                             **{k: r[k] for k in ("val_accuracy", "test_accuracy", "int8_bytes", "int8_gzip_bytes",
                                                  "int8_latency_ms", "int8_test_accuracy", "trajectory_seconds",
                                                  "final_seconds")}})
                rows[-1].update(_file_top1(os.path.join(out_dir, rows[-1]["int8_file"]), prepared))
        else:
            pcfg = method_config(config, method)
            results = pruner.prune_milestones(teacher, prepared, method_dir, pcfg, holdout=holdout,
                                              teacher_path=teacher_path, verbose=verbose)
            n_train = len(prepared.train.labels)
            probe_epochs = min(pcfg.probe_images, n_train) / n_train if pcfg.candidates else 0.0
            with open(os.path.join(method_dir, pruner.LOG_FILE)) as f:
                log = json.load(f)["steps"][1:]
            for r in results:
                # Every step up to this budget (discarded ones too) and every way it probed.
                steps_run = _steps_until(log, r["steps_taken"])
                probes = sum(len(e.get("probe") or {}) for e in steps_run)
                folder = os.path.join(method_dir, f"budget_{r['budget_ratio']:g}")
                model_path = os.path.join(folder, pruner.PRUNED_FILE)
                figures = _int8_figures(model_path, representative, config.latency_repeats)
                rows.append({"method": method, "budget": r["budget_ratio"], "params": r["params"],
                             "int8_file": os.path.relpath(os.path.join(folder, "model_int8.tflite"), out_dir),
                             "stored_params": r["params"], "flops": r["flops"], "val_accuracy": r["val_accuracy"],
                             "test_accuracy": r["test_accuracy"], "int8_bytes": figures["bytes"],
                             "int8_gzip_bytes": figures["gzip_bytes"], "int8_latency_ms": figures["latency_ms"],
                             "epochs": r["steps_taken"] * (pcfg.step_epochs + probe_epochs) + pcfg.final_epochs,
                             "compute_epochs": (len(steps_run) * pcfg.step_epochs + probes * probe_epochs
                                                + pcfg.final_epochs),
                             "trajectory_seconds": r["trajectory_seconds"], "final_seconds": r["final_seconds"],
                             "steps": r["steps_taken"], "channels": r.get("channels")})
                rows[-1].update(_file_top1(os.path.join(out_dir, rows[-1]["int8_file"]), prepared))
        seconds[method] = time.perf_counter() - t0
        summary = _write(out_dir, config, rows, seconds, teacher_info, time.perf_counter() - start)
        logging.info("sweep: %s done in %.0f s", method, seconds[method])
    latency = latency_pass(out_dir, rows, config.latency_repeats, fresh=remeasure_latency)
    return _write(out_dir, config, rows, seconds, teacher_info, time.perf_counter() - start, latency)


def latency_pass(out_dir: str, rows: list[dict], repeats: int, rounds: int = 5, fresh: bool = False) -> dict:
    """Times every row's int8 file in one pass, round-robin over `rounds` rounds (the median of
    each file's round medians), so that all are compared under the same conditions; sets the
    rows' `int8_latency_ms`. Kept in `latency.json` and redone when a file changed or `fresh`.
    Returns how the pass was made (rounds, repeats, the load average around it)."""
    import hashlib

    from edgekt.export import measure

    blobs = {}
    for r in rows:
        with open(os.path.join(out_dir, r["int8_file"]), "rb") as f:
            blobs[r["int8_file"]] = f.read()
    digests = {k: hashlib.sha256(b).hexdigest() for k, b in blobs.items()}
    path = os.path.join(out_dir, LATENCY_FILE)
    saved = {}
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
    if fresh or saved.get("digests") != digests or saved.get("repeats") != repeats:
        load_before = os.getloadavg()
        times = {k: [] for k in blobs}
        for _ in range(rounds):
            for k, blob in blobs.items():
                times[k].append(measure.tflite_latency_ms(blob, repeats=repeats))
        saved = {"digests": digests, "repeats": repeats, "rounds": rounds,
                 "latency_ms": {k: float(np.median(v)) for k, v in times.items()},
                 "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "cpu_count": os.cpu_count()}
        atomic.write_json(path, saved)
    for r in rows:
        r["int8_latency_ms"] = saved["latency_ms"][r["int8_file"]]
    return {k: saved[k] for k in ("repeats", "rounds", "loadavg_before", "loadavg_after", "cpu_count")}


def steps_to_budgets(config, teacher_params: int, teacher_flops: int) -> list[int]:
    """After how many steps our policy reaches each budget (largest first) when every step is
    accepted, as in a sweep (no accuracy floor): what the baseline's ramps follow."""
    from edgekt.prune import schedule

    state = schedule.PolicyState(params=teacher_params, flops=teacher_flops, step=schedule.initial_step(
        target_params_ratio=config.target_params_ratio, target_flops_ratio=None, steps=config.steps,
        step_keep=config.step_keep))
    budgets = sorted({int(r * teacher_params) for r in (*config.milestones, config.target_params_ratio)},
                     reverse=True)
    out, n = [], 0
    while (budget := schedule.next_budget(state, max_params=budgets[-1], max_flops=None, milestones=budgets[:-1],
                                          max_steps=config.max_steps)) is not None:
        n += 1
        state, _ = schedule.after_step(state, params=budget[0], flops=state.flops, accuracy=1.0, floor=None,
                                       min_step=config.min_step)
        out.extend(n for b in budgets[len(out):] if budget[0] <= b)
    return out


def _steps_until(log: list[dict], accepted: int) -> list[dict]:
    """The steps of a pruning log (after the teacher's entry) up to its `accepted`-th accepted one."""
    out, n = [], 0
    for e in log:
        if n == accepted:
            break
        out.append(e)
        n += bool(e.get("accepted", True))
    return out


def _file_top1(path: str, prepared) -> dict:
    """Test top-1 of an int8 file with its tie count and tie-split top-1 (`measure.top1_figures`),
    kept beside it and redone when the file changed."""
    import hashlib

    from edgekt.export import measure

    if prepared.test is None:
        return {}
    with open(path, "rb") as f:
        blob = f.read()
    digest = hashlib.sha256(blob).hexdigest()
    cache = os.path.splitext(path)[0] + "_top1.json"
    if os.path.exists(cache):
        with open(cache) as f:
            saved = json.load(f)
        if saved.get("sha256") == digest and saved.get("test_images") == len(prepared.test.labels):
            return saved["figures"]
    top1 = measure.top1_figures(measure.tflite_scores(blob, prepared.test.images), prepared.test.labels)
    figures = {"int8_test_accuracy": top1["accuracy"], "int8_test_tied": top1["tied"],
               "int8_test_accuracy_ties_split": top1["accuracy_ties_split"]}
    atomic.write_json(cache, {"sha256": digest, "test_images": len(prepared.test.labels), "figures": figures})
    return figures


def _int8_figures(model_path: str, representative, repeats: int) -> dict:
    """The int8 file of a pruned model and its bytes and latency (kept beside it, redone when
    the model or the calibration images changed; its top-1: `_file_top1`)."""
    import hashlib

    from edgekt.export import measure
    from edgekt.models import saving

    with open(model_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    calibration = hashlib.sha256(np.ascontiguousarray(representative).tobytes()).hexdigest()
    figures_path = os.path.join(os.path.dirname(model_path), "int8.json")
    int8_path = os.path.join(os.path.dirname(model_path), "model_int8.tflite")
    if os.path.exists(figures_path):
        with open(figures_path) as f:
            figures = json.load(f)
        if figures.get("model_sha256") == digest and figures.get("calibration_sha256") == calibration:
            return figures
    blob = measure.inference_file(saving.load_model(model_path), "int8", representative)
    atomic.write_bytes(int8_path, blob)
    figures = {**measure.file_figures(blob, repeats=repeats), "model_sha256": digest, "calibration_sha256": calibration}
    atomic.write_json(figures_path, figures)
    return figures


def _write(out_dir: str, config: SweepConfig, rows: list[dict], seconds: dict, teacher: dict, wall: float,
           latency: dict | None = None) -> dict:
    summary = {"config": dataclasses.asdict(config), "teacher": teacher, "rows": rows,
               "method_seconds": seconds, "wall_seconds_this_run": wall, "latency": latency}
    atomic.write_json(os.path.join(out_dir, SWEEP_FILE), summary)
    atomic.write_text(os.path.join(out_dir, TABLE_FILE), table(summary))
    plot(summary, os.path.join(out_dir, PLOT_FILE))
    return summary


def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def table(summary: dict) -> str:
    """The sweep as a markdown table, one row per method and budget, and what differs between
    the methods beyond the table's columns."""
    t = summary.get("teacher") or {}
    n_test = f" ({t['test_images']:,} images)" if t.get("test_images") else ""
    lines = [f"| method | budget | params (non-zero) | MFLOPs (multiply-adds executed) | val top-1 | test top-1{n_test} | "
             "int8 test top-1 | int8 KiB | int8 gzip KiB | int8 latency ms | epochs | compute epochs | pruning s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    if t:
        lines.append(f"| teacher | 100% | {t['params']:,} | {t['flops'] / 1e6:.1f} | {pct(t.get('val_accuracy'))} | "
                     f"{pct(t.get('test_accuracy'))} | – | – | – | – | – | – | – |")
    for r in sorted(summary["rows"], key=lambda r: (-r["budget"], r["method"])):
        lines.append(f"| {r['method']} | {100 * r['budget']:g}% | {r['params']:,} | {r['flops'] / 1e6:.1f} | "
                     f"{pct(r['val_accuracy'])} | {pct(r['test_accuracy'])} | {pct(r.get('int8_test_accuracy'))} | "
                     f"{r['int8_bytes'] / 1024:.1f} | {_kib(r.get('int8_gzip_bytes'))} | {r['int8_latency_ms']:.3f} | "
                     f"{r.get('epochs', 0):.1f} | "
                     f"{r.get('compute_epochs', r.get('epochs', 0)):.1f} | "
                     f"{_pruning_seconds(r):.0f} |")
    text = "\n".join(lines) + "\n\n" + "\n".join(f"- {line}" for line in _caveats(summary)) + "\n"
    methods = {r["method"] for r in summary["rows"]}
    if "default" not in methods:
        text += "\nThe default is not in this table: no comparison with it is made.\n"
    else:
        losses = where_default_loses(summary)
        text += "\nWhere the default loses:\n\n" + ("\n".join(f"- {line}" for line in losses) if losses
                                                    else "- nowhere in these columns") + "\n"
    if {"default_labels_only", "tfmot"} <= methods:
        losses = where_default_loses(summary, ours="default_labels_only", against=("tfmot",))
        text += ("\nLike for like (both fine-tuned on labels only, no teacher): where default_labels_only loses to "
                 "tfmot:\n\n" + ("\n".join(f"- {line}" for line in losses) if losses else "- nowhere in these columns")
                 + "\n")
    return text


def _kib(v) -> str:
    return "–" if v is None else f"{v / 1024:.1f}"


def _in_kib(v) -> str:
    return _kib(v) + " KiB"


def _in_ms(v) -> str:
    return f"{v:.3f} ms"


def _pruning_seconds(r: dict) -> float | None:
    if r.get("trajectory_seconds") is None or r.get("final_seconds") is None:
        return None
    return r["trajectory_seconds"] + r["final_seconds"]


# (what is compared, its name, +1: higher is better / -1: lower is better, how it is printed)
_COMPARED = ((lambda r: r.get("test_accuracy"), "test top-1", 1, pct),
             (lambda r: r.get("val_accuracy"), "val top-1", 1, pct),
             (lambda r: r.get("int8_test_accuracy"), "int8 test top-1", 1, pct),
             (lambda r: r.get("params"), "fewer parameters", -1, lambda v: f"{v:,}"),
             (lambda r: r.get("flops"), "fewer FLOPs", -1, lambda v: f"{v / 1e6:.1f}M"),
             (lambda r: r.get("int8_bytes"), "a smaller int8 file", -1, _in_kib),
             (lambda r: r.get("int8_gzip_bytes"), "a smaller gzipped int8 file", -1, _in_kib),
             (lambda r: r.get("int8_latency_ms"), "a lower int8 latency", -1, _in_ms),
             (lambda r: r.get("epochs"), "fewer epochs", -1, lambda v: f"{v:.1f}"),
             (lambda r: r.get("compute_epochs"), "fewer compute epochs", -1, lambda v: f"{v:.1f}"))
# Pruning seconds are not compared: they are wall time under whatever load there was (see the caveats).


def _curve_at(points: list[dict], key: str, cost, accuracy: str = "int8_test_accuracy") -> float | None:
    """The best `accuracy` a method's `points` reach at `cost` of `key`: their upper envelope,
    log-linear between neighbours; None below the cheapest point."""
    pts = sorted((p[key], p[accuracy]) for p in points if p.get(key) is not None and p.get(accuracy) is not None)
    if cost is None or not pts or cost < pts[0][0]:
        return None
    best = max(a for c, a in pts if c <= cost)
    for (c0, a0), (c1, a1) in zip(pts, pts[1:]):
        if c0 <= cost <= c1 and c1 > c0:
            best = max(best, a0 + (a1 - a0) * math.log(cost / c0) / math.log(c1 / c0))
    return best


def _images(summary: dict, what: str) -> int | None:
    """How many images an accuracy column of `what` counts (test or val), when known."""
    return (summary.get("teacher") or {}).get("val_images" if "val" in what else "test_images")


# The curves each method's points are checked against: (cost, its name, how it is printed, accuracy).
_CURVES = (("params", "parameters", lambda v: f"{v:,}", "test_accuracy"),
           ("flops", "FLOPs", lambda v: f"{v / 1e6:.1f}M", "test_accuracy"),
           ("int8_bytes", "int8 bytes", _in_kib, "int8_test_accuracy"),
           ("int8_gzip_bytes", "gzipped int8 bytes", _in_kib, "int8_test_accuracy"),
           ("int8_latency_ms", "int8 latency", _in_ms, "int8_test_accuracy"))
_SPLIT = "int8_test_accuracy_ties_split"


def where_default_loses(summary: dict, ours: str = "default", against: tuple[str, ...] | None = None) -> list[str]:
    """Every budget where another method (those in `against`, or all) beats `ours` on a column of
    the table (accuracy differences also in images, when the table knows how many), and every
    point of another method above `ours`' curve of test top-1 against parameters or FLOPs, or of
    int8 test top-1 against int8 bytes, gzipped int8 bytes or latency (the int8 file's accuracy
    against the int8 file's costs); a point cheaper than all of `ours`, where no curve reaches, only
    when it beats one of them outright. Int8 figures are arg-max top-1 as the app takes it; where
    splitting tied top scores evenly would not keep the order, the line says so. Pruning seconds
    are not compared (wall time under uneven load)."""
    rows = summary["rows"]
    label = "the default" if ours == "default" else ours
    base = {r["budget"]: r for r in rows if r["method"] == ours}
    if not base:
        return []
    lines = []
    others = [m for m in dict.fromkeys(r["method"] for r in rows if r["method"] != ours)
              if against is None or m in against]
    for method in others:
        theirs = sorted((r for r in rows if r["method"] == method and r["budget"] in base), key=lambda r: -r["budget"])
        for get, what, sign, fmt in _COMPARED:
            wins = [r for r in theirs if get(r) is not None and get(base[r["budget"]]) is not None
                    and sign * (get(r) - get(base[r["budget"]])) > 0]
            if wins:
                verb = f"has {what}" if sign < 0 else f"beats it on {what}"
                n = _images(summary, what) if sign > 0 else None
                parts = []
                for r in wins:
                    a, o = get(r), get(base[r["budget"]])
                    shown = (f"{fmt(a)} vs {fmt(o)}" if fmt(a) != fmt(o) or "file" not in what
                             else f"{a:,} vs {o:,} bytes")
                    parts.append(f"{100 * r['budget']:g}% ({shown}"
                                 + (f", {round((a - o) * n)} of {n:,} images" if n else "")
                                 + (_tie_note(r, base[r["budget"]]) if what == "int8 test top-1" else "") + ")")
                lines.append(f"{method} {verb} at " + ", ".join(parts) + ".")
        for key, what, fmt, accuracy in _CURVES:
            above, dominates = [], []
            name = "test top-1" if accuracy == "test_accuracy" else "int8 test top-1"
            for r in theirs:
                if r.get(key) is None or r.get(accuracy) is None:
                    continue
                where = f"{100 * r['budget']:g}% ({pct(r[accuracy])} at {fmt(r[key])}"
                level = _curve_at(list(base.values()), key, r[key], accuracy)
                if level is not None:
                    if r[accuracy] > level:
                        split = (_curve_at(list(base.values()), key, r[key], _SPLIT)
                                 if accuracy != "test_accuracy" else None)
                        kept = split is None or r.get(_SPLIT) is None or r[_SPLIT] > split
                        above.append(f"{where}; {ours} {pct(level)} there"
                                     + ("" if kept else "; not above with tied top scores split evenly") + ")")
                    continue
                # Cheaper than every point of ours: no curve there, but it may still beat one of our points outright.
                beaten = [b for b in sorted(base.values(), key=lambda b: b[key] if b.get(key) is not None else 0)
                          if b.get(key) is not None and b.get(accuracy) is not None and b[accuracy] < r[accuracy]]
                if beaten:
                    b = beaten[0]
                    kept = (accuracy == "test_accuracy" or r.get(_SPLIT) is None or b.get(_SPLIT) is None
                            or r[_SPLIT] > b[_SPLIT])
                    dominates.append(f"{where}; {ours} at {100 * b['budget']:g}%: {pct(b[accuracy])} at "
                                     f"{fmt(b[key])}" + ("" if kept else "; not with tied top scores split evenly")
                                     + ")")
            if above:
                lines.append(f"{method} lies above {label}'s curve of {name} against {what} (log-linear "
                             f"between {label}'s budgets) at " + ", ".join(above) + ".")
            if dominates:
                lines.append(f"{method} beats a point of {label}'s outright (higher {name} with fewer {what}, "
                             f"cheaper than all of {label}'s points) at " + ", ".join(dominates) + ".")
    return lines


def _count(n: int, noun: str) -> str:
    """`n` with its noun, singular for one."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _tie_note(theirs: dict, ours: dict) -> str:
    """For an int8 win: the tie-split figures when they do not keep the order."""
    a, o = theirs.get(_SPLIT), ours.get(_SPLIT)
    if a is None or o is None or a > o:
        return ""
    return f"; with tied top scores split evenly {pct(a)} vs {pct(o)}"


def method_times(rows: list[dict]) -> dict[str, dict]:
    """Seconds per method: its trajectory through all budgets (each row holds the trajectory up
    to its budget) and the sum of the budgets' final fine-tunings."""
    times = {}
    for r in rows:
        t = times.setdefault(r["method"], {"trajectory": 0.0, "finals": 0.0})
        t["trajectory"] = max(t["trajectory"], r["trajectory_seconds"])
        t["finals"] += r["final_seconds"]
    for t in times.values():
        t["total"] = t["trajectory"] + t["finals"]
    return times


def _caveats(summary: dict) -> list[str]:
    """What the columns do not show: how the methods' training and choices differ."""
    config = summary.get("config") or {}
    methods = {r["method"] for r in summary["rows"]}
    lines = ["epochs: passes over the training images that reached the kept model (steps, their probe, final "
             "fine-tuning); compute epochs add the probes of the ways not kept. pruning s: wall time of the steps "
             "and the final fine-tuning, measured while other jobs may share the CPU."]
    if "default" in methods or "default_labels_only" in methods:
        lines.append("default: each step keeps, of several ways, the one best on the validation split after a short "
                     "probe, so its val top-1 is that of a choice made on the same images (compare methods on test). "
                     "Every method steps through the sweep's budgets in turn, so a row is the default policy on that "
                     "schedule, not a separate run of `pipelines.prune` to that budget alone, whose steps would differ.")
    if "tfmot" in methods:
        lines.append("tfmot: magnitude pruning of the dense model (non-zero parameters counted; its file and latency "
                     "stay dense), fine-tuned on labels only with our data, batch size and optimizer (SGD, "
                     "Nesterov 0.9, cosine decay per phase, L2 on kernels: the pruning preset's) and the epochs of "
                     "our steps and final fine-tuning, not of the short probes with which the default chooses a way "
                     "at each step (the epochs column shows the difference); ours distil from the teacher"
                     + (" (default_labels_only: ours on labels only, the like-for-like row)"
                        if "default_labels_only" in methods else "")
                     + ". Neither side's learning rate was tuned.")
    teacher_params = (summary.get("teacher") or {}).get("params")
    over = [r for r in summary["rows"] if teacher_params and r["params"] > int(r["budget"] * teacher_params)]
    if over:
        lines.append("over the budget (" + ", ".join(
            f"{r['method']} at {100 * r['budget']:g}%: {_count(r['params'] - int(r['budget'] * teacher_params), 'parameter')}"
            for r in over) + "): tfmot rounds its sparsity layer by layer; ours stop at or below it.")
    tied = [r for r in summary["rows"] if r.get("int8_test_tied") is not None]
    if tied:
        most = max(tied, key=lambda r: r["int8_test_tied"])
        lines.append("int8 test top-1: arg-max, a tie going to the lowest class index (as the app's `evaluate` "
                     "counts; the int8 file takes raw 0-255 pixels as the app feeds them); the "
                     f"quantised outputs of each file tie on {min(r['int8_test_tied'] for r in tied)} to "
                     f"{most['int8_test_tied']} test images (the most: {most['method']} at {100 * most['budget']:g}%), "
                     "so differences of "
                     "a few images can follow from tie-breaking: where splitting ties evenly reverses a comparison, "
                     "the line below says so.")
    if "default" in methods:
        lines.append("the default's curves (below the table) join its budgets' points log-linearly; a point of "
                     "another method cheaper than all of the default's is listed only where it beats one of them "
                     "outright.")
    times = method_times(summary["rows"])
    if times:
        total = sum(t["total"] for t in times.values())
        lines.append("time (wall seconds of the steps, with ours' validation passes and probes, and of every "
                     "budget's final fine-tuning, as recorded by completed work; int8 exports, test evaluation and "
                     "the work of killed runs not counted; other jobs may have shared the CPU, unevenly between "
                     "methods, so these seconds are not compared between methods): " + ", ".join(
                         f"{m} {t['total']:.0f} s ({t['trajectory']:.0f} + {t['finals']:.0f})"
                         for m, t in times.items()) + f"; these {len(times)} methods {total:.0f} s ({total / 3600:.1f} h).")
    lat = summary.get("latency")
    if not lat:
        lines.append("int8 latency: each file timed when it was made, under whatever load there was; the pass at "
                     "the end of the sweep times them all alike.")
    else:
        lines.append(f"int8 latency: batch 1, 1 thread, all files timed in one pass ({lat['rounds']} rounds of "
                     f"{lat['repeats']} runs, median), load average {lat['loadavg_before'][0]:.1f} before and "
                     f"{lat['loadavg_after'][0]:.1f} after on {lat['cpu_count']} CPUs.")
    return lines


def plot(summary: dict, path: str) -> str:
    """Test top-1 against parameters and FLOPs, and the int8 file's test top-1 against its bytes
    and latency: one curve per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib import ticker

    axes_spec = (("params", "parameters (non-zero)", "test_accuracy"),
                 ("flops", "FLOPs as executed (multiply-accumulates)", "test_accuracy"),
                 ("int8_bytes", "int8 .tflite bytes", "int8_test_accuracy"),
                 ("int8_latency_ms", "int8 TFLite latency, batch 1, 1 thread (ms)", "int8_test_accuracy"))
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.8), dpi=110)
    methods = list(dict.fromkeys(r["method"] for r in summary["rows"]))
    colors = plt.get_cmap("tab10")
    markers = "os^vD<>ph*"
    for i, method in enumerate(methods):
        pts = sorted((r for r in summary["rows"] if r["method"] == method and r["test_accuracy"] is not None),
                     key=lambda r: r["params"])
        style = dict(marker=markers[i % len(markers)], color=colors(i % 10), label=method,
                     linestyle="--" if method == "tfmot" else "-", linewidth=2.4 if method == "default" else 1.3,
                     markersize=6 if method == "default" else 4.5, zorder=3 if method == "default" else 2)
        for ax, (key, _, accuracy) in zip(axes, axes_spec):
            kept = [r for r in pts if r.get(key) is not None and r.get(accuracy) is not None]
            ax.plot([r[key] for r in kept], [100 * r[accuracy] for r in kept], **style)

    def short(value, _pos=None):
        for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if value >= size:
                return f"{value / size:g}{unit}"
        return f"{value:g}"

    for ax, (key, label, accuracy) in zip(axes, axes_spec):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(short))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("int8 test top-1 (%)" if accuracy.startswith("int8") else "test top-1 (%)")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 9), fontsize=9, frameon=False)
    fig.suptitle("Pruning sweep: accuracy against cost")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
    plt.close(fig)
    return path
