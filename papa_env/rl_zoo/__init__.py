"""rl-zoo3 hyperparameters for the ``PAPA-*-Noise-v0`` ids, one module per algorithm (rl-zoo3 reads a module's
``hyperparams`` dict, keyed by env id):

    python -m rl_zoo3.train --algo ppo --env PAPA-MNIST-Noise-v0 --gym-packages papa_env -conf papa_env.rl_zoo.ppo
    python -m rl_zoo3.train --algo sac --env PAPA-MNIST-Noise-v0 --gym-packages papa_env -conf papa_env.rl_zoo.sac

``n_timesteps`` is one user session: 30 steps of 10 replies (the 300-reply budget). The settings are those of the
harness's ``sb3-ppo`` / ``sb3-sac`` (:mod:`papa_env.agents.sb3`): PPO stops each update at ``target_kl`` (its
log-prob ratio over 7,840 action dimensions overflows otherwise), SAC keeps a small buffer (the default one would
ask for ~29 GiB) and acts through the atanh-squashed noise (``squashed: True``), so both untrained policies are the
base model.
"""

from __future__ import annotations

from papa_env.registration import NOISE_ENV_IDS

SESSION_STEPS = 30
"""Env steps of one session: the 300-reply budget in steps of 10."""

PPO = dict(policy="MlpPolicy", n_timesteps=SESSION_STEPS, n_steps=10, batch_size=10, n_epochs=4, learning_rate=1e-4,
           target_kl=0.02)  # fmt: skip
SAC = dict(policy="MlpPolicy", n_timesteps=SESSION_STEPS, buffer_size=1000, learning_starts=5, batch_size=8,
           env_kwargs=dict(squashed=True))  # fmt: skip


def for_every_id(settings: dict) -> dict[str, dict]:
    """``settings`` for each noise env id (a copy each: rl-zoo3 pops keys from the dict it reads)."""
    return {
        env_id: {k: (dict(v) if isinstance(v, dict) else v) for k, v in settings.items()} for env_id in NOISE_ENV_IDS
    }
