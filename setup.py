"""edgekt: filter pruning, knowledge transfer and on-device-trainable TFLite export."""

from setuptools import find_packages, setup

# TensorFlow is pinned to the release whose TFLite converter and op set the on-device
# training export was validated against; Keras 3 to the matching minor series.
TENSORFLOW = [
    "tensorflow-cpu==2.21.*; platform_system == 'Linux' and platform_machine == 'x86_64'",
    "tensorflow==2.21.*; platform_system != 'Linux' or platform_machine != 'x86_64'",
]

setup(
    name="edgekt",
    version="0.1.0",
    description="Compress cloud image classifiers by filter pruning, transfer their knowledge, and export "
                "TFLite models that keep training on edge devices without TensorFlow.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["edgekt", "edgekt.*", "pipelines", "tflite_runtime_app"]),
    install_requires=TENSORFLOW + [
        "keras>=3.15,<3.16",
        "numpy>=1.26,<3",
        "absl-py>=1.4",
        "pillow>=10",
        "matplotlib>=3.8",
        "tensorflow-datasets>=4.9",
        "importlib_resources",  # tensorflow-datasets imports it without declaring it on Python 3.11
    ],
    extras_require={
        # Interpreter for the on-device app and the parity tests (numpy 2 compatible).
        "device": ["ai-edge-litert==2.3.*"],
        # Train the cloud stage under the JAX backend (KERAS_BACKEND=jax).
        "jax": ["jax[cpu]>=0.4.30"],
        # The magnitude-pruning baseline (tfmot works on tf_keras models only).
        "baseline": ["tf_keras==2.21.*", "tensorflow-model-optimization==0.8.*"],
        # Everything the tests and the README's main job need.
        "test": ["pytest>=8", "ai-edge-litert==2.3.*", "jax[cpu]>=0.4.30", "tf_keras==2.21.*",
                 "tensorflow-model-optimization==0.8.*"],
    },
)
