"""Criteria (by hand), channel allocation under budgets, schedules, and the pruning binary."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from edgekt import data, flops, models
from edgekt.prune import build_graph, criteria, schedule
from edgekt.prune.allocation import CostModel, select_channels
from edgekt.prune.config import PruneConfig, preset

from conftest import CIFAR10_ARCHIVE, REPO_ROOT, quick_wrn
from prune_models import vgg_style


def test_attention_is_mean_over_images_of_summed_powered_activations():
    acts = np.zeros((2, 2, 2, 3))
    acts[0, :, :, 0] = 1.0          # image 0: channel 0 all ones -> sum 4
    acts[1, 0, 0, 1] = -3.0         # image 1: channel 1 one value -3 -> |.|^2 = 9
    np.testing.assert_allclose(criteria.attention(acts, p=2), [2.0, 4.5, 0.0])
    np.testing.assert_allclose(criteria.attention(acts, p=1), [2.0, 1.5, 0.0])


def test_l1_norm_and_normalizations_by_hand():
    kernel = np.array([[[[1.0, -2.0]], [[3.0, 0.0]]]])  # [1, 2, 1, 2]: filter 0 -> 4, filter 1 -> 2
    np.testing.assert_allclose(criteria.l1_norm(kernel), [4.0, 2.0])
    np.testing.assert_allclose(criteria.normalize(np.array([1.0, 3.0]), "mean"), [0.5, 1.5])
    np.testing.assert_allclose(criteria.normalize(np.array([1.0, 3.0]), "max"), [1 / 3, 1.0])
    np.testing.assert_allclose(criteria.normalize(np.array([3.0, 4.0]), "l2"), [0.6, 0.8])
    with pytest.raises(ValueError, match="unknown normalization"):
        criteria.normalize(np.ones(2), "zscore")


def test_attention_importance_finds_a_dead_channel(small_cifar):
    model = vgg_style()
    graph = build_graph(model)
    conv0 = next(g for g in graph.groups if "conv0" in g.producers)
    layer = model.get_layer("conv0")
    kernel, bias = layer.get_weights()
    kernel[..., 5] = 0.0
    bias[5] = -1.0
    layer.set_weights([kernel, bias])
    bn = model.get_layer("bn0")
    gamma, beta, mean, var = bn.get_weights()
    beta[5], mean[5] = -5.0, 0.0   # relu(bn(...)) of channel 5 is 0 on every image
    bn.set_weights([gamma, beta, mean, var])
    scores = criteria.importance(graph, "attention", small_cifar["train"].images)
    assert scores[conv0.id][5] == 0.0 and scores[conv0.id].min() == 0.0
    assert scores[conv0.id].mean() == pytest.approx(1.0)  # mean-normalised
    l1 = criteria.importance(graph, "l1")
    assert np.argmin(l1[conv0.id]) == 5


@pytest.mark.parametrize("allocation", ["global", "cost", "uniform"])
def test_select_channels_meets_the_budget_and_keeps_the_best(allocation):
    model = models.wrn(16, 2)
    graph = build_graph(model)
    cost = CostModel(graph)
    params, fl = cost.count()
    rng = np.random.default_rng(0)
    scores = {g.id: rng.random(g.channels) for g in graph.prunable_groups()}
    keep = select_channels(graph, scores, max_params=int(0.05 * params), min_channels=2, allocation=allocation)
    kept_params, _ = cost.count({gid: len(k) for gid, k in keep.items()})
    assert kept_params <= 0.05 * params
    assert min(len(k) for k in keep.values()) >= 2
    for gid, k in keep.items():  # the kept channels are the highest-scored of their group
        if len(k) < len(scores[gid]):
            assert scores[gid][k].min() >= np.delete(scores[gid], k).max()
    keep_f = select_channels(graph, scores, max_flops=int(0.1 * fl), allocation=allocation)
    assert cost.count({gid: len(k) for gid, k in keep_f.items()})[1] <= 0.1 * fl


def test_cost_allocation_removes_expensive_channels_first():
    model = models.wrn(16, 2)
    graph = build_graph(model)
    cost = CostModel(graph)
    params, _ = cost.count()
    per_channel = cost.channel_costs({g.id: g.channels for g in graph.prunable_groups()})
    scores = {g.id: np.ones(g.channels) for g in graph.prunable_groups()}  # all equally important
    keep = select_channels(graph, scores, max_params=int(0.5 * params), allocation="cost")
    removed = {gid: len(scores[gid]) - len(k) for gid, k in keep.items()}
    cheapest = min(scores, key=lambda gid: per_channel[gid][0])
    dearest = max(scores, key=lambda gid: per_channel[gid][0])
    assert per_channel[dearest][0] > 4 * per_channel[cheapest][0]
    assert removed[dearest] > 0 and removed[cheapest] == 0
    # Exponent 0 is the plain global ranking.
    assert all(np.array_equal(a, b) for a, b in zip(
        select_channels(graph, scores, max_params=int(0.5 * params), allocation="cost", cost_exponent=0.0).values(),
        select_channels(graph, scores, max_params=int(0.5 * params), allocation="global").values()))
    # One channel's saving is what the cost model counts for the narrower model.
    gid = dearest
    p0, f0 = cost.count()
    p1, f1 = cost.count({gid: int(cost.base[gid]) - 1})
    assert per_channel[gid] == (p0 - p1, f0 - f1)


def test_select_channels_refuses_an_impossible_budget():
    graph = build_graph(vgg_style())
    scores = {g.id: np.ones(g.channels) for g in graph.prunable_groups()}
    with pytest.raises(ValueError, match=r"cannot be met: with every group at its floor"):
        select_channels(graph, scores, max_params=10, min_channels=2)


def test_geometric_steps_reach_the_target():
    np.testing.assert_allclose(schedule.geometric_ratios(0.05, 4), [0.05 ** 0.25, 0.05 ** 0.5, 0.05 ** 0.75, 0.05])
    step = schedule.initial_step(target_params_ratio=0.05, target_flops_ratio=None, steps=4, step_keep=0.6)
    state, budgets = schedule.PolicyState(params=1000, flops=500, step=step), []
    while (budget := schedule.next_budget(state, max_params=50, max_flops=None)) is not None:
        budgets.append(budget)
        state, ok = schedule.after_step(state, params=budget[0], flops=0, accuracy=0.5, floor=None, min_step=0.05)
        assert ok
    assert [p for p, _ in budgets] == [472, 223, 105, 50] and all(f is None for _, f in budgets)


def test_steps_stop_at_milestones_and_only_the_floor_bounds_a_run_without_target():
    state = schedule.PolicyState(params=1000, flops=500, step=0.6)
    assert schedule.next_budget(state, max_params=20, max_flops=None, milestones=[500, 250]) == (500, None)
    state = schedule.PolicyState(params=500, flops=500, step=0.6)
    assert schedule.next_budget(state, max_params=20, max_flops=None, milestones=[500, 250]) == (250, None)
    assert schedule.next_budget(state, max_params=None, max_flops=100) == (None, 200)
    assert schedule.next_budget(state, max_params=None, max_flops=None) == (200, None)
    assert schedule.next_budget(state, max_params=None, max_flops=None, max_steps=0) is None


def test_policy_backs_off_by_halving_the_step_and_stops_below_min_step():
    state = schedule.PolicyState(params=1000, flops=500, step=0.4)
    state, ok = schedule.after_step(state, params=600, flops=300, accuracy=0.80, floor=0.85, min_step=0.05)
    assert not ok and state.params == 1000 and state.step == 0.2 and not state.stopped  # the model is discarded
    assert schedule.next_budget(state, max_params=100, max_flops=None) == (800, None)
    state, ok = schedule.after_step(state, params=800, flops=400, accuracy=0.86, floor=0.85, min_step=0.05)
    assert ok and state.params == 800 and state.step == 0.2 and state.attempts == 2
    for _ in range(2):
        state, ok = schedule.after_step(state, params=700, flops=350, accuracy=0.1, floor=0.85, min_step=0.05)
    assert state.step == 0.05 and not state.stopped
    state, _ = schedule.after_step(state, params=700, flops=350, accuracy=0.1, floor=0.85, min_step=0.05)
    assert "min_step" in state.stopped and schedule.next_budget(state, max_params=100, max_flops=None) is None


def test_back_off_halves_what_a_step_cut_back_to_its_target_removed():
    state = schedule.PolicyState(params=1000, flops=500, step=0.6)
    budget = schedule.next_budget(state, max_params=800, max_flops=None)
    assert budget == (800, None) and schedule.removed_fraction(state, budget) == pytest.approx(0.2)
    state, ok = schedule.after_step(state, params=800, flops=400, accuracy=0.1, floor=0.5, min_step=0.01,
                                    removed=schedule.removed_fraction(state, budget))
    assert not ok and state.step == pytest.approx(0.1)
    assert schedule.next_budget(state, max_params=800, max_flops=None) == (900, None)  # not the same 800 again


def test_prune_config_checks():
    with pytest.raises(ValueError, match=r"no pruning policy is given"):
        PruneConfig(target_params_ratio=None)
    with pytest.raises(ValueError, match=r"PruneConfig.criterion='taylor': must be one of"):
        PruneConfig(criterion="taylor")
    assert preset("cpu", criterion="l1").criterion == "l1"


def _run(args, env_extra=None):
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "3", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "pipelines.prune", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def smoke_teacher(tmp_path_factory, cifar):
    """A WRN-10-1 teacher trained briefly by the cloud stage on real CIFAR-10."""
    from edgekt import train

    out = str(tmp_path_factory.mktemp("teacher"))
    cfg = train.CloudTrainConfig(depth=10, width=1, epochs=2, batch_size=64, learning_rate=0.05, warmup_epochs=0.5,
                                 train_size=4000, val_size=500, seed=0)
    train.train_and_evaluate(cfg, cifar, out, verbose=0)
    return os.path.join(out, "model.keras")


def test_prune_binary_removes_filters_and_writes_its_outputs(smoke_teacher, tmp_path, cache_dir):
    out = tmp_path / "pruned"
    proc = _run([f"--teacher={smoke_teacher}", f"--data={CIFAR10_ARCHIVE}", f"--out_dir={out}", "--preset=smoke",
                 "--target_params_ratio=0.25", "--steps=2", "--final_epochs=1"], {"EDGEKT_CACHE_DIR": cache_dir})
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("params", "teacher_params", "params_removed_fraction", "flops", "teacher_flops", "test_accuracy",
                "teacher_test_accuracy", "criterion"):
        assert key in metrics
    assert metrics["params_removed_fraction"] >= 0.75 and metrics["target_met"]
    assert metrics["flops"] < metrics["teacher_flops"] and metrics["file_bytes"] < metrics["teacher_file_bytes"]
    assert metrics["test_accuracy"] > 0.2
    log = json.loads((out / "prune_log.json").read_text())["steps"]
    assert [e["step"] for e in log] == [0, 1, 2] and log[0]["params"] == metrics["teacher_params"]
    assert (out / "prune_log.csv").exists() and (out / "prune_plot.png").stat().st_size > 1000
    pruned = keras.models.load_model(out / "pruned.keras")
    assert flops.count_params(pruned) == metrics["params"]
    spec = models.spec_from_model(pruned)
    assert spec.stem < 16
    # Reloaded model keeps its accuracy on the test folder.
    test = data.load(CIFAR10_ARCHIVE, cache_dir=cache_dir)["test"]
    from edgekt import evaluation

    assert evaluation.evaluate(pruned, test.images, test.labels)["accuracy"] == pytest.approx(metrics["test_accuracy"],
                                                                                                abs=1e-6)
    # A second run finds everything done and returns the same result without training.
    again = _run([f"--teacher={smoke_teacher}", f"--data={CIFAR10_ARCHIVE}", f"--out_dir={out}", "--preset=smoke",
                  "--target_params_ratio=0.25", "--steps=2", "--final_epochs=1"], {"EDGEKT_CACHE_DIR": cache_dir})
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["params"] == metrics["params"]


def test_prune_binary_names_an_unsupported_layer(tmp_path):
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="c")(inp)
    x = keras.layers.Conv2DTranspose(4, 3, name="up")(x)
    out = keras.layers.Dense(10, name="logits")(keras.layers.GlobalAveragePooling2D()(x))
    path = str(tmp_path / "user.keras")
    keras.Model(inp, out).save(path)
    proc = _run([f"--teacher={path}", f"--data={CIFAR10_ARCHIVE}", f"--out_dir={tmp_path / 'o'}"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "layer 'up' (Conv2DTranspose) cannot be pruned" in proc.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def three_class_data(three_classes):
    return data.prepare_splits(three_classes, val_size=150, seed=0)


@pytest.fixture(scope="module")
def tiny_teacher(three_class_data):
    return quick_wrn(three_class_data.train, len(three_class_data.train.labels), epochs=4, batch_size=32)


def test_policy_backs_off_when_the_accuracy_floor_breaks(tiny_teacher, three_class_data, tmp_path):
    # No fine-tuning between steps, so removing half of the filters breaks a floor of 5 points
    # below the teacher; the step then halves until one holds (or min_step ends the run).
    config = PruneConfig(target_params_ratio=None, max_accuracy_drop=5.0, step_keep=0.5, min_step=0.04,
                         max_steps=8, step_epochs=0, final_epochs=0, calibration_size=64, batch_size=32,
                         criterion="l1", candidates=())
    from edgekt.prune import pruner

    metrics = pruner.prune_prepared(tiny_teacher, three_class_data, str(tmp_path), config, holdout={})
    with open(tmp_path / "prune_state.json") as f:
        state = json.load(f)
    log = state["log"]
    floor = log[0]["val_accuracy"] - 0.05
    steps = log[1:]
    assert steps[0]["step_fraction"] == 0.5 and not steps[0]["accepted"] and steps[0]["val_accuracy"] < floor
    current = log[0]
    for entry, following in zip(steps, steps[1:] + [None]):
        assert entry["accepted"] == (entry["val_accuracy"] >= floor)
        # Every step starts from the last accepted model and removes `step_fraction` of it.
        assert entry["target_params"] == int(current["params"] * (1 - entry["step_fraction"]))
        assert 0.9 * entry["target_params"] <= entry["params"] <= entry["target_params"]
        if following is not None:
            expected = entry["step_fraction"] / (1 if entry["accepted"] else 2)
            assert following["step_fraction"] == pytest.approx(expected)
        if entry["accepted"]:
            current = entry
            assert os.path.exists(tmp_path / "steps" / f"step_{entry['step']:02d}.keras")
        else:
            assert not os.path.exists(tmp_path / "steps" / f"step_{entry['step']:02d}.keras")
    assert state["policy"]["stopped"] or len(steps) == config.max_steps
    assert metrics["val_accuracy"] >= floor and metrics["steps_discarded"] >= 1
    assert metrics["params"] == min(e["params"] for e in steps if e["accepted"])


def test_channel_floors_hold_through_pruning(tiny_teacher, three_class_data, tmp_path):
    from edgekt.prune import pruner
    from edgekt.prune.allocation import is_stream

    config = PruneConfig(target_params_ratio=0.08, steps=2, step_epochs=0, final_epochs=0, calibration_size=64,
                         batch_size=32, stream_floor=0.25, layer_floor=0.2, allocation="cost", candidates=())
    pruner.prune_prepared(tiny_teacher, three_class_data, str(tmp_path), config, holdout={})
    graph = build_graph(tiny_teacher)
    original = {g.name: (g.channels, is_stream(graph, g)) for g in graph.prunable_groups()}
    with open(tmp_path / "prune_state.json") as f:
        steps = json.load(f)["log"][1:]
    assert steps and all(e["params"] <= e["target_params"] for e in steps)
    at_floor = 0
    for entry in steps:
        for name, kept in entry["channels"].items():
            width, stream = original[name]
            floor = int(np.ceil((0.25 if stream else 0.2) * width))
            assert kept >= floor, (name, kept, floor)
            at_floor += kept == floor
    assert at_floor > 0  # the budget was tight enough for some floor to bind


def test_floors_that_cannot_fit_the_budget_are_named():
    graph = build_graph(models.wrn(16, 2))
    from edgekt.prune.allocation import channel_floors

    floors = channel_floors(graph, {g.name: g.channels for g in graph.groups}, stream_floor=0.5, layer_floor=0.5)
    scores = {g.id: np.ones(g.channels) for g in graph.prunable_groups()}
    with pytest.raises(ValueError, match=r"cannot be met.*lower the floors"):
        select_channels(graph, scores, max_params=int(0.05 * flops.count_params(graph.model)), floors=floors)
    with pytest.raises(ValueError, match=r"stream_floor must be in \[0, 1\)"):
        channel_floors(graph, {}, stream_floor=1.5)


def test_each_step_keeps_the_way_best_on_validation(tiny_teacher, three_class_data, tmp_path):
    from edgekt.prune import pruner

    config = PruneConfig(target_params_ratio=0.3, steps=2, step_epochs=0, final_epochs=0, calibration_size=64,
                         batch_size=32, candidates=("l1/global", "attention/cost:1@0.2,0.1", "l1/uniform@0.9,0.9"),
                         probe_images=96)
    metrics = pruner.prune_prepared(tiny_teacher, three_class_data, str(tmp_path), config, holdout={})
    with open(tmp_path / "prune_state.json") as f:
        steps = json.load(f)["log"][1:]
    assert len(steps) == 2
    for entry in steps:
        # Floors of 90% cannot fit 30% of the parameters: that way is left out.
        assert set(entry["probe"]) == {"l1/global", "attention/cost:1@0.2,0.1"}
        assert entry["probe"][entry["way"]] == max(entry["probe"].values())
        # With no step epochs, the kept model is the probed one: its accuracy is the probe's.
        assert entry["val_accuracy"] == pytest.approx(entry["probe"][entry["way"]])
    assert metrics["ways"] == [e["way"] for e in steps] and metrics["method"].startswith("per step, the best")
    with pytest.raises(ValueError, match="candidates"):
        PruneConfig(candidates=("l1/global:0.5",))
    with pytest.raises(ValueError, match="candidates"):
        PruneConfig(candidates=("l1/cost@0.5",))
