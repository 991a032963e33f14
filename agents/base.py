"""What every agent offers the session loop (:mod:`papa_env.session`), so any agent runs against any env."""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
import torch


class Agent(abc.ABC):
    """An agent that owns a generative model and learns from a user's replies.

    The session loop calls, per interaction: ``queries = agent.propose(rng)``, sends them to the env, persists
    the replies, then ``agent.learn(queries, replies)``. ``generate`` draws evaluation samples (privileged
    metrics are computed on them); ``state_dict`` / ``load_state_dict`` make a session resumable.
    """

    name: str = "agent"

    @abc.abstractmethod
    def propose(self, generator: torch.Generator) -> np.ndarray:
        """The next query: the env's action, e.g. (K, 1, 28, 28) float32 in [-1, 1]."""

    @abc.abstractmethod
    def learn(self, queries: np.ndarray, replies: np.ndarray) -> dict[str, float]:
        """Update from the replies (K,) int8 to ``queries``; returns scalar stats (``losses/...``)."""

    @abc.abstractmethod
    def generate(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 1, 28, 28) float32 in [-1, 1] from the current model (for evaluation)."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (model, optimizer, counters)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""

    def proposal_state(self) -> dict[str, np.ndarray]:
        """What ``learn`` needs besides the queries (e.g. the sampled trajectory), persisted with them."""
        return {}

    def restore_proposal(self, state: dict[str, np.ndarray]) -> None:  # noqa: B027 (optional hook)
        """Put back :meth:`proposal_state` before a resumed ``learn`` on persisted replies."""

    def model(self) -> torch.nn.Module | None:
        """The model whose weights a run saves at the end (None if there is nothing to save)."""
        return None
