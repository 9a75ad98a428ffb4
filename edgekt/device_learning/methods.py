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

    def __post_init__(self):
        if self.incremental not in INCREMENTAL + (None,) or self.unseen not in UNSEEN + (None,):
            raise ValueError(f"method {self.name!r}: incremental must be one of {INCREMENTAL} or None, unseen one of "
                             f"{UNSEEN} or None. Received: {self.incremental!r}, {self.unseen!r}")
        if self.unseen is not None and self.incremental is None:
            raise ValueError(f"method {self.name!r}: the unseen update follows an incremental update")

    @property
    def stages(self) -> tuple[tuple[str, str], ...]:
        """(stage, kind) in order."""
        return tuple((s, k) for s, k in (("incremental", self.incremental), ("unseen", self.unseen)) if k)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("ours", "labels+cloud", "cloud_soft", "knowledge transfer (ours)"),
    Method("finetune", "labels", None, "fine-tuning on labels"),
    Method("pseudo_label", "labels+cloud", "cloud_argmax", "pseudo-labels (cloud top-1)"),
    Method("true_label_bound", "labels+cloud", "true_labels", "true labels (reference, not on the device)", bound=True),
    Method("no_update", None, None, "no update"),
)}
