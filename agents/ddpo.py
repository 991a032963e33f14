"""DDPO (Black et al. 2023; kvablack/ddpo-pytorch) with the user's replies as rewards, no reward model.

Denoising is the MDP: state (t, x_t), action x_{t-1}, the policy is the model's DDIM (eta = 1) Gaussian step,
and the reward comes at the end: the user's reply to the final image. Per interaction: sample K trajectories,
read the replies r, advantages A = clip((r - mean) / (std + 1e-8), -5, 5), then for each stochastic step

    ratio = exp(log p_theta(x_{t-1} | x_t) - log p_old(x_{t-1} | x_t))
    loss  = mean(max(-A ratio, -A clip(ratio, 1 - clip_range, 1 + clip_range)))            (PPO-clip)

with gradients accumulated over the steps, one optimizer step per inner epoch, gradient clipping 1.0 and no
KL-to-base term (as the authors). Their lr 3e-4 is for LoRA; here the whole (small) UNet is tuned.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from papa_env.agents.trajectory import TrajectoryAgent
from papa_env.diffusion import sample_trajectory, trajectory_log_probs


@dataclass
class DDPOConfig:
    """DDPO settings."""

    lr: float = 1e-5
    """Adam learning rate (full fine-tuning; the authors' 3e-4 is for LoRA)"""
    clip_range: float = 1e-4
    """PPO clip range on the per-step ratio (the authors': 1e-4; log-probs are means over pixels)"""
    adv_clip_max: float = 5.0
    """advantages are clipped to [-adv_clip_max, adv_clip_max]"""
    inner_epochs: int = 1
    """passes over each interaction's trajectories"""
    grad_clip: float = 1.0
    """max gradient norm"""
    queries_per_step: int = 10
    """K trajectories per interaction (must match the env's)"""
    num_sampling_steps: int = 20
    """DDIM steps of a trajectory"""
    eta: float = 1.0
    """DDIM noise scale (> 0: the policy must be stochastic)"""


def ddpo_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float):
    """PPO-clip loss of one step for a batch, and its stats.

    Args:
        log_prob: (B,) under the current model (differentiable); old_log_prob: (B,) when sampled.
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


class DDPO(TrajectoryAgent):
    """DDPO around a pretrained UNet (copied; the original is left untouched)."""

    name = "ddpo"

    def __init__(self, unet: torch.nn.Module, config: DDPOConfig | None = None) -> None:
        config = config or DDPOConfig()
        if config.eta <= 0:
            raise ValueError(f"DDPO needs a stochastic policy: eta must be > 0, got {config.eta}")
        if config.lr <= 0 or config.clip_range <= 0 or config.inner_epochs < 1:
            raise ValueError("lr and clip_range must be > 0, inner_epochs >= 1")
        self.cfg = config
        self.unet = copy.deepcopy(unet).eval().requires_grad_(True)
        self.opt = torch.optim.Adam(self.unet.parameters(), lr=config.lr)
        self._traj = None

    def propose(self, generator: torch.Generator) -> np.ndarray:
        self._traj = sample_trajectory(
            self.unet,
            self.cfg.queries_per_step,
            num_steps=self.cfg.num_sampling_steps,
            eta=self.cfg.eta,
            generator=generator,
        )
        return self._traj.images.numpy()

    def learn(self, queries: np.ndarray, replies: np.ndarray) -> dict[str, float]:
        traj = self.check_proposal(queries)
        adv = advantages_from_replies(replies, self.cfg.adv_clip_max)
        steps = [j for j in range(len(traj.timesteps)) if traj.stochastic[j]]
        stats = {"losses/policy": 0.0, "charts/approx_kl": 0.0, "charts/clipfrac": 0.0}
        if float(adv.abs().sum()) == 0.0:  # all replies equal: no signal
            return stats
        for _ in range(self.cfg.inner_epochs):
            self.opt.zero_grad(set_to_none=True)
            for j in steps:
                log_prob = trajectory_log_probs(self.unet, traj, j, self.cfg.eta)
                loss, s = ddpo_loss(log_prob, traj.log_probs[j], adv, self.cfg.clip_range)
                (loss / len(steps)).backward()
                stats["losses/policy"] += loss.item() / len(steps) / self.cfg.inner_epochs
                stats["charts/approx_kl"] += s["approx_kl"] / len(steps) / self.cfg.inner_epochs
                stats["charts/clipfrac"] += s["clipfrac"] / len(steps) / self.cfg.inner_epochs
            torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.cfg.grad_clip)
            self.opt.step()
        return stats
