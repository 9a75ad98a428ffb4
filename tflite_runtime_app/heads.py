"""The classifier-head initialiser for categories the device adds (numpy only).

`imprint` sets the rows of classes the model has not learned yet from the mean normalised
(centred) embedding of their images (weight imprinting, Qi et al. 2018), scaled to the norm of
the rows the model already has, with a bias that makes each row score on its own images what
the best known class scores there: a new class starts as a competitor of the old ones instead
of a near-zero row that training must grow (and that pulls the old rows down while it does).
"""

from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def imprint(kernel: np.ndarray, bias: np.ndarray | None, features: np.ndarray, weights: np.ndarray,
            rows: list[int], known: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """New classifier weights with `rows` imprinted.

    Args:
      kernel: the classifier kernel [F, K].
      bias: its bias [K] or None.
      features: embeddings [N, F] of the images (the classifier's input).
      weights: [N, len(rows)]: how much image n speaks for class rows[j] (one-hot labels, or
        the cloud's probabilities).
      rows: the classes (columns of `kernel`) to set.
      known: the classes the model has learned; their mean column norm is the imprinted rows'
        norm, and their best logit on a row's images sets that row's bias.

    Returns:
      (kernel, bias), copies; a row without any weight is left as it was.

    Raises:
      ValueError: shapes that do not match, or no known class to take the scale from.
    """
    kernel = np.array(kernel, np.float32, copy=True)
    features = np.asarray(features, np.float32)
    weights = np.asarray(weights, np.float32)
    if kernel.ndim != 2 or features.ndim != 2 or features.shape[1] != kernel.shape[0]:
        raise ValueError(f"imprint: kernel [F, K] and features [N, F] needed. Received: kernel {kernel.shape}, "
                         f"features {features.shape}")
    if weights.shape != (len(features), len(rows)):
        raise ValueError(f"imprint: weights must be [N={len(features)}, {len(rows)}]. Received: {weights.shape}")
    if not known:
        raise ValueError("imprint: no known class to take the scale of the new rows from")
    scale = float(np.linalg.norm(kernel[:, known], axis=0).mean())
    # Directions from the embeddings centred on their mean: ReLU embeddings all point into the
    # positive orthant, so uncentred means resemble every image alike.
    units = _unit(features - features.mean(axis=0, keepdims=True))
    known_logits = features @ kernel[:, known] + (0.0 if bias is None else np.asarray(bias, np.float32)[known])
    new_bias = None if bias is None else np.array(bias, np.float32, copy=True)
    for j, row in enumerate(rows):
        w = weights[:, j]
        total = float(w.sum())
        if total <= 0:
            continue
        kernel[:, row] = scale * _unit((w[:, None] * units).sum(axis=0) / total)
        if new_bias is not None:
            # On its own images the new row scores, on average, what the best known class
            # scores there: competitive from the first step, not dominant.
            gap = known_logits.max(axis=1) - features @ kernel[:, row]
            new_bias[row] = float((w * gap).sum() / total)
    return kernel, new_bias


HEAD_INITS = ("imprint", "none")


def _top(targets: np.ndarray) -> np.ndarray:
    """Each image's target class: the label, or the soft label's top class."""
    return targets if targets.ndim == 1 else targets.argmax(axis=1)


def initial_learned(model) -> list[str]:
    """The classes an exported model has learned: its classes less those added for the device."""
    added = set(model.meta.get("new_class_names", []))
    return [c for c in model.class_names if c not in added]


def imprint_unlearned(model, images: np.ndarray, targets: np.ndarray, learned: list[str]) -> dict:
    """Imprints, in `model` (a DeviceModel), the rows of the classes that are not in `learned`
    and are the target (a label, or the soft label's top class) of some of `images`; each
    image counts with its target's probability (1 for a label). The embeddings are centred on
    the mean over all `images` (old-class replay included).

    Returns:
      {"imprinted": [class names], "images": images used}.

    Raises:
      ValueError: the model does not name its classifier weights or has no features output
        (exported by an older version).
    """
    names = model.class_names
    top = _top(targets)
    rows = [i for i, c in enumerate(names) if c not in learned and np.any(top == i)]
    known = [i for i, c in enumerate(names) if c in learned]
    if not rows or not known:
        return {"imprinted": [], "images": 0}
    keys = model.meta.get("classifier_weights")
    if not keys or "kernel" not in keys:
        raise ValueError(f"{model.path}: its metadata does not name the classifier weights; export it again with this "
                         "version to initialise new classes from their images, or pass --head_init=none")
    # Every image counts for the centre of the embeddings (a single new class centred on
    # itself would have no direction); only the new classes' images weigh their rows.
    chosen = np.isin(top, rows)
    confidence = np.ones(len(top), np.float32) if targets.ndim == 1 else targets[np.arange(len(top)), top]
    weights = (top[:, None] == np.asarray(rows)[None]).astype(np.float32) * confidence[:, None]
    features = model.features(images)
    w = model.get_weights()
    bias_key = keys.get("bias")
    kernel, bias = imprint(w[keys["kernel"]], w[bias_key] if bias_key else None, features, weights, rows, known)
    w[keys["kernel"]] = kernel
    if bias_key:
        w[bias_key] = bias
    model.set_weights(w)
    return {"imprinted": [names[r] for r in rows], "images": int(chosen.sum())}


def learned_after(model, targets: np.ndarray, learned: list[str]) -> list[str]:
    """`learned` plus the classes that are some image's target (label or soft label's top)."""
    present = set(int(i) for i in np.unique(_top(targets)))
    return [c for i, c in enumerate(model.class_names) if c in learned or i in present]
