"""D3PO (Yang et al. 2024; yk7333/d3po): DPO on the denoising steps of pairs, from "which of two" replies.

Per interaction: K pairs of trajectories, each pair starting from the same x_T and diverging through the
DDIM (eta = 1) noise; the user picks the preferred image of each pair (PreferenceEnv's pairwise mode; a tie
gives no gradient). For every stochastic step, with the frozen pretrained model as the reference:

    r = clamp(exp(log p_theta(x_{t-1} | x_t) - log p_ref(x_{t-1} | x_t)), 1 - eps, 1 + eps)
    loss = -log sigmoid(beta log r_winner - beta log r_loser)

(the clamp of the reference code bounds the loss to about [0.683, 0.703], so "stuck at 0.693" is expected).
As the reference's train_d3po.py: gradients accumulated over a pair's steps, one AdamW step per pair (train batch
1; lr 3e-5, weight decay 1e-4, clip 1.0), the pairs in a shuffled order, ``inner_epochs`` passes. ``replay``
earlier decided pairs (from the last ``replay_buffer``) join each interaction's pairs: D3PO learns offline from
stored preferences as readily as online. Departures from the reference: ``docs/baselines.md``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from papa_env.agents.selection import PAIR_SELECTORS, QuerySelection, selection_errors
from papa_env.agents.trajectory import TrajectoryAgent
from papa_env.diffusion import Trajectory, sample_trajectory, trajectory_log_probs


@dataclass
class D3POConfig:
    """D3PO settings (defaults: the reference's)."""

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
    inner_epochs: int = 1
    """passes over each interaction's pairs (one optimizer step per pair and pass)"""
    replay: int = 0
    """earlier decided pairs, drawn uniformly from the buffer, added to each interaction's pairs (0: the reference's
    online loop)"""
    replay_buffer: int = 100
    """the most recent decided pairs kept for replay (their trajectories are part of the agent's state)"""
    queries_per_step: int = 10
    """K pairs per interaction (must match the env's, in pairwise mode)"""
    pool_size: int | None = None
    """sample this many pairs and let ``selector`` choose the K shown (None: K, all shown)"""
    selector: str = "random"
    """which K pairs of the pool are shown: random (the first K), disagreement, entropy or diversity"""
    selector_features: str = "unet"
    """the selector's feature space: the base UNet's own ("unet") or a fixed random network ("random")"""
    num_sampling_steps: int = 20
    """DDIM steps of a trajectory (the reference's: 20)"""
    eta: float = 1.0
    """DDIM noise scale (> 0: pairs diverge through it)"""
    seed: int = 0
    """seed of the pair order and the replay draws"""

    def __post_init__(self) -> None:
        if self.eta <= 0:
            raise ValueError(f"D3PO needs stochastic steps: eta must be > 0, got {self.eta}")
        if self.lr <= 0 or self.beta <= 0 or not 0 < self.eps < 1:
            raise ValueError("lr and beta must be > 0 and eps in (0, 1)")
        if self.inner_epochs < 1 or self.replay < 0 or self.replay_buffer < 0:
            raise ValueError("inner_epochs must be >= 1, replay and replay_buffer >= 0")
        if errors := selection_errors(self):
            raise ValueError("invalid D3POConfig: " + "; ".join(errors))
        if self.selector not in PAIR_SELECTORS:
            raise ValueError(f"invalid D3POConfig: selector must be one of {PAIR_SELECTORS}, got {self.selector!r}")


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
        self.cfg = config or D3POConfig()
        self.ref = unet.eval().requires_grad_(False)
        self.unet = copy.deepcopy(unet).eval().requires_grad_(True)
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.generator = torch.Generator().manual_seed(self.cfg.seed)
        self.buffer: list[Trajectory] = []  # decided pairs, each a 2-trajectory batch: winner first
        self.selection = QuerySelection(self.ref, self.cfg, pairs=True)
        self._traj = None

    def propose(self, generator: torch.Generator) -> np.ndarray:
        """K pairs (K, 2, 1, 28, 28), each two trajectories from one x_T: the selector's choice of ``pool_size``."""
        k, m, size = self.cfg.queries_per_step, self.selection.pool_size, self.unet.config.sample_size
        x_t = torch.randn((m, self.unet.config.in_channels, size, size), generator=generator)
        pool = sample_trajectory(self.unet, 2 * m, num_steps=self.cfg.num_sampling_steps, eta=self.cfg.eta,
                                 generator=generator, initial_noise=x_t.repeat_interleave(2, dim=0))  # fmt: skip
        chosen = self.selection.choose(pool.images, generator)
        self._traj = pool.select(torch.stack([2 * chosen, 2 * chosen + 1], 1).reshape(-1))
        return self._traj.images.view(k, 2, *self._traj.images.shape[1:]).numpy()

    def learn(self, queries: np.ndarray, replies: np.ndarray) -> dict[str, float]:
        traj = self.check_proposal(queries)
        replies = np.asarray(replies)
        self.selection.observe(traj.images, replies)
        decided = np.flatnonzero(replies != 0)  # ties give no gradient
        new = [traj.select([2 * i, 2 * i + 1] if replies[i] > 0 else [2 * i + 1, 2 * i]) for i in decided]
        old = self.buffer
        replayed = []
        if self.cfg.replay and old:
            draws = torch.randint(len(old), (self.cfg.replay,), generator=self.generator).tolist()
            replayed = [old[i] for i in draws]
        pairs = new + replayed
        stats = {"losses/d3po": 0.0, "charts/decided_pairs": float(len(decided)), "compute/updates": 0.0,
                 "compute/rows": 0.0}  # fmt: skip
        steps = [j for j in range(len(traj.timesteps)) if traj.stochastic[j]]
        for _ in range(self.cfg.inner_epochs if pairs else 0):
            for p in torch.randperm(len(pairs), generator=self.generator).tolist():
                stats["losses/d3po"] += self._step(pairs[p], steps)
                stats["compute/updates"] += 1
                stats["compute/rows"] += 2 * len(steps)  # the pair's two trajectories at each stochastic step
        if stats["compute/updates"]:
            stats["losses/d3po"] /= stats["compute/updates"]
        self.buffer = (old + new)[-self.cfg.replay_buffer :] if self.cfg.replay else []
        return stats

    def _step(self, pair: Trajectory, steps: list[int]) -> float:
        """One AdamW step on one pair (winner first), the loss accumulated over its stochastic steps."""
        self.opt.zero_grad(set_to_none=True)
        log_prob = trajectory_log_probs(self.unet, pair, steps, self.cfg.eta)  # (S, 2): all steps in one UNet call
        with torch.no_grad():
            ref = trajectory_log_probs(self.ref, pair, steps, self.cfg.eta)
        loss = d3po_loss(log_prob[:, :1], ref[:, :1], log_prob[:, 1:], ref[:, 1:], self.cfg.beta, self.cfg.eps).mean()
        loss.backward()  # the mean over steps: the reference's per-step losses / S accumulated
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.cfg.grad_clip)
        self.opt.step()
        return loss.item()

    def state_dict(self) -> dict[str, Any]:
        buffer = [p._asdict() for p in self.buffer]
        selector = self.selection.state_dict()
        return {**super().state_dict(), "generator": self.generator.get_state(), "buffer": buffer, "selector": selector}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])
        self.selection.load_state_dict(state.get("selector", {}))  # none in a run from before selectors: random
        self.buffer = [Trajectory(**p) for p in state["buffer"]]
