"""Which channels to remove to meet a parameter/FLOPs budget, given importance scores.

`CostModel` counts a model's parameters and FLOPs (same conventions as `edgekt.flops`) as a
function of each group's channel count, without building the model, so the budget search
can try many candidate widths. `select_channels` then removes the least important channels,
either globally (one ranking over all groups) or uniformly (the same fraction per group),
until the budget is met. "cost" ranks globally by importance per unit of the budgeted
resource: a channel's score divided by what removing it saves (its parameters under a
parameter budget, its FLOPs under a FLOPs budget, the sum of both shares under both), so a
wide late-stage channel that holds many parameters goes before a cheap early one of equal
importance.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

import numpy as np

from edgekt.models import layers
from edgekt.prune.graph import DependencyGraph

ALLOCATIONS = ("global", "cost", "uniform")


@dataclasses.dataclass(frozen=True)
class _LayerTerm:
    in_gid: int | None
    per: int
    out_gid: int
    cost: Callable | None        # the layer table's formula; None: per-channel parameters
    geometry: layers.Geometry | None
    per_channel: int = 0         # parameters per channel (BN gamma+beta: 2)


class CostModel:
    """Parameters and FLOPs of a graph's model for any per-group channel counts, by the layer
    table's cost formulas (the ones `edgekt.flops` counts built models with)."""

    def __init__(self, graph: DependencyGraph):
        self.graph = graph
        self.base = np.array([g.channels for g in graph.groups], dtype=np.int64)
        self.terms: list[_LayerTerm] = []
        for name in graph.order:
            layer = graph.model.get_layer(name)
            kind = layers.LAYERS[graph.layer_class[name]]
            out_gid = graph.output_group[name][0]
            in_gid, per = graph.input_group.get(name, (None, 1))
            if kind.cost is not None:
                self.terms.append(_LayerTerm(in_gid, per, out_gid, kind.cost, layers.geometry(layer)))
                continue
            learnable = sum(int(np.prod(v.shape)) for v in layer.weights if v.trainable)
            if learnable:
                self.terms.append(_LayerTerm(None, 1, out_gid, None, None, learnable // max(int(self.base[out_gid]), 1)))

    def channel_costs(self, channels: Mapping[int, int]) -> dict[int, tuple[int, int]]:
        """For each group in `channels` (group id -> its current width; other groups unpruned),
        the (params, flops) saved by removing one of its channels."""
        c = {gid: int(n) for gid, n in enumerate(self.base)}
        c.update(channels)
        p0, f0 = self.count(c)
        out = {}
        for gid in channels:
            p1, f1 = self.count({**c, gid: max(c[gid] - 1, 0)})
            out[gid] = (p0 - p1, f0 - f1)
        return out

    def count(self, channels: np.ndarray | Mapping[int, int] | None = None) -> tuple[int, int]:
        """(params, flops) with group i at `channels[i]` channels (default: unpruned)."""
        if channels is None:
            c = self.base
        elif isinstance(channels, Mapping):
            c = self.base.copy()
            for gid, n in channels.items():
                c[gid] = n
        else:
            c = np.asarray(channels, dtype=np.int64)
        params = flops = 0
        for t in self.terms:
            cout = int(c[t.out_gid])
            if t.cost is None:
                params += t.per_channel * cout
                continue
            cin = int(c[t.in_gid]) * t.per if t.in_gid is not None else 0
            p, f = t.cost(t.geometry, cin, cout)
            params += p
            flops += f
        return params, flops


def _keep_from_removed(scores: Mapping[int, np.ndarray], removed: Mapping[int, int]) -> dict[int, np.ndarray]:
    keep = {}
    for gid, s in scores.items():
        order = np.argsort(s, kind="stable")  # ascending: least important first
        keep[gid] = np.sort(order[removed.get(gid, 0):])
    return keep


def is_stream(graph: DependencyGraph, group) -> bool:
    """Whether a group is a residual stream (its channels pass through a merge such as Add)."""
    return any(graph.layer_class[n] in layers.MERGES for n in group.tensors)


def channel_floors(graph: DependencyGraph, original: Mapping[str, int], *, stream_floor: float = 0.0,
                   layer_floor: float = 0.0) -> dict[int, int]:
    """Per prunable group, the fewest channels it may keep: a fraction of its original width
    (`stream_floor` for residual streams, `layer_floor` for the others), rounded up.

    Args:
      graph: the current model's graph.
      original: group name -> width in the unpruned model (groups are named by their first
        producer, which surgery keeps); a group missing there counts from its current width.
      stream_floor, layer_floor: fractions in [0, 1).
    """
    for name, value in (("stream_floor", stream_floor), ("layer_floor", layer_floor)):
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1). Received: {value}")
    out = {}
    for g in graph.prunable_groups():
        fraction = stream_floor if is_stream(graph, g) else layer_floor
        out[g.id] = int(math.ceil(fraction * original.get(g.name, g.channels)))
    return out


def select_channels(graph: DependencyGraph, scores: Mapping[int, np.ndarray], *,
                    max_params: int | None = None, max_flops: int | None = None, min_channels: int = 1,
                    floors: Mapping[int, int] | None = None, allocation: str = "global",
                    cost: CostModel | None = None, cost_exponent: float = 1.0) -> dict[int, np.ndarray]:
    """Chooses the channels to keep so that params <= max_params and flops <= max_flops.

    Removes as few channels as possible: with "global" allocation, the k lowest-scored
    channels over all groups (k found by bisection); with "cost", the k channels of lowest
    score per unit of saved budget; with "uniform", the same fraction of every group. No
    group goes below `min_channels` (or its current size, if smaller).

    Args:
      graph: the model's graph.
      scores: group id -> per-channel importance (higher = keep), for the groups that may
        be pruned.
      max_params, max_flops: the budget (None: no limit on that measure).
      min_channels: floor of every group.
      floors: group id -> a higher floor for that group (see `channel_floors`).
      allocation: "global", "cost" or "uniform".
      cost: a `CostModel` of `graph`, if already built.
      cost_exponent: with "cost", scores are divided by (relative saving) ** cost_exponent
        (1: importance per unit saved; 0: the same as "global").

    Returns:
      group id -> sorted kept channel indices.

    Raises:
      ValueError: the budget cannot be met even at the floor, or bad arguments.
    """
    if allocation not in ALLOCATIONS:
        raise ValueError(f"unknown allocation; expected one of {ALLOCATIONS}. Received: {allocation!r}")
    if min_channels < 1:
        raise ValueError(f"min_channels must be >= 1. Received: {min_channels}")
    if cost_exponent < 0:
        raise ValueError(f"cost_exponent must be >= 0. Received: {cost_exponent}")
    cost = cost or CostModel(graph)
    sizes = {gid: len(s) for gid, s in scores.items()}
    floors = {gid: min(max(min_channels, (floors or {}).get(gid, 0)), n) for gid, n in sizes.items()}

    def fits(removed: Mapping[int, int]) -> bool:
        p, f = cost.count({gid: sizes[gid] - r for gid, r in removed.items()})
        return (max_params is None or p <= max_params) and (max_flops is None or f <= max_flops)

    if allocation in ("global", "cost"):
        weight = {gid: 1.0 for gid in scores}
        if allocation == "cost":
            weight = {gid: w ** cost_exponent for gid, w in _cost_weights(cost, sizes, max_params, max_flops).items()}
        # One ranking over all channels; removal order respects each group's floor.
        entries = sorted(((float(s[i]) / weight[gid], gid, rank) for gid, s in scores.items()
                          for rank, i in enumerate(np.argsort(s, kind="stable"))
                          if rank < sizes[gid] - floors[gid]), key=lambda e: (e[0], e[1], e[2]))

        def removed_after(k: int) -> dict[int, int]:
            counts: dict[int, int] = {}
            for _, gid, _ in entries[:k]:
                counts[gid] = counts.get(gid, 0) + 1
            return counts

        lo, hi = 0, len(entries)
        if not fits(removed_after(hi)):
            raise ValueError(_unreachable(cost, sizes, floors, max_params, max_flops))
        while lo < hi:
            mid = (lo + hi) // 2
            if fits(removed_after(mid)):
                hi = mid
            else:
                lo = mid + 1
        return _keep_from_removed(scores, removed_after(lo))

    def removed_at(fraction: float) -> dict[int, int]:
        return {gid: min(int(round(fraction * n)), n - floors[gid]) for gid, n in sizes.items()}

    if not fits(removed_at(1.0)):
        raise ValueError(_unreachable(cost, sizes, floors, max_params, max_flops))
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if fits(removed_at(mid)):
            hi = mid
        else:
            lo = mid
    return _keep_from_removed(scores, removed_at(hi))


def _cost_weights(cost: CostModel, sizes: Mapping[int, int], max_params: int | None,
                  max_flops: int | None) -> dict[int, float]:
    """Per group, what removing one of its channels saves of the budgeted resources, each
    resource relative to its average over the groups (so scores keep their scale)."""
    per_channel = cost.channel_costs(dict(sizes))
    gids = list(sizes)
    saved = np.array([per_channel[gid] for gid in gids], dtype=np.float64)  # [groups, (params, flops)]
    share = np.zeros(len(gids))
    for column, budgeted in ((0, max_params is not None), (1, max_flops is not None)):
        if budgeted and saved[:, column].mean() > 0:
            share += saved[:, column] / saved[:, column].mean()
    return {gid: max(float(v), 1e-12) for gid, v in zip(gids, share)}


def _unreachable(cost, sizes, floors, max_params, max_flops) -> str:
    p, f = cost.count(dict(floors))
    return (f"budget params<={max_params}, flops<={max_flops} cannot be met: with every group at its floor "
            f"({min(floors.values()) if floors else 0}+ channels) the model still has {p:,} params and {f:,} FLOPs; "
            "lower the floors (min_channels, stream_floor, layer_floor) or raise the budget")
