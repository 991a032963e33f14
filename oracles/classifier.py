"""Classifier users: they like images of some classes (MNIST digits, Fashion-MNIST items).

As in the PAPA authors' code, the user looks through a small CNN (the shipped ``<dataset>-classifier``)
and likes an image when the CNN's arg-max class is one of the liked classes. Its continuous utility is the
CNN's probability mass on the liked classes.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from papa_env.data import class_names
from papa_env.oracles.base import Oracle, register_oracle

DEFAULT_PREFERENCES = {"mnist": (1, 4, 7, 9), "fashion-mnist": (5, 7, 9)}
"""The PAPA authors' defaults: digits {1, 4, 7, 9}; sandal, sneaker, ankle boot."""


@register_oracle("classifier")
class ClassifierOracle(Oracle):
    """A user who likes some classes, seen through a classifier.

    Args:
        dataset: ``"mnist"`` or ``"fashion-mnist"`` (picks the shipped classifier and the default taste).
        preference: the liked class indices (non-empty, each in [0, 10)); default: the authors' set.
        classifier: a module mapping (B, 1, 28, 28) in [-1, 1] to (B, 10) logits (default: the shipped
            ``<dataset>-classifier``).
    """

    def __init__(
        self,
        dataset: str = "mnist",
        preference: Iterable[int] | None = None,
        classifier: torch.nn.Module | None = None,
    ) -> None:
        if dataset not in DEFAULT_PREFERENCES:
            raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(DEFAULT_PREFERENCES)}")
        self.dataset = dataset
        if classifier is None:
            from papa_env.models import load_pretrained

            classifier = load_pretrained(f"{dataset}-classifier")
        self.classifier = classifier.eval()
        self._preference: tuple[int, ...] = ()
        self.set_preference(DEFAULT_PREFERENCES[dataset] if preference is None else preference)

    @property
    def preference(self) -> tuple[int, ...]:
        return self._preference

    def set_preference(self, preference: Iterable[int]) -> None:
        expected = f"an iterable of class indices (ints) in [0, 10), got {preference!r}"
        if isinstance(preference, str | bytes) or not isinstance(preference, Iterable):
            raise ValueError(f"preference must be {expected}")
        items = list(preference)
        if any(isinstance(c, bool) or not isinstance(c, int | np.integer) for c in items):
            raise ValueError(f"preference must be {expected}")
        classes = tuple(sorted({int(c) for c in items}))
        if not classes:
            raise ValueError("preference is empty: the user must like at least one class")
        bad = [c for c in classes if not 0 <= c < 10]
        if bad:
            names = ", ".join(f"{i}={n}" for i, n in enumerate(class_names(self.dataset)))
            raise ValueError(f"unknown class(es) {bad} for {self.dataset}; expected indices in [0, 10): {names}")
        self._preference = classes
        self._mask = torch.zeros(10, dtype=torch.bool)
        self._mask[list(classes)] = True

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 10) class probabilities from the user's classifier."""
        return self.classifier(images).softmax(-1)

    def utility(self, images: torch.Tensor) -> torch.Tensor:
        """Probability mass the classifier puts on the liked classes, (B,) in [0, 1]."""
        return self.probabilities(images)[:, self._mask].sum(-1).clamp(0.0, 1.0)

    def likes(self, images: torch.Tensor) -> np.ndarray:
        """The authors' rule: the classifier's arg-max class is a liked one."""
        return self._mask[self.probabilities(images).argmax(-1)].numpy()

    def __repr__(self) -> str:
        names = class_names(self.dataset)
        return f"ClassifierOracle({self.dataset}, likes {[names[c] for c in self._preference]})"
