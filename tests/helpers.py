"""Toy pieces the tests share: a denoiser whose loss is computable by hand, a brightness user, an evaluator."""

from __future__ import annotations

import torch
from diffusers.models.unets.unet_2d import UNet2DOutput

from papa_env.env import PreferenceEnv
from papa_env.oracles import Oracle


class Linear(torch.nn.Module):
    """eps_hat = a * x_t + b * t / 1000: a toy denoiser whose loss is easy to compute by hand."""

    def __init__(self, a: float, b: float = 0.0) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a))
        self.b = b
        self.config = type("C", (), {"sample_size": 28, "in_channels": 1})()

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=torch.float32).expand(len(x)).view(-1, 1, 1, 1)
        return UNet2DOutput(sample=self.a * x + self.b * t / 1000)


class Bright(Oracle):
    """Likes images whose mean pixel is >= ``threshold`` ("bright"), or <= -threshold ("dark")."""

    def __init__(self, threshold: float = 0.0, preference: str = "bright") -> None:
        self.threshold = threshold
        self._pref = preference
        self.set_preference(preference)

    @property
    def preference(self) -> str:
        return self._pref

    def set_preference(self, preference: str) -> None:
        if preference not in ("bright", "dark"):
            raise ValueError(f"preference must be 'bright' or 'dark', got {preference!r}")
        self._pref = preference

    def utility(self, images: torch.Tensor) -> torch.Tensor:
        m = images.mean((1, 2, 3))
        return m if self._pref == "bright" else -m


def bright_env(budget: int, threshold: float = 0.0, k: int = 10, **kwargs) -> PreferenceEnv:
    return PreferenceEnv(Bright(threshold), feedback_budget=budget, queries_per_step=k, **kwargs)


class ToyEval:
    """A privileged evaluator for a toy user (no judge needed): the user's like-rate of 100 samples."""

    n, seed = 100, 0

    def __init__(self, env) -> None:
        self.env = env

    def __call__(self, agent):
        images = agent.generate(self.n, torch.Generator().manual_seed(self.seed))
        return {"eval/like_rate_oracle": self.env.unwrapped.privileged.like_rate(images)}, images
