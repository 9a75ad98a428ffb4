"""results.md (a table shaped like the paper's) and the plots of the transfer experiments."""

from __future__ import annotations

import os

from edgekt import atomic


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _sec(v) -> str:
    return "n/a" if v is None else f"{v:.1f} s"


def markdown(results: dict) -> str:
    rows = [("knowledge transfer (ours)", results), ("fine-tuning without transfer", results["baseline_finetune"]),
            ("training from scratch", results["baseline_scratch"])]
    cfg = results["config"]
    lines = [
        "# Knowledge transfer on the device",
        "",
        f"Old classes: {', '.join(cfg['old_classes'])}; new (labelled on the device): {', '.join(cfg['new_classes'])}; "
        f"unseen (no labels, cloud soft labels): {', '.join(cfg['unseen_classes']) or 'none'}.",
        f"Device data: {results['data_sizes']['new_labelled']} new labelled images, {results['data_sizes']['replay']} "
        f"replayed old-class images, {results['data_sizes']['unseen_unlabelled']} unlabelled unseen-class images; "
        f"accuracy on {results['data_sizes']['test']} test images. Training in the device app "
        f"(TFLite, batch {results['device_batch_size']}, {results['threads']} thread(s)).",
        "",
        "| method | device setting (chosen on validation) | old before | old after | new after | unseen | all after "
        "| time to converge |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows:
        lines.append(f"| {name} | {r.get('device_setting', '')} | {_pct(r['old_accuracy_before'])} | "
                     f"{_pct(r['old_accuracy_after'])} | {_pct(r['new_accuracy_after'])} | {_pct(r['unseen_accuracy'])} "
                     f"| {_pct(r['all_accuracy_after'])} | {_sec(r['time_to_converge_seconds'])} |")
    lines += ["", "After the incremental update, before unseen-category learning: ours "
              f"old {_pct(results.get('old_accuracy_after_incremental'))} / new "
              f"{_pct(results.get('new_accuracy_after_incremental'))}; fine-tuning old "
              f"{_pct(results['baseline_finetune'].get('old_accuracy_after_incremental'))} / new "
              f"{_pct(results['baseline_finetune'].get('new_accuracy_after_incremental'))}.",
              "", "Unseen-category learning (ours): converged in "
              f"{_sec(results.get('unseen_time_to_converge_seconds'))}; old classes after it "
              f"{_pct(results['old_accuracy_after'])}.", ""]
    return "\n".join(lines)


def write_report(out_dir: str, results: dict) -> None:
    """Writes results.md, accuracy_per_update.png and loss_vs_time.png."""
    atomic.write_text(os.path.join(out_dir, "results.md"), markdown(results))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = {"ours": results, "finetune": results["baseline_finetune"], "scratch": results["baseline_scratch"]}
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=110, sharey=True)
    for ax, group in zip(axes, ("old", "new", "unseen")):
        for label, r in methods.items():
            updates = r["updates"]
            ax.plot([u["update"] for u in updates], [100 * (u[group] or 0.0) for u in updates], marker="o", label=label)
        ax.set_title(f"{group} classes")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test top-1 (%)")
    axes[0].legend()
    fig.tight_layout()
    atomic.write_with(os.path.join(out_dir, "accuracy_per_update.png"), lambda t: fig.savefig(t, format="png"),
                      suffix=".png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for label, r in methods.items():
        for phase, hist in r["history"].items():
            if hist:
                ax.plot([h["elapsed"] for h in hist], [h["loss"] for h in hist], marker=".", label=f"{label} {phase}")
    ax.set_xlabel("on-device wall time (s)")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic.write_with(os.path.join(out_dir, "loss_vs_time.png"), lambda t: fig.savefig(t, format="png"),
                      suffix=".png")
    plt.close(fig)
