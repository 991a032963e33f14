"""Stable-Baselines3 on the noise: the "RL on the initial noise" baselines, with SB3's PPO and SAC unchanged.

:class:`papa_env.noise_env.NoiseToImage` makes the env's action the base diffusion model's initial noise x_T,
decoded by the frozen model; SB3's untrained Gaussian policy then *is* the base model. :func:`run_sb3` runs PPO or
SAC through ``model.learn`` on it, every reply persisted by :class:`papa_env.wrappers.ReplyLog`, with evaluations in
a callback. SB3 is an optional dependency: ``pip install 'papa-env[sb3]'``.
"""

from __future__ import annotations

import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from papa_env.noise_env import NoiseToImage

__all__ = ["NoiseToImage", "SB3Sampler", "load_sampler", "make_model", "run_sb3", "wrap_for"]


def import_sb3():
    """``stable_baselines3``, or an ImportError saying which extra to install."""
    try:
        import stable_baselines3
    except ImportError as err:
        raise ImportError("the SB3 agents need stable-baselines3: pip install 'papa-env[sb3]'") from err
    return stable_baselines3


class SB3Sampler:
    """Lets the Evaluator sample from an SB3 policy: its (stochastic) actions decoded by the wrapper."""

    def __init__(self, model, env) -> None:
        self.model, self.env = model, env
        self.name = "sb3"

    def generate(self, n: int, generator: torch.Generator) -> torch.Tensor:
        obs, _ = self.env.observation_space.sample(), None
        obs = {k: np.zeros_like(v) for k, v in obs.items()}
        self.model.set_random_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        images = []
        while sum(len(x) for x in images) < n:
            action, _ = self.model.predict(obs, deterministic=False)
            images.append(torch.from_numpy(self.env.action(action)).reshape(-1, 1, 28, 28))
        return torch.cat(images)[:n]


def wrap_for(algo: str, env: gym.Env, unet: torch.nn.Module | None = None) -> NoiseToImage:
    """The env as SB3's ``algo`` sees it: budget as a fraction, the action as noise (atanh-squashed for SAC, whose
    tanh policy then starts as base-model noise) decoded by ``unet`` (default: the env's shipped base model)."""
    from papa_env.wrappers import BudgetFraction

    return NoiseToImage(BudgetFraction(env), unet, squashed=algo == "sb3-sac")


def make_model(algo: str, wrapped: gym.Env, seed: int):
    """SB3's PPO or SAC with the settings that keep them finite on 7,840 action dimensions."""
    sb3 = import_sb3()
    steps = wrapped.unwrapped.feedback_budget // wrapped.unwrapped.queries_per_step
    if algo == "sb3-ppo":
        # The action has K x 784 dims: the log-prob ratio of a whole action moves fast, and once exp() of it
        # overflows PPO's loss goes inf / NaN. target_kl stops each update before that (SB3's own knob).
        # SB3 collects whole rollouts: n_steps divides the budget's steps, or the last rollout would ask past it
        n_steps = max(d for d in range(1, min(10, steps) + 1) if steps % d == 0)
        return sb3.PPO("MultiInputPolicy", wrapped, n_steps=n_steps, batch_size=n_steps, n_epochs=4,
                       normalize_advantage=n_steps > 1,  # SB3 refuses to normalise a batch of one
                       learning_rate=1e-4, target_kl=0.02, seed=seed, device="cpu")  # fmt: skip
    if algo == "sb3-sac":
        return sb3.SAC("MultiInputPolicy", wrapped, buffer_size=1000, learning_starts=min(5, steps - 1), batch_size=8,
                       seed=seed, device="cpu")  # fmt: skip
    raise ValueError(f"unknown SB3 agent {algo!r}; expected 'sb3-ppo' or 'sb3-sac'")


POLICY_FILE = "sb3_policy.safetensors"


def load_sampler(algo: str, env: gym.Env, run_dir: Path, unet: torch.nn.Module | None = None) -> SB3Sampler:
    """The policy a :func:`run_sb3` session saved in ``run_dir``, as something with ``generate(n, generator)``.

    The policy's weights are read with :func:`papa_env.checkpoint.load_state` (no pickle): SB3's own ``.zip``
    unpickles objects, which a run folder someone sent you must never do.
    """
    from papa_env.checkpoint import load_state

    wrapped = wrap_for(algo, env, unet)
    model = make_model(algo, wrapped, seed=0)
    model.policy.load_state_dict(load_state(Path(run_dir) / POLICY_FILE)["policy"])
    return SB3Sampler(model, wrapped)


def run_sb3(
    algo: str, env, evaluator, seed: int, eval_every: int, run_dir: Path, unet: torch.nn.Module | None = None
) -> list[dict]:
    """SB3 PPO / SAC, unchanged, via ``model.learn`` on the noise-wrapped env; evaluations in a callback.

    Every reply is persisted in ``run_dir``'s journal (:class:`~papa_env.wrappers.ReplyLog`) before SB3 sees it;
    the final policy's weights go to ``run_dir / POLICY_FILE``. SB3 keeps its rollouts / replay buffer in memory,
    so an interrupted run starts over rather than resuming.
    """
    from stable_baselines3.common.callbacks import BaseCallback

    from papa_env.checkpoint import save_state
    from papa_env.wrappers import ReplyLog

    base_env = env.unwrapped
    wrapped = wrap_for(algo, ReplyLog(env, run_dir), unet)
    k = base_env.queries_per_step
    steps = base_env.feedback_budget // k
    model = make_model(algo, wrapped, seed)
    sampler = SB3Sampler(model, wrapped)
    records: list[dict] = []

    def evaluate(replies: int, t_step: float | None) -> None:
        metrics, _ = evaluator(sampler)
        if t_step is not None:
            metrics["charts/seconds_per_interaction"] = t_step
        records.append({"replies": replies, **metrics})

    class Eval(BaseCallback):
        def _on_training_start(self) -> None:
            self.t = time.perf_counter()

        def _on_step(self) -> bool:
            # the VecEnv has already reset the env after the budget's last step: count from that step's info
            replies = base_env.feedback_budget - int(self.locals["infos"][0]["replies_left"])
            if replies and (replies % eval_every == 0 or replies == base_env.feedback_budget):
                evaluate(replies, (time.perf_counter() - self.t) / (replies // k))
            return True

    evaluate(0, None)
    model.learn(total_timesteps=steps, callback=Eval())
    save_state({"algo": algo, "policy": model.policy.state_dict()}, Path(run_dir) / POLICY_FILE)
    return records
