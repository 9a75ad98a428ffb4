"""Cloud-stage training: configuration presets, optimizer, checkpoints, distribution."""

from edgekt.train.cloud import train_and_evaluate
from edgekt.train.config import PRESETS, CloudTrainConfig, preset

__all__ = ["CloudTrainConfig", "PRESETS", "preset", "train_and_evaluate"]
