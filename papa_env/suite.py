"""The user suite: tastes drawn by a seeded generator, in a tuning half and a held-out half.

Defaults are chosen on the **tuning half** only; the **held-out half** is reported as measured, never tuned on: its
figures are the ones that count. The two halves come from different generator seeds and share no taste; each holds

* MNIST digit sets (sizes drawn from 1-5), Fashion-MNIST class sets (sizes 1-4), three of the six Style
  directions (the other three are in the other half),
* noisy users: one taste with 10-20% mistaken replies and one with Bradley-Terry replies (rationality 10: a user
  whose utility is 0.6 likes 73% of the time, 0.9 98%),
* a pairwise user (which of two, as D3PO asks),

drawn so that the paper's taste, digits {1, 4, 7, 9}, is in neither half (every default was tuned on it).
``make_suite("tuning")`` and ``make_suite("held-out")`` are deterministic; ``--quick`` uses :func:`quick_suite`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

HALVES = {"tuning": 20261202, "held-out": 90210}
"""Generator seed of each half. The held-out half is drawn after the tuning half and skips any taste it holds."""

MNIST_SETS, FASHION_SETS = 8, 4
STYLES = ("thick", "thin", "slanted-right", "slanted-left", "large", "small")
PAPER_TASTE = (1, 4, 7, 9)
BT_RATIONALITY = 10.0


@dataclass(frozen=True)
class Taste:
    """One user of the suite: an env id and the keyword arguments that make its user."""

    name: str
    """e.g. ``mnist-0-3``, ``fashion-5-9``, ``style-thin``, ``mnist-2-6+mistakes0.15``, ``mnist-8+pairwise``"""
    group: Literal["mnist", "fashion", "style", "noisy", "pairwise"]
    env: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return self.env_kwargs.get("mode", "binary")

    @property
    def liked(self) -> tuple[int, ...] | None:
        """The liked classes (None for a style user)."""
        pref = self.env_kwargs.get("preference")
        return tuple(pref) if isinstance(pref, tuple | list) else None


def _digits(rng: np.random.Generator, sizes: tuple[int, int]) -> tuple[int, ...]:
    size = int(rng.integers(sizes[0], sizes[1] + 1))
    return tuple(sorted(int(c) for c in rng.choice(10, size, replace=False)))


def _draw_sets(rng, n: int, sizes: tuple[int, int], taken: set) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = []
    while len(out) < n:
        s = _digits(rng, sizes)
        if s not in taken and s != PAPER_TASTE and s not in out:
            out.append(s)
    return out


def _name(prefix: str, classes: tuple[int, ...]) -> str:
    return f"{prefix}-{'-'.join(map(str, classes))}"


def make_suite(half: Literal["tuning", "held-out"]) -> list[Taste]:
    """The tastes of one half (deterministic; the halves are disjoint)."""
    if half not in HALVES:
        raise ValueError(f"unknown half {half!r}; expected one of {sorted(HALVES)}")
    tuning = _draw(np.random.default_rng(HALVES["tuning"]), taken=set(), styles=None)
    if half == "tuning":
        return tuning
    taken = {("mnist", t.liked) for t in tuning if t.group in ("mnist", "noisy", "pairwise")}
    taken |= {("fashion", t.liked) for t in tuning if t.group == "fashion"}
    used_styles = [t.env_kwargs["preference"] for t in tuning if t.group == "style"]
    return _draw(np.random.default_rng(HALVES["held-out"]), taken, styles=[s for s in STYLES if s not in used_styles])


def _draw(rng: np.random.Generator, taken: set, styles: list[str] | None) -> list[Taste]:
    mnist_taken = {c for kind, c in taken if kind == "mnist"}
    fashion_taken = {c for kind, c in taken if kind == "fashion"}
    digits = _draw_sets(rng, MNIST_SETS + 3, (1, 5), mnist_taken)  # 3 more for the noisy and pairwise users
    fashion = _draw_sets(rng, FASHION_SETS, (1, 4), fashion_taken)
    if styles is None:
        styles = sorted(rng.choice(STYLES, 3, replace=False).tolist(), key=STYLES.index)
    tastes = [Taste(_name("mnist", d), "mnist", "PAPA-MNIST-v0", {"preference": d}) for d in digits[:MNIST_SETS]]
    tastes += [Taste(_name("fashion", d), "fashion", "PAPA-FashionMNIST-v0", {"preference": d}) for d in fashion]
    tastes += [Taste(f"style-{s}", "style", "PAPA-MNIST-Style-v0", {"preference": s}) for s in styles]
    mistakes = round(float(rng.uniform(0.1, 0.2)), 2)
    noisy, bt, pairwise = digits[MNIST_SETS:]
    tastes.append(
        Taste(
            f"{_name('mnist', noisy)}+mistakes{mistakes:g}",
            "noisy",
            "PAPA-MNIST-v0",
            {"preference": noisy, "mistake_rate": mistakes},
        )  # fmt: skip
    )
    tastes.append(
        Taste(
            f"{_name('mnist', bt)}+bt{BT_RATIONALITY:g}",
            "noisy",
            "PAPA-MNIST-v0",
            {"preference": bt, "rationality": BT_RATIONALITY},
        )  # fmt: skip
    )
    tastes.append(
        Taste(
            f"{_name('mnist', pairwise)}+pairwise",
            "pairwise",
            "PAPA-MNIST-v0",
            {"preference": pairwise, "mode": "pairwise"},
        )  # fmt: skip
    )
    return tastes


def liked_by_taste() -> dict[str, tuple[int, ...] | None]:
    """Every suite taste's liked classes by its name (both halves; None for tastes not made of classes): what a
    session's results are scored again with (:func:`papa_env.harness.rescore`)."""
    return {t.name: t.liked for t in [*make_suite("tuning"), *make_suite("held-out")]}


def quick_suite() -> list[Taste]:
    """Three tastes of the tuning half (a digit set, a style, a noisy user): what ``--quick`` runs."""
    tuning = make_suite("tuning")
    return [next(t for t in tuning if t.group == g) for g in ("mnist", "style", "noisy")]
