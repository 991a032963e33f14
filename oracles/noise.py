"""Irrational users: composable wrappers after B-Pref's simulated teachers (Lee et al. 2021).

Each wrapper changes how replies are drawn and leaves ``utility`` (the true taste, used for privileged
evaluation) untouched. They compose by nesting; B-Pref applies its effects in the order
skip -> equal -> rational / Bradley-Terry -> mistake, which is

    Mistakes(BradleyTerry(Ties(Skips(user, ...), ...), ...), ...)

(innermost first). All randomness comes from the ``rng`` the env passes (its ``np_random``).

* ``Skips(margin)``: a single image gets 0 when its utility is within ``margin`` of the threshold
  (unsure); a pair gets 0 when both utilities are below the threshold (nothing worth judging).
* ``Ties(margin)``: a pair gets 0 when the utilities differ by less than ``margin``; single images unchanged.
* ``BradleyTerry(beta)``: like with probability sigmoid(beta (u - threshold)); first of a pair with
  probability sigmoid(beta (u1 - u2)).
* ``Mistakes(eps)``: each non-zero reply flips with probability eps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from papa_env.oracles.base import Oracle


class OracleWrapper(Oracle):
    """Delegates everything to ``oracle``; subclasses change ``reply`` / ``compare``."""

    def __init__(self, oracle: Oracle) -> None:
        if not isinstance(oracle, Oracle):
            raise TypeError(f"expected an Oracle to wrap, got {type(oracle).__name__}")
        self.oracle = oracle

    @property
    def threshold(self) -> float:  # type: ignore[override]
        return self.oracle.threshold

    @property
    def preference(self) -> Any:
        return self.oracle.preference

    def set_preference(self, preference: Any) -> None:
        self.oracle.set_preference(preference)

    def utility(self, images: torch.Tensor) -> torch.Tensor:
        return self.oracle.utility(images)

    def likes(self, images: torch.Tensor) -> np.ndarray:
        return self.oracle.likes(images)

    def reply(self, images: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
        return self.oracle.reply(images, rng)

    def compare(self, first: torch.Tensor, second: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
        return self.oracle.compare(first, second, rng)

    @property
    def unwrapped(self) -> Oracle:
        return self.oracle.unwrapped

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in vars(self).items() if k != "oracle")
        return f"{type(self).__name__}({self.oracle!r}, {params})"


def _check_prob(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    return float(p)


class Mistakes(OracleWrapper):
    """Flips each non-zero reply with probability ``eps`` (B-Pref "Mistake": eps = 0.1)."""

    def __init__(self, oracle: Oracle, eps: float = 0.1) -> None:
        super().__init__(oracle)
        self.eps = _check_prob("eps (the env's mistake_rate)", eps)

    def _flip(self, replies: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        flip = rng.random(replies.shape) < self.eps
        return np.where(flip, -replies, replies).astype(np.int8)

    def reply(self, images: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
        return self._flip(self.oracle.reply(images, rng), rng)

    def compare(self, first: torch.Tensor, second: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
        return self._flip(self.oracle.compare(first, second, rng), rng)


class Skips(OracleWrapper):
    """No answer (0) when unsure: see the module table (B-Pref "Skip")."""

    def __init__(self, oracle: Oracle, margin: float = 0.1) -> None:
        super().__init__(oracle)
        if margin < 0:
            raise ValueError(f"margin (the env's skip_margin) must be >= 0, got {margin!r}")
        self.margin = float(margin)

    def reply(self, images: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
        replies = self.oracle.reply(images, rng)
        unsure = np.abs(self.checked_utility(images) - self.threshold) < self.margin
        return np.where(unsure, 0, replies).astype(np.int8)

    def compare(self, first: torch.Tensor, second: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
        replies = self.oracle.compare(first, second, rng)
        both_low = np.maximum(self.checked_utility(first), self.checked_utility(second)) < self.threshold
        return np.where(both_low, 0, replies).astype(np.int8)


class Ties(OracleWrapper):
    """Calls a pair a tie (0) when the utilities differ by less than ``margin`` (B-Pref "Equal")."""

    def __init__(self, oracle: Oracle, margin: float = 0.1) -> None:
        super().__init__(oracle)
        if margin < 0:
            raise ValueError(f"margin (the env's tie_margin) must be >= 0, got {margin!r}")
        self.margin = float(margin)

    def compare(self, first: torch.Tensor, second: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
        replies = self.oracle.compare(first, second, rng)
        close = np.abs(self.checked_utility(first) - self.checked_utility(second)) < self.margin
        return np.where(close, 0, replies).astype(np.int8)


class BradleyTerry(OracleWrapper):
    """Stochastic replies with rationality ``beta`` (B-Pref "Noisy": beta = 1; beta -> inf is rational).

    Replies that the wrapped oracle left at 0 (skips, ties) stay 0.
    """

    def __init__(self, oracle: Oracle, beta: float = 1.0) -> None:
        super().__init__(oracle)
        if not beta > 0:
            raise ValueError(f"beta (the env's rationality) must be > 0, got {beta!r}")
        self.beta = float(beta)

    def _draw(self, logits: np.ndarray, inner: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-self.beta * logits))
        draws = np.where(rng.random(logits.shape) < p, 1, -1)
        return np.where(inner == 0, 0, draws).astype(np.int8)

    def reply(self, images: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
        inner = self.oracle.reply(images, rng)
        return self._draw(self.checked_utility(images) - self.threshold, inner, rng)

    def compare(self, first: torch.Tensor, second: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
        inner = self.oracle.compare(first, second, rng)
        inner = np.where(inner == 0, 0, 1)  # only ties/skips decided inside survive; the rest is redrawn
        return self._draw(self.checked_utility(first) - self.checked_utility(second), inner, rng)
