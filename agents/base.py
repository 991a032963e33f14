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


class TrajectoryAgent(Agent):
    """Shared plumbing of the policy-gradient agents (DDPO, D3PO): a tuned copy of the UNet, its optimizer,
    and the sampled trajectory of the last proposal, which ``learn`` needs and a resume restores.

    Subclasses set ``self.cfg`` (with ``num_sampling_steps`` and ``eta``), ``self.unet`` and ``self.opt``.
    """

    cfg: Any
    unet: torch.nn.Module
    opt: torch.optim.Optimizer
    _traj: Any = None

    def generate(self, n: int, generator: torch.Generator) -> torch.Tensor:
        from papa_env.diffusion import sample

        return sample(self.unet, n, num_steps=self.cfg.num_sampling_steps, eta=self.cfg.eta, generator=generator)

    def proposal_state(self) -> dict[str, np.ndarray]:
        return self._traj.to_numpy() if self._traj is not None else {}

    def restore_proposal(self, state: dict[str, np.ndarray]) -> None:
        from papa_env.diffusion import Trajectory

        self._traj = Trajectory.from_numpy(state)

    def check_proposal(self, queries: np.ndarray):
        """The trajectory behind ``queries``; ValueError if they are not this agent's last proposal."""
        traj = self._traj
        if traj is None or not np.allclose(traj.images.numpy(), np.asarray(queries).reshape(traj.images.shape)):
            raise ValueError(f"{self.name} learns from the trajectories of its own last proposal: call propose() first")
        return traj

    def model(self) -> torch.nn.Module:
        return self.unet

    def state_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"unet": self.unet.state_dict(), "opt": self.opt.state_dict(), "config": asdict(self.cfg)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.unet.load_state_dict(state["unet"])
        self.opt.load_state_dict(state["opt"])
