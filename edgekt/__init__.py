"""edgekt: filter pruning, knowledge transfer and on-device-trainable TFLite export."""

__version__ = "0.1.0"
