"""Outputs that match their inputs: a stage run again into a used folder leaves no file of the
earlier run beside its own."""

from __future__ import annotations

import json
import os


def test_a_reexport_without_data_removes_the_earlier_int8_model_and_replay(pipeline_inputs, tmp_path):
    """Before: a float16 re-export (no --data) kept the earlier export's model_int8.tflite and
    replay.npz, which belong to another model."""
    from edgekt.export.pipeline import export_model

    out = str(tmp_path / "export")
    first = export_model(pipeline_inputs["teacher"], out, data_source=pipeline_inputs["tree"], batch_size=8,
                         replay_per_class=2)
    assert first["inference_quantization"] == "int8"
    assert {"model_int8.tflite", "replay.npz"} <= set(os.listdir(out))
    second = export_model(pipeline_inputs["teacher"], out, batch_size=8)
    assert second["inference_quantization"] == "float16"
    assert sorted(os.listdir(out)) == ["metrics.json", "model_float16.tflite", "model_meta.json",
                                       "model_trainable.tflite"]
    with open(os.path.join(out, "model_meta.json")) as f:
        assert json.load(f)["inference_model"] == "model_float16.tflite"
