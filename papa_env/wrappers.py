"""Wrappers around PreferenceEnv, grouped by what they change.

Recording wrappers
    :class:`ReplyLog`: appends every step's replies (and queries) to a run folder, fsync'd, before the caller
    sees them: for learners that drive the env themselves (Stable-Baselines3's ``model.learn``).

Observation wrappers
    :class:`BudgetFraction`: ``replies_left`` as a fraction of the budget, in [0, 1]. A raw count up to 300
    fed to a policy network (SB3's SAC initialises its mean layer with PyTorch's default, not a small gain)
    saturates the untrained policy; scaled inputs are what SB3 recommends.

Action wrappers
    :class:`NoiseToImage`: the action becomes the initial noise x_T of the base diffusion model, decoded by the
    frozen model with deterministic DDIM into the query images. Stable-Baselines3's Gaussian policies then
    start as the base model itself (a standard-normal action *is* a base-model sample), so PPO / SAC run on it
    unchanged as the "RL on the noise" baselines. For policies that squash with tanh (SAC),
    ``squashed=True`` takes the action in [-1, 1] and decodes x_T = atanh(action): a tanh-squashed Gaussian
    then maps back to the Gaussian itself.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from papa_env.diffusion import sample


class BudgetFraction(gym.ObservationWrapper):
    """``replies_left`` divided by the env's feedback budget (so in [0, 1]); ``replies`` unchanged."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.budget = float(env.unwrapped.feedback_budget)
        self.observation_space = spaces.Dict(
            {
                "replies": env.observation_space["replies"],
                "replies_left": spaces.Box(0.0, 1.0, (1,), np.float32),
            }
        )

    def observation(self, observation: dict) -> dict:
        left = np.asarray(observation["replies_left"], dtype=np.float32) / self.budget
        return {"replies": observation["replies"], "replies_left": left}


class NoiseToImage(gym.ActionWrapper):
    """Action = initial noise x_T, decoded by a frozen diffusion model into query images.

    Action space: ``Box(-noise_bound, noise_bound, (K, 1, 28, 28), float32)`` (SB3's SAC needs finite bounds;
    3 sigma keeps 99.7% of a standard normal per pixel; the noise is clipped to them), or ``(K, 2, 1, 28, 28)``
    for a pairwise env. SB3's ``check_env`` recommends a [-1, 1] box; we keep x_T itself as the action on
    purpose, so that an untouched SB3 Gaussian policy (mean 0, std 1, clipped to the box: PPO) samples the
    base model. With ``squashed=True`` the box is [-1, 1] and x_T = atanh(action) (clipped to
    +-noise_bound): SAC's tanh-squashed Gaussian policy samples ``tanh(z)``, so its untrained z ~ N(~0, ~1)
    is again base-model noise, instead of ``noise_bound * tanh(z)`` (too wide, far from N(0, 1)).
    Decoding: DDIM with eta = 0 and ``num_steps`` steps, so an action maps to one image.

    Args:
        env: a PreferenceEnv (or a wrapper of one).
        unet: the frozen decoder (default: the env's base model, ``papa_env.load_pretrained(env.base_model)``).
        num_steps: DDIM steps of the decoding.
        noise_bound: the action box's half-width (``squashed=False``), or the clip of atanh(action).
        squashed: actions in [-1, 1], decoded through atanh (for tanh-squashed policies such as SAC).
    """

    def __init__(
        self,
        env: gym.Env,
        unet: torch.nn.Module | None = None,
        num_steps: int = 10,
        noise_bound: float = 3.0,
        squashed: bool = False,
    ) -> None:
        super().__init__(env)
        if noise_bound <= 0:
            raise ValueError(f"noise_bound must be > 0, got {noise_bound}")
        if unet is None:
            from papa_env.models import load_pretrained

            unet = load_pretrained(env.unwrapped.base_model)
        self.unet = unet.eval().requires_grad_(False)
        self.num_steps = num_steps
        self.noise_bound = float(noise_bound)
        self.squashed = bool(squashed)
        shape = env.action_space.shape
        high = 1.0 if self.squashed else self.noise_bound
        self.action_space = spaces.Box(-high, high, shape, np.float32)

    def noise(self, action: np.ndarray) -> torch.Tensor:
        """The initial noise x_T an action stands for."""
        a = torch.as_tensor(np.asarray(action, dtype=np.float32))
        if tuple(a.shape) != self.action_space.shape:
            raise ValueError(f"action shape {tuple(a.shape)} is wrong; expected {self.action_space.shape}")
        if self.squashed:
            a = torch.atanh(a.double().clamp(-1.0, 1.0)).float()  # +-1 -> +-inf, clipped next
        return a.clamp(-self.noise_bound, self.noise_bound)

    def action(self, action: np.ndarray) -> np.ndarray:
        x_t = self.noise(action)
        flat = x_t.reshape(-1, *x_t.shape[-3:])
        images = sample(self.unet, len(flat), sampler="ddim", num_steps=self.num_steps, eta=0.0, initial_noise=flat)
        return images.reshape(x_t.shape).numpy()


class ReplyLog(gym.Wrapper):
    """Persist each step's replies to ``<run_dir>/replies.jsonl`` (and queries to ``queries/``) before returning.

    Place it directly around the PreferenceEnv (inside action wrappers), so the queries logged are the images
    the user saw.
    """

    def __init__(self, env: gym.Env, run_dir) -> None:
        super().__init__(env)
        from pathlib import Path

        self.run_dir = Path(run_dir)
        (self.run_dir / "queries").mkdir(parents=True, exist_ok=True)
        self.steps_logged = (
            sum(1 for _ in (self.run_dir / "replies.jsonl").open()) if (self.run_dir / "replies.jsonl").exists() else 0
        )

    def step(self, action):
        import json
        import os

        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps_logged += 1
        name = f"queries/step_{self.steps_logged:04d}.npz"
        np.savez(self.run_dir / name, queries=np.asarray(action, dtype=np.float32), replies=info["replies"])
        with (self.run_dir / "replies.jsonl").open("a") as f:
            f.write(
                json.dumps(
                    {
                        "step": self.steps_logged,
                        "replies": info["replies"].tolist(),
                        "replies_left": info["replies_left"],
                        "queries": name,
                    }
                )
                + "\n"
            )
            f.flush()
            os.fsync(f.fileno())
        return obs, reward, terminated, truncated, info
