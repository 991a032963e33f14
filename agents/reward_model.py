"""Reward model, then RL: the recipe PAPA claims to make unnecessary.

Per interaction: show K queries (K replies, the same budget as every agent), add them to the reply dataset,
refit a small CNN reward model on all replies so far (logistic regression on like / dislike; skips are
left out), then run ``rl_updates`` DDPO rounds on fresh trajectories scored by the reward model (these cost
no replies). The DDPO training loop is :func:`papa_env.agents.ddpo.ddpo_update` (minibatches, inner epochs, the
clip, an optional KL to the base).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from papa_env.agents.ddpo import advantages_from_replies, ddpo_update
from papa_env.agents.selection import QuerySelection, selection_errors
from papa_env.diffusion import sample, sample_trajectory


@dataclass
class RewardModelConfig:
    """Reward-model-then-DDPO settings."""

    rm_width: int = 8
    """channels of the reward model's first conv layer"""
    rm_lr: float = 1e-3
    """Adam learning rate of the reward model"""
    rm_epochs: int = 20
    """passes over all replies so far at each refit"""
    rl_updates: int = 2
    """DDPO rounds on fresh trajectories scored by the reward model per interaction (they cost no replies)"""
    rl_batch: int = 16
    """trajectories per DDPO round"""
    lr: float = 1e-5
    """Adam learning rate of the diffusion model"""
    clip_range: float = 1e-4
    """DDPO's PPO clip range"""
    inner_epochs: int = 1
    """DDPO passes over each round's trajectories"""
    train_batch_size: int = 4
    """trajectories per DDPO optimizer step"""
    kl_coef: float = 0.0
    """DDPO's KL to the base model (DPOK; 0: none)"""
    grad_clip: float = 1.0
    """max gradient norm of the diffusion model"""
    queries_per_step: int = 10
    """K queries per interaction (must match the env's)"""
    pool_size: int | None = None
    """sample this many candidates and let ``selector`` choose the K shown (None: K, all shown)"""
    selector: str = "random"
    """which K of the pool are shown: agents/selection.py's rules (random: the first K, as drawn)"""
    liked_share: float = 0.7
    """with selector="liked": the share of the K chosen as predicted likes (the rest: where the ensemble disagrees)"""
    selector_features: str = "unet"
    """the selector's feature space: the base UNet's own ("unet") or a fixed random network ("random")"""
    num_sampling_steps: int = 20
    """DDIM steps"""
    eta: float = 1.0
    """DDIM noise scale"""
    seed: int = 0
    """seed of the agent's own randomness (reward model init, its minibatches, the DDPO rounds' samples)"""

    def __post_init__(self) -> None:
        if errors := selection_errors(self):
            raise ValueError("invalid RewardModelConfig: " + "; ".join(errors))


class RewardCNN(nn.Module):
    """(B, 1, 28, 28) in [-1, 1] -> (B,) logit that the user likes the image."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * 49, 1),
        )  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).squeeze(-1)


class RewardModelDDPO:
    """Fit a reward model on the replies, then DDPO against it."""

    name = "reward-model"

    def __init__(self, unet: torch.nn.Module, config: RewardModelConfig | None = None) -> None:
        self.cfg = config or RewardModelConfig()
        self.base = unet.eval().requires_grad_(False)
        self.unet = copy.deepcopy(unet).eval().requires_grad_(True)
        self.opt = torch.optim.Adam(self.unet.parameters(), lr=self.cfg.lr)
        with torch.random.fork_rng(devices=[]):  # seeded init, without touching the caller's global RNG
            torch.manual_seed(self.cfg.seed)
            self.reward_model = RewardCNN(self.cfg.rm_width)
        self.rm_opt = torch.optim.Adam(self.reward_model.parameters(), lr=self.cfg.rm_lr)
        self.generator = torch.Generator().manual_seed(self.cfg.seed)
        self.images: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.selection = QuerySelection(self.base, self.cfg)

    def generate(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return sample(self.unet, n, num_steps=self.cfg.num_sampling_steps, eta=self.cfg.eta, generator=generator)

    def propose(self, generator: torch.Generator) -> np.ndarray:
        """K queries: the selector's choice of ``pool_size`` samples (the first K with ``random``)."""
        pool = self.generate(self.selection.pool_size, generator)
        return pool[self.selection.choose(pool, generator)].numpy()

    def fit_reward_model(self) -> float:
        """Refit on every reply so far; returns the final training loss."""
        x, y = torch.cat(self.images), torch.cat(self.labels)
        self.reward_model.train()
        loss = torch.zeros(())
        for _ in range(self.cfg.rm_epochs):
            perm = torch.randperm(len(x), generator=self.generator)
            for i in range(0, len(x), 64):
                idx = perm[i : i + 64]
                loss = F.binary_cross_entropy_with_logits(self.reward_model(x[idx]), y[idx])
                self.rm_opt.zero_grad(set_to_none=True)
                loss.backward()
                self.rm_opt.step()
        self.reward_model.eval()
        return float(loss.detach())

    def learn(self, queries: np.ndarray, replies: np.ndarray) -> dict[str, float]:
        replies = np.asarray(replies)
        self.selection.observe(torch.as_tensor(np.asarray(queries), dtype=torch.float32), replies)
        keep = replies != 0
        self.images.append(torch.as_tensor(np.asarray(queries)[keep], dtype=torch.float32))
        self.labels.append(torch.as_tensor(replies[keep] > 0, dtype=torch.float32))
        # compute/*: the policy's steps and rows (the reward model's own fit is on its small CNN, not counted)
        stats = {"losses/reward_model": self.fit_reward_model(), "losses/policy": 0.0, "compute/updates": 0.0,
                 "compute/rows": 0.0}  # fmt: skip
        for _ in range(self.cfg.rl_updates):
            traj = sample_trajectory(self.unet, self.cfg.rl_batch, num_steps=self.cfg.num_sampling_steps,
                                     eta=self.cfg.eta, generator=self.generator)  # fmt: skip
            with torch.no_grad():
                rewards = torch.sigmoid(self.reward_model(traj.images))
            out = ddpo_update(self.unet, self.opt, traj, advantages_from_replies(rewards), self.cfg, self.generator,
                              self.base)  # fmt: skip
            stats["losses/policy"] += out["losses/policy"] / self.cfg.rl_updates
            stats["compute/updates"] += out["compute/updates"]
            stats["compute/rows"] += out["compute/rows"]
            stats["charts/clipfrac"] = out["charts/clipfrac"]
        return stats

    def model(self) -> torch.nn.Module:
        return self.unet

    def state_dict(self) -> dict[str, Any]:
        return {
            "unet": self.unet.state_dict(),
            "opt": self.opt.state_dict(),
            "rm": self.reward_model.state_dict(),
            "rm_opt": self.rm_opt.state_dict(),
            "generator": self.generator.get_state(),
            "images": self.images,
            "labels": self.labels,
            "selector": self.selection.state_dict(),
            "config": asdict(self.cfg),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.unet.load_state_dict(state["unet"])
        self.opt.load_state_dict(state["opt"])
        self.reward_model.load_state_dict(state["rm"])
        self.rm_opt.load_state_dict(state["rm_opt"])
        self.generator.set_state(state["generator"])
        self.images, self.labels = list(state["images"]), list(state["labels"])
        self.selection.load_state_dict(state.get("selector", {}))  # none in a run from before selectors: random
