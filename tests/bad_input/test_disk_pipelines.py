"""A disk that fills up while a pipeline binary writes: one line, exit 2, the files saved before
are unchanged and no temporary file is left (files above the limit cannot be written, as on a
full disk); what an interrupted or refused export leaves behind is cleaned."""

from __future__ import annotations

import json
import os

import pytest

from harness import assert_user_error, run_pipelines, snapshot


def test_export_on_a_full_disk_keeps_what_was_saved(pipeline_inputs, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "model_meta.json").write_text(json.dumps({"saved": "earlier"}))
    before = snapshot(out)
    # 64 KiB: the export's first large write (TensorFlow's temporary SavedModel) fails, as it
    # would on a full disk, and TensorFlow reports it as an op error, not an OSError.
    result, = run_pipelines("pipelines.export_tflite",
                            [[f"--model={pipeline_inputs['teacher']}", f"--out_dir={out}", "--quantization=float16"]],
                            file_size_limit=64 << 10)
    line = assert_user_error(result, "file too large", "file-size limit")
    assert snapshot(out) == before, os.listdir(out)
    assert not [f for f in os.listdir(out) if f.startswith(".")], line


def test_leftover_staging_folders_are_removed_unless_they_hold_an_input(tmp_path):
    """A killed export leaves its staging folder; the next export removes it, never a folder
    named like one that holds an input (data, or the model itself)."""
    from edgekt import atomic
    from edgekt.export import pipeline

    stale, data, model_home = (tmp_path / f".export-staging.999999999.{tag}" for tag in ("a", "b", "c"))
    for folder in (stale, data, model_home):
        folder.mkdir()
        (folder / "file").write_bytes(b"x")
    try:
        atomic.protect_inputs([("--data=b", str(data))])
        pipeline._remove_stale_staging(str(tmp_path), [str(model_home / "file")])
    finally:
        atomic.forget_inputs()
    assert not stale.exists() and (data / "file").exists() and (model_home / "file").exists()


def test_a_refused_export_into_new_folders_leaves_none(pipeline_inputs, tmp_path, monkeypatch):
    from edgekt.errors import UserError
    from edgekt.export import pipeline

    def refuse(*args, **kwargs):
        raise UserError("test: refused after the staging folder was made; nothing to do")

    monkeypatch.setattr(pipeline, "_export_into", refuse)
    out = tmp_path / "new" / "nested" / "export"
    with pytest.raises(UserError, match="refused after the staging folder"):
        pipeline.export_model(pipeline_inputs["teacher"], str(out), class_names=list("abcdefghij"),
                              quantization="float16")
    assert not (tmp_path / "new").exists()
