"""Structured filter pruning: dependency groups, importance criteria, surgery, schedules."""

from edgekt.prune.graph import DependencyGraph, Group, UnsupportedModelError, build_graph
from edgekt.prune.surgery import prune_model

__all__ = ["DependencyGraph", "Group", "UnsupportedModelError", "build_graph", "prune_model"]
