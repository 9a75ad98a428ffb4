"""results.md and the plots of the on-device learning benchmark."""

from __future__ import annotations

import os

import numpy as np

from edgekt import atomic
from edgekt.device_learning.methods import ABLATIONS, METHODS

PRUNED_FROM_CLOUD = "the cloud model's, pruned"
COLUMNS = (("old_recall", "old"), ("new_recall", "new"), ("unseen_recall", "unseen"),
           ("unseen_precision", "unseen precision"), ("seen_accuracy", "old+new acc."), ("accuracy", "10-way acc."))


def _pct(mean, std=None) -> str:
    if mean is None:
        return "n/a"
    return f"{100 * mean:.2f}%" + (f" ± {100 * std:.2f}" if std is not None else "")


def _sec(mean, std=None) -> str:
    return "n/a" if mean is None else f"{mean:.1f} s" + (f" ± {std:.1f}" if std is not None else "")


def method_table(results: dict) -> list[str]:
    """The main table: mean ± std over splits and seeds, one row per method."""
    lines = ["| method | " + " | ".join(label for _, label in COLUMNS) + " | on-device time |",
             "| --- |" + " ---: |" * (len(COLUMNS) + 1)]
    for name in METHODS:  # results.json may hold them sorted by name; the table keeps this order
        m, s = results["methods"][name], results["methods_std"][name]
        cells = [_pct(m[k], s[k]) for k, _ in COLUMNS]
        lines.append(f"| {m['label']} | " + " | ".join(cells) + f" | {_sec(m['total_device_seconds'], s['total_device_seconds'])}"
                     f" (best at {_sec(m.get('device_seconds_to_best'))}) |")
    return lines


def _after(results: dict, name: str, update: str) -> dict | None:
    return next((u for u in results.get("updates", {}).get(name, []) if u["after"] == update), None)


def _cell(u: dict | None, key: str) -> str:
    return "n/a" if u is None or u.get(key) is None else _pct(u[key]["mean"], u[key]["std"])


def _change(u: dict | None, key: str = "old_change") -> str:
    c = (u or {}).get(key)
    return "n/a" if not c or c["mean"] is None else f"{100 * c['mean']:+.2f} ± {100 * (c['std'] or 0):.2f}"


def update_table(results: dict) -> list[str]:
    """Each update compared with the methods that run it: the incremental update (ours vs
    fine-tuning), the unseen update (ours vs pseudo-labels and the true-label reference),
    and old / new / unseen test recall before and after every update."""
    lines = ["Incremental update (labelled new classes), after the update; old change: old-class recall minus the "
             "same run's before the update (paired).", "",
             "| method | old | new | old+new acc. | old change | 10-way acc. |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in ("ours", "finetune"):
        u = _after(results, name, "incremental")
        lines.append(f"| {METHODS[name].label} | {_cell(u, 'old')} | {_cell(u, 'new')} | {_cell(u, 'seen')} | "
                     f"{_change(u)} | {_cell(u, 'accuracy')} |")
    u = _after(results, "no_update", "before")
    lines.append(f"| {METHODS['no_update'].label} | {_cell(u, 'old')} | n/a | {_cell(u, 'seen')} | n/a | "
                 f"{_cell(u, 'accuracy')} |")
    lines += ["", "Unseen update (cloud labels of unseen classes, no human labels), after the update; old / new "
              "change: against the same run after its incremental update.", "",
              "| method | old | new | unseen | unseen precision | old change | new change | 10-way acc. |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in ("ours", "pseudo_label", "true_label_bound"):
        u = _after(results, name, "unseen")
        lines.append(f"| {METHODS[name].label} | {_cell(u, 'old')} | {_cell(u, 'new')} | {_cell(u, 'unseen')} | "
                     f"{_cell(u, 'unseen_precision')} | {_change(u)} | {_change(u, 'new_change')} | "
                     f"{_cell(u, 'accuracy')} |")
    lines += ["", "Every update of every method:", "",
              "| method | after | old | new | unseen | 10-way acc. |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name in METHODS:
        for u in results.get("updates", {}).get(name, []):
            lines.append(f"| {METHODS[name].label} | {u['after']} | " + " | ".join(
                _cell(u, g) for g in ("old", "new", "unseen", "accuracy")) + " |")
    return lines


def ablation_table(results: dict) -> list[str]:
    """One row per technique removed from ours, beside ours and fine-tuning on the same runs."""
    ablations = results.get("ablations") or {}
    if not ablations:
        return []
    runs = next((a["run_keys"] for a in ablations.values() if "run_keys" in a), [])
    lines = ["## Ablation", "", f"Ours with one technique removed, on {len(runs)} runs (the preset's ablation seeds of "
             "every split), beside ours and fine-tuning on the same runs; each row picks its own setting by the same "
             "device rule.", "",
             "| variant | incremental: old | new | old+new acc. | final: " + " | ".join(label for _, label in COLUMNS)
             + " | on-device time |", "| --- |" + " ---: |" * (len(COLUMNS) + 4)]
    order = ["ours (same runs)", *ABLATIONS, "finetune (same runs)"]
    for name in order:
        a = ablations.get(name)
        if a is None:
            continue
        lines.append(f"| {a['label']} | " + " | ".join(_pct(a.get(f"incremental_{g}")) for g in ("old", "new", "seen"))
                     + " | " + " | ".join(_pct(a[k]) for k, _ in COLUMNS) + f" | {_sec(a['total_device_seconds'])} |")
    return lines + [""]


def losses_of_ours(results: dict) -> list[str]:
    """Plain sentences for every figure on which a method the device could run beats ours, in
    the update both run (incremental: fine-tuning; unseen: pseudo-labels), and against the
    model before each update on old classes."""
    out = []

    def compare(name, update, keys):
        mine, theirs = _after(results, "ours", update), _after(results, name, update)
        for key, label in keys:
            a = (mine or {}).get(key) or {}
            b = (theirs or {}).get(key) or {}
            if a.get("mean") is not None and b.get("mean") is not None and b["mean"] > a["mean"]:
                out.append(f"- {update} update: {METHODS[name].label} beats ours on {label}: {_pct(b['mean'])} vs "
                           f"{_pct(a['mean'])}.")

    compare("finetune", "incremental", (("old", "old"), ("new", "new"), ("seen", "old+new acc.")))
    compare("pseudo_label", "unseen", (("old", "old"), ("new", "new"), ("unseen", "unseen"),
                                       ("unseen_precision", "unseen precision"), ("accuracy", "10-way acc.")))
    for update in ("incremental", "unseen"):
        u = _after(results, "ours", update)
        for key, group in (("old_change", "old"), ("new_change", "new")):
            c = (u or {}).get(key)
            if c and c["mean"] is not None and c["mean"] < 0:
                out.append(f"- {update} update: ours loses {-100 * c['mean']:.2f} points on {group} classes against "
                           "the model before the update.")
    ours, ft = results["methods"]["ours"], results["methods"]["finetune"]
    for key, label in (("old_recall", "old"), ("new_recall", "new"), ("seen_accuracy", "old+new acc.")):
        if ft[key] is not None and ours[key] is not None and ft[key] > ours[key]:
            out.append(f"- After all updates (fine-tuning runs one, ours two): fine-tuning beats ours on {label}: "
                       f"{_pct(ft[key])} vs {_pct(ours[key])}.")
    for name in ("finetune", "pseudo_label"):
        m = results["methods"][name]
        if m.get("device_cpu_seconds") and (ours.get("device_cpu_seconds") or 0) > m["device_cpu_seconds"]:
            out.append(f"- {m['label']} takes less device CPU time over its updates: {_sec(m['device_cpu_seconds'])} "
                       f"vs ours {_sec(ours['device_cpu_seconds'])}.")
    mine = (results.get("ablations") or {}).get("ours (same runs)")
    for name, method in ABLATIONS.items():
        a = (results.get("ablations") or {}).get(name)
        if not a or not mine:
            continue
        better = [f"{label} {_pct(a[k])} vs {_pct(mine[k])}" for k, label in
                  (("incremental_old", "old after the incremental update"),
                   ("incremental_new", "new after the incremental update"),
                   ("incremental_seen", "old+new after the incremental update"), *COLUMNS)
                  if a.get(k) is not None and mine.get(k) is not None and a[k] > mine[k]]
        if better:
            out.append(f"- Ablation ({a['runs']} runs): {method.label} beats ours on " + "; ".join(better) + ".")
    bound = _after(results, "true_label_bound", "unseen")
    mine = _after(results, "ours", "unseen")
    if bound and mine and bound["unseen"]["mean"] is not None and mine["unseen"]["mean"] is not None:
        out.append(f"- Against the true-label reference on unseen classes: ours {_pct(mine['unseen']['mean'])}, reference "
                   f"{_pct(bound['unseen']['mean'])} ({100 * (mine['unseen']['mean'] - bound['unseen']['mean']):+.2f} "
                   "points).")
    return out or ["- Ours is ahead of every baseline on every column."]


def markdown(results: dict) -> str:
    cfg = results["config"]
    cloud = results["cloud"]
    lines = [
        "# On-device learning benchmark",
        "",
        f"Cloud model: {cloud.get('architecture')} trained on all classes ({cloud.get('train_images')} images), "
        f"without the device pool ({(cloud.get('device_pool') or {}).get('size')} images), validation and test; "
        f"test top-1 {_pct(cloud.get('test_accuracy'))}.",
        f"Class splits: {len(results['splits'])}; seeds: {results['seeds']}. Means ± std over splits × seeds. "
        "Recall = accuracy on a group's test images, 10-way.",
        "",
        *method_table(results),
        "",
        "`n/a`: fine-tuning does not run the unseen update (no labels) and `no update` runs none, so they have no "
        "result for those classes (their 10-way accuracy still counts those images as errors). The true-label "
        "reference uses labels the device does not have and, stopped by the same device rule, is not a strict "
        "upper bound. At one setting, pseudo-labels and the reference start their unseen update from ours' "
        "incremental update; each method picks its own setting (the matched comparison is below). Time: wall time of the device app's processes for the chosen setting "
        "(best at: up to the best validation epoch of the last update).",
        "",
        "## Before and after each update",
        "",
        *update_table(results),
        "",
        "## Where ours loses",
        "",
        *losses_of_ours(results),
        "",
        *ablation_table(results),
        "## Per class split (means over seeds)",
        "",
    ]
    for split in results["splits"]:
        name = f"new-{'+'.join(split['new'])}_unseen-{'+'.join(split['unseen'])}"
        lines += [f"Old {', '.join(split['old'])}; new {', '.join(split['new'])}; unseen {', '.join(split['unseen'])}.",
                  "", "| method | old | new | unseen | 10-way acc. | on-device time |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for method in METHODS:
            m = results["by_split"][name][method]
            lines.append(f"| {METHODS[method].label} | {_pct(m['old_recall'])} | {_pct(m['new_recall'])} | "
                         f"{_pct(m['unseen_recall'])} | {_pct(m['accuracy'])} | {_sec(m['total_device_seconds'])} |")
        lines.append("")
    lines += never_seen_section(results)
    lines += ["## At ours' setting (one starting model for the unseen update)", "",
              "Every method's final figures at the (trainable, lr) that ours chose in each run; means over runs.", "",
              "| method | old | new | unseen | unseen precision | 10-way acc. |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in METHODS:
        m = results["methods"][name].get("at_ours_setting")
        if m:
            lines.append(f"| {METHODS[name].label} | {_pct(m['old'])} | {_pct(m['new'])} | {_pct(m['unseen'])} | "
                         f"{_pct(m['unseen_precision'])} | {_pct(m['accuracy'])} |")
    lines += ["", "## Lineage", "", "| model | images of | labels of | initial weights |", "| --- | --- | --- | --- |"]
    for model, lin in results["lineage"].items():
        lines.append(f"| {model} | {', '.join(lin['images_of']) or 'none'} | {', '.join(lin['labels_of']) or 'none'} | "
                     f"{lin.get('initial_weights', PRUNED_FROM_CLOUD if model.startswith('device_model') else 'random')} |")
    lines += ["", "After its updates a device model has also received: in the incremental update, new-class images "
              "with labels (ours: mixed with the cloud's probabilities of the old and new classes only, nothing of the "
              "unseen classes); in the unseen update, unseen-class images with the cloud's soft labels (ours), the "
              "cloud's top-1 (pseudo-labels) or true labels (reference).",
              "", "## Rules", ""]
    lines += [f"- {k}: {v}" for k, v in results["rules"].items()]
    lines += ["", f"Device settings: grid trainable {list(cfg['trainable_choices'])} x lr {list(cfg['lr_choices'])}, "
              f"chosen per method and run on device validation; fixed: batch {cfg['device_batch_size']}, at most "
              f"{cfg['device_epochs']} epochs, patience {cfg['patience']}, replay ratio {cfg['replay_ratio']}, label "
              f"mix {cfg['label_mix']}, temperature {cfg['temperature']}, batch norm {cfg.get('bn_mode')}, "
              f"augmentation {cfg.get('augment')}, {cfg['threads']} thread(s).", "",
              "| method | settings chosen (runs) | updates that returned their start model | on-device time of the "
              "whole grid | device CPU time (chosen) |", "| --- | --- | ---: | ---: | ---: |"]
    for name in METHODS:
        m = results["methods"][name]
        chosen = ", ".join(f"{tag} ({n})" for tag, n in m["settings_chosen"].items() if tag) or "none (no update)"
        lines.append(f"| {m['label']} | {chosen} | {m['returned_start']} (in {m['runs']} runs) | "
                     f"{_sec(m['selection_device_seconds'])} | {_sec(m.get('device_cpu_seconds'))} |")
    lines.append("")
    return "\n".join(lines)


def _never_seen_records(results: dict) -> list[dict]:
    main = [rec for by_student in results.get("never_seen", {}).values() for by_loss in by_student.values()
            for rec in by_loss.values()]
    return main + list(results.get("never_seen_ablation", [])) + list(results.get("cloud_weights_students", []))


def _ns_row(rec: dict, first: str) -> str:
    honest = rec["lineage"].get("never_seen", False)
    size = "all" if rec.get("per_class_images") is None else f"{rec['per_class_images']}/class"
    last = rec["curve"][-1] if rec.get("curve") else {}
    return (f"| {first} | {rec['student']} | {rec['loss']} | {rec['augment']}"
            f"{'' if rec['mix'] == 'none' else ' + ' + rec['mix']} | {rec['transfer_images']:,} ({size}) | "
            f"{rec['epochs']} | {'yes' if honest else 'no: the cloud weights'} | **{_pct(rec['never_seen_recall'])}** | "
            f"{_pct(rec.get('paper_test_recall'))} | {_pct(rec['seen_recall'])} | {_pct(last.get('never_seen'))} | "
            f"{rec.get('images_per_second', 0):.0f} |")


NS_HEADER = ["| training classes | student | loss | augmentation | transfer images | epochs | never saw the other "
             "classes | never-seen recall (device app) | on the paper's test classes | seen recall | never-seen recall, "
             "Keras, last curve point | img/s |", "| --- | --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: "
             "| ---: |"]


def never_seen_section(results: dict) -> list[str]:
    """The never-seen table, its ablation and the learning curve's file."""
    if not _never_seen_records(results):
        return []
    lines = ["## Never-seen transfer (the seed paper's setting)", "",
             "A student distilled from the cloud model on training images of the training classes only, no label at "
             "all; 10-way recall (arg-max over all ten logits, no bias correction) on the test images of the classes "
             "of which it received no image, at the last epoch of a schedule fixed in the preset, measured in the "
             "device app on the exported model. The seed paper reports 78.92% on {horse, ship, truck} -> the other "
             "seven. Students that start from the cloud's weights learned every class through them: their figures "
             "are not never-seen figures and are shown for comparison only.", "", *NS_HEADER]
    for by_student in results.get("never_seen", {}).values():
        for by_loss in by_student.values():
            for rec in by_loss.values():
                lines.append(_ns_row(rec, ", ".join(rec["train_classes"])))
    if results.get("never_seen_ablation"):
        lines += ["", "### Never-seen ablation (one factor at a time)", "", *NS_HEADER]
        lines += [_ns_row(rec, ", ".join(rec["train_classes"])) for rec in results["never_seen_ablation"]]
    if results.get("cloud_weights_students"):
        lines += ["", "### Students that start from the cloud's weights (not never-seen figures: through those "
                  "weights they learned every class from its images and labels)", "", *NS_HEADER]
        lines += [_ns_row(rec, ", ".join(rec["train_classes"])) for rec in results["cloud_weights_students"]]
    if results.get("never_seen_pending"):
        lines += ["", f"Not finished yet (pending, no figure): {', '.join(results['never_seen_pending'])}."]
    lines += ["", "Learning curve: `never_seen_curve.png` (never-seen recall every few epochs, Keras on the test "
              "images; shown, never used to choose).", ""]
    return lines


def write_never_seen_curve(out_dir: str, results: dict) -> None:
    """never_seen_curve.png: never-seen recall against epochs, one line per run."""
    records = [r for r in _never_seen_records(results) if r.get("curve")]
    if not records:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for i, rec in enumerate(records):
        style = "-" if rec["table"] == "main" else ":"
        ax.plot([p["epoch"] for p in rec["curve"]], [100 * p["never_seen"] for p in rec["curve"]], style,
                marker=".", color=f"C{i % 10}",
                label=f"{'+'.join(rec['train_classes'])}: {rec['student']}, {rec['loss']}, {rec['variant']}")
    ax.axhline(78.92, color="grey", linestyle="--", linewidth=1, label="seed paper, 78.92%")
    _finish_plot(plt, fig, ax, "epoch", "never-seen recall, 10-way (%)", 6, os.path.join(out_dir, "never_seen_curve.png"))


def never_seen_markdown(results: dict) -> str:
    cloud = results["cloud"]
    lines = ["# Never-seen transfer", "",
             f"Cloud model (teacher): {cloud.get('architecture')}, {cloud.get('train_images')} training images of "
             f"every class, test top-1 {_pct(cloud.get('test_accuracy'))}.", "", *never_seen_section(results),
             "## Lineage", "", "| model | images of | labels of | initial weights |", "| --- | --- | --- | --- |"]
    for model, lin in results["lineage"].items():
        lines.append(f"| {model} | {', '.join(lin['images_of']) or 'none'} | {', '.join(lin['labels_of']) or 'none'} "
                     f"| {lin.get('initial_weights', 'random')} |")
    lines += ["", "## Rules", "", *[f"- {k}: {v}" for k, v in results["rules"].items()], ""]
    return "\n".join(lines)


def _finish_plot(plt, fig, ax, xlabel: str, ylabel: str, legend_size: int, path: str) -> None:
    """Labels, grid and legend of a line plot, then written to `path` and closed."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _save(fig, path: str) -> None:
    atomic.write_with(path, lambda t: fig.savefig(t, format="png"), suffix=".png")


def write(out_dir: str, results: dict) -> None:
    """Writes results.md, never_seen_curve.png and, unless only the never-seen stage ran,
    accuracy_per_update.png, confusion_<method>.png, validation_vs_time.png."""
    if results.get("only") == "never_seen":
        atomic.write_text(os.path.join(out_dir, "results.md"), never_seen_markdown(results))
        write_never_seen_curve(out_dir, results)
        return
    atomic.write_text(os.path.join(out_dir, "results.md"), markdown(results))
    write_never_seen_curve(out_dir, results)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(results["runs"].values())
    if not runs:
        return
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=110, sharey=True)
    all_steps = ["before", "incremental", "unseen"]
    for ax, group in zip(axes, ("old", "new", "unseen")):
        for i, name in enumerate(METHODS):
            steps = [u["after"] for u in runs[0][name]["updates"]]
            values = [[r[name]["updates"][k][group] for r in runs] for k in range(len(steps))]
            # Only the updates that ran, and only groups the method learns or keeps; one colour
            # per method in every panel. No update: its model, flat across the updates.
            learns = {"old": True, "new": bool(METHODS[name].incremental), "unseen": bool(METHODS[name].unseen)}
            if not learns[group]:
                continue
            # Points only where the group has a result (none before the update that adds it).
            points = [(step, 100 * float(np.mean(v))) for step, v in zip(steps, values) if None not in v]
            if not METHODS[name].stages:
                ax.plot(all_steps, [points[0][1]] * len(all_steps), linestyle="--", color=f"C{i}",
                        label=METHODS[name].label)
                continue
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=f"C{i}",
                    label=METHODS[name].label)
        ax.set_title(f"{group} classes (test recall, mean of {len(runs)} runs)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("%")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, os.path.join(out_dir, "accuracy_per_update.png"))
    plt.close(fig)

    first = runs[0]
    # Splits order classes differently: the confusion of the first split, summed over its seeds.
    first_split = next(iter(results["runs"])).split("/")[0]
    split_runs = [r for key, r in results["runs"].items() if key.split("/")[0] == first_split]
    for name in METHODS:
        counts = np.sum([np.asarray(r[name]["confusion"]) for r in split_runs], axis=0)
        split = results["splits"][0]
        labels = list(split["old"]) + list(split["new"]) + list(split["unseen"])
        fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=110)
        ax.imshow(counts / np.maximum(counts.sum(axis=1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels, rotation=60, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{METHODS[name].label}\n(first split, seeds summed)", fontsize=9)
        fig.tight_layout()
        _save(fig, os.path.join(out_dir, f"confusion_{name}.png"))
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for name in METHODS:
        offset = 0.0
        for stage, hist in first[name]["history"].items():
            if hist:
                ax.plot([offset + h["elapsed"] for h in hist], [h["val"] for h in hist], marker=".",
                        label=f"{name} {stage}")
                offset += first[name]["stage_seconds"][stage]
    _finish_plot(plt, fig, ax, "on-device seconds (first split, first seed)", "validation score", 7,
                 os.path.join(out_dir, "validation_vs_time.png"))
