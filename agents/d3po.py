"""D3PO (Yang et al. 2024; yk7333/d3po): DPO on the denoising steps of pairs, from "which of two" replies.

Per interaction: K pairs of trajectories, each pair starting from the same x_T and diverging through the
DDIM (eta = 1) noise; the user picks the preferred image of each pair (PreferenceEnv's pairwise mode; a tie
gives no gradient). For every stochastic step, with the frozen pretrained model as the reference:

    r = clamp(exp(log p_theta(x_{t-1} | x_t) - log p_ref(x_{t-1} | x_t)), 1 - eps, 1 + eps)
    loss = -log sigmoid(beta log r_winner - beta log r_loser)

(the clamp of the authors' code bounds the loss to about [0.683, 0.703], so "stuck at 0.693" is expected),
gradients accumulated over all steps and pairs, one AdamW step (lr 3e-5, weight decay 1e-4, clip 1.0).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from papa_env.agents.trajectory import TrajectoryAgent
from papa_env.diffusion import sample_trajectory, trajectory_log_probs


@dataclass
class D3POConfig:
    """D3PO settings (defaults: the authors')."""

    lr: float = 3e-5
    """AdamW learning rate"""
    weight_decay: float = 1e-4
    """AdamW weight decay"""
    beta: float = 0.1
    """DPO temperature"""
    eps: float = 0.1
    """clamp of the per-step likelihood ratio to [1 - eps, 1 + eps]"""
    grad_clip: float = 1.0
    """max gradient norm"""
    queries_per_step: int = 10
    """K pairs per interaction (must match the env's, in pairwise mode)"""
    num_sampling_steps: int = 20
    """DDIM steps of a trajectory (the authors': 20)"""
    eta: float = 1.0
    """DDIM noise scale (> 0: pairs diverge through it)"""


def d3po_loss(
    log_prob_w: torch.Tensor,
    ref_log_prob_w: torch.Tensor,
    log_prob_l: torch.Tensor,
    ref_log_prob_l: torch.Tensor,
    beta: float,
    eps: float,
) -> torch.Tensor:
    """Per-pair D3PO loss of one step, (P,): winners' and losers' log-probs under the model and the reference."""
    ratio_w = torch.clamp(torch.exp(log_prob_w - ref_log_prob_w), 1 - eps, 1 + eps)
    ratio_l = torch.clamp(torch.exp(log_prob_l - ref_log_prob_l), 1 - eps, 1 + eps)
    return -F.logsigmoid(beta * torch.log(ratio_w) - beta * torch.log(ratio_l))


class D3PO(TrajectoryAgent):
    """D3PO around a pretrained UNet (copied; the original is the frozen reference)."""

    name = "d3po"

    def __init__(self, unet: torch.nn.Module, config: D3POConfig | None = None) -> None:
        config = config or D3POConfig()
        if config.eta <= 0:
            raise ValueError(f"D3PO needs stochastic steps: eta must be > 0, got {config.eta}")
        if config.lr <= 0 or config.beta <= 0 or not 0 < config.eps < 1:
            raise ValueError("lr and beta must be > 0 and eps in (0, 1)")
        self.cfg = config
        self.ref = unet.eval().requires_grad_(False)
        self.unet = copy.deepcopy(unet).eval().requires_grad_(True)
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self._traj = None

    def propose(self, generator: torch.Generator) -> np.ndarray:
        k = self.cfg.queries_per_step
        size = self.unet.config.sample_size
        x_t = torch.randn((k, self.unet.config.in_channels, size, size), generator=generator)
        self._traj = sample_trajectory(
            self.unet,
            2 * k,
            num_steps=self.cfg.num_sampling_steps,
            eta=self.cfg.eta,
            generator=generator,
            initial_noise=x_t.repeat_interleave(2, dim=0),
        )
        return self._traj.images.view(k, 2, *self._traj.images.shape[1:]).numpy()

    def learn(self, queries: np.ndarray, replies: np.ndarray) -> dict[str, float]:
        traj = self.check_proposal(queries)
        replies = np.asarray(replies)
        decided = np.flatnonzero(replies != 0)  # ties give no gradient
        if len(decided) == 0:
            return {"losses/d3po": 0.0, "charts/decided_pairs": 0.0}
        first, second = 2 * decided, 2 * decided + 1
        winner = torch.from_numpy(np.where(replies[decided] > 0, first, second))
        loser = torch.from_numpy(np.where(replies[decided] > 0, second, first))
        steps = [j for j in range(len(traj.timesteps)) if traj.stochastic[j]]
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for j in steps:
            log_prob = trajectory_log_probs(self.unet, traj, j, self.cfg.eta)
            with torch.no_grad():
                ref = trajectory_log_probs(self.ref, traj, j, self.cfg.eta)
            loss = d3po_loss(
                log_prob[winner], ref[winner], log_prob[loser], ref[loser], self.cfg.beta, self.cfg.eps
            ).mean()
            (loss / len(steps)).backward()
            total += loss.item() / len(steps)
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.cfg.grad_clip)
        self.opt.step()
        return {"losses/d3po": total, "charts/decided_pairs": float(len(decided))}
