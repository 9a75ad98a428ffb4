"""The pruning policy as pure functions: how much each step removes, when to back off, when
to stop.

The policy is the adaptive one of attention-based pruning (AAP): each step removes a fraction
`step` of what is left (of the parameters, and of the FLOPs when that is the target), never
past the target nor past the next milestone (the budgets a sweep keeps). After the step's
fine-tuning, a model below the accuracy floor is discarded and `step` halves (back-off); the
run stops when the targets are met, when `step` falls below `min_step`, or after `max_steps`
attempts.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence


def geometric_ratios(final_ratio: float, steps: int) -> list[float]:
    """Kept-fraction targets for `steps` steps that shrink by the same factor each step and
    end at `final_ratio` (e.g. 0.05 in 4 steps: 0.473, 0.224, 0.106, 0.05).

    Raises:
      ValueError: final_ratio not in (0, 1] or steps < 1.
    """
    if not 0 < final_ratio <= 1:
        raise ValueError(f"final_ratio must be in (0, 1]. Received: {final_ratio}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1. Received: {steps}")
    return [final_ratio ** ((i + 1) / steps) for i in range(steps)]


def initial_step(*, target_params_ratio: float | None, target_flops_ratio: float | None, steps: int,
                 step_keep: float) -> float:
    """The fraction the first step removes: with a target, the one that reaches it in `steps`
    equal geometric steps (the smaller ratio decides); without, 1 - `step_keep`."""
    ratios = [r for r in (target_params_ratio, target_flops_ratio) if r is not None]
    if not ratios:
        if not 0 < step_keep < 1:
            raise ValueError(f"step_keep must be in (0, 1). Received: {step_keep}")
        return 1.0 - step_keep
    return 1.0 - geometric_ratios(min(ratios), steps)[0]


@dataclasses.dataclass(frozen=True)
class PolicyState:
    """Where the policy stands.

    Attributes:
      params, flops: the current (last accepted) model's counts.
      step: the fraction of what is left the next step removes.
      attempts: steps tried so far, accepted or not.
      stopped: why the run stopped ("" while it goes on).
    """

    params: int
    flops: int
    step: float
    attempts: int = 0
    stopped: str = ""


def targets_met(state: PolicyState, max_params: Optional[int], max_flops: Optional[int]) -> bool:
    """Both targets met (False when neither is set: only the floor bounds the run)."""
    if max_params is None and max_flops is None:
        return False
    return (max_params is None or state.params <= max_params) and (max_flops is None or state.flops <= max_flops)


def next_budget(state: PolicyState, *, max_params: Optional[int], max_flops: Optional[int],
                milestones: Sequence[int] = (), max_steps: int = 10
                ) -> Optional[tuple[Optional[int], Optional[int]]]:
    """The next step's (max params, max FLOPs), or None when the run is over.

    Each bound removes `state.step` of what is left, but not past its target; a parameter
    milestone between the current count and the proposal stops the step there.
    """
    if state.stopped or targets_met(state, max_params, max_flops) or state.attempts >= max_steps:
        return None
    keep = 1.0 - state.step
    params = flops = None
    if max_params is not None or max_flops is None:  # a parameter target, or only the floor: step on params
        params = int(math.floor(state.params * keep))
        if max_params is not None:
            params = max(params, max_params)
    if max_flops is not None:
        flops = max(int(math.floor(state.flops * keep)), max_flops)
    below = [m for m in milestones if m < state.params]
    if below:
        params = max(params or 0, max(below))
    return params, flops


def removed_fraction(state: PolicyState, budget: tuple[Optional[int], Optional[int]]) -> float:
    """The fraction of what is left that a budget from `next_budget` removes (a proposal cut
    back to a target or milestone removes less than `state.step`)."""
    params, flops = budget
    if params is not None:
        return 1.0 - params / state.params
    return 1.0 - flops / state.flops


def after_step(state: PolicyState, *, params: int, flops: int, accuracy: float, floor: Optional[float],
               min_step: float, removed: Optional[float] = None) -> tuple[PolicyState, bool]:
    """The state after a step's fine-tuned model was measured, and whether it is accepted.

    A model at or above the floor is accepted and becomes the current one. One below it is
    discarded and the step becomes half of what this step removed (`removed`, default
    `state.step`), so a retry always removes less; below `min_step` the run stops.
    """
    attempts = state.attempts + 1
    if floor is None or accuracy >= floor:
        return dataclasses.replace(state, params=params, flops=flops, attempts=attempts), True
    step = min(state.step, removed if removed is not None else state.step) / 2.0
    stopped = (f"the accuracy floor broke and the step would fall to {step:.4f} (< min_step {min_step})"
               if step < min_step else "")
    return dataclasses.replace(state, step=step, attempts=attempts, stopped=stopped), False
