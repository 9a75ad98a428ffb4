"""The pruning stage's per-step log (JSON + CSV) and its plot of accuracy against parameters."""

from __future__ import annotations

import os

from edgekt import atomic

LOG_COLUMNS = ("step", "params", "params_ratio", "flops", "flops_ratio", "val_accuracy", "val_loss", "seconds",
               "target_params", "target_flops")


def write_log(out_dir: str, log: list[dict], criterion: str) -> None:
    """Writes `prune_log.json` (one entry per step, step 0 = teacher) and `prune_log.csv`."""
    atomic.write_json(os.path.join(out_dir, "prune_log.json"), {"criterion": criterion, "steps": log})
    atomic.write_csv(os.path.join(out_dir, "prune_log.csv"), log, LOG_COLUMNS)


def write_plot(out_dir: str, log: list[dict], criterion: str, final_point: tuple[int, float] | None = None,
               others: dict[str, list[dict]] | None = None) -> str:
    """Plots validation accuracy against parameters kept (log scale) to `prune_plot.png`.

    Args:
      out_dir: output folder.
      log: this run's per-step entries.
      criterion: label of this run's curve.
      final_point: (params, val accuracy) of the final fine-tuned model.
      others: more runs to draw (label -> log), e.g. a baseline criterion.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, entries in {criterion: log, **(others or {})}.items():
        ax.plot([e["params"] for e in entries], [100 * e["val_accuracy"] for e in entries], marker="o", label=label)
    if final_point is not None:
        ax.scatter([final_point[0]], [100 * final_point[1]], marker="*", s=160, color="black", zorder=5,
                   label="final (after fine-tuning)")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("parameters kept")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title("Accuracy while pruning")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, "prune_plot.png")
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
    plt.close(fig)
    return path
