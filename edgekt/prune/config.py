"""Pruning-stage configuration and presets (smoke / cpu / paper)."""

from __future__ import annotations

import dataclasses
from typing import Optional

from edgekt import presets
from edgekt.prune.allocation import ALLOCATIONS
from edgekt.prune.criteria import CRITERIA, NORMALIZATIONS

TRANSFERS = ("kd_at", "kd", "at", "none")


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """How the teacher is pruned and fine-tuned.

    Policy (any combination; at least one):
      target_params_ratio: keep this fraction of the teacher's parameters (0.05 removes 95%).
      target_flops_ratio: keep this fraction of the teacher's FLOPs.
      max_accuracy_drop: the accuracy floor: a step whose fine-tuned model falls more than
        this many points below the teacher on validation is discarded and the step halves
        (back-off); with no ratio target, pruning goes on until the step falls below
        `min_step`.

    Importance: `criterion` ("attention" or "l1"), `attention_p`, per-layer `normalization`,
    `calibration_size` images; `allocation` "global" (one ranking over all groups), "cost"
    (one ranking of importance per (parameter/FLOP saved) ** `cost_exponent`, AAP's
    threshold scaled by each layer's share) or "uniform" (same fraction per group).

    Choice on validation: with `candidates` (e.g. "l1/global", "attention/cost:0.5": a
    criterion, an allocation and for "cost" its exponent), every step prunes the current model
    each way, fine-tunes each for `probe_images` images, and keeps the one with the best
    validation top-1 (the others are dropped); without, every step uses `criterion` and
    `allocation`.

    Guards against collapse: every group keeps `min_channels`, residual streams
    `stream_floor` and other groups `layer_floor` of their width in the teacher.

    Schedule (`edgekt.prune.schedule`): the first step removes what reaches the target in
    `steps` equal geometric steps (1 - `step_keep` without a target); steps stop at each
    `milestones` ratio of the teacher's parameters on the way; at most `max_steps` attempts.
    Each step gets `step_epochs` of fine-tuning; the chosen model then gets `final_epochs`.
    With `budget_seconds`, no step starts that would (by the last step's time) leave too little
    of the budget for it and the final fine-tuning (estimated from the steps' times).
    Fine-tuning uses `transfer` from the unpruned teacher ("kd_at": KD on logits +
    attention transfer, "kd", "at", or "none": labels only).

    Learning rate: with `learning_rate_choices`, before the first step the unpruned teacher is
    fine-tuned for `probe_images` images at each rate, and the largest rate that keeps its
    validation top-1 within `max_accuracy_drop` (1 point without a floor) of the teacher's is
    used for every step and the final fine-tuning (the best one if none does); a model trained
    with another optimiser (Adam, a small rate) can be destroyed by the presets' 0.05.
    """

    target_params_ratio: Optional[float] = 0.05
    target_flops_ratio: Optional[float] = None
    max_accuracy_drop: Optional[float] = None
    criterion: str = "attention"
    attention_p: float = 1.0
    normalization: str = "mean"
    allocation: str = "global"
    cost_exponent: float = 1.0
    candidates: tuple = ("l1/global", "l1/uniform", "attention/cost:0.5", "attention/cost:1",
                         "attention/cost:0.5@0.3,0.1")
    probe_images: int = 8192
    min_channels: int = 2
    stream_floor: float = 0.15
    layer_floor: float = 0.1
    calibration_size: int = 1024
    steps: int = 4
    step_keep: float = 0.6
    max_steps: int = 10
    min_step: float = 0.05
    milestones: tuple = ()
    step_epochs: int = 2
    final_epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 0.05
    final_learning_rate: float = 0.05
    learning_rate_choices: tuple = ()
    weight_decay: float = 5e-4
    transfer: str = "kd_at"
    kd_temperature: float = 4.0
    kd_weight: float = 0.9
    at_weight: float = 500.0
    train_size: Optional[int] = None
    precision: str = "float32"
    seed: int = 0
    budget_seconds: Optional[float] = None

    def __post_init__(self):
        checks = [
            (self.budget_seconds is None or self.budget_seconds > 0, "budget_seconds", "None or > 0"),
            (self.target_params_ratio is None or 0 < self.target_params_ratio <= 1, "target_params_ratio", "in (0, 1]"),
            (self.target_flops_ratio is None or 0 < self.target_flops_ratio <= 1, "target_flops_ratio", "in (0, 1]"),
            (self.max_accuracy_drop is None or self.max_accuracy_drop >= 0, "max_accuracy_drop", ">= 0 (points)"),
            (self.target_params_ratio is not None or self.target_flops_ratio is not None
             or self.max_accuracy_drop is not None, "target_params_ratio",
             "set when target_flops_ratio and max_accuracy_drop are not (no pruning policy is given)",
             "pass --target_params_ratio in (0, 1], --target_flops_ratio or --max_accuracy_drop"),
            (self.criterion in CRITERIA, "criterion", f"one of {CRITERIA}"),
            (self.attention_p > 0, "attention_p", "> 0"),
            (self.normalization in NORMALIZATIONS, "normalization", f"one of {NORMALIZATIONS}"),
            (self.allocation in ALLOCATIONS, "allocation", f"one of {ALLOCATIONS}"),
            (all(_valid_candidate(c) for c in self.candidates), "candidates",
             f"names {_CANDIDATE_FORM} with a criterion in {CRITERIA} and an allocation in {ALLOCATIONS}"),
            (self.probe_images >= 1, "probe_images", ">= 1"),
            (self.cost_exponent >= 0, "cost_exponent", ">= 0"),
            (self.min_channels >= 1, "min_channels", ">= 1"),
            (0 <= self.stream_floor < 1, "stream_floor", "in [0, 1)"),
            (0 <= self.layer_floor < 1, "layer_floor", "in [0, 1)"),
            (0 < self.min_step < 1, "min_step", "in (0, 1)"),
            (all(0 < m < 1 for m in self.milestones), "milestones", "ratios in (0, 1)"),
            (self.calibration_size >= 1, "calibration_size", ">= 1"),
            (self.steps >= 1, "steps", ">= 1"),
            (0 < self.step_keep < 1, "step_keep", "in (0, 1)"),
            (self.max_steps >= 1, "max_steps", ">= 1"),
            (self.step_epochs >= 0, "step_epochs", ">= 0"),
            (self.final_epochs >= 0, "final_epochs", ">= 0"),
            (self.batch_size >= 1, "batch_size", ">= 1"),
            (self.learning_rate > 0 and self.final_learning_rate > 0, "learning_rate", "> 0"),
            (all(isinstance(r, (int, float)) and r > 0 for r in self.learning_rate_choices), "learning_rate_choices",
             "rates > 0"),
            (self.transfer in TRANSFERS, "transfer", f"one of {TRANSFERS}"),
            (self.kd_temperature > 0, "kd_temperature", "> 0"),
            (self.train_size is None or self.train_size >= self.batch_size, "train_size",
             f">= batch_size ({self.batch_size})", "pass a smaller --batch_size or a larger --train_size"),
        ]
        presets.check_fields(self, checks)


_CANDIDATE_FORM = "'criterion/allocation[:exponent][@stream_floor,layer_floor]'"


def parse_candidate(name: str) -> tuple[str, str, float, tuple[float, float] | None]:
    """"attention/cost:0.5@0.3,0.1" -> ("attention", "cost", 0.5, (0.3, 0.1)); the exponent
    defaults to 1 and the floors (fractions of the teacher's widths) to the config's.

    Raises:
      ValueError: not of that form.
    """
    try:
        way, _, floor_text = name.partition("@")
        criterion, rest = way.split("/")
        allocation, _, exponent = rest.partition(":")
        value = float(exponent) if exponent else 1.0
        floors = tuple(float(f) for f in floor_text.split(",")) if floor_text else None
    except ValueError:
        raise ValueError(f"a candidate is {_CANDIDATE_FORM}. Received: {name!r}") from None
    if (criterion not in CRITERIA or allocation not in ALLOCATIONS or value < 0 or (exponent and allocation != "cost")
            or (floors is not None and (len(floors) != 2 or not all(0 <= f < 1 for f in floors)))):
        raise ValueError(f"a candidate is {_CANDIDATE_FORM} with a criterion in {CRITERIA}, an allocation in "
                         f"{ALLOCATIONS}, an exponent only for cost and floors in [0, 1). Received: {name!r}")
    return criterion, allocation, value, floors


def _valid_candidate(name) -> bool:
    try:
        parse_candidate(name)
    except (ValueError, AttributeError):
        return False
    return True


PRESETS: dict[str, PruneConfig] = {
    # Minutes on a 2-core CPU: two short steps on a 5k-image subset.
    "smoke": PruneConfig(target_params_ratio=0.3, steps=2, step_epochs=1, final_epochs=1, calibration_size=256,
                         batch_size=64, train_size=5000, candidates=("l1/global", "attention/cost:0.5"),
                         probe_images=1024),
    # A WRN-16-2 teacher to 5% of its parameters on a 2-core CPU in about half an hour.
    "cpu": PruneConfig(target_params_ratio=0.05, steps=4, step_epochs=2, final_epochs=12, calibration_size=1024,
                       precision="mixed_bfloat16"),
    # The paper's setting: WRN-28-10 to 0.64% of its parameters (99.36% removed), on a GPU.
    "paper": PruneConfig(target_params_ratio=0.0064, steps=8, step_epochs=10, final_epochs=100, calibration_size=2048,
                         learning_rate=0.05, final_learning_rate=0.1, precision="mixed_bfloat16"),
}


def preset(name: str, **overrides) -> PruneConfig:
    """A preset with some fields replaced (None values of ratio fields clear them)."""
    return presets.choose(PRESETS, name, overrides)
