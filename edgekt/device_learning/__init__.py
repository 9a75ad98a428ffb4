"""The on-device learning benchmark: device models that never saw the classes they learn.

pools (what each model may read, and lineage), device_model (built from old classes only),
methods (what each method trains on), device_runs (the device app, one split and seed),
never_seen (the seed paper's transfer to never-seen classes), protocol (end to end), report.
"""

from edgekt.device_learning.config import PRESETS, ClassSplit, DeviceLearningConfig, NeverSeenSplit, preset
from edgekt.device_learning.methods import METHODS
from edgekt.device_learning.pools import LineageError, Pools
from edgekt.device_learning.protocol import run

__all__ = ["ClassSplit", "DeviceLearningConfig", "LineageError", "METHODS", "NeverSeenSplit", "PRESETS", "Pools",
           "preset", "run"]
