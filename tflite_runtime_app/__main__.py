"""The device app's command line: `python -m tflite_runtime_app {learn,learn-unseen,evaluate,predict,info}`.

Every command prints, as its last line, one JSON object with its result.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np

from tflite_runtime_app import checkpoint as ckpt
from tflite_runtime_app import data as app_data
from tflite_runtime_app import heads, image_folder, metrics
from tflite_runtime_app.runner import DeviceModel, ModelError, runtime_name
from tflite_runtime_app.train import AUGMENTATIONS, LearnConfig, Progress, Task, learn


def _model(args) -> DeviceModel:
    model = DeviceModel(args.model, meta_path=args.meta, num_threads=args.threads)
    if getattr(args, "checkpoint", None) and os.path.exists(args.checkpoint) and args.command in ("evaluate", "predict"):
        weights, _, _ = ckpt.load(args.checkpoint, model.weight_shapes)
        model.set_weights(weights)
    return model


def _init_weights(model: DeviceModel, args) -> list[str]:
    """Starts from another run's weights (e.g. `learn` before `learn-unseen`); returns the
    classes those weights have learned."""
    if args.init:
        weights, state, _ = ckpt.load(args.init, model.weight_shapes)
        model.set_weights(weights)
        if state.get("learned_classes"):
            return list(state["learned_classes"])
    return heads.initial_learned(model)


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


def _split_val(images, targets, fraction, seed):
    n = len(images)
    order = np.random.default_rng([seed, 99]).permutation(n)
    k = max(1, int(round(fraction * n))) if n > 1 else 0
    val, train = order[:k], order[k:]
    if len(train) == 0:
        raise image_folder.DataError(f"{n} examples leave none for training after a {fraction:.0%} validation split")
    return images[train], targets[train], images[val], targets[val]


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
    return [[model.class_names.index(c) for c in classes] for classes in _groups(args.val_groups, model).values()]


def cmd_learn(args) -> dict:
    model = _model(args)
    images, labels = app_data.load_labelled(args.data, model.class_names, model.input_shape, split=args.split,
                                            resize=args.resize, skip_bad_files=args.skip_bad_files,
                                            skip_unknown_classes=args.skip_unknown_classes)
    if args.val_data:
        val_x, val_y = app_data.load_labelled(args.val_data, model.class_names, model.input_shape, resize=args.resize,
                                              skip_unknown_classes=args.skip_unknown_classes)
        train_x, train_y = images, labels
    else:
        train_x, train_y, val_x, val_y = _split_val(images, labels, args.val_fraction, args.seed)
    replay_x, replay_y = _replay(args, model)
    task = Task("labelled", train_x, train_y, val_x, val_y, replay_images=replay_x, replay_labels=replay_y,
                val_groups=_val_groups(args, model))
    result = _learn(model, task, args)
    return {"command": "learn", "train_images": int(len(train_x)), "val_images": int(len(val_x)),
            "threads": args.threads, "runtime": model.runtime, "checkpoint": args.checkpoint, **result}


def cmd_learn_unseen(args) -> dict:
    model = _model(args)
    images, soft, temperature = app_data.load_soft_labels(args.soft_labels, model.class_names, model.input_shape,
                                                          resize=args.resize)
    if args.temperature is not None:
        temperature = args.temperature
    if args.val_data:
        train_x, train_t = images, soft
        val_x, val_t = app_data.load_labelled(args.val_data, model.class_names, model.input_shape,
                                              resize=args.resize)
    else:
        train_x, train_t, val_x, val_t = _split_val(images, soft, args.val_fraction, args.seed)
    replay_x, replay_y = _replay(args, model)
    task = Task("soft", train_x, train_t, val_x, val_t, temperature=temperature, replay_images=replay_x,
                replay_labels=replay_y, val_groups=_val_groups(args, model))
    result = _learn(model, task, args)
    return {"command": "learn-unseen", "train_images": int(len(train_x)), "val_images": int(len(val_x)),
            "temperature": temperature, "threads": args.threads, "runtime": model.runtime,
            "checkpoint": args.checkpoint, **result}


def evaluate(model: DeviceModel, images: np.ndarray, labels: np.ndarray,
             groups: dict[str, list[str]] | None = None) -> dict:
    """Accuracy, per-class recall and precision, confusion matrix, and per named group of
    classes (e.g. old / new) its recall and precision."""
    return metrics.classification_metrics(model.logits(images), labels, model.class_names, groups)


def cmd_evaluate(args) -> dict:
    model = _model(args)
    images, labels = app_data.load_labelled(args.data, model.class_names, model.input_shape, split=args.split,
                                            resize=args.resize, skip_bad_files=args.skip_bad_files,
                                            skip_unknown_classes=args.skip_unknown_classes)
    groups = _groups(args.groups, model) if args.groups else _default_groups(model)
    start = time.perf_counter()
    result = evaluate(model, images, labels, groups)
    result["seconds"] = time.perf_counter() - start
    return {"command": "evaluate", **result}


def _default_groups(model: DeviceModel) -> dict | None:
    new = list(model.meta.get("new_class_names", []))
    return {"old": [c for c in model.class_names if c not in new], "new": new} if new else None


def _groups(text: str, model: DeviceModel) -> dict[str, list[str]]:
    """Parses `name=class,class;name=class` into groups of the model's classes."""
    groups = {}
    for part in filter(None, text.split(";")):
        name, sep, members = part.partition("=")
        classes = [c.strip() for c in members.split(",") if c.strip()]
        if not sep or not name.strip() or not classes:
            raise image_folder.DataError(f"--groups: expected name=class,class;name=class. Received: {part!r}")
        unknown = [c for c in classes if c not in model.class_names]
        if unknown:
            raise image_folder.DataError(f"--groups: classes {unknown} are not the model's ({model.class_names})")
        groups[name.strip()] = classes
    return groups


def cmd_predict(args) -> dict:
    model = _model(args)
    if os.path.isfile(args.images) and not args.images.endswith(".npz") and not image_folder.is_archive(args.images):
        with open(args.images, "rb") as f:
            images = image_folder.decode_image(f.read(), args.images)[None]
        images = app_data.check_images(images, args.images, model.input_shape, args.resize)
        names = [os.path.basename(args.images)]
    elif args.images.endswith(".npz"):
        images = app_data.load_unlabelled(args.images, model.input_shape, resize=args.resize)
        names = [str(i) for i in range(len(images))]
    else:
        images, names = image_folder.read_images(args.images, skip_bad_files=args.skip_bad_files)
        images = app_data.check_images(images, args.images, model.input_shape, args.resize)
    probs = model.predict(images)
    k = min(args.top_k, model.num_classes)
    rows = []
    for name, p in zip(names, probs):
        top = np.argsort(-p)[:k]
        rows.append({"image": name, "top": [{"class": model.class_names[i], "probability": float(p[i])} for i in top]})
        if not args.quiet:
            print(f"{name}: " + ", ".join(f"{model.class_names[i]} {p[i]:.3f}" for i in top))
    return {"command": "predict", "n_images": len(rows), "predictions": rows}


def cmd_info(args) -> dict:
    model = _model(args)
    meta = model.meta
    sizes = {os.path.basename(args.model): os.path.getsize(args.model)}
    inference = os.path.join(os.path.dirname(os.path.abspath(args.model)), meta.get("inference_model", ""))
    if meta.get("inference_model") and os.path.exists(inference):
        sizes[meta["inference_model"]] = os.path.getsize(inference)
    if not args.quiet:
        print(f"model: {args.model} ({runtime_name()}, {args.threads} thread(s))")
        print(f"classes ({model.num_classes}): {', '.join(model.class_names)}")
        print(f"batch size: {model.batch_size}, input: {model.input_shape} raw RGB 0-255")
        for name, sig in sorted(meta.get("signatures", {}).items()):
            ins = ", ".join(f"{k}{v['shape']}" for k, v in sig["inputs"].items())
            print(f"  {name}({ins if len(ins) < 120 else str(len(sig['inputs'])) + ' tensors'})")
        for name, size in sizes.items():
            print(f"  {name}: {size / 1024:.1f} KiB")
    return {"command": "info", "runtime": runtime_name(), "classes": model.class_names, "batch_size": model.batch_size,
            "input_shape": list(model.input_shape), "signatures": sorted(meta.get("signatures", {})),
            "trainable_weights": len(meta.get("trainable_weights", [])), "sizes_bytes": sizes,
            "options": meta.get("options", {})}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tflite_runtime_app",
                                     description="On-device learning with an edgekt model (tflite-runtime, no TensorFlow).")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, data_flags=True):
        p.add_argument("--model", required=True, help="model_trainable.tflite")
        p.add_argument("--meta", default=None, help="model_meta.json (default: beside the model)")
        p.add_argument("--threads", type=int, default=1, help="interpreter threads")
        p.add_argument("--quiet", action="store_true", help="only the final JSON line")
        if data_flags:
            p.add_argument("--resize", action="store_true", help="resize images of another size instead of refusing")
            p.add_argument("--skip_bad_files", action="store_true", help="skip unreadable files with a warning")

    def learning(p):
        p.add_argument("--checkpoint", required=True, help="checkpoint .npz (resumed if it exists)")
        p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
        p.add_argument("--init", default=None, help="start from the weights of another checkpoint")
        p.add_argument("--epochs", type=int, default=20, help="at most this many epochs")
        p.add_argument("--lr", type=float, default=0.01, help="peak learning rate (cosine decay)")
        p.add_argument("--patience", type=int, default=3, help="epochs without improvement before stopping")
        p.add_argument("--min_delta", type=float, default=0.002, help="smallest validation gain that counts")
        p.add_argument("--val_fraction", type=float, default=0.1, help="held out for the convergence rule")
        p.add_argument("--replay", default=None, help="labelled old-class examples kept on the device (.npz/folder)")
        p.add_argument("--replay_ratio", type=float, default=0.25, help="share of replay in training")
        p.add_argument("--checkpoint_every", type=int, default=50, help="steps between checkpoints")
        p.add_argument("--val_groups", default=None,
                       help="score validation as the mean over groups of classes (name=class,class;name=class), "
                            "so each group counts equally (default: accuracy over all validation images)")
        p.add_argument("--seed", type=int, default=0)
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
    p.add_argument("--temperature", type=float, default=None, help="override the soft labels' temperature")
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
    p.add_argument("--top_k", type=int, default=3)
    p.add_argument("--checkpoint", default=None)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("info", help="signatures, classes and sizes of a model")
    common(p, data_flags=False)
    p.set_defaults(func=cmd_info)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        result = args.func(args)
    except (ModelError, image_folder.DataError, ckpt.CheckpointError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
