"""Wrappers around PreferenceEnv, grouped by what they change.

Recording wrappers
    :class:`ReplyLog`: appends every step's replies (and queries) to a run folder, fsync'd, before the caller
    sees them: for learners that drive the env themselves (Stable-Baselines3's ``model.learn``).

Observation wrappers
    :class:`BudgetFraction`: ``replies_left`` as a fraction of the budget, in [0, 1]. A raw count up to 300
    fed to a policy network (SB3's SAC initialises its mean layer with PyTorch's default, not a small gain)
    saturates the untrained policy; scaled inputs are what SB3 recommends.

The action wrapper that decodes initial noise into images (for RL on the noise, Stable-Baselines3's agents) is
:class:`papa_env.agents.sb3.NoiseToImage`: it runs the diffusion model, which the env layer does not.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


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


class ReplyLog(gym.Wrapper):
    """Persist each step's replies (and queries) in a run folder's journal before returning them: for learners
    that drive the env themselves (Stable-Baselines3's ``model.learn``). The folder's format, checks and atomic
    writes are :class:`papa_env.runfolder.RunFolder`'s, the same as a session's.

    Place it directly around the PreferenceEnv (inside action wrappers), so the queries logged are the images
    the user saw. A folder that already holds a journal is continued (its lines are checked first).
    """

    def __init__(self, env: gym.Env, run_dir) -> None:
        super().__init__(env)
        from papa_env.runfolder import RunFolder

        self.folder = RunFolder(run_dir)
        lines = self.folder.journal()
        self.folder.repair_journal(lines)
        self.steps_logged = len(lines)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps_logged += 1
        queries = np.asarray(action, dtype=np.float32)
        self.folder.append(self.steps_logged, queries, np.asarray(info["replies"]), int(info["replies_left"]), {})
        return obs, reward, terminated, truncated, info
