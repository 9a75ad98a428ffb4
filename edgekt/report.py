"""The end-to-end report: report.md, a self-contained report.html (plots inlined), summary.json
and PNG plots, from the outputs of every stage of a workflow run."""

from __future__ import annotations

import base64
import html
import json
import os

from edgekt import atomic
from edgekt.device_learning import report as device_learning_report


def _load(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def _int(v) -> str:
    return "–" if v is None else f"{int(v):,}"


def _kib(v) -> str:
    return "–" if v is None else f"{v / 1024:.1f} KiB"


def _ms(v) -> str:
    return "–" if v is None else f"{v:.2f} ms"


def summarize(out_dir: str) -> dict:
    """Collects the headline figures of a workflow run from its stage folders."""
    cloud = _load(os.path.join(out_dir, "cloud", "metrics.json"))
    prune = _load(os.path.join(out_dir, "prune", "metrics.json"))
    export = _load(os.path.join(out_dir, "export", "metrics.json"))
    device_learning = _load(os.path.join(out_dir, "device_learning", "results.json"))
    baseline = _load(os.path.join(out_dir, "baseline", "metrics.json"))
    ours_tflite = _load(os.path.join(out_dir, "baseline", "ours.json"))
    sweep_summary = _load(os.path.join(out_dir, "sweep", "sweep.json"))
    return {
        "sweep": sweep_summary,
        "teacher": {"params": prune.get("teacher_params") or cloud.get("params"),
                    "flops": prune.get("teacher_flops") or cloud.get("flops"),
                    "test_accuracy": prune.get("teacher_test_accuracy") or cloud.get("test_accuracy"),
                    "architecture": cloud.get("architecture"), "keras_bytes": prune.get("teacher_file_bytes"),
                    "train_seconds": cloud.get("wall_seconds")},
        "pruned": {"params": prune.get("params"), "flops": prune.get("flops"),
                   "params_removed_fraction": prune.get("params_removed_fraction"),
                   "flops_removed_fraction": prune.get("flops_removed_fraction"),
                   "test_accuracy": prune.get("test_accuracy"), "keras_bytes": prune.get("file_bytes"),
                   "criterion": prune.get("criterion"), "method": prune.get("method"), "tflite_float32_bytes": ours_tflite.get("tflite_bytes"),
                   "tflite_float32_latency_ms": ours_tflite.get("tflite_latency_ms"),
                   "seconds": prune.get("wall_seconds")},
        "device": {"trainable_bytes": export.get("trainable_bytes"), "inference_bytes": export.get("inference_bytes"),
                   "inference_quantization": export.get("inference_quantization"),
                   "trainable_test_accuracy": export.get("trainable_test_accuracy"),
                   "inference_test_accuracy": export.get("inference_test_accuracy"),
                   "train_step_ms": export.get("train_step_ms"), "infer_batch_ms": export.get("infer_batch_ms"),
                   "batch_size": export.get("batch_size")},
        "device_learning": device_learning,
        "tfmot": {k: baseline.get(k) for k in ("nonzero_params", "stored_params", "test_accuracy", "tflite_bytes",
                                               "tflite_gzip_bytes", "tflite_latency_ms", "epochs")},
    }


def markdown(summary: dict, preset: str | None) -> str:
    t, p, d, tm = summary["teacher"], summary["pruned"], summary["device"], summary["tfmot"]
    dl = summary["device_learning"]
    lines = [
        f"# edgekt report{f' ({preset} preset)' if preset else ''}",
        "",
        f"Cloud model {t.get('architecture') or ''} pruned ({p.get('method') or p.get('criterion')}): "
        f"**{_pct(p.get('params_removed_fraction'))} of parameters and {_pct(p.get('flops_removed_fraction'))} of "
        f"FLOPs removed**, test top-1 {_pct(t.get('test_accuracy'))} -> {_pct(p.get('test_accuracy'))}.",
        "",
        "| | cloud model | pruned (ours) | tfmot magnitude, same budget | on device (TFLite) |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| parameters | {_int(t.get('params'))} | {_int(p.get('params'))} | {_int(tm.get('nonzero_params'))} non-zero "
        f"of {_int(tm.get('stored_params'))} | {_int(p.get('params'))} |",
        f"| FLOPs (MACs/image) | {_int(t.get('flops'))} | {_int(p.get('flops'))} | {_int(t.get('flops'))} "
        f"(zeros are still computed) | {_int(p.get('flops'))} |",
        f"| test top-1 | {_pct(t.get('test_accuracy'))} | {_pct(p.get('test_accuracy'))} | {_pct(tm.get('test_accuracy'))} "
        f"| {_pct(d.get('trainable_test_accuracy'))} (trainable), {_pct(d.get('inference_test_accuracy'))} "
        f"({d.get('inference_quantization')}) |",
        f"| .tflite size | – | {_kib(p.get('tflite_float32_bytes'))} (float32) | {_kib(tm.get('tflite_bytes'))} "
        f"(float32; gzip {_kib(tm.get('tflite_gzip_bytes'))}) | {_kib(d.get('trainable_bytes'))} trainable, "
        f"{_kib(d.get('inference_bytes'))} {d.get('inference_quantization')} |",
        f"| inference latency (batch 1, 1 thread) | – | {_ms(p.get('tflite_float32_latency_ms'))} | "
        f"{_ms(tm.get('tflite_latency_ms'))} | {_ms(d.get('infer_batch_ms'))} per batch of {d.get('batch_size')} |",
        f"| train step (batch {d.get('batch_size')}, 1 thread) | – | – | – | {_ms(d.get('train_step_ms'))} |",
        "",
        *_sweep_section(summary.get("sweep") or {}, summary.get("teacher") or {}),
        "## On-device learning (device models that never saw the classes they learn)",
        "",
        *(device_learning_report.method_table(dl) if dl.get("methods") else ["(not run)"]),
        "",
        *(device_learning_report.update_table(dl) if dl.get("updates") else []),
        "",
        *(device_learning_report.ablation_table(dl) if dl.get("ablations") else []),
        "Where ours loses:",
        *_baseline_losses(p, tm),
        *(device_learning_report.losses_of_ours(dl) if dl.get("methods") else []),
        "",
        "The device model of each class split is pruned from the cloud model with old-class images only; the "
        "device's images are held out of the cloud's training. Details and lineage: `device_learning/results.md`.",
        "",
        *device_learning_report.never_seen_section(dl),
        "Times are wall times of the device app on this machine (not a board). Plots: `sizes.png`, "
        "`device_learning/accuracy_per_update.png`, `device_learning/validation_vs_time.png`, "
        "`device_learning/never_seen_curve.png`, `prune/prune_plot.png`.",
        "",
    ]
    return "\n".join(lines)


def _baseline_losses(p: dict, tm: dict) -> list[str]:
    """The headline table's columns where the tfmot baseline beats the pruned model."""
    lines = []
    if tm.get("test_accuracy") is not None and p.get("test_accuracy") is not None \
            and tm["test_accuracy"] > p["test_accuracy"]:
        extra = ""
        if tm.get("tflite_bytes") and p.get("tflite_float32_bytes") and tm.get("tflite_latency_ms") \
                and p.get("tflite_float32_latency_ms"):
            extra = (f" (it keeps every filter: a {tm['tflite_bytes'] / p['tflite_float32_bytes']:.1f}x larger float32 "
                     f"file, {tm['tflite_latency_ms'] / p['tflite_float32_latency_ms']:.1f}x the latency)")
        lines.append(f"- the tfmot baseline at the same budget beats ours on test top-1: {_pct(tm['test_accuracy'])} "
                     f"vs {_pct(p['test_accuracy'])}{extra}.")
    for key, ours_key, what, fmt in (("tflite_bytes", "tflite_float32_bytes", "a smaller float32 file", _kib),
                                     ("tflite_latency_ms", "tflite_float32_latency_ms", "a lower latency", _ms)):
        if tm.get(key) is not None and p.get(ours_key) is not None and tm[key] < p[ours_key]:
            lines.append(f"- the tfmot baseline has {what}: {fmt(tm[key])} vs {fmt(p[ours_key])}.")
    return lines


def _teacher_name(sweep_summary: dict) -> str:
    path = (sweep_summary.get("teacher") or {}).get("path")
    return f"`{path}`" if path else "(the cloud model)"


def _sweep_section(sweep_summary: dict, run_teacher: dict | None = None) -> list[str]:
    """The Pareto sweep's table, when a sweep was run into the report's `sweep/` folder. A sweep
    of another teacher than this run's cloud model says so."""
    if not sweep_summary.get("rows"):
        return []
    from edgekt import sweep

    theirs = sweep_summary.get("teacher") or {}
    ours = run_teacher or {}
    other = any(theirs.get(k) is not None and ours.get(k) is not None and theirs[k] != ours[k]
                for k in ("params", "test_accuracy"))
    note = (f" (not this run's cloud model: {theirs['params']:,} parameters, test top-1 "
            f"{100 * theirs['test_accuracy']:.2f}%)" if other else "")
    return ["## Pruning sweep: accuracy against parameters, FLOPs, int8 size and latency", "",
            f"The teacher {_teacher_name(sweep_summary)}{note} pruned to "
            f"{', '.join(f'{100 * b:g}%' for b in sweep_summary['config']['budgets'])} of its parameters by each method "
            "(`sweep/sweep.md`, plot `sweep/sweep.png`). tfmot's parameters are its non-zero values; its file and "
            "latency are those of the dense model it stays.", "",
            *sweep.table(sweep_summary).splitlines(), ""]


def _plot_sizes(out_dir: str, summary: dict) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p, tm, d = summary["pruned"], summary["tfmot"], summary["device"]
    bars = [("tfmot magnitude\n(float32)", tm.get("tflite_bytes")), ("ours pruned\n(float32)", p.get("tflite_float32_bytes")),
            ("ours trainable\n(device)", d.get("trainable_bytes")),
            (f"ours {d.get('inference_quantization')}", d.get("inference_bytes"))]
    bars = [(k, v) for k, v in bars if v]
    if not bars:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    ax.bar([k for k, _ in bars], [v / 1024 for _, v in bars], color=["#999", "#2a7", "#27a", "#a72"][: len(bars)])
    ax.set_ylabel(".tflite size (KiB)")
    ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = os.path.join(out_dir, "sizes.png")
    atomic.write_with(path, lambda t: fig.savefig(t, format="png"), suffix=".png")
    plt.close(fig)
    return path


def _html(md_text: str, images: list[str]) -> str:
    body = []
    in_table = False
    for line in md_text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= set("-: ") for c in cells):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("# "):
            body.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    if in_table:
        body.append("</table>")
    for path in images:
        with open(path, "rb") as f:
            data = base64.b64encode(f.read()).decode()
        body.append(f'<figure><img alt="{html.escape(os.path.basename(path))}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{html.escape(os.path.basename(path))}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>edgekt report</title><style>{style}</style></head>" \
           f"<body>{''.join(body)}</body></html>\n"


def _inline(text: str) -> str:
    text = html.escape(text)
    parts = text.split("**")
    text = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def write(out_dir: str, preset: str | None = None) -> dict:
    """Writes report.md, report.html, summary.json and sizes.png into `out_dir`."""
    summary = summarize(out_dir)
    md_text = markdown(summary, preset)
    atomic.write_text(os.path.join(out_dir, "report.md"), md_text)
    images = [p for p in (_plot_sizes(out_dir, summary), os.path.join(out_dir, "prune", "prune_plot.png"),
                          os.path.join(out_dir, "sweep", "sweep.png"),
                          os.path.join(out_dir, "device_learning", "accuracy_per_update.png"),
                          os.path.join(out_dir, "device_learning", "validation_vs_time.png"),
                          os.path.join(out_dir, "device_learning", "never_seen_curve.png")) if p and os.path.exists(p)]
    atomic.write_text(os.path.join(out_dir, "report.html"), _html(md_text, images))
    atomic.write_json(os.path.join(out_dir, "summary.json"), {"preset": preset, **summary})
    return summary
