"""Model builders: pre-activation Wide ResNets from an explicit width spec."""

from edgekt.models.wide_resnet import (CIFAR10_MEAN, CIFAR10_STD, BlockSpec, WRNSpec, build_wrn, spec_from_model, wrn,
                               wrn_spec)

__all__ = ["BlockSpec", "CIFAR10_MEAN", "CIFAR10_STD", "WRNSpec", "build_wrn", "spec_from_model", "wrn", "wrn_spec"]
