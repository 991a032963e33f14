"""DDPO (Black et al. 2023; kvablack/ddpo-pytorch) with the user's replies as rewards, no reward model.

Denoising is the MDP: state (t, x_t), action x_{t-1}, the policy is the model's DDIM (eta = 1) Gaussian step,
and the reward comes at the end: the user's reply to the final image. Per interaction: sample K trajectories,
read the replies r, advantages A = clip((r - mean) / (std + 1e-8), -5, 5); then, as the reference's training loop,
``inner_epochs`` passes, each shuffling the K trajectories into minibatches of ``train_batch_size`` and taking one
optimizer step per minibatch on the PPO-clip loss accumulated over all its stochastic steps:

    ratio = exp(log p_theta(x_{t-1} | x_t) - log p_old(x_{t-1} | x_t))
    loss  = mean(max(-A ratio, -A clip(ratio, 1 - clip_range, 1 + clip_range)))
          + kl_coef * mean_t ||mu_theta - mu_base||^2 / (2 sigma_t^2)           (DPOK's KL to the base; 0: off)

The first minibatch of the first pass has ratio = 1 (its policy is the sampling one); every later one is clipped
against the sampling policy: that is where PPO acts. Gradient clipping 1.0. The reference's lr 3e-4 is for LoRA;
here the whole (small) UNet is tuned. Departures from the reference: ``docs/baselines.md``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from papa_env.agents.selection import QuerySelection, selection_errors
from papa_env.agents.trajectory import TrajectoryAgent
from papa_env.diffusion import Trajectory, sample_trajectory, trajectory_log_probs


@dataclass
class DDPOConfig:
    """DDPO settings (defaults: the reference's, but the lr, which is for full fine-tuning here)."""

    lr: float = 1e-5
    """Adam learning rate (full fine-tuning; the reference's 3e-4 is for LoRA)"""
    clip_range: float = 1e-4
    """PPO clip range on the per-step ratio (the reference's; log-probs are means over pixels)"""
    adv_clip_max: float = 5.0
    """advantages are clipped to [-adv_clip_max, adv_clip_max]"""
    inner_epochs: int = 1
    """passes over each interaction's trajectories"""
    train_batch_size: int = 2
    """trajectories per optimizer step (K / train_batch_size steps per pass; the reference takes several)"""
    kl_coef: float = 0.0
    """weight of the KL between the tuned and the base model's steps (DPOK's regulariser; 0: none, as DDPO)"""
    grad_clip: float = 1.0
    """max gradient norm"""
    queries_per_step: int = 10
    """K trajectories per interaction (must match the env's)"""
    pool_size: int | None = None
    """sample this many trajectories and let ``selector`` choose the K shown (None: K, all shown)"""
    selector: str = "random"
    """which K of the pool are shown: agents/selection.py's rules (random: the first K, as drawn)"""
    liked_share: float = 0.7
    """with selector="liked": the share of the K chosen as predicted likes (the rest: where the ensemble disagrees)"""
    selector_features: str = "unet"
    """the selector's feature space: the base UNet's own ("unet") or a fixed random network ("random")"""
    num_sampling_steps: int = 20
    """DDIM steps of a trajectory"""
    eta: float = 1.0
    """DDIM noise scale (> 0: the policy must be stochastic)"""
    seed: int = 0
    """seed of the minibatch shuffling"""

    def __post_init__(self) -> None:
        if self.eta <= 0:
            raise ValueError(f"DDPO needs a stochastic policy: eta must be > 0, got {self.eta}")
        if self.lr <= 0 or self.clip_range <= 0 or self.inner_epochs < 1 or self.train_batch_size < 1:
            raise ValueError("lr and clip_range must be > 0, inner_epochs and train_batch_size >= 1")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
        if errors := selection_errors(self):
            raise ValueError("invalid DDPOConfig: " + "; ".join(errors))


def ddpo_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float):
    """PPO-clip loss, the mean over a batch of trajectories (and of steps, given (S, B) log-probs), and its stats.

    Args:
        log_prob: (B,) or (S, B) under the current model (differentiable); old_log_prob: the same when sampled.
        advantages: (B,) normalised rewards.
    """
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    stats = {
        "approx_kl": float(0.5 * ((log_prob.detach() - old_log_prob) ** 2).mean()),
        "clipfrac": float(((ratio.detach() - 1.0).abs() > clip_range).float().mean()),
    }
    return loss, stats


def advantages_from_replies(replies: np.ndarray | torch.Tensor, adv_clip_max: float = 5.0) -> torch.Tensor:
    """Replies (B,) -> clip((r - mean) / (std + 1e-8), -max, max) as ddpo-pytorch normalises rewards."""
    r = torch.as_tensor(np.asarray(replies), dtype=torch.float32)
    return ((r - r.mean()) / (r.std(unbiased=False) + 1e-8)).clamp(-adv_clip_max, adv_clip_max)


def ddpo_update(
    unet: torch.nn.Module,
    opt: torch.optim.Optimizer,
    traj: Trajectory,
    adv: torch.Tensor,
    cfg: Any,
    generator: torch.Generator,
    base: torch.nn.Module | None = None,
) -> dict[str, float]:
    """The reference's training loop on one batch of trajectories (see the module docstring); shared with the
    reward-model agent. ``cfg`` has ``inner_epochs``, ``train_batch_size``, ``clip_range``, ``grad_clip``, ``eta``
    and ``kl_coef`` (which needs ``base``). Returns the mean loss, approximate KL to the sampling policy, clip
    fraction and KL to the base, the number of optimizer steps (``compute/updates``) and of (trajectory, step) rows
    backpropagated through the UNet (``compute/rows``)."""
    steps = [j for j in range(len(traj.timesteps)) if traj.stochastic[j]]
    stats = {"losses/policy": 0.0, "charts/approx_kl": 0.0, "charts/clipfrac": 0.0, "charts/kl_to_base": 0.0}
    n_terms, updates, rows = 0, 0, 0
    for _ in range(cfg.inner_epochs):
        order = torch.randperm(len(adv), generator=generator)
        for start in range(0, len(order), cfg.train_batch_size):
            idx = order[start : start + cfg.train_batch_size]
            batch = traj.select(idx)
            opt.zero_grad(set_to_none=True)
            # every stochastic step of the minibatch in one UNet call: (S, B) log-probs; the loss is the mean over
            # steps and trajectories, the reference's accumulation of the per-step losses / S in one backward
            log_prob, mean, std = trajectory_log_probs(unet, batch, steps, cfg.eta, with_mean=True)
            loss, s = ddpo_loss(log_prob, batch.log_probs[steps], adv[idx], cfg.clip_range)
            if cfg.kl_coef and base is not None:
                with torch.no_grad():
                    _, base_mean, _ = trajectory_log_probs(base, batch, steps, cfg.eta, with_mean=True)
                kl = (((mean - base_mean) ** 2).mean((2, 3, 4)) / (2 * std[:, None] ** 2)).mean()
                loss = loss + cfg.kl_coef * kl
                stats["charts/kl_to_base"] += float(kl.detach())
            loss.backward()
            stats["losses/policy"] += loss.item()
            stats["charts/approx_kl"] += s["approx_kl"]
            stats["charts/clipfrac"] += s["clipfrac"]
            n_terms += 1
            torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
            opt.step()
            updates += 1
            rows += len(idx) * len(steps)
    out = {k: v / max(n_terms, 1) for k, v in stats.items()}
    out["compute/updates"], out["compute/rows"] = float(updates), float(rows)
    return out


class DDPO(TrajectoryAgent):
    """DDPO around a pretrained UNet (copied; the original is left untouched, the base of ``kl_coef``)."""

    name = "ddpo"

    def __init__(self, unet: torch.nn.Module, config: DDPOConfig | None = None) -> None:
        self.cfg = config or DDPOConfig()
        self.base = unet.eval().requires_grad_(False)
        self.unet = copy.deepcopy(unet).eval().requires_grad_(True)
        self.opt = torch.optim.Adam(self.unet.parameters(), lr=self.cfg.lr)
        self.generator = torch.Generator().manual_seed(self.cfg.seed)
        self.selection = QuerySelection(self.base, self.cfg)
        self._traj = None

    def propose(self, generator: torch.Generator) -> np.ndarray:
        """K trajectories: the selector's choice of ``pool_size`` sampled ones (the first K with ``random``)."""
        pool = sample_trajectory(self.unet, self.selection.pool_size, num_steps=self.cfg.num_sampling_steps,
                                 eta=self.cfg.eta, generator=generator)  # fmt: skip
        self._traj = pool.select(self.selection.choose(pool.images, generator))
        return self._traj.images.numpy()

    def learn(self, queries: np.ndarray, replies: np.ndarray) -> dict[str, float]:
        traj = self.check_proposal(queries)
        self.selection.observe(traj.images, replies)
        adv = advantages_from_replies(replies, self.cfg.adv_clip_max)
        if float(adv.abs().sum()) == 0.0:  # all replies equal: no signal
            return {"losses/policy": 0.0, "charts/approx_kl": 0.0, "charts/clipfrac": 0.0, "compute/updates": 0.0,
                    "compute/rows": 0.0}  # fmt: skip
        return ddpo_update(self.unet, self.opt, traj, adv, self.cfg, self.generator, self.base)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "generator": self.generator.get_state(),
            "selector": self.selection.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])
        self.selection.load_state_dict(state.get("selector", {}))  # none in a run from before selectors: random
