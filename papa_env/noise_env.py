"""Envs for RL clients: the action is the base diffusion model's initial noise, the observation a flat vector.

A Stable-Baselines3 / rl-zoo3 policy cannot usefully emit 7,840 pixels (random pixels are always disliked: the reward
is a constant -1), but it can emit the initial noise x_T of the frozen base model: an untouched Gaussian policy then
*is* the base model, and learning moves it towards the noises whose images the user likes ("RL on the noise").

* :class:`NoiseToImage` (action wrapper): x_T -> images by deterministic DDIM with the base model.
* :class:`FlatObservation` (observation wrapper): ``[fraction of the budget left, last replies (K)]`` as one
  ``Box(-1, 1, (K + 1,))``, so ``MlpPolicy`` works.
* :func:`make_noise_env` builds both around a :class:`~papa_env.env.PreferenceEnv`: the entry point of the
  ``PAPA-*-Noise-v0`` ids. The distinct-image reward of :class:`~papa_env.env.PreferenceEnv` keeps a constant or
  duplicate-producing policy from reaching the maximal return.

rl-zoo3 hyperparameters for these ids: :mod:`papa_env.rl_zoo` (``--conf-file papa_env.rl_zoo``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from papa_env.diffusion import sample


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


class FlatObservation(gym.ObservationWrapper):
    """``[replies_left / budget, replies of the last step (K)]`` as ``Box(-1, 1, (K + 1,), float32)``."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.budget = float(env.unwrapped.feedback_budget)
        k = env.unwrapped.queries_per_step
        self.observation_space = spaces.Box(-1.0, 1.0, (k + 1,), np.float32)

    def observation(self, observation: dict) -> np.ndarray:
        left = np.asarray(observation["replies_left"], np.float32) / self.budget
        return np.concatenate([left, np.asarray(observation["replies"], np.float32)]).astype(np.float32)


def make_noise_env(
    oracle: Any = "classifier",
    *,
    dataset: str = "mnist",
    num_steps: int = 10,
    noise_bound: float = 3.0,
    squashed: bool = False,
    render_mode: str | None = None,
    **env_kwargs: Any,
) -> gym.Env:
    """A :class:`~papa_env.env.PreferenceEnv` whose action is the base model's initial noise (:class:`NoiseToImage`)
    and whose observation is flat (:class:`FlatObservation`): what the ``PAPA-*-Noise-v0`` ids make.

    Args:
        oracle, dataset, env_kwargs: as for :class:`~papa_env.env.PreferenceEnv` (``preference=``, ``mistake_rate=``,
            ``feedback_budget=``, ``queries_per_step=``, ...; binary mode only).
        num_steps, noise_bound, squashed: as for :class:`NoiseToImage` (``squashed=True`` for tanh policies: SAC).
    """
    from papa_env.env import PreferenceEnv

    if env_kwargs.get("mode", "binary") != "binary":
        raise ValueError("the noise envs ask like / dislike questions: mode must be 'binary'")
    env = PreferenceEnv(oracle, dataset=dataset, render_mode=render_mode, **env_kwargs)
    return NoiseToImage(FlatObservation(env), num_steps=num_steps, noise_bound=noise_bound, squashed=squashed)
