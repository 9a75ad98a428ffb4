"""The iterative pruner: score -> select -> surgery -> fine-tune (with transfer), step by step,
then keep the best model that satisfies the policy and fine-tune it once more.

Each completed step is saved (model + log, atomically) so a killed run resumes after its
last completed step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time

import keras
from absl import logging

from edgekt import atomic, data, evaluation, flops
from edgekt.models import saving
from edgekt.prune import allocation, criteria, schedule
from edgekt.prune.config import PruneConfig, parse_candidate
from edgekt.prune.graph import build_graph
from edgekt.prune.report import write_log, write_plot
from edgekt.prune.surgery import prune_model
from edgekt.transfer.distiller import TransferConfig
from edgekt.transfer.training import FinetuneConfig, fit_student
from edgekt.errors import UserError

PRUNED_FILE = "pruned.keras"
METRICS_FILE = "metrics.json"
LOG_FILE = "prune_log.json"
STATE_FILE = "prune_state.json"
STEPS_DIR = "steps"
FINAL_FILE = "final_done.json"  # marks pruned.keras as the finished, fine-tuned model


def transfer_config(config: PruneConfig) -> TransferConfig:
    """The fine-tuning loss of the pruning stage from its `transfer` setting."""
    if config.transfer == "none":
        return TransferConfig.labels_only()
    kd = config.kd_weight if config.transfer in ("kd_at", "kd") else 0.0
    at = config.at_weight if config.transfer in ("kd_at", "at") else 0.0
    return TransferConfig(ce_weight=1.0 - kd if kd else 1.0, kd_weight=kd, temperature=config.kd_temperature,
                          at_weight=at)


def load_teacher(path: str) -> tuple[keras.Model, dict]:
    """Loads a teacher `.keras` and the metrics.json written beside it (if any)."""
    return saving.load_model(path), saving.read_sidecar(path)


def _config_dict(config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _summary(model: keras.Model, prepared: data.PreparedData, batch: int) -> dict:
    cost = flops.model_cost(model)
    val = evaluation.evaluate(model, prepared.val.images, prepared.val.labels, prepared.class_names, batch)
    return {"params": cost.params, "flops": cost.flops, "val_accuracy": val["accuracy"], "val_loss": val["loss"]}


def prune_and_finetune(teacher: keras.Model, source: str | data.DataSplits, out_dir: str, config: PruneConfig, *,
                       val_size: int = 5000, split_seed: int = 0, device_pool_size: int = 0,
                       preset_name: str | None = None, teacher_path: str | None = None,
                       verbose: int | str = 0, allow_unpruned: bool = False, overwrite: bool = False) -> dict:
    """Prunes `teacher` by the policy of `config` and writes the results to `out_dir`.

    Args:
      teacher: the unpruned model (not changed).
      source: data source (or loaded splits); validation uses the split of `val_size`
        images held out with `split_seed` (the cloud stage's, so the teacher never trained on it).
      out_dir: output folder (`pruned.keras`, `metrics.json`, `prune_log.json`/`.csv`,
        `prune_plot.png`, `steps/`).
      config: the pruning configuration.
      allow_unpruned: when no pruned model satisfies the policy (every step broke the floor, or
        the time budget stopped it first), write the teacher itself (`"unpruned": True`)
        instead of raising.
      overwrite: discard an earlier run's files in `out_dir` (once the data and the teacher
        passed their checks) instead of resuming it.
      val_size, split_seed: the validation hold-out.
      device_pool_size: images held out for on-device experiments (the cloud stage's); never read.
      preset_name, teacher_path: recorded in the metrics.
      verbose: Keras fit verbosity for fine-tuning.

    Returns:
      The metrics written to `metrics.json`.

    Raises:
      UnsupportedModelError: the teacher has a layer filter pruning cannot handle (before any
        work is done).
      UserError: no validation split, a teacher whose outputs are not the data's classes, too
        few images, or a checkpoint of another setup in `out_dir`.
    """
    build_graph(teacher)  # fails fast on unsupported layers, before any work
    splits = source if isinstance(source, data.DataSplits) else data.load(source)
    _check_fit(teacher, splits.class_names, val_size)
    prepared = data.prepare_splits(splits, val_size=val_size, seed=split_seed, train_size=config.train_size,
                                   device_pool_size=device_pool_size, batch_size=config.batch_size)
    holdout = {"val_size": val_size, "split_seed": split_seed}
    if device_pool_size:
        holdout["device_pool_size"] = device_pool_size
    if overwrite:
        discard_run(out_dir)
    return prune_prepared(teacher, prepared, out_dir, config, holdout=holdout, preset_name=preset_name,
                          teacher_path=teacher_path, verbose=verbose, allow_unpruned=allow_unpruned)


# Every file and folder a pruning run writes in its out_dir.
RUN_FILES = (PRUNED_FILE, METRICS_FILE, LOG_FILE, "prune_log.csv", "prune_plot.png", STATE_FILE, FINAL_FILE,
             "learning_rate.json", STEPS_DIR)


def discard_run(out_dir: str) -> list[str]:
    """Removes an earlier pruning run's files from `out_dir` (nothing else there); returns
    their names."""
    removed = []
    for name in RUN_FILES:
        path = os.path.join(out_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        else:
            continue
        removed.append(name)
    if removed:
        logging.info("--overwrite: removed %s from %s", ", ".join(removed), out_dir)
    return removed


def _what_differs(saved, identity: dict) -> str:
    """The fields of a saved run's identity that differ from this run's, in words."""
    if not isinstance(saved, dict):
        return "its record has no identity"
    names = []
    for key, value in identity.items():
        if saved.get(key) == value:
            continue
        if key == "config" and isinstance(saved.get(key), dict):
            changed = [k for k in value if saved[key].get(k) != value[k]]
            names.append(f"the configuration ({', '.join(changed)})" if changed else "the configuration")
        else:
            names.append({"teacher": "the teacher's weights", "data": "the data's path", "class_names": "the classes",
                          "data_digest": "the data's images or labels"}.get(
                key, key))
    return ", ".join(names) or "nothing"


def prune_prepared(teacher: keras.Model, prepared: data.PreparedData, out_dir: str, config: PruneConfig, *,
                   holdout: dict, preset_name: str | None = None, teacher_path: str | None = None,
                   verbose: int | str = 0, allow_unpruned: bool = False) -> dict:
    """Prunes `teacher` on already prepared data: fine-tunes on `prepared.train`, chooses on
    `prepared.val`; `prepared.test` (may be None) is only measured at the end. Nothing else
    is read, which is what lets a caller restrict the images a pruned model ever sees.

    Args:
      teacher: the unpruned model (not changed); its outputs match `prepared.class_names`.
      prepared: the data.
      out_dir, config, preset_name, teacher_path, verbose: as `prune_and_finetune`.
      holdout: what identifies the data beside its source (recorded; a resumed run must match).
      allow_unpruned: as `prune_and_finetune`.

    Returns:
      The metrics written to `metrics.json`.
    """
    start_time = time.perf_counter()
    run = _setup(teacher, prepared, config)
    config, calibration = _calibrate_learning_rate(run, prepared, out_dir, config, verbose)
    state, policy = _trajectory(run, prepared, out_dir, config, holdout, verbose)
    chosen = _choose(state["log"])
    if chosen["step"] == 0 and not allow_unpruned:
        advice = ("pass a larger --budget_minutes" if "time budget" in (policy.stopped or "")
                  else "allow a larger --max_accuracy_drop or lower the floors")
        raise UserError(f"pruning policy: no pruned model satisfies it ({policy.stopped or 'no step was taken'}); "
                        f"{advice}")
    metrics = _finish(run, prepared, out_dir, out_dir, chosen, config, verbose, teacher_path, preset_name)
    metrics["stopped"] = policy.stopped or "targets met"
    metrics["unpruned"] = chosen["step"] == 0
    if metrics["unpruned"]:
        logging.warning("pruning: no pruned model satisfies the policy (%s); writing the original model unpruned",
                        policy.stopped or "no step was taken")
    metrics["steps_discarded"] = sum(1 for e in state["log"][1:] if not e.get("accepted", True))
    metrics["ways"] = [e.get("way") for e in state["log"][1:] if e.get("accepted", True)]
    metrics["learning_rate"] = config.learning_rate
    if calibration is not None:
        metrics["learning_rate_calibration"] = calibration
    metrics["wall_seconds"] = time.perf_counter() - start_time
    atomic.write_json(os.path.join(out_dir, METRICS_FILE), metrics)
    write_plot(out_dir, state["log"], method_label(config), final_point=(metrics["params"], metrics["val_accuracy"]))
    logging.info("pruned: params %s -> %s (%.2f%% removed), FLOPs %.1fM -> %.1fM, test top-1 %.4f (teacher %.4f)",
                 f"{metrics['teacher_params']:,}", f"{metrics['params']:,}", 100 * metrics["params_removed_fraction"],
                 metrics["teacher_flops"] / 1e6, metrics["flops"] / 1e6, metrics["test_accuracy"] or float("nan"),
                 metrics["teacher_test_accuracy"] or float("nan"))
    return metrics


def prune_milestones(teacher: keras.Model, prepared: data.PreparedData, out_dir: str, config: PruneConfig, *,
                     holdout: dict, teacher_path: str | None = None, verbose: int | str = 0) -> list[dict]:
    """One pruning run that stops at every ratio of `config.milestones` and at the target,
    each stop's model then fine-tuned for `final_epochs` on its own (a branch: the run goes
    on from the step model). Used by the Pareto sweep: one teacher, several budgets.

    Writes the run to `out_dir` and each budget to `out_dir/budget_<ratio>/` (`pruned.keras`,
    `metrics.json`). Returns the budgets' metrics, largest budget first; a budget the run
    did not reach (policy stopped) is missing.
    """
    run = _setup(teacher, prepared, config)
    config, _ = _calibrate_learning_rate(run, prepared, out_dir, config, verbose)
    state, _ = _trajectory(run, prepared, out_dir, config, holdout, verbose)
    ratios = sorted({*config.milestones, *([config.target_params_ratio] if config.target_params_ratio else [])},
                    reverse=True)
    accepted = [e for e in state["log"][1:] if e.get("accepted", True)]
    seconds = 0.0
    results = []
    for ratio in ratios:
        budget = int(ratio * run.base["params"])
        reached = [e for e in accepted if e["params"] <= budget]
        if not reached:
            break
        entry = reached[0]
        seconds = sum(e["seconds"] for e in state["log"][1:entry["step"] + 1])
        folder = os.path.join(out_dir, f"budget_{ratio:g}")
        os.makedirs(folder, exist_ok=True)
        metrics = _finish(run, prepared, out_dir, folder, entry, config, verbose, teacher_path, None)
        metrics.update(budget_ratio=ratio, trajectory_seconds=seconds, channels=entry.get("channels"),
                       steps_taken=sum(1 for e in accepted if e["step"] <= entry["step"]),
                       ways=[e.get("way") for e in accepted if e["step"] <= entry["step"]],
                       target_met=metrics["params"] <= budget)
        atomic.write_json(os.path.join(folder, METRICS_FILE), metrics)
        results.append(metrics)
    return results


@dataclasses.dataclass
class _Run:
    teacher: keras.Model   # float32
    base: dict             # the teacher's params, FLOPs and validation accuracy
    batch: int             # evaluation batch
    transfer: TransferConfig
    floor: float | None    # validation accuracy floor
    fingerprint: str       # the teacher's weights, which a resumed run must match


def _check_fit(teacher: keras.Model, class_names, val_size: int) -> None:
    if not val_size:
        raise UserError("--val_size=0: pruning chooses models on a validation split; pass --val_size > 0")
    if int(teacher.output_shape[-1]) != len(class_names):
        raise UserError(f"the teacher: has {teacher.output_shape[-1]} outputs but the data has {len(class_names)} "
                        f"classes ({list(class_names)}); pass the teacher trained on this data")


def _setup(teacher: keras.Model, prepared: data.PreparedData, config: PruneConfig) -> _Run:
    build_graph(teacher)
    _check_fit(teacher, prepared.class_names, 0 if prepared.val is None else len(prepared.val.labels))
    batch = max(config.batch_size, 256)
    # A teacher ending in softmax is pruned and distilled on its logits (the student starts as it).
    teacher32 = saving.logits_model(saving.float32_copy(teacher))
    base = _summary(teacher32, prepared, batch)
    floor = None
    if config.max_accuracy_drop is not None:
        floor = base["val_accuracy"] - config.max_accuracy_drop / 100.0
    return _Run(teacher32, base, batch, transfer_config(config), floor, saving.fingerprint(teacher32))


LEARNING_RATE_FILE = "learning_rate.json"


def _calibrate_learning_rate(run: _Run, prepared: data.PreparedData, out_dir: str, config: PruneConfig,
                             verbose) -> tuple[PruneConfig, dict | None]:
    """With `config.learning_rate_choices`: the config with the chosen rate for the steps and
    the final fine-tuning, and the calibration's record (kept in `out_dir`, reused on resume);
    else `config` unchanged and None."""
    if not config.learning_rate_choices:
        return config, None
    path = os.path.join(out_dir, LEARNING_RATE_FILE)
    identity = {"teacher": run.fingerprint, "data": prepared.source, "data_digest": prepared.content_digest(),
                "choices": list(config.learning_rate_choices),
                "probe_images": config.probe_images, "batch_size": config.batch_size, "seed": config.seed,
                "transfer": config.transfer, "val_images": int(len(prepared.val.labels))}
    record = None
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved.get("identity") == identity:
            record = saved
    if record is None:
        probe_set = data.stratified_subset(prepared.train, min(config.probe_images, len(prepared.train.labels)),
                                           seed=config.seed * 1000)
        drop = (config.max_accuracy_drop if config.max_accuracy_drop is not None else 1.0) / 100.0
        val = {}
        for rate in sorted(config.learning_rate_choices, reverse=True):
            model, _ = fit_student(saving.float32_copy(run.teacher), probe_set, teacher=run.teacher,
                                   transfer=run.transfer, config=_finetune(config, 1, rate, config.seed * 1000),
                                   verbose=verbose)
            val[str(rate)] = evaluation.evaluate(model, prepared.val.images, prepared.val.labels, prepared.class_names,
                                                 run.batch)["accuracy"]
        keeps = [float(r) for r, v in val.items() if v >= run.base["val_accuracy"] - drop - 1e-12]
        chosen = max(keeps) if keeps else float(max(val, key=lambda r: (val[r], -float(r))))
        record = {"identity": identity, "teacher_val_accuracy": run.base["val_accuracy"], "val_accuracy": val,
                  "chosen": chosen, "kept_the_teacher": bool(keeps)}
        os.makedirs(out_dir, exist_ok=True)
        atomic.write_json(path, record)
    logging.info("learning rate: the teacher fine-tuned on %d images scores %s on validation (its own %.4f); using %g",
                 min(config.probe_images, len(prepared.train.labels)),
                 ", ".join(f"{v:.4f} at {r}" for r, v in record["val_accuracy"].items()),
                 run.base["val_accuracy"], record["chosen"])
    chosen = record["chosen"]
    return dataclasses.replace(config, learning_rate=chosen, final_learning_rate=chosen), record


def _trajectory(run: _Run, prepared: data.PreparedData, out_dir: str, config: PruneConfig, holdout: dict,
                verbose) -> tuple[dict, schedule.PolicyState]:
    """The step loop of the policy (resumes from `out_dir`); returns the saved state and the
    policy's final state."""
    os.makedirs(os.path.join(out_dir, STEPS_DIR), exist_ok=True)
    teacher32, base, batch, transfer, floor = run.teacher, run.base, run.batch, run.transfer, run.floor
    max_params = int(config.target_params_ratio * base["params"]) if config.target_params_ratio is not None else None
    max_flops = int(config.target_flops_ratio * base["flops"]) if config.target_flops_ratio is not None else None
    milestones = sorted({int(m * base["params"]) for m in config.milestones}, reverse=True)
    policy = schedule.PolicyState(params=base["params"], flops=base["flops"], step=schedule.initial_step(
        target_params_ratio=config.target_params_ratio, target_flops_ratio=config.target_flops_ratio,
        steps=config.steps, step_keep=config.step_keep))
    logging.info("teacher: %s params, %.1f MFLOPs, val top-1 %.4f; first step removes %.1f%%%s", f"{base['params']:,}",
                 base["flops"] / 1e6, base["val_accuracy"], 100 * policy.step,
                 f", accuracy floor {floor:.4f}" if floor is not None else "")

    # The time budget decides only where the steps stop, not what a step computes.
    identity = {"config": {k: v for k, v in _config_dict(config).items() if k != "budget_seconds"},
                "data": prepared.source, "data_digest": prepared.content_digest(), **holdout, "teacher": run.fingerprint,
                "class_names": list(prepared.class_names), "teacher_params": base["params"], "teacher_flops": base["flops"]}
    state_path = os.path.join(out_dir, STATE_FILE)
    state = {"identity": identity, "log": [{"step": 0, **base, "params_ratio": 1.0, "flops_ratio": 1.0,
                                            "seconds": 0.0, "target_params": None, "target_flops": None,
                                            "accepted": True}],
             "policy": dataclasses.asdict(policy), "current": 0}
    student = teacher32
    if os.path.exists(state_path):
        with open(state_path) as f:
            saved = json.load(f)
        if isinstance(saved.get("identity"), dict) and "data_digest" not in saved["identity"]:
            # Recorded before the data's digest was: matched by the data's path as then.
            saved["identity"]["data_digest"] = identity["data_digest"]
        if saved.get("identity") != identity:
            raise UserError(f"{state_path}: an earlier run of another setup is in this folder (differs: "
                            f"{_what_differs(saved.get('identity'), identity)}); pass --overwrite to replace it, or "
                            "another --out_dir")
        state = saved
        policy = schedule.PolicyState(**state["policy"])
        if state["current"] > 0:
            student = saving.load_model(_step_path(out_dir, state["current"]))
            logging.info("resuming from step %d", state["current"])

    original = {g.name: g.channels for g in build_graph(teacher32).prunable_groups()}
    calib = data.stratified_subset(prepared.train, min(config.calibration_size, len(prepared.train.labels)),
                                   seed=config.seed).images
    while True:
        budget = schedule.next_budget(policy, max_params=max_params, max_flops=max_flops, milestones=milestones,
                                      max_steps=config.max_steps)
        if budget is None:
            break
        over = _over_time_budget(state["log"], config)
        if over:
            logging.info("stopping: %s", over)
            policy = dataclasses.replace(policy, stopped=over)
            state["policy"] = dataclasses.asdict(policy)
            atomic.write_json(state_path, state)
            break
        step = len(state["log"])
        t0 = time.perf_counter()
        g = build_graph(student)
        try:
            way, keep, candidate, probe = _prune_step(run, prepared, student, g, calib, budget, original, config,
                                                      step)
        except ValueError as e:
            logging.warning("step %d: %s; stopping", step, e)
            policy = dataclasses.replace(policy, stopped=str(e))
            state["policy"] = dataclasses.asdict(policy)
            atomic.write_json(state_path, state)
            break
        if config.step_epochs:
            candidate, _ = fit_student(candidate, prepared.train, teacher=teacher32, transfer=transfer,
                                       config=_finetune(config, config.step_epochs, config.learning_rate,
                                                        config.seed * 1000 + step), verbose=verbose)
        entry = {"step": step, **_summary(candidate, prepared, batch), "seconds": time.perf_counter() - t0,
                 "target_params": budget[0], "target_flops": budget[1], "step_fraction": policy.step,
                 "way": way, "probe": probe,
                 "channels": {g.groups[gid].name: int(len(idx)) for gid, idx in keep.items()}}
        entry["params_ratio"] = entry["params"] / base["params"]
        entry["flops_ratio"] = entry["flops"] / base["flops"]
        policy, accepted = schedule.after_step(policy, params=entry["params"], flops=entry["flops"],
                                               accuracy=entry["val_accuracy"], floor=floor, min_step=config.min_step,
                                               removed=schedule.removed_fraction(policy, budget))
        entry["accepted"] = accepted
        if accepted:
            saving.save_model(candidate, _step_path(out_dir, step))
            student = candidate
            state["current"] = step
        else:
            logging.info("step %d: val top-1 %.4f is below the floor %.4f; back to step %d, next step removes %.1f%%",
                         step, entry["val_accuracy"], floor, state["current"], 100 * policy.step)
        state["log"].append(entry)
        state["policy"] = dataclasses.asdict(policy)
        atomic.write_json(state_path, state)
        write_log(out_dir, state["log"], method_label(config))
        logging.info("step %d: params %s (%.2f%%), FLOPs %.1fM, val top-1 %.4f, %.0fs%s", step, f"{entry['params']:,}",
                     100 * entry["params_ratio"], entry["flops"] / 1e6, entry["val_accuracy"], entry["seconds"],
                     "" if accepted else " (discarded)")
    if policy.stopped:
        logging.info("stopped: %s", policy.stopped)
    return state, policy


def _over_time_budget(log: list[dict], config: PruneConfig) -> str:
    """Why another step would overrun `config.budget_seconds` ("" if it would not): the steps
    so far, one more like the last, and the final fine-tuning (the last step's fine-tuning time
    per epoch times `final_epochs`)."""
    steps = [e for e in log if e["step"] > 0]
    if config.budget_seconds is None or not steps:
        return ""
    spent = sum(e["seconds"] for e in steps)
    last = steps[-1]["seconds"]
    final = last / max(config.step_epochs, 1) * config.final_epochs
    if spent + last + final <= config.budget_seconds:
        return ""
    return (f"the time budget of {config.budget_seconds / 60:.1f} min: {spent / 60:.1f} min spent on {len(steps)} "
            f"steps, another step and the final fine-tuning would take about {(last + final) / 60:.1f} min more")


def _finish(run: _Run, prepared: data.PreparedData, run_dir: str, out_dir: str, chosen: dict, config: PruneConfig,
            verbose, teacher_path: str | None, preset_name: str | None) -> dict:
    """Fine-tunes the step model `chosen` for `final_epochs` into `out_dir/pruned.keras`
    (once: a finished one is reused) and measures it."""
    pruned_path = os.path.join(out_dir, PRUNED_FILE)
    final_state_path = os.path.join(out_dir, FINAL_FILE)
    start = time.perf_counter()
    if os.path.exists(final_state_path) and os.path.exists(pruned_path):
        final = saving.load_model(pruned_path)
        with open(final_state_path) as f:
            final_state = json.load(f)
        final_seconds, kept = final_state.get("seconds"), final_state.get("final_finetune_kept", True)
    else:
        # Step 0 is the teacher itself (nothing pruned): it is written as it is, not fine-tuned.
        step_model = run.teacher if chosen["step"] == 0 else saving.load_model(_step_path(run_dir, chosen["step"]))
        final, kept = step_model, False
        if config.final_epochs and chosen["step"] > 0:
            final, _ = fit_student(step_model, prepared.train, teacher=run.teacher, transfer=run.transfer,
                                   config=_finetune(config, config.final_epochs, config.final_learning_rate,
                                                    config.seed * 1000 + 999), verbose=verbose)
            kept = True
            if run.floor is not None:
                # Under an accuracy floor the final fine-tuning is kept only if it does not lower
                # validation accuracy (a choice on validation images, never on test images).
                val = evaluation.evaluate(final, prepared.val.images, prepared.val.labels, prepared.class_names,
                                          run.batch)["accuracy"]
                if val < chosen["val_accuracy"]:
                    logging.info("final fine-tuning: val top-1 %.4f below the step model's %.4f; keeping the step model",
                                 val, chosen["val_accuracy"])
                    final, kept = step_model, False
        saving.save_model(final, pruned_path)
        final_seconds = time.perf_counter() - start
        atomic.write_json(final_state_path, {"chosen_step": chosen["step"], "seconds": final_seconds,
                                             "final_finetune_kept": kept})
    metrics = _final_metrics(final, run.teacher, prepared, run.base, chosen, config, run.floor, run.batch, pruned_path,
                             teacher_path, preset_name)
    metrics["final_seconds"] = final_seconds
    metrics["final_finetune_kept"] = kept
    return metrics


def method_label(config: PruneConfig) -> str:
    """How channels are chosen, in words: one way, or the candidates chosen among per step."""
    if config.candidates:
        return "per step, the best on validation of " + ", ".join(config.candidates)
    return f"{config.criterion}/{config.allocation}" + (f":{config.cost_exponent:g}" if config.allocation == "cost"
                                                        else "")


def _finetune(config: PruneConfig, epochs: int, learning_rate: float, seed: int) -> FinetuneConfig:
    return FinetuneConfig(epochs=epochs, batch_size=config.batch_size, learning_rate=learning_rate,
                          weight_decay=config.weight_decay, precision=config.precision, seed=seed)


def _prune_step(run: _Run, prepared: data.PreparedData, student: keras.Model, g, calib, budget, original,
                config: PruneConfig, step: int) -> tuple[str, dict, keras.Model, dict]:
    """Prunes `student` to `budget` each way of `config.candidates` (or the one way of its
    `criterion`/`allocation`) and, with several, keeps the way whose model is best on
    validation after a short fine-tuning (`probe_images`).

    Returns:
      (the way's name, kept channels, the pruned model, validation top-1 per way probed).

    Raises:
      ValueError: no way meets the budget (the last way's reason). A way whose floors do
        not fit the budget is left out when another one does.
    """
    names = config.candidates or (method_label(config),)
    scores, pruned, error = {}, [], None
    for name in names:
        criterion, alloc, exponent, own_floors = parse_candidate(name)
        stream_floor, layer_floor = own_floors or (config.stream_floor, config.layer_floor)
        floors = allocation.channel_floors(g, original, stream_floor=stream_floor, layer_floor=layer_floor)
        if criterion not in scores:
            scores[criterion] = criteria.importance(g, criterion, calib, p=config.attention_p,
                                                    normalization=config.normalization, batch_size=64)
        try:
            keep = allocation.select_channels(g, scores[criterion], max_params=budget[0], max_flops=budget[1],
                                              min_channels=config.min_channels, floors=floors, allocation=alloc,
                                              cost_exponent=exponent)
        except ValueError as e:
            error = e
            continue
        pruned.append((name, keep, prune_model(student, keep, g)))
    if not pruned:
        raise error
    if len(pruned) == 1:
        return pruned[0][0], pruned[0][1], pruned[0][2], {}
    probe_set = data.stratified_subset(prepared.train, min(config.probe_images, len(prepared.train.labels)),
                                       seed=config.seed * 1000 + step)
    probe, best = {}, None
    for name, keep, model in pruned:
        model, _ = fit_student(model, probe_set, teacher=run.teacher, transfer=run.transfer,
                               config=_finetune(config, 1, config.learning_rate, config.seed * 1000 + step))
        probe[name] = evaluation.evaluate(model, prepared.val.images, prepared.val.labels, prepared.class_names,
                                          run.batch)["accuracy"]
        if best is None or probe[name] > probe[best[0]]:
            best = (name, keep, model)
    logging.info("step %d: validation after the probe %s; keeping %s", step,
                 ", ".join(f"{n} {v:.4f}" for n, v in probe.items()), best[0])
    return best[0], best[1], best[2], probe


def _step_path(out_dir: str, step: int) -> str:
    return os.path.join(out_dir, STEPS_DIR, f"step_{step:02d}.keras")


def _choose(log: list[dict]) -> dict:
    """The smallest accepted step model (the last one taken, since each removes more)."""
    ok = [e for e in log[1:] if e.get("accepted", True)]
    if not ok:
        return log[0]
    return min(ok, key=lambda e: (e["params"], -e["val_accuracy"]))


def _final_metrics(final, teacher, prepared, base, chosen, config, floor, batch, pruned_path, teacher_path,
                   preset_name) -> dict:
    cost = flops.model_cost(final)
    val = evaluation.evaluate(final, prepared.val.images, prepared.val.labels, prepared.class_names, batch)
    test = t_test = None
    if prepared.test is not None:
        test = evaluation.evaluate(final, prepared.test.images, prepared.test.labels, prepared.class_names, batch)
        t_test = evaluation.evaluate(teacher, prepared.test.images, prepared.test.labels, prepared.class_names, batch)
    shape = tuple(final.input_shape[1:])
    target_met = ((config.target_params_ratio is None or cost.params <= config.target_params_ratio * base["params"] * 1.0001)
                  and (config.target_flops_ratio is None or cost.flops <= config.target_flops_ratio * base["flops"] * 1.0001))
    return {
        "preset": preset_name,
        "data": prepared.source,
        "class_names": list(prepared.class_names),
        "teacher": teacher_path,
        "method": method_label(config),
        "criterion": None if config.candidates else config.criterion,
        "allocation": None if config.candidates else config.allocation,
        "transfer": config.transfer,
        "params": cost.params,
        "teacher_params": base["params"],
        "params_removed_fraction": 1.0 - cost.params / base["params"],
        "flops": cost.flops,
        "teacher_flops": base["flops"],
        "flops_removed_fraction": 1.0 - cost.flops / base["flops"],
        "test_accuracy": test["accuracy"] if test else None,
        "teacher_test_accuracy": t_test["accuracy"] if t_test else None,
        "test_images": test["n_images"] if test else 0,
        "val_accuracy": val["accuracy"],
        "teacher_val_accuracy": base["val_accuracy"],
        "accuracy_floor": floor,
        "target_met": bool(target_met),
        "chosen_step": chosen["step"],
        "file_bytes": os.path.getsize(pruned_path),
        "teacher_file_bytes": os.path.getsize(teacher_path) if teacher_path and os.path.exists(teacher_path) else None,
        "latency_ms_batch1": evaluation.inference_latency_ms(final, shape),
        "teacher_latency_ms_batch1": evaluation.inference_latency_ms(teacher, shape),
        "test_per_class": test["per_class"] if test else None,
        "config": _config_dict(config),
    }
