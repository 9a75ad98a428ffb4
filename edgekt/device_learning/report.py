"""results.md and the plots of the on-device learning benchmark."""

from __future__ import annotations

import os

import numpy as np

from edgekt import atomic
from edgekt.device_learning.methods import METHODS

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


def losses_of_ours(results: dict) -> list[str]:
    """Plain sentences for every metric on which a method the device could run beats ours."""
    ours = results["methods"]["ours"]
    out = []
    for name, method in METHODS.items():
        m = results["methods"][name]
        if name == "ours" or method.bound:
            continue
        for key, label in COLUMNS:
            if m[key] is not None and ours[key] is not None and m[key] > ours[key]:
                out.append(f"- {m['label']} beats ours on {label}: {_pct(m[key])} vs {_pct(ours[key])}.")
        if m["total_device_seconds"] and ours["total_device_seconds"] > m["total_device_seconds"]:
            out.append(f"- {m['label']} takes less device time: {_sec(m['total_device_seconds'])} vs "
                       f"{_sec(ours['total_device_seconds'])}.")
    bound = results["methods"]["true_label_bound"]
    if bound["unseen_recall"] is not None and ours["unseen_recall"] is not None:
        out.append(f"- Against the true-label reference on unseen classes: ours {_pct(ours['unseen_recall'])}, reference "
                   f"{_pct(bound['unseen_recall'])}.")
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
        "## Where ours loses",
        "",
        *losses_of_ours(results),
        "",
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
    if results.get("never_seen"):
        lines += ["## Never-seen transfer (the seed paper's setting)", "",
                  "A student distilled from the cloud model on device-pool images of the training classes only, "
                  "no labels; 10-way recall on the classes of which it saw no image, measured in the device app.",
                  "", "| training classes | student | loss | never-seen recall | recall on the paper's test classes "
                  "| seen recall |", "| --- | --- | --- | ---: | ---: | ---: |"]
        for split, by_student in results["never_seen_details"].items():
            for student, by_loss in by_student.items():
                for loss, rec in by_loss.items():
                    lines.append(f"| {', '.join(rec['train_classes'])} | {student} | {loss} | "
                                 f"{_pct(rec['never_seen_recall'])} | {_pct(rec.get('paper_test_recall'))} "
                                 f"({', '.join(rec.get('paper_test_classes', []))}) | {_pct(rec['seen_recall'])} |")
        lines.append("")
    lines += ["## At ours' setting (one starting model for the unseen update)", "",
              "Every method's final figures at the (trainable, lr) that ours chose in each run; means over runs.", "",
              "| method | old | new | unseen | unseen precision | 10-way acc. |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in METHODS:
        m = results["methods"][name].get("at_ours_setting")
        if m:
            lines.append(f"| {METHODS[name].label} | {_pct(m['old'])} | {_pct(m['new'])} | {_pct(m['unseen'])} | "
                         f"{_pct(m['unseen_precision'])} | {_pct(m['accuracy'])} |")
    lines += ["", "## Lineage", "", "| model | images of | labels of |", "| --- | --- | --- |"]
    for model, lin in results["lineage"].items():
        lines.append(f"| {model} | {', '.join(lin['images_of']) or 'none'} | {', '.join(lin['labels_of']) or 'none'} |")
    lines += ["", "After its updates a device model has also received: new-class images with labels; unseen-class "
              "images with the cloud's soft labels (ours), the cloud's top-1 (pseudo-labels) or true labels (bound).",
              "", "## Rules", ""]
    lines += [f"- {k}: {v}" for k, v in results["rules"].items()]
    lines += ["", f"Device settings: grid trainable {list(cfg['trainable_choices'])} x lr {list(cfg['lr_choices'])}, "
              f"chosen per method and run on device validation; fixed: batch {cfg['device_batch_size']}, at most "
              f"{cfg['device_epochs']} epochs, patience {cfg['patience']}, replay ratio {cfg['replay_ratio']}, label "
              f"mix {cfg['label_mix']}, temperature {cfg['temperature']}, {cfg['threads']} thread(s).", "",
              "| method | settings chosen (runs) | updates that returned their start model | on-device time of the "
              "whole grid | device CPU time (chosen) |", "| --- | --- | ---: | ---: | ---: |"]
    for name in METHODS:
        m = results["methods"][name]
        chosen = ", ".join(f"{tag} ({n})" for tag, n in m["settings_chosen"].items() if tag) or "none (no update)"
        lines.append(f"| {m['label']} | {chosen} | {m['returned_start']} (in {m['runs']} runs) | "
                     f"{_sec(m['selection_device_seconds'])} | {_sec(m.get('device_cpu_seconds'))} |")
    lines.append("")
    return "\n".join(lines)


def _save(fig, path: str) -> None:
    atomic.write_with(path, lambda t: fig.savefig(t, format="png"), suffix=".png")


def write(out_dir: str, results: dict) -> None:
    """Writes results.md, accuracy_per_update.png, confusion_<method>.png, validation_vs_time.png."""
    atomic.write_text(os.path.join(out_dir, "results.md"), markdown(results))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(results["runs"].values())
    if not runs:
        return
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=110, sharey=True)
    for ax, group in zip(axes, ("old", "new", "unseen")):
        for name in METHODS:
            steps = [u["after"] for u in runs[0][name]["updates"]]
            values = [[r[name]["updates"][i][group] for r in runs] for i in range(len(steps))]
            # Only the updates that ran, and only groups the method learns or keeps.
            learns = {"old": True, "new": bool(METHODS[name].incremental), "unseen": bool(METHODS[name].unseen)}
            if not learns[group]:
                continue
            ax.plot(steps, [100 * float(np.mean(v)) for v in values], marker="o", label=METHODS[name].label)
        ax.set_title(f"{group} classes (test recall)")
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
    ax.set_xlabel("on-device seconds (first split, first seed)")
    ax.set_ylabel("validation score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, os.path.join(out_dir, "validation_vs_time.png"))
    plt.close(fig)
