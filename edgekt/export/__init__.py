"""Export to TFLite with on-device training signatures that need only builtin ops."""

from edgekt.export.convert import convert_inference, convert_trainer, export
from edgekt.export.device_trainer import DeviceTrainer, TrainerOptions, UnsupportedOnDeviceError
from edgekt.export.op_check import NonBuiltinOpsError, check_builtin_only, list_ops

__all__ = ["DeviceTrainer", "NonBuiltinOpsError", "TrainerOptions", "UnsupportedOnDeviceError", "check_builtin_only",
           "convert_inference", "convert_trainer", "export", "list_ops"]
