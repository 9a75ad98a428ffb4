"""The device app: incremental and unseen-category learning on a board with tflite-runtime.

Imports only numpy, Pillow and `ai_edge_litert` / `tflite_runtime`; never TensorFlow.
Run `python -m tflite_runtime_app --help`.
"""
