"""edgekt.sweep: one teacher to several budgets by our methods and tfmot, measured alike."""

from __future__ import annotations

import json
import os

import keras
import pytest

from edgekt.errors import UserError
from edgekt import report, sweep
from edgekt.flops import count_params

from conftest import quick_wrn


@pytest.fixture(scope="module")
def small_sweep(three_classes, tmp_path_factory):
    teacher = quick_wrn(three_classes["train"], 600, epochs=2, batch_size=32)
    out = str(tmp_path_factory.mktemp("run") / "sweep")
    config = sweep.SweepConfig(budgets=(0.5, 0.25), methods=("default", "l1_global", "tfmot"), prune_preset="smoke",
                               prune_overrides=(("train_size", None), ("batch_size", 32), ("calibration_size", 32)),
                               representative_size=8, latency_repeats=2)
    summary = sweep.run(teacher, three_classes, out, config, val_size=150)
    return teacher, out, config, summary


def test_sweep_measures_every_method_at_every_budget(small_sweep):
    teacher, out, config, summary = small_sweep
    rows = {(r["method"], r["budget"]): r for r in summary["rows"]}
    assert set(rows) == {(m, b) for m in config.methods for b in config.budgets}
    teacher_params = count_params(teacher)
    for (method, budget), r in rows.items():
        assert r["params"] <= budget * teacher_params * 1.01, (method, budget)
        assert 0 <= r["val_accuracy"] <= 1 and 0 <= r["test_accuracy"] <= 1 and r["int8_latency_ms"] > 0
    for budget in config.budgets:
        # Filter pruning shrinks the file; magnitude pruning leaves it dense.
        assert rows[("default", budget)]["int8_bytes"] < rows[("tfmot", budget)]["int8_bytes"]
        # The baseline trains as many epochs as a method without probes, at every budget.
        assert rows[("tfmot", budget)]["epochs"] == rows[("l1_global", budget)]["epochs"]
        assert rows[("default", budget)]["epochs"] > rows[("l1_global", budget)]["epochs"]  # the probes' images
    assert [rows[("tfmot", b)]["epochs"] for b in (0.5, 0.25)] == [2, 3]  # 1 step + 1 final, 2 steps + 1 final
    assert rows[("default", 0.25)]["params"] < rows[("default", 0.5)]["params"]
    for budget in config.budgets:   # each budget's own record says what made it and whether it fits
        with open(os.path.join(out, "default", f"budget_{budget:g}", "metrics.json")) as f:
            m = json.load(f)
        assert m["method"].startswith("per step, the best") and m["criterion"] is None and m["target_met"]
        assert len(m["ways"]) == m["steps_taken"] and "wall_seconds" not in m
    for name in (sweep.SWEEP_FILE, sweep.TABLE_FILE, sweep.PLOT_FILE):
        assert os.path.exists(os.path.join(out, name))
    table = open(os.path.join(out, sweep.TABLE_FILE)).read()
    assert "| tfmot | 25% |" in table and "| default | 50% |" in table
    assert "fine-tuned on labels only" in table and "one pass" in table  # what the columns do not show
    # One latency pass timed every file; the table reports it.
    with open(os.path.join(out, sweep.LATENCY_FILE)) as f:
        latency = json.load(f)
    assert {r["int8_file"] for r in summary["rows"]} == set(latency["latency_ms"])
    assert all(r["int8_latency_ms"] == latency["latency_ms"][r["int8_file"]] for r in summary["rows"])
    for r in summary["rows"]:
        assert r["compute_epochs"] >= r["epochs"] and (r["compute_epochs"] > r["epochs"]) == (r["method"] == "default")
        # The int8 file's top-1 with its ties: the tie-split figure lies within what the ties allow.
        n, tied = summary["teacher"]["test_images"], r["int8_test_tied"]
        assert 0 <= tied <= n
        assert r["int8_test_accuracy"] - tied / n <= r["int8_test_accuracy_ties_split"] <= r["int8_test_accuracy"] + tied / n
    assert summary["teacher"]["val_images"] == 150


def test_sweep_resumes_without_training_again(small_sweep, three_classes):
    teacher, out, config, summary = small_sweep
    again = sweep.run(teacher, three_classes, out, config, val_size=150)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "int8_latency_ms"} for r in rows]  # noqa: E731
    assert strip(again["rows"]) == strip(summary["rows"])
    assert all(s < 60 for s in again["method_seconds"].values())
    fresh = sweep.latency_pass(out, again["rows"], repeats=2, rounds=1, fresh=True)
    assert fresh["rounds"] == 1 and len(fresh["loadavg_after"]) == 3


def test_report_includes_the_sweep(small_sweep):
    _, out, _, _ = small_sweep
    run_dir = os.path.dirname(out)
    report.write(run_dir, "smoke")
    text = open(os.path.join(run_dir, "report.md")).read()
    assert "## Pruning sweep" in text and "| l1_global | 25% |" in text
    assert "sweep.png" in open(os.path.join(run_dir, "report.html")).read()
    with open(os.path.join(run_dir, "summary.json")) as f:
        assert len(json.load(f)["sweep"]["rows"]) == 6


def test_where_the_default_loses_names_every_column_and_the_points_above_its_curve():
    def row(method, budget, test, kib, ms, flops, seconds=100.0, int8=None):
        return {"method": method, "budget": budget, "test_accuracy": test, "val_accuracy": test,
                "int8_test_accuracy": test if int8 is None else int8, "int8_bytes": kib * 1024, "int8_latency_ms": ms,
                "flops": flops, "trajectory_seconds": seconds / 2, "final_seconds": seconds / 2}
    rows = [row("default", 0.5, 0.90, 100, 0.20, 50e6), row("default", 0.1, 0.80, 10, 0.10, 10e6),
            row("l1_global", 0.5, 0.91, 120, 0.25, 40e6, 80.0),  # better test, fewer FLOPs, faster pruning
            row("l1_global", 0.1, 0.70, 8, 0.12, 12e6),          # cheaper file than any default point
            row("tfmot", 0.5, 0.86, 30, 0.30, 90e6),             # 30 KiB: the default's curve gives 84.77%
            row("tfmot", 0.1, 0.79, 100, 0.30, 90e6),            # below the curve everywhere
            row("attention_global", 0.5, 0.86, 30, 0.30, 90e6, int8=0.84)]  # above it in float, not in int8
    lines = sweep.where_default_loses({"rows": rows})
    text = "\n".join(lines)
    assert "l1_global beats it on test top-1 at 50% (91.00% vs 90.00%)" in text
    assert "l1_global has fewer FLOPs at 50% (40.0M vs 50.0M)." in text
    # At 40M FLOPs the default's test curve gives 80% + 10 * log(4)/log(5) = 88.61%.
    assert "l1_global lies above the default's curve of test top-1 against FLOPs (log-linear between the default's " \
           "budgets) at 50% (91.00% at 40.0M; default 88.61% there)." in text
    assert "pruning time" not in text  # wall seconds under uneven load are not compared
    assert "l1_global has a smaller int8 file at 10% (8.0 KiB vs 10.0 KiB)" in text
    assert ("l1_global lies above the default's curve of int8 test top-1 against int8 bytes (log-linear between the "
            "default's budgets) at 50% (91.00% at 120.0 KiB; default 90.00% there).") in text
    assert "10% (70.00% at 8.0 KiB" not in text   # cheaper than every default point, and less accurate than each
    tfmot_bytes = [l for l in lines if l.startswith("tfmot lies above") and "int8 bytes" in l]
    assert len(tfmot_bytes) == 1 and "50% (86.00% at 30.0 KiB; default 84.77% there)" in tfmot_bytes[0]
    assert "10%" not in tfmot_bytes[0] and not any(l.startswith("tfmot lies above") and "latency" in l for l in lines)
    assert not any(l.startswith("attention_global lies above") for l in lines)
    assert sweep.where_default_loses({"rows": rows[2:]}) == []   # no default, nothing to compare
    # Cheaper than every default point and more accurate than one of them: it beats that point outright.
    text = "\n".join(sweep.where_default_loses({"rows": rows[:2] + [row("l1_uniform", 0.1, 0.85, 9.99, 0.09, 9e6)]}))
    assert ("l1_uniform beats a point of the default's outright (higher test top-1 with fewer FLOPs, cheaper than all "
            "of the default's points) at 10% (85.00% at 9.0M; default at 10%: 80.00% at 10.0M).") in text
    # Files equal in KiB to one decimal are told apart in bytes.
    assert "l1_uniform has a smaller int8 file at 10% (10,229.76 vs 10,240 bytes)" in text
    # Accuracy differences in images when the table knows how many were counted.
    counted = "\n".join(sweep.where_default_loses({"rows": rows, "teacher": {"test_images": 5000}}))
    assert "l1_global beats it on test top-1 at 50% (91.00% vs 90.00%, 50 of 5,000 images)" in counted
    # The like-for-like block compares default_labels_only with tfmot only.
    labels_only = [dict(r, method="default_labels_only") for r in rows[:2]]
    like = sweep.where_default_loses({"rows": labels_only + rows[2:]}, ours="default_labels_only",
                                     against=("tfmot",))
    assert like and all(l.startswith("tfmot ") for l in like)
    assert any("above default_labels_only's curve of int8 test top-1 against int8 bytes" in l for l in like)


def test_int8_wins_that_tie_breaking_decides_say_so():
    def row(method, int8, split, kib):
        return {"method": method, "budget": 0.5, "test_accuracy": 0.9, "int8_test_accuracy": int8,
                "int8_test_accuracy_ties_split": split, "int8_test_tied": 25, "int8_bytes": kib * 1024}
    lines = sweep.where_default_loses({"rows": [row("default", 0.9176, 0.9177, 200), row("tfmot", 0.9180, 0.9176, 700),
                                                row("l1_global", 0.9200, 0.9190, 300)],
                                       "teacher": {"test_images": 5000}})
    text = "\n".join(lines)
    assert ("tfmot beats it on int8 test top-1 at 50% (91.80% vs 91.76%, 2 of 5,000 images; with tied top scores "
            "split evenly 91.76% vs 91.77%)") in text
    assert "l1_global beats it on int8 test top-1 at 50% (92.00% vs 91.76%, 12 of 5,000 images)." in text
    # Beyond the default's largest file its curve stays at its best point: tfmot lies above it only by tie-breaking.
    assert "at 50% (91.80% at 700.0 KiB; default 91.76% there; not above with tied top scores split evenly)" in text
    assert "at 50% (92.00% at 300.0 KiB; default 91.76% there)." in text
    table = sweep.table({"rows": [dict(r, params=1, flops=1, val_accuracy=0.9, int8_latency_ms=0.1,
                                       trajectory_seconds=1.0, final_seconds=1.0)
                                  for r in (row("default", 0.9176, 0.9177, 200), row("tfmot", 0.918, 0.9176, 700))],
                         "teacher": {"params": 1000, "flops": 1e6, "test_images": 5000}})
    assert "tie on 25 to 25 test images (the most: default at 50%)" in table


def test_top1_figures_count_ties_and_split_them():
    from edgekt.export import measure

    scores = [[1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [3.0, 3.0, 3.0], [0.0, 0.0, 1.0]]
    top1 = measure.top1_figures(scores, [1, 1, 2, 0])
    assert top1["accuracy"] == 0.25 and top1["tied"] == 2   # arg-max takes class 0 on both ties
    assert top1["accuracy_ties_split"] == pytest.approx((0.5 + 1 + 1 / 3 + 0) / 4)


def test_steps_until_counts_discarded_steps_up_to_the_kept_one():
    log = [{"step": 1, "accepted": True}, {"step": 2, "accepted": False}, {"step": 3, "accepted": True},
           {"step": 4, "accepted": True}]
    assert [e["step"] for e in sweep._steps_until(log, 2)] == [1, 2, 3]
    assert [e["step"] for e in sweep._steps_until(log, 1)] == [1]


def test_table_names_rows_over_their_budget():
    def row(method, params):
        return {"method": method, "budget": 0.05, "params": params, "flops": 1e6, "val_accuracy": 0.8,
                "test_accuracy": 0.8, "int8_bytes": 2048, "int8_latency_ms": 0.1, "trajectory_seconds": 1.0,
                "final_seconds": 1.0}
    text = sweep.table({"rows": [row("default", 49_990), row("tfmot", 50_002)],
                        "teacher": {"params": 1_000_000, "flops": 1e8}})
    assert "over the budget (tfmot at 5%: 2 parameters)" in text and "default at 5%" not in text
    text = sweep.table({"rows": [row("default", 49_990), row("tfmot", 50_001)],
                        "teacher": {"params": 1_000_000, "flops": 1e8}})
    assert "over the budget (tfmot at 5%: 1 parameter)" in text


def test_table_says_when_the_default_is_absent_and_adds_the_like_for_like_block():
    def row(method, budget, test):
        return {"method": method, "budget": budget, "params": 1000, "flops": 1e6, "val_accuracy": test,
                "test_accuracy": test, "int8_test_accuracy": test, "int8_bytes": 2048, "int8_gzip_bytes": 1024,
                "int8_latency_ms": 0.1, "epochs": 10.0, "compute_epochs": 10.0, "trajectory_seconds": 1.0,
                "final_seconds": 1.0}
    partial = sweep.table({"rows": [row("l1_uniform", 0.5, 0.9)]})
    assert "The default is not in this table: no comparison with it is made." in partial
    full = sweep.table({"rows": [row("default", 0.5, 0.9), row("default_labels_only", 0.5, 0.88),
                                 row("tfmot", 0.5, 0.89)]})
    assert "Where the default loses:\n\n- nowhere in these columns" in full
    like = full.split("where default_labels_only loses to tfmot:")[1]
    assert "tfmot beats it on test top-1 at 50% (89.00% vs 88.00%)" in like


def test_report_says_when_the_sweep_pruned_another_teacher():
    from edgekt import report

    row = {"method": "l1_global", "budget": 0.5, "params": 1000, "flops": 1e6, "val_accuracy": 0.9,
           "test_accuracy": 0.9, "int8_test_accuracy": 0.9, "int8_bytes": 2048, "int8_latency_ms": 0.1,
           "trajectory_seconds": 1.0, "final_seconds": 1.0}
    summary = {"rows": [row], "config": {"budgets": [0.5]},
               "teacher": {"path": "runs/t/model.keras", "params": 691_674, "flops": 101e6, "test_accuracy": 0.9224}}
    other = "\n".join(report._sweep_section(summary, {"params": 691_674, "test_accuracy": 0.8774}))
    assert "`runs/t/model.keras` (not this run's cloud model: 691,674 parameters, test top-1 92.24%)" in other
    same = "\n".join(report._sweep_section(summary, {"params": 691_674, "test_accuracy": 0.9224}))
    assert "not this run's cloud model" not in same


def test_method_times_count_the_trajectory_once_and_every_final():
    rows = [{"method": "l1_global", "budget": b, "trajectory_seconds": t, "final_seconds": f}
            for b, t, f in ((0.5, 100.0, 40.0), (0.25, 180.0, 30.0), (0.1, 230.0, 20.0))]
    assert sweep.method_times(rows) == {"l1_global": {"trajectory": 230.0, "finals": 90.0, "total": 320.0}}


def test_the_baseline_ramps_follow_our_steps_between_budgets():
    cpu = sweep.method_config(sweep.preset("cpu"), "default")
    assert sweep.steps_to_budgets(cpu, 691_674, 101_106_944) == [1, 2, 3, 4, 5]
    paper = sweep.method_config(sweep.preset("paper"), "default")
    steps = sweep.steps_to_budgets(paper, 36_479_194, 5_248_000_000)
    assert len(steps) == 4 and steps == sorted(steps) and steps[-1] > 4  # several steps between budgets


def test_sweep_config_names_bad_fields():
    with pytest.raises(ValueError, match="methods"):
        sweep.SweepConfig(methods=("taylor",))
    with pytest.raises(ValueError, match="budgets"):
        sweep.SweepConfig(budgets=(0.5, 1.5))


def test_a_validation_size_other_than_the_teachers_is_refused(tmp_path):
    """A different --val_size would move images the teacher trained on into validation."""
    from absl import app

    from edgekt import models
    from pipelines import flag_utils

    path = str(tmp_path / "model.keras")
    models.wrn(10, 1, num_classes=3).save(path)
    (tmp_path / "metrics.json").write_text(json.dumps({"config": {"val_size": 300, "seed": 4}}))
    assert flag_utils.load_teacher_and_split(path, None)[1:3] == (300, 4)
    assert flag_utils.load_teacher_and_split(path, 300)[1] == 300
    with pytest.raises(UserError, match="--val_size=500: the teacher .* held out 300"):
        flag_utils.load_teacher_and_split(path, 500)


def test_run_all_sweep_stage_runs_the_preset_on_the_cloud_model_once(three_classes, tmp_path, monkeypatch):
    """`run_all --sweep`: the sweep of the workflow preset's name on the cloud model, with the
    cloud stage's hold-out, cached like every stage."""
    from edgekt import models, workflow
    from edgekt.data.cifar_batches import write_cifar_batches

    folder = str(tmp_path / "data")
    write_cifar_batches(folder, three_classes)
    teacher_path = str(tmp_path / "cloud" / "model.keras")
    os.makedirs(os.path.dirname(teacher_path))
    models.wrn(10, 1, num_classes=3).save(teacher_path)
    with open(os.path.join(os.path.dirname(teacher_path), "metrics.json"), "w") as f:
        json.dump({"config": {"val_size": 150, "seed": 3}}, f)
    calls = []

    def fake_run(teacher, source, out_dir, config, **kwargs):
        calls.append((config, kwargs, len(source["train"].labels)))
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, sweep.SWEEP_FILE), "w") as f:
            json.dump({"rows": [{}] * 2}, f)
        return {"rows": [{}] * 2}

    monkeypatch.setattr(sweep, "run", fake_run)
    out = str(tmp_path / "run")
    for _ in range(2):
        result = workflow.run("cpu", folder, out, teacher_path=teacher_path, stages=("sweep",))
    assert result["sweep"]["models"] == 2 and len(calls) == 1
    config, kwargs, n_train = calls[0]
    assert config == sweep.preset("cpu") and n_train == 600
    assert kwargs["val_size"] == 150 and kwargs["split_seed"] == 3 and kwargs["teacher_path"] == teacher_path


def test_the_baselines_optimizer_steps_as_ours():
    """tfmot fine-tunes with the update of our L2SGD (L2 inside the gradient, Nesterov)."""
    import numpy as np
    import tensorflow as tf
    import tf_keras
    from edgekt.baselines import tfmot_magnitude
    from edgekt.train.optimizers import L2SGD

    config = tfmot_magnitude.MagnitudeConfig(weight_decay=0.1, momentum=0.9)
    w0 = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
    b0 = np.array([1.0, -1.0], np.float32)
    grads = [np.array([[0.3, 0.1], [-0.2, 0.4]], np.float32), np.array([0.5, 0.5], np.float32)]
    theirs = [tf.Variable(w0), tf.Variable(b0)]
    opt = tfmot_magnitude._l2_sgd(tf_keras, 0.05, config)
    ours = [keras.Variable(w0), keras.Variable(b0)]
    ref = L2SGD(learning_rate=0.05, momentum=0.9, nesterov=True, l2=0.1)
    for _ in range(3):
        opt.apply_gradients(zip([tf.constant(g) for g in grads], theirs))
        ref.apply_gradients(zip([keras.ops.convert_to_tensor(g) for g in grads], ours))
    for t, o in zip(theirs, ours):
        np.testing.assert_allclose(t.numpy(), keras.ops.convert_to_numpy(o), rtol=1e-6, atol=1e-7)
    assert not np.allclose(theirs[0].numpy(), w0 - 3 * 0.05 * grads[0])  # the decay acted


def test_the_single_budget_baseline_prunes_to_the_budget(small_sweep, three_classes, tmp_path):
    from edgekt.baselines import tfmot_magnitude

    teacher = small_sweep[0]
    budget = count_params(teacher) // 3
    m = tfmot_magnitude.run(teacher, budget, three_classes, str(tmp_path),
                            tfmot_magnitude.MagnitudeConfig(epochs=1, batch_size=32, train_size=300), val_size=150)
    assert m["nonzero_params"] <= budget * 1.01 and 0 <= m["test_accuracy"] <= 1
    assert os.path.exists(tmp_path / "metrics.json") and os.path.exists(tmp_path / "model_magnitude_int8.tflite")


def test_the_report_says_where_the_baseline_beats_ours():
    ours = {"test_accuracy": 0.8164, "tflite_float32_bytes": 146_500, "tflite_float32_latency_ms": 0.16}
    theirs = {"test_accuracy": 0.8384, "tflite_bytes": 2_779_444, "tflite_latency_ms": 0.86}
    lines = report._baseline_losses(ours, theirs)
    assert lines == ["- the tfmot baseline at the same budget beats ours on test top-1: 83.84% vs 81.64% (it keeps "
                     "every filter: a 19.0x larger float32 file, 5.4x the latency)."]
    assert report._baseline_losses({**ours, "test_accuracy": 0.85}, theirs) == []
    assert report._baseline_losses({**ours, "test_accuracy": 0.85}, {**theirs, "tflite_latency_ms": 0.1}) == [
        "- the tfmot baseline has a lower latency: 0.10 ms vs 0.16 ms."]
