"""Iterative pruning schedules: how much of the model is left after each step (pure)."""

from __future__ import annotations


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


def constant_rate_ratios(step_keep: float, max_steps: int) -> list[float]:
    """Kept-fraction targets when each step keeps `step_keep` of what is left (used when only an
    accuracy floor bounds pruning): step_keep, step_keep^2, ...

    Raises:
      ValueError: step_keep not in (0, 1) or max_steps < 1.
    """
    if not 0 < step_keep < 1:
        raise ValueError(f"step_keep must be in (0, 1). Received: {step_keep}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1. Received: {max_steps}")
    return [step_keep ** (i + 1) for i in range(max_steps)]


def step_targets(teacher_params: int, teacher_flops: int, *, target_params_ratio: float | None,
                 target_flops_ratio: float | None, steps: int, step_keep: float, max_steps: int
                 ) -> list[tuple[int | None, int | None]]:
    """(max params, max FLOPs) per step for the given policy.

    With a parameter and/or FLOPs target, `steps` geometric steps reach it; with neither
    (accuracy floor only), each step keeps `step_keep` of the remaining parameters, for at
    most `max_steps` steps.
    """
    if target_params_ratio is None and target_flops_ratio is None:
        return [(int(teacher_params * r), None) for r in constant_rate_ratios(step_keep, max_steps)]
    p = geometric_ratios(target_params_ratio, steps) if target_params_ratio is not None else [None] * steps
    f = geometric_ratios(target_flops_ratio, steps) if target_flops_ratio is not None else [None] * steps
    return [(int(teacher_params * pr) if pr is not None else None, int(teacher_flops * fr) if fr is not None else None)
            for pr, fr in zip(p, f)]
