"""Classes that do not fit the model: data with 3 classes for a 10-output teacher or user
model, class names that do not match the model's outputs."""

from __future__ import annotations

import pytest

from harness import Case, check_case, run_cases

CASES = [
    Case("prune-data-classes-vs-teacher-outputs", "pipelines.prune",
         ["--teacher={teacher}", "--data={three}", "--out_dir={out}"], ["the teacher", "10 outputs", "3 classes"]),
    Case("convert-data-classes-vs-model-outputs", "pipelines.convert",
         ["--model={teacher}", "--data={three}", "--out_dir={out}", "--val_size=3"], ["{teacher}", "3 classes"]),
    Case("export-class-names-vs-outputs", "pipelines.export_tflite",
         ["--model={teacher}", "--out_dir={out}", "--class_names=cat,dog", "--quantization=float16"],
         ["2 class names", "10 outputs", "--new_classes"]),
    Case("transfer-student-outputs", "pipelines.transfer",
         ["--teacher={teacher}", "--student=wrn-10-1", "--data={three}", "--out_dir={out}", "--val_size=20"],
         ["the teacher", "3 classes"]),
]


@pytest.fixture(scope="module")
def results(pipeline_inputs, tmp_path_factory):
    return run_cases(CASES, pipeline_inputs, tmp_path_factory.mktemp("labels"))


@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_classes_that_do_not_fit(results, case_id):
    check_case(results, case_id)
