"""Knowledge transfer: distillation losses and the student-teacher training model."""

from edgekt.transfer.distiller import Distiller, TransferConfig, matching_feature_layers
from edgekt.transfer.losses import attention_transfer_loss, cross_entropy, kd_loss, soft_target_loss

__all__ = ["Distiller", "TransferConfig", "attention_transfer_loss", "cross_entropy", "kd_loss",
           "matching_feature_layers", "soft_target_loss"]
