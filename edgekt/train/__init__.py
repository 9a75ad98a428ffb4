"""Cloud-stage training: configuration presets, optimizer, checkpoints, distribution."""

from edgekt.train.cloud import prepare_data, train_and_evaluate
from edgekt.train.config import PRESETS, CloudTrainConfig, preset

__all__ = ["CloudTrainConfig", "PRESETS", "prepare_data", "preset", "train_and_evaluate"]
