"""One writer per output (`tflite_runtime_app.lock`, shared with the device app)."""

from tflite_runtime_app.lock import exclusive, holder, lock_path

__all__ = ["exclusive", "holder", "lock_path"]
