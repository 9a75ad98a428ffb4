"""The on-device learning benchmark's settings and presets (smoke / cpu / paper).

Temperature, label mix, replay ratio, epoch cap and patience are fixed here; the trainable
part and learning rate are a grid from which each method picks on the device's own
validation data. Nothing is chosen with test images or with labels of unseen classes.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from edgekt import presets
from edgekt.errors import UserError

STUDENTS = ("pruned", "wrn-16-1", "pruned_cloud_weights", "pruned_cloud_weights_bn")
# "paper": the seed paper's loss as its code computes it (RMSE between logits plus RMSE between
# activations L2-normalised over the batch at the three stage outputs); "kd": KD on softened
# logits; "both": their sum; "paper_attention": the paper's terms per example on attention maps.
NEVER_SEEN_LOSSES = ("paper", "kd", "both", "paper_attention")
# "policy_cutout": flip and pad-crop, the RandAugment policy per image, a 16-pixel Cutout square.
NEVER_SEEN_AUGMENTS = ("none", "flip_crop", "policy_cutout")
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclasses.dataclass(frozen=True)
class ClassSplit:
    """Which classes the device model starts with (old), learns with labels (new) and learns
    from the cloud's soft labels alone (unseen)."""

    old: tuple[str, ...]
    new: tuple[str, ...]
    unseen: tuple[str, ...]

    def __post_init__(self):
        groups = (self.old, self.new, self.unseen)
        if not self.old or not self.new or not self.unseen:
            raise UserError(f"class split old={self.old}, new={self.new}, unseen={self.unseen}: a split needs old, "
                            "new and unseen classes; name at least one class in each")
        every = [c for g in groups for c in g]
        if len(set(every)) != len(every):
            raise UserError(f"class split old={self.old}, new={self.new}, unseen={self.unseen}: the groups must be "
                            "disjoint; name each class in one group only")

    @property
    def device_classes(self) -> tuple[str, ...]:
        """The device model's output order: old, then new, then unseen."""
        return self.old + self.new + self.unseen

    @property
    def name(self) -> str:
        return f"new-{'+'.join(self.new)}_unseen-{'+'.join(self.unseen)}"

    def groups(self) -> dict[str, list[str]]:
        return {"old": list(self.old), "new": list(self.new), "unseen": list(self.unseen),
                "seen": list(self.old + self.new)}

    def groups_text(self, names: tuple[str, ...]) -> str:
        """`name=class,class;...` for the device app's --groups / --val_groups."""
        groups = self.groups()
        return ";".join(f"{n}={','.join(groups[n])}" for n in names)


def rotated_splits(classes: tuple[str, ...], count: int, n_new: int, n_unseen: int) -> tuple[ClassSplit, ...]:
    """`count` splits of `classes` that rotate which classes are new and unseen: split k takes
    its new then unseen classes from position k * ceil(len(classes) / count) onwards
    (cyclically), so the splits spread over the classes."""
    n = len(classes)
    block = n_new + n_unseen
    if block >= n or count < 1:
        raise UserError(f"{n_new} new + {n_unseen} unseen classes: leave no old class among {n}; choose fewer new or "
                        "unseen classes")
    out = []
    for k in range(count):
        start = k * -(-n // count)
        picked = [classes[(start + i) % n] for i in range(block)]
        new, unseen = tuple(picked[:n_new]), tuple(picked[n_new:])
        out.append(ClassSplit(tuple(c for c in classes if c not in picked), new, unseen))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class NeverSeenSplit:
    """The paper's never-seen transfer: the student gets images of `train` classes only; the
    paper tests on `paper_test` (empty: every other class)."""

    train: tuple[str, ...]
    paper_test: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return "train-" + "+".join(self.train)


# The seed paper's two splits: {horse, ship, truck} -> the other seven; {cat, deer, ship, truck}
# -> {airplane, automobile, dog, horse}. Reported: 10-way recall on every class of which the
# student saw no image, and on the paper's test classes.
PAPER_NEVER_SEEN = (NeverSeenSplit(("horse", "ship", "truck")),
                    NeverSeenSplit(("cat", "deer", "ship", "truck"), ("airplane", "automobile", "dog", "horse")))


@dataclasses.dataclass(frozen=True)
class NeverSeenRun:
    """One never-seen student: distilled from the cloud model, without any label, on training
    images of `split.train` only (`per_class` of each class, None: every one), for `epochs`.

    Attributes:
      split: which classes' images the student receives.
      student: "wrn-16-1" or "pruned" (the device model's architecture), both re-initialised; the
        "pruned_cloud_weights*" students keep the cloud's weights and are reported apart.
      loss: one of NEVER_SEEN_LOSSES.
      augment: one of NEVER_SEEN_AUGMENTS.
      mix: "none", "mixup" or "cutmix" within each batch (the cloud is queried on mixed images).
      per_class: training images of each class (None: all of them).
      epochs: the schedule's length; the reported figure is the last epoch's.
      table: "main" (the never-seen table) or "ablation".
    """

    split: NeverSeenSplit
    student: str
    loss: str
    augment: str = "policy_cutout"
    mix: str = "none"
    per_class: Optional[int] = None
    epochs: int = 200
    table: str = "main"

    def __post_init__(self):
        presets.check_fields(self, [
            (self.student in STUDENTS, "student", f"one of {STUDENTS}"),
            (self.loss in NEVER_SEEN_LOSSES, "loss", f"one of {NEVER_SEEN_LOSSES}"),
            (self.augment in NEVER_SEEN_AUGMENTS, "augment", f"one of {NEVER_SEEN_AUGMENTS}"),
            (self.mix in ("none", "mixup", "cutmix"), "mix", "'none', 'mixup' or 'cutmix'"),
            (self.per_class is None or self.per_class >= 1, "per_class", "None or >= 1"),
            (self.epochs >= 1, "epochs", ">= 1"),
            (self.table in ("main", "ablation"), "table", "'main' or 'ablation'"),
        ])

    @property
    def variant(self) -> str:
        """Everything but the split, student and loss, as a folder-safe name."""
        size = "all" if self.per_class is None else f"{self.per_class}pc"
        return f"{self.augment}_{self.mix}_{size}_{self.epochs}ep"

    @property
    def name(self) -> str:
        return f"{self.split.name}/{self.student}_{self.loss}_{self.variant}"

    @property
    def inherits_cloud_weights(self) -> bool:
        return self.student.startswith("pruned_cloud_weights")


def never_seen_grid(splits, students, losses, **fields) -> tuple[NeverSeenRun, ...]:
    """Every (split, student, loss), with the other fields shared."""
    return tuple(NeverSeenRun(split, student, loss, **fields) for split in splits for student in students
                 for loss in losses)


def never_seen_ablation(split: NeverSeenSplit, student: str, epochs: int) -> tuple[NeverSeenRun, ...]:
    """One factor at a time around (policy_cutout, no mixing, every image, paper loss): the loss
    (paper / kd / both / paper_attention), the augmentation (none / flip_crop / policy_cutout / + cutmix / + mixup)
    and the transfer-set size (1,000 images per class against all)."""
    base = dict(split=split, student=student, epochs=epochs, table="ablation")
    return (NeverSeenRun(loss="paper", **base), NeverSeenRun(loss="kd", **base), NeverSeenRun(loss="both", **base),
            NeverSeenRun(loss="paper_attention", **base),
            NeverSeenRun(loss="paper", augment="none", **base), NeverSeenRun(loss="paper", augment="flip_crop", **base),
            NeverSeenRun(loss="paper", mix="cutmix", **base), NeverSeenRun(loss="paper", mix="mixup", **base),
            NeverSeenRun(loss="paper", per_class=1000, **base))


# The seed paper's schedule: both splits, WRN-16-1 and the device architecture from scratch, the
# paper's loss and ours (paper + KD), 200 epochs on every training image of the chosen classes.
PAPER_SCHEDULE_RUNS = never_seen_grid(PAPER_NEVER_SEEN, ("wrn-16-1", "pruned"), ("paper", "both"))


@dataclasses.dataclass(frozen=True)
class DeviceLearningConfig:
    """The benchmark's protocol.

    Cloud: `cloud_preset` with `cloud_epochs`, holding `device_pool_size` images out of its
    training set (the device pool). Device model per class split: the cloud model's classifier
    cut to the old classes, pruned with `prune_preset` (+ `prune_overrides`) on old-class images
    only.

    Device pool per (split, seed): `new_per_class` labelled images of each new class,
    `unseen_per_class` unlabelled images of each unseen class, `val_per_class` labelled
    validation images of each old and new class, `unseen_val_per_class` unlabelled held-out
    images of each unseen class (scored by agreement with the cloud), `replay_per_class` images
    of each old class kept on the device (and as many of each new class after the update).

    Device training (every method alike): `device_epochs` at most, `patience` epochs without a
    validation gain of `min_delta`, batch `device_batch_size`, `replay_ratio`, augmentation
    `augment`, batch-norm `bn_mode` ("frozen": the statistics of the device model are kept);
    ours mixes labels and the cloud's soft labels with `label_mix` at `temperature`. The
    ablation variants of ours (methods.ABLATIONS) run on `ablation_seeds` of every split. Each method runs
    every (trainable weights, learning rate) of `trainable_choices` x `lr_choices` and keeps
    the one with the best score on the device's own validation set after its last update
    (old- and new-class labels, plus agreement with the cloud on held-out unseen-class
    images): data whose labels the device has.

    Never-seen transfer: each of `never_seen_runs` (see NeverSeenRun) distils a student from the
    cloud on training images of its split's classes, no label, with SGD (Nesterov momentum 0.9,
    batch `never_seen_batch_size`, cosine learning rate from `never_seen_lr`, KD temperature
    `never_seen_temperature`), saving its state every epoch and logging the never-seen recall
    every `never_seen_curve_every` epochs (a learning curve; the figure reported is the last
    epoch's).
    """

    splits: tuple[ClassSplit, ...] = rotated_splits(CIFAR10, 3, 3, 2)
    seeds: tuple[int, ...] = (0, 1, 2)
    cloud_preset: str = "cpu"
    cloud_epochs: Optional[int] = 15
    device_pool_size: int = 10000
    prune_preset: str = "cpu"
    prune_overrides: tuple = (("step_epochs", 1), ("final_epochs", 6))
    new_per_class: int = 300
    unseen_per_class: int = 500
    val_per_class: int = 100
    unseen_val_per_class: int = 100
    replay_per_class: int = 20
    device_epochs: int = 15
    patience: int = 3
    min_delta: float = 0.002
    lr_choices: tuple[float, ...] = (0.01, 0.003)
    trainable_choices: tuple[str, ...] = ("last:3",)
    bn_mode: str = "frozen"
    augment: str = "flip_crop"
    device_batch_size: int = 32
    replay_ratio: float = 0.5
    label_mix: float = 0.8
    temperature: float = 2.0
    ablation_seeds: tuple[int, ...] = (0,)
    threads: int = 1
    never_seen_runs: tuple[NeverSeenRun, ...] = PAPER_SCHEDULE_RUNS
    never_seen_batch_size: int = 128
    never_seen_lr: float = 0.1
    never_seen_temperature: float = 4.0
    never_seen_curve_every: int = 10
    precision: str = "float32"

    def __post_init__(self):
        checks = [
            (len(self.splits) >= 1, "splits", "at least one class split"),
            (len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds", "distinct, at least one"),
            (self.device_pool_size >= 0, "device_pool_size", ">= 0 (0: a cloud model for the never-seen stage only)"),
            (all(v >= 1 for v in (self.new_per_class, self.unseen_per_class, self.val_per_class,
                                  self.unseen_val_per_class, self.replay_per_class)),
             "new_per_class", "every per-class count >= 1"),
            (self.device_epochs >= 1 and self.patience >= 1, "device_epochs", ">= 1 (and patience >= 1)"),
            (len(self.lr_choices) >= 1 and all(lr > 0 for lr in self.lr_choices), "lr_choices",
             "at least one, each > 0"),
            (len(self.trainable_choices) >= 1 and len(set(self.trainable_choices)) == len(self.trainable_choices),
             "trainable_choices", "at least one, distinct"),
            (self.device_batch_size >= 2, "device_batch_size", ">= 2"),
            (self.bn_mode in ("batch", "frozen"), "bn_mode", "'batch' or 'frozen'"),
            (self.augment in ("none", "flip", "flip_crop"), "augment", "'none', 'flip' or 'flip_crop'"),
            (set(self.ablation_seeds) <= set(self.seeds), "ablation_seeds", "a subset of seeds"),
            (0 <= self.replay_ratio < 1, "replay_ratio", "in [0, 1)"),
            (0 <= self.label_mix <= 1, "label_mix", "in [0, 1]"),
            (self.temperature > 0 and self.never_seen_temperature > 0, "temperature", "> 0"),
            (1 <= self.threads <= 1024, "threads", "in 1..1024"),
            (len({r.name for r in self.never_seen_runs}) == len(self.never_seen_runs), "never_seen_runs",
             "distinct runs"),
            (len({(r.split, r.student, r.loss) for r in self.never_seen_runs if r.table == "main"})
             == sum(r.table == "main" for r in self.never_seen_runs), "never_seen_runs",
             "one main-table run per (split, student, loss); put variants in the ablation table"),
            (self.never_seen_batch_size >= 2, "never_seen_batch_size", ">= 2"),
            (self.never_seen_lr > 0, "never_seen_lr", "> 0"),
            (self.never_seen_curve_every >= 1, "never_seen_curve_every", ">= 1"),
        ]
        presets.check_fields(self, checks)

    @property
    def images_per_class_needed(self) -> int:
        """Device-pool images one class must have for the largest role it can play."""
        return max(self.new_per_class + self.val_per_class, self.unseen_per_class + self.unseen_val_per_class,
                   self.replay_per_class + self.val_per_class)


PRESETS: dict[str, DeviceLearningConfig] = {
    # Minutes on 2 cores: one split, one seed, tiny pools, one short student.
    "smoke": DeviceLearningConfig(
        splits=rotated_splits(CIFAR10, 1, 3, 2), seeds=(0,), cloud_preset="smoke", cloud_epochs=None,
        device_pool_size=2000, prune_preset="smoke", prune_overrides=(("train_size", 3000),),
        new_per_class=40, unseen_per_class=40, val_per_class=20, unseen_val_per_class=20, replay_per_class=8,
        device_epochs=2, patience=2, device_batch_size=16, lr_choices=(0.01,), trainable_choices=("last:3", "classifier"),
        never_seen_runs=(NeverSeenRun(PAPER_NEVER_SEEN[0], "wrn-16-1", "paper", per_class=100, epochs=2),),
        never_seen_batch_size=32, never_seen_curve_every=1),
    # Three rotating splits x three seeds and the paper's never-seen splits, on 2 CPU cores
    # (a few hours in the background).
    "cpu": DeviceLearningConfig(precision="mixed_bfloat16",
                                never_seen_runs=PAPER_SCHEDULE_RUNS + never_seen_ablation(PAPER_NEVER_SEEN[0],
                                                                                          "wrn-16-1", 50)),
    # The paper-scale run (GPU for the cloud and pruning stages).
    "paper": DeviceLearningConfig(cloud_preset="paper", cloud_epochs=None, prune_preset="paper", prune_overrides=(),
                                  new_per_class=1000, unseen_per_class=1500, val_per_class=200,
                                  unseen_val_per_class=200, replay_per_class=50, device_epochs=30, patience=5,
                                  precision="mixed_bfloat16",
                                  never_seen_runs=PAPER_SCHEDULE_RUNS + never_seen_ablation(PAPER_NEVER_SEEN[0],
                                                                                            "wrn-16-1", 50)),
    # The never-seen stage alone (`--only=never_seen`) at the seed paper's schedule, on a 2-core
    # CPU in the background (bf16); a cloud model without a device pool will do.
    "never_seen": DeviceLearningConfig(cloud_preset="cpu", cloud_epochs=None, device_pool_size=0,
                                       precision="mixed_bfloat16", never_seen_runs=PAPER_SCHEDULE_RUNS),
    # Its ablation at a quarter of the schedule (50 epochs): loss, augmentation, transfer-set size.
    "never_seen_ablation": DeviceLearningConfig(cloud_preset="cpu", cloud_epochs=None, device_pool_size=0,
                                                precision="mixed_bfloat16",
                                                never_seen_runs=never_seen_ablation(PAPER_NEVER_SEEN[0], "wrn-16-1",
                                                                                    50)),
}


def preset(name: str, **overrides) -> DeviceLearningConfig:
    """A preset with some fields replaced."""
    return presets.choose(PRESETS, name, overrides)
