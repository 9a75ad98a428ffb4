"""The methods compared on the device: what each trains on in the two updates.

Incremental update (labelled images of the new classes + replay of old classes):
  "labels"        the app's `learn` on the labels;
  "labels+cloud"  the app's `learn-unseen` on the labels mixed with the cloud's soft labels (ours).
Unseen-class update (unlabelled images of the unseen classes + replay of old and new classes):
  "cloud_soft"    `learn-unseen` on the cloud's soft labels (ours, `distill`);
  "cloud_argmax"  `learn` on the cloud's top-1 as hard labels (pseudo-labelling);
  "true_labels"   `learn` on the true labels of the same images (a reference, not a method
                  the device could run);
  None            the stage is not run (the method cannot learn without labels).
Each update may first imprint the classifier rows of the classes it adds from their images
(`head_init="imprint"`, weighted by the method's own targets: labels, the cloud's
probabilities or its top-1) and trains with the preset's augmentation unless `augment` says
otherwise. Fine-tuning is plain: no imprinting, labels only.
At a given (trainable, learning rate) setting, pseudo-labels and the true-label reference
start their unseen update from ours' incremental update, so the unseen-update comparison
starts from one model; fine-tuning is the incremental baseline. The true-label reference is
stopped and chosen by the same device rule as every method (agreement with the cloud on
held-out unseen images), so it is not a strict upper bound.
"""

from __future__ import annotations

import dataclasses

INCREMENTAL = ("labels", "labels+cloud")
UNSEEN = ("cloud_soft", "cloud_argmax", "true_labels")


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    incremental: str | None
    unseen: str | None
    label: str
    bound: bool = False
    head_init: str = "imprint"
    augment: str | None = None  # None: the preset's

    def __post_init__(self):
        if self.head_init not in ("imprint", "none"):
            raise ValueError(f"method {self.name!r}: head_init must be 'imprint' or 'none'. Received: {self.head_init!r}")
        if self.incremental not in INCREMENTAL + (None,) or self.unseen not in UNSEEN + (None,):
            raise ValueError(f"method {self.name!r}: incremental must be one of {INCREMENTAL} or None, unseen one of "
                             f"{UNSEEN} or None. Received: {self.incremental!r}, {self.unseen!r}")
        if self.unseen is not None and self.incremental is None:
            raise ValueError(f"method {self.name!r}: the unseen update follows an incremental update")

    @property
    def stages(self) -> tuple[tuple[str, str], ...]:
        """(stage, kind) in order."""
        return tuple((s, k) for s, k in (("incremental", self.incremental), ("unseen", self.unseen)) if k)

    def stage_specs(self, augment: str) -> tuple[tuple[str, str, str], ...]:
        """(kind, head init, augmentation) of each update: what a stage's result depends on
        beside the data and the setting (equal specs are one shared run)."""
        return tuple((k, self.head_init, self.augment or augment) for _, k in self.stages)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("ours", "labels+cloud", "cloud_soft", "knowledge transfer (ours)"),
    Method("finetune", "labels", None, "fine-tuning on labels", head_init="none"),
    Method("pseudo_label", "labels+cloud", "cloud_argmax", "pseudo-labels (cloud top-1)"),
    Method("true_label_bound", "labels+cloud", "true_labels", "true labels (reference, not on the device)", bound=True),
    Method("no_update", None, None, "no update"),
)}

# Ours with one technique removed (or fine-tuning with one added), run on the preset's
# ablation seeds: what each piece contributes.
ABLATIONS: dict[str, Method] = {m.name: m for m in (
    Method("ours-no_imprint", "labels+cloud", "cloud_soft", "ours without imprinting", head_init="none"),
    Method("ours-no_augment", "labels+cloud", "cloud_soft", "ours without augmentation", augment="none"),
    Method("ours-labels_only_incremental", "labels", "cloud_soft",
           "ours with labels only in the incremental update (fine-tuning + imprinting)"),
)}
