"""The device app's command line: `python -m tflite_runtime_app {learn,learn-unseen,evaluate,predict,info}`.

Every command prints, as its last line, one JSON object with its result.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import math
import os
import re
import sys
import time

import numpy as np

from tflite_runtime_app import atomic_file
from tflite_runtime_app import checkpoint as ckpt
from tflite_runtime_app.atomic_file import temp_name
from tflite_runtime_app import data as app_data
from tflite_runtime_app import heads, image_folder, lock, metrics
from tflite_runtime_app.errors import EXIT_INTERRUPTED, INTERRUPTED, UserError, fail, from_os_error, printable
from tflite_runtime_app.image_folder import DataError
from tflite_runtime_app.kernels import delegation
from tflite_runtime_app.runner import RUNTIMES, DeviceModel, ModelError, runtime_version
from tflite_runtime_app.train import AUGMENTATIONS, LEARNING_RATE_RANGE, LearnConfig, Progress, Task, learn

COMMANDS = ("learn", "learn-unseen", "evaluate", "predict", "info")
# Flags whose default depends on other flags (None on the parser, so an explicit value is seen).
_DEFAULT_VAL_FRACTION = 0.1
_DEFAULT_REPLAY_RATIO = 0.25


def _model(args) -> DeviceModel:
    model = DeviceModel(args.model, meta_path=args.meta, num_threads=args.threads, runtime=args.runtime)
    if getattr(args, "checkpoint", None) and args.command in ("evaluate", "predict"):
        weights, _, _ = ckpt.load(args.checkpoint, model.weight_shapes,
                                  advice="pass a checkpoint written by learn for this model to --checkpoint")
        model.set_weights(weights)
    return model


def _init_weights(model: DeviceModel, args) -> list[str]:
    """Starts from another run's weights (e.g. `learn` before `learn-unseen`); returns the
    classes those weights have learned."""
    if args.init:
        weights, state, _ = _load_init(model, args)
        model.set_weights(weights)
        learned = state.get("learned_classes")
        if learned:
            if not isinstance(learned, list) or not set(learned) <= set(model.class_names):
                raise ckpt.CheckpointError(f"{args.init}: its learned_classes {str(learned)[:100]} are not this "
                                           "model's classes; pass a checkpoint written by learn for this model to "
                                           "--init")
            return list(learned)
    return heads.initial_learned(model)


def _load_init(model: DeviceModel, args):
    return ckpt.load(args.init, model.weight_shapes,
                     advice="pass a checkpoint written by learn for this model to --init")


def _check_checkpoints(model: DeviceModel, args) -> None:
    """Refuses an unusable --init or checkpoint to resume before any data is loaded, and removes
    the temporary files that a run killed while writing the checkpoint left behind."""
    ckpt.remove_stale(args.checkpoint)
    if args.init:
        _load_init(model, args)
    if os.path.exists(args.checkpoint) and not args.restart:
        ckpt.load(args.checkpoint, model.weight_shapes)


def _learn(model: DeviceModel, task: Task, args) -> dict:
    """The loop, after the head initialiser for classes the weights have not learned yet."""
    fresh = not os.path.exists(args.checkpoint) or args.restart
    learned = _init_weights(model, args) if fresh else None
    prepare = None
    if fresh and args.head_init == "imprint":
        def prepare(m):
            try:
                return heads.imprint_unlearned(m, task.images, task.targets, learned)
            except ValueError as e:
                raise ModelError(str(e)) from e
    after = heads.learned_after(model, task.targets, learned) if fresh else None
    return learn(model, task, _config(args), args.checkpoint, restart=args.restart,
                 progress=Progress(quiet=args.quiet), prepare=prepare, learned_classes=after)


def _split_val(images, targets, fraction, seed, source):
    """(train, val) of a random `fraction` split; each keeps at least one image."""
    n = len(images)
    if n < 2:
        raise DataError(f"{source}: {n} image{'s' if n != 1 else ''}, too few to learn from: learning needs at least 2 "
                        "(1 to train on, 1 to validate with); add images, or pass labelled validation images with "
                        "--val_data")
    order = np.random.default_rng([seed, 99]).permutation(n)
    k = min(max(1, int(round(fraction * n))), n - 1)
    val, train = order[:k], order[k:]
    return images[train], targets[train], images[val], targets[val]


def _check_val_groups(args, model: DeviceModel, val_targets: np.ndarray) -> None:
    """Refuses --val_groups when no validation image belongs to any group (no score)."""
    groups = _val_groups(args, model)
    if groups is None:
        return
    truth = val_targets if val_targets.ndim == 1 else val_targets.argmax(axis=1)
    if not np.isin(truth, [c for group in groups for c in group]).any():
        raise DataError(f"--val_groups={args.val_groups}: none of the {len(truth)} validation images belongs to these "
                        "classes, so there is nothing to score; name classes of the validation images")


def _config(args) -> LearnConfig:
    return LearnConfig(max_epochs=args.epochs, learning_rate=args.lr, patience=args.patience, min_delta=args.min_delta,
                       replay_ratio=args.replay_ratio, checkpoint_every=args.checkpoint_every, seed=args.seed,
                       augment=args.augment)


def _replay(args, model):
    if not args.replay:
        return None, None
    return app_data.load_labelled(args.replay, model.class_names, model.input_shape, resize=args.resize)


def _val_groups(args, model: DeviceModel) -> list[list[int]] | None:
    if not args.val_groups:
        return None
    return [[model.class_names.index(c) for c in classes]
            for classes in _groups(args.val_groups, model, "--val_groups").values()]


def cmd_learn(args) -> dict:
    model = _model(args)
    _val_groups(args, model)
    _check_checkpoints(model, args)
    images, labels = app_data.load_labelled(args.data, model.class_names, model.input_shape, split=args.split,
                                            resize=args.resize, skip_bad_files=args.skip_bad_files,
                                            skip_unknown_classes=args.skip_unknown_classes)
    if args.val_data:
        val_x, val_y = app_data.load_labelled(args.val_data, model.class_names, model.input_shape, resize=args.resize,
                                              skip_unknown_classes=args.skip_unknown_classes)
        train_x, train_y = images, labels
    else:
        train_x, train_y, val_x, val_y = _split_val(images, labels, args.val_fraction, args.seed, args.data)
    _check_val_groups(args, model, val_y)
    replay_x, replay_y = _replay(args, model)
    task = Task("labelled", train_x, train_y, val_x, val_y, replay_images=replay_x, replay_labels=replay_y,
                val_groups=_val_groups(args, model))
    result = _learn(model, task, args)
    return {"command": "learn", "train_images": int(len(train_x)), "val_images": int(len(val_x)),
            "threads": args.threads, "runtime": model.runtime, "runtime_version": runtime_version(model.runtime),
            "checkpoint": args.checkpoint, **result}


def cmd_learn_unseen(args) -> dict:
    model = _model(args)
    _val_groups(args, model)
    _check_checkpoints(model, args)
    images, soft, temperature = app_data.load_soft_labels(args.soft_labels, model.class_names, model.input_shape,
                                                          resize=args.resize)
    if args.temperature is not None:
        temperature = args.temperature
    if args.val_data:
        train_x, train_t = images, soft
        val_x, val_t = app_data.load_labelled(args.val_data, model.class_names, model.input_shape,
                                              resize=args.resize)
    else:
        train_x, train_t, val_x, val_t = _split_val(images, soft, args.val_fraction, args.seed, args.soft_labels)
    _check_val_groups(args, model, val_t)
    replay_x, replay_y = _replay(args, model)
    task = Task("soft", train_x, train_t, val_x, val_t, temperature=temperature, replay_images=replay_x,
                replay_labels=replay_y, val_groups=_val_groups(args, model))
    result = _learn(model, task, args)
    return {"command": "learn-unseen", "train_images": int(len(train_x)), "val_images": int(len(val_x)),
            "temperature": temperature, "threads": args.threads, "runtime": model.runtime,
            "runtime_version": runtime_version(model.runtime),
            "checkpoint": args.checkpoint, **result}


def evaluate(model: DeviceModel, images: np.ndarray, labels: np.ndarray,
             groups: dict[str, list[str]] | None = None) -> dict:
    """Accuracy, per-class recall and precision, confusion matrix, and per named group of
    classes (e.g. old / new) its recall and precision."""
    return metrics.classification_metrics(model.logits(images), labels, model.class_names, groups)


def cmd_evaluate(args) -> dict:
    model = _model(args)
    groups = _groups(args.groups, model, "--groups") if args.groups else _default_groups(model)
    images, labels = app_data.load_labelled(args.data, model.class_names, model.input_shape, split=args.split,
                                            resize=args.resize, skip_bad_files=args.skip_bad_files,
                                            skip_unknown_classes=args.skip_unknown_classes)
    start = time.perf_counter()
    result = evaluate(model, images, labels, groups)
    result["seconds"] = time.perf_counter() - start
    return {"command": "evaluate", "runtime": model.runtime, "runtime_version": runtime_version(model.runtime),
            **result}


def _default_groups(model: DeviceModel) -> dict | None:
    new = list(model.meta.get("new_class_names", []))
    return {"old": [c for c in model.class_names if c not in new], "new": new} if new else None


def _parse_groups(text: str, flag: str) -> dict[str, list[str]]:
    """Parses `name=class,class;name=class` (syntax only)."""
    groups = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, members = part.partition("=")
        classes = [c.strip() for c in members.split(",") if c.strip()]
        if not sep or not name.strip() or not classes:
            raise UserError(f"{flag}={text}: expected name=class,class;name=class. Received: {part!r}; write each "
                            "group as its name, '=' and its classes")
        if name.strip() in groups:
            raise UserError(f"{flag}={text}: group {name.strip()!r} is given twice; give each group once")
        twice = sorted({c for c in classes if classes.count(c) > 1})
        if twice:
            raise UserError(f"{flag}={text}: group {name.strip()!r} lists {twice} more than once; name each class of "
                            "a group once (a class may belong to several groups)")
        groups[name.strip()] = classes
    if not groups:
        raise UserError(f"{flag}={text}: no groups; write name=class,class;name=class")
    return groups


def _groups(text: str, model: DeviceModel, flag: str = "--groups") -> dict[str, list[str]]:
    """Parses `name=class,class;name=class` into groups of the model's classes."""
    groups = _parse_groups(text, flag)
    for classes in groups.values():
        unknown = [c for c in classes if c not in model.class_names]
        if unknown:
            raise UserError(f"{flag}={text}: classes {unknown} are not the model's ({model.class_names}); name the "
                            "model's classes")
    return groups


def cmd_predict(args) -> dict:
    model = _model(args)
    is_npz = args.images.lower().endswith(".npz")
    if os.path.isfile(args.images) and not is_npz and not image_folder.is_archive(args.images):
        data = image_folder.read_image_file(args.images, "pass an image file, or a folder or archive of them")
        images = image_folder.decode_image(data, args.images)[None]
        images = app_data.check_images(images, args.images, model.input_shape, args.resize)
        names = [os.path.basename(args.images)]
    elif is_npz and os.path.exists(args.images):
        images = app_data.load_unlabelled(args.images, model.input_shape, resize=args.resize)
        names = [str(i) for i in range(len(images))]
    else:
        images, names = image_folder.read_images(args.images, image_size=model.input_shape[:2], resize=args.resize,
                                                 skip_bad_files=args.skip_bad_files,
                                                 resize_advice=app_data.RESIZE_ADVICE)
        images = app_data.check_images(images, args.images, model.input_shape, args.resize)
    probs = model.predict(images)
    k = min(args.top_k, model.num_classes)
    rows = []
    for name, p in zip(names, probs):
        top = np.argsort(-p)[:k]
        rows.append({"image": name, "top": [{"class": model.class_names[i], "probability": float(p[i])} for i in top]})
        if not args.quiet:
            print(printable(f"{name}: " + ", ".join(f"{model.class_names[i]} {p[i]:.3f}" for i in top)))
    return {"command": "predict", "runtime": model.runtime, "runtime_version": runtime_version(model.runtime),
            "n_images": len(rows), "predictions": rows}


def cmd_info(args) -> dict:
    model = _model(args)
    meta = model.meta
    sizes = {os.path.basename(args.model): os.path.getsize(args.model)}
    inference = os.path.join(os.path.dirname(os.path.abspath(args.model)), meta.get("inference_model", ""))
    if meta.get("inference_model") and os.path.exists(inference):
        sizes[meta["inference_model"]] = os.path.getsize(inference)
    version = runtime_version(model.runtime)
    kernels = delegation(model.interpreter)
    if not args.quiet:
        print(f"model: {args.model} ({model.runtime} {version or '(version unknown)'}, {args.threads} thread(s))")
        print(f"classes ({model.num_classes}): {', '.join(model.class_names)}")
        print(f"batch size: {model.batch_size}, input: {model.input_shape} raw RGB 0-255")
        for name, inputs in sorted(model.signature_inputs.items()):
            ins = ", ".join(f"{k}{shape}" for k, shape in inputs.items())
            print(f"  {name}({ins if len(ins) < 120 else str(len(inputs)) + ' tensors'})")
        for name, size in sizes.items():
            print(f"  {name}: {size / 1024:.1f} KiB")
        print(_kernel_text(kernels))
    return {"command": "info", "runtime": model.runtime, "runtime_version": version, "threads": args.threads,
            "kernels": kernels, "classes": model.class_names, "batch_size": model.batch_size,
            "input_shape": list(model.input_shape), "signatures": sorted(model.signature_inputs),
            "trainable_weights": len(meta.get("trainable_weights", [])), "sizes_bytes": sizes,
            "options": meta.get("options", {})}


def _kernel_text(kernels: dict | None) -> str:
    if kernels is None:
        return "kernels: this runtime does not list its nodes"
    where = f"the {kernels['subgraph']} step" if kernels["subgraph"] else "the first subgraph"
    builtin = ", ".join(f"{op} {n}" for op, n in sorted(kernels["builtin"].items(), key=lambda kv: -kv[1]))
    if not kernels["partitions"]:
        return f"kernels ({where}): no delegate applied; all {kernels['ops']} ops on builtin kernels ({builtin})"
    return (f"kernels ({where}): XNNPACK runs {kernels['delegated']} of {kernels['ops']} ops in "
            f"{kernels['partitions']} partition(s); builtin kernels run {builtin or 'none'}")


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line `error: <what>: <why>; see --help` and exit code 2
    (raised as a UserError, so `main` prints them like every other user error)."""

    def error(self, message: str):
        raise UserError(_flag_error_text(message))


def _unquote(text: str) -> str:
    return text.strip().strip("'\"")


def _flag_error_text(message: str) -> str:
    """argparse's message in the `<what>: <why>; <what to do>` form."""
    message = " ".join(message.split())
    m = re.match(r"the following arguments are required: (.+)$", message)
    if m:
        names = [n.strip() for n in m.group(1).split(",")]
        if names == ["command"]:
            return f"command: missing; choose one of {', '.join(COMMANDS)} (see --help)"
        flag = "flags" if len(names) > 1 else "flag"
        return f"{', '.join(names)}: required {flag} missing; pass {'=..., '.join(names)}=... (see --help)"
    m = re.match(r"argument (\S+): invalid choice: (.+?)(?:,? maybe you meant .*?)? \(choose from (.+)\)$", message)
    if m:
        name, value = m.group(1), _unquote(m.group(2))
        choices = ", ".join(_unquote(c) for c in m.group(3).split(","))
        if not name.startswith("-"):
            return f"{value}: not a command; choose one of {choices} (see --help)"
        return f"{name}={value}: not one of {choices}; pass one of them (see --help)"
    m = re.match(r"argument (\S+): invalid (\w+) value: (.+)$", message)
    if m:
        name, kind, value = m.group(1), m.group(2), _unquote(m.group(3))
        what = {"int": "an integer", "float": "a number"}.get(kind, f"a valid {kind}")
        return f"{name}={value}: not {what}; pass {name}=<{what.split()[-1]}> (see --help)"
    m = re.match(r"argument (\S+): expected one argument$", message)
    if m:
        return f"{m.group(1)}: no value given; pass {m.group(1)}=VALUE (see --help)"
    m = re.match(r"unrecognized arguments: (.+)$", message)
    if m:
        tokens = m.group(1)
        kind = "unknown flag" if tokens.startswith("-") else "unexpected argument"
        return f"{tokens}: {kind} (flags are --name=value); check the spelling (see --help)"
    m = re.match(r"ambiguous option: (\S+) could match (.+)$", message)
    if m:
        return f"{m.group(1)}: ambiguous, could be {m.group(2)}; write the flag in full (see --help)"
    m = re.match(r"argument (\S+): (.+)$", message)
    if m:
        return f"{m.group(1)}: {m.group(2)}; see --help"
    return f"command line: {message}; see --help"


def _must(args, flag: str, ok, expected: str, example) -> None:
    value = getattr(args, flag, None)
    if value is not None and not ok(value):
        raise UserError(f"--{flag}={value}: must be {expected}; pass e.g. --{flag}={example} (see --help)")


def _finite(v) -> bool:
    return math.isfinite(v)


def check_flags(args) -> None:
    """Refuses flag values out of range and flag combinations that make no sense, before any
    file is read."""
    for name, value in sorted(vars(args).items()):
        if value == "" and name != "command":
            raise UserError(f"--{name}=: an empty value; pass a value, or drop the flag (see --help)")
    _must(args, "threads", lambda v: 1 <= v <= 1024, "an integer in 1..1024", 1)
    _must(args, "epochs", lambda v: v >= 1, "an integer >= 1", 20)
    _must(args, "patience", lambda v: v >= 1, "an integer >= 1", 3)
    _must(args, "checkpoint_every", lambda v: v >= 1, "an integer >= 1", 50)
    _must(args, "top_k", lambda v: v >= 1, "an integer >= 1", 3)
    _must(args, "seed", lambda v: v >= 0, "an integer >= 0", 0)
    # Rates and temperatures reach the model as float32: they must stay normal numbers there.
    low, high = LEARNING_RATE_RANGE
    _must(args, "lr", lambda v: _finite(v) and low <= v <= high, f"a number in [{low:g}, {high:g}]", 0.01)
    _must(args, "min_delta", lambda v: _finite(v) and v >= 0, "a finite number >= 0", 0.002)
    _must(args, "val_fraction", lambda v: _finite(v) and 0 < v < 1, "a number in (0, 1)", _DEFAULT_VAL_FRACTION)
    _must(args, "replay_ratio", lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)", _DEFAULT_REPLAY_RATIO)
    low, high = app_data.TEMPERATURE_RANGE
    _must(args, "temperature", lambda v: _finite(v) and low <= v <= high, f"a number in [{low:g}, {high:g}]", 2.0)
    if args.command in ("learn", "learn-unseen"):
        if args.val_fraction is not None and args.val_data:
            raise UserError(f"--val_fraction={args.val_fraction}: has no effect with --val_data={args.val_data} "
                            "(validation is that data); drop one of the two")
        if args.val_data and getattr(args, "data", None) and \
                os.path.realpath(args.val_data) == os.path.realpath(args.data):
            raise UserError(f"--val_data={args.val_data}: is the training data (--data={args.data}); validating on the "
                            "images it trains on cannot stop it in time or pick the best weights; pass held-out "
                            "images, or drop --val_data to hold out a split of --data")
        if args.replay_ratio is not None and not args.replay:
            raise UserError(f"--replay_ratio={args.replay_ratio}: has no effect without --replay; pass --replay=FILE "
                            "or drop --replay_ratio")
        args.val_fraction = _DEFAULT_VAL_FRACTION if args.val_fraction is None else args.val_fraction
        args.replay_ratio = _DEFAULT_REPLAY_RATIO if args.replay_ratio is None else args.replay_ratio
        if args.val_groups:
            _parse_groups(args.val_groups, "--val_groups")
        _check_output(args)
        if args.init and not os.path.isfile(args.init):
            why = "is a folder, not a checkpoint file" if os.path.isdir(args.init) else "no such checkpoint"
            raise UserError(f"--init={args.init}: {why}; pass a checkpoint written by learn (or drop --init)")
    if args.command in ("evaluate", "predict") and args.checkpoint and not os.path.isfile(args.checkpoint):
        why = "is a folder, not a checkpoint file" if os.path.isdir(args.checkpoint) else "no such checkpoint"
        raise UserError(f"--checkpoint={args.checkpoint}: {why}; pass a checkpoint written by learn (without "
                        "--checkpoint the exported weights are used)")
    if args.command == "evaluate" and args.groups:
        _parse_groups(args.groups, "--groups")
    if getattr(args, "split", None) and (getattr(args, "data", None) or "").lower().endswith(".npz"):
        raise UserError(f"--split={args.split}: has no effect on an .npz (--data={args.data}); drop --split (it "
                        "chooses a split folder of an image tree)")


def _check_output(args) -> None:
    """The checkpoint must be a file path that is none of the inputs (it is overwritten)."""
    path = args.checkpoint
    if os.path.isdir(path):
        raise UserError(f"--checkpoint={path}: is a folder; pass a file path such as "
                        f"{os.path.join(path, 'checkpoint.npz')}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        existing = parent
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise UserError(f"--checkpoint={path}: {existing} is a file, not a folder; pass a path inside a folder")
        raise UserError(f"--checkpoint={path}: its folder {parent} does not exist; create it, or pass a path inside "
                        "an existing folder")
    try:
        name_max = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    if len(os.fsencode(os.path.basename(path))) > name_max:
        raise UserError(f"--checkpoint={path[:80]}...: a file name of {len(os.fsencode(os.path.basename(path)))} "
                        f"bytes, more than the {name_max} the file system allows; pass a shorter file name")
    probe = temp_name(path)
    try:  # the checkpoint is written next to a temporary file: both must be possible before any work
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        why = (e.strerror or os.strerror(e.errno or 0)).lower()
        advice = ("pass a shorter file name" if e.errno == errno.ENAMETOOLONG
                  else "pass a path in a folder this user can write")
        raise UserError(f"--checkpoint={path}: cannot be written there ({why}); {advice}") from None
    atomic_file.protect_inputs(_inputs(args))
    for target in (path, ckpt.previous_path(path)):
        what = atomic_file.input_at(target)
        if what is not None:
            where = "is" if target == path else f"keeps its previous version in {target}, which is"
            raise UserError(f"--checkpoint={path}: {where} {what} (learning would overwrite it); pass another path "
                            "for the checkpoint")


# The files an export writes beside the model: inputs of the app, never to be overwritten.
EXPORT_FILES = ("model_trainable.tflite", "model_meta.json", "model_int8.tflite", "model_float16.tflite",
                "replay.npz", "metrics.json")


def _inputs(args) -> list[tuple[str, str]]:
    """(what, path) of everything the command reads: the flags' files and folders, and the
    export's files beside the model."""
    named = [(f"--{flag}={getattr(args, flag)}", getattr(args, flag))
             for flag in ("model", "meta", "data", "val_data", "replay", "soft_labels", "images", "init")
             if getattr(args, flag, None)]
    folder = os.path.dirname(os.path.abspath(args.model))
    named += [(f"the export's {name} beside --model", os.path.join(folder, name)) for name in EXPORT_FILES]
    return named


def _json_safe(obj):
    """`obj` with NaN and inf (no value) as None, so the output is valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m tflite_runtime_app",
                     description="On-device learning with an edgekt model (tflite-runtime, no TensorFlow).")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, data_flags=True):
        p.add_argument("--model", required=True, help="model_trainable.tflite")
        p.add_argument("--meta", default=None, help="model_meta.json (default: beside the model)")
        p.add_argument("--threads", type=int, default=1, help="interpreter threads (>= 1)")
        p.add_argument("--runtime", choices=RUNTIMES, default="auto",
                       help="interpreter package (auto: ai_edge_litert if installed, else tflite_runtime)")
        p.add_argument("--quiet", action="store_true", help="only the final JSON line")
        if data_flags:
            p.add_argument("--resize", action="store_true",
                           help="resize images of another size to the model's input instead of refusing them")
            p.add_argument("--skip_bad_files", action="store_true", help="skip unreadable files with a warning")

    def learning(p):
        p.add_argument("--checkpoint", required=True, help="checkpoint .npz (resumed if it exists)")
        p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
        p.add_argument("--init", default=None, help="start from the weights of another checkpoint")
        p.add_argument("--epochs", type=int, default=20, help="at most this many epochs (>= 1)")
        p.add_argument("--lr", type=float, default=0.01, help="peak learning rate (cosine decay; > 0)")
        p.add_argument("--patience", type=int, default=3, help="epochs without improvement before stopping (>= 1)")
        p.add_argument("--min_delta", type=float, default=0.002, help="smallest validation gain that counts (>= 0)")
        p.add_argument("--val_fraction", type=float, default=None,
                       help=f"held out for the convergence rule, in (0, 1) (default {_DEFAULT_VAL_FRACTION}; "
                            "not with --val_data)")
        p.add_argument("--replay", default=None, help="labelled old-class examples kept on the device (.npz/folder)")
        p.add_argument("--replay_ratio", type=float, default=None,
                       help=f"share of replay in training, in [0, 1) (default {_DEFAULT_REPLAY_RATIO}; with --replay)")
        p.add_argument("--checkpoint_every", type=int, default=50, help="steps between checkpoints (>= 1)")
        p.add_argument("--val_groups", default=None,
                       help="score validation as the mean over groups of classes (name=class,class;name=class), "
                            "so each group counts equally (default: accuracy over all validation images)")
        p.add_argument("--seed", type=int, default=0, help="data order and augmentation (>= 0)")
        p.add_argument("--augment", choices=AUGMENTATIONS, default="flip_crop",
                       help="random flips and shifts of the training images (default flip_crop)")
        p.add_argument("--head_init", choices=heads.HEAD_INITS, default="imprint",
                       help="start the classifier rows of classes the model has not learned yet from the mean "
                            "embedding of their images (imprint, default) or leave them near zero (none)")

    p = sub.add_parser("learn", help="incremental learning on new labelled data")
    common(p)
    learning(p)
    p.add_argument("--data", required=True, help="class folders/archive or .npz (images, labels)")
    p.add_argument("--split", default=None, help="split of a tree with several (default test, or the only one)")
    p.add_argument("--val_data", default=None, help="validation data (default: a split of --data)")
    p.add_argument("--skip_unknown_classes", action="store_true")
    p.set_defaults(func=cmd_learn)

    p = sub.add_parser("learn-unseen", help="learn categories from the cloud model's soft labels (no human labels)")
    common(p)
    learning(p)
    p.add_argument("--soft_labels", required=True, help=".npz written by pipelines.soft_labels")
    p.add_argument("--temperature", type=float, default=None, help="override the soft labels' temperature (> 0)")
    p.add_argument("--val_data", default=None,
                   help="labelled validation data for the convergence rule (default: agreement on a split of the soft labels)")
    p.set_defaults(func=cmd_learn_unseen)

    p = sub.add_parser("evaluate", help="accuracy overall, per class, old/new classes")
    common(p)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default=None)
    p.add_argument("--checkpoint", default=None, help="weights to evaluate (default: the exported ones)")
    p.add_argument("--skip_unknown_classes", action="store_true")
    p.add_argument("--groups", default=None,
                   help="recall/precision per group of classes: name=class,class;name=class (default old/new)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="top-k classes of images")
    common(p)
    p.add_argument("--images", required=True, help="an image file, a folder/archive of images, or .npz")
    p.add_argument("--top_k", type=int, default=3, help="classes shown per image (>= 1)")
    p.add_argument("--checkpoint", default=None, help="weights to use (default: the exported ones)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("info", help="signatures, classes and sizes of a model")
    common(p, data_flags=False)
    p.set_defaults(func=cmd_info)
    return parser


def _writer_lock(args):
    """One writer per checkpoint: learn and learn-unseen hold an exclusive lock on theirs for
    the run; a second run on the same checkpoint is refused at once, naming the first."""
    if args.command not in ("learn", "learn-unseen") or not args.checkpoint:
        return contextlib.nullcontext()
    return lock.exclusive(args.checkpoint, f"--checkpoint={args.checkpoint}",
                          "wait for it to end, or pass another --checkpoint")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    atomic_file.forget_inputs()  # each command registers its own inputs
    try:
        args = build_parser().parse_args(argv)
        check_flags(args)
        with _writer_lock(args):
            result = args.func(args)
        text = json.dumps(_json_safe(result), allow_nan=False)
    except UserError as e:
        return fail(e)
    except OSError as e:
        error = from_os_error(e)
        if error is None:
            raise
        return fail(error)
    except KeyboardInterrupt:
        fail(INTERRUPTED)
        return EXIT_INTERRUPTED
    finally:
        atomic_file.forget_inputs()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
