"""What the policy-gradient agents (DDPO, D3PO) share: a tuned copy of the UNet, its optimizer, and the sampled
trajectory of the last proposal, which ``learn`` needs and a resumed session restores from the run folder."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from papa_env.diffusion import Trajectory, sample


class TrajectoryAgent:
    """Shared plumbing of DDPO and D3PO (agents of :func:`papa_env.session.run_session`).

    Subclasses set ``self.cfg`` (with ``num_sampling_steps`` and ``eta``), ``self.unet`` and ``self.opt``.
    """

    name = "trajectory-agent"
    cfg: Any
    unet: torch.nn.Module
    opt: torch.optim.Optimizer
    _traj: Trajectory | None = None

    def generate(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return sample(self.unet, n, num_steps=self.cfg.num_sampling_steps, eta=self.cfg.eta, generator=generator)

    def proposal_state(self) -> dict[str, np.ndarray]:
        """The last proposal's trajectories, persisted with its replies."""
        return self._traj.to_numpy() if self._traj is not None else {}

    def restore_proposal(self, state: dict[str, np.ndarray]) -> None:
        """Put back :meth:`proposal_state` before a resumed ``learn`` on persisted replies."""
        self._traj = Trajectory.from_numpy(state)

    def check_proposal(self, queries: np.ndarray) -> Trajectory:
        """The trajectory behind ``queries``; ValueError if they are not this agent's last proposal."""
        traj = self._traj
        if traj is None or not np.allclose(traj.images.numpy(), np.asarray(queries).reshape(traj.images.shape)):
            raise ValueError(f"{self.name} learns from the trajectories of its own last proposal: call propose() first")
        return traj

    def model(self) -> torch.nn.Module:
        return self.unet

    def model_metadata(self) -> dict[str, str]:
        """How this agent samples its model (saved with the weights, read by ``papa sample``)."""
        return {"k": "0", "sampler": "ddim", "num_sampling_steps": str(self.cfg.num_sampling_steps),
                "eta": str(self.cfg.eta)}  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {"unet": self.unet.state_dict(), "opt": self.opt.state_dict(), "config": asdict(self.cfg)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.unet.load_state_dict(state["unet"])
        self.opt.load_state_dict(state["opt"])
