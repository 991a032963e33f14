"""papa_env/noise_env.py and papa_env/rl_zoo: the ids RL clients use, and rl-zoo3 running on them as written."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

import papa_env
from papa_env.diffusion import sample


@pytest.mark.parametrize("env_id", sorted(papa_env.NOISE_ENV_IDS))
def test_noise_ids_pass_both_env_checkers_with_a_flat_observation(env_id: str) -> None:
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(env_id, feedback_budget=20, num_steps=2)
    check_env(env, skip_render_check=True)
    sb3_check_env(gym.make(env_id, feedback_budget=20, num_steps=2), warn=False)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (11,) and obs[0] == 1.0 and env.action_space.shape == (10, 1, 28, 28)


def test_the_action_is_the_base_models_initial_noise() -> None:
    env = gym.make("PAPA-MNIST-Noise-v0", feedback_budget=20, num_steps=3)
    env.reset(seed=0)
    noise = np.random.default_rng(0).standard_normal(env.action_space.shape).astype(np.float32)
    images = env.unwrapped.__class__  # the PreferenceEnv under the wrappers
    decoded = env.get_wrapper_attr("action")(noise)
    unet = env.get_wrapper_attr("unet")
    expected = sample(unet, 10, num_steps=3, eta=0.0, initial_noise=torch.from_numpy(noise).clamp(-3, 3))
    assert images is papa_env.env.PreferenceEnv and np.allclose(decoded, expected.numpy(), atol=1e-5)
    obs, *_ = env.step(noise)
    assert obs[0] == pytest.approx(0.5) and set(obs[1:].tolist()) <= {-1.0, 1.0}


def test_a_constant_or_duplicating_policy_cannot_reach_the_maximal_return() -> None:
    """Distinct images count once: the same liked image ten times, or the same images every step, earn little."""
    env = gym.make("PAPA-MNIST-Noise-v0", feedback_budget=30, num_steps=3)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    # find one noise whose image the user likes
    for _ in range(50):
        z = rng.standard_normal((1, 1, 28, 28)).astype(np.float32)
        if env.unwrapped.privileged.likes(env.get_wrapper_attr("action")(np.repeat(z, 10, 0)))[0]:
            break
    same = np.repeat(z, 10, 0)
    returns = [env.step(same)[1] for _ in range(3)]
    assert returns[0] == pytest.approx(0.1) and returns[1:] == [0.0, 0.0]  # 10 copies: one like; then nothing new
    env.reset(seed=0)
    fixed = rng.standard_normal((10, 1, 28, 28)).astype(np.float32)  # a constant policy: the same 10 noises
    first, *later = [env.step(fixed)[1] for _ in range(3)]
    assert later == [0.0, 0.0]
    mean_env = gym.make("PAPA-MNIST-Noise-v0", feedback_budget=30, num_steps=3, reward="mean")
    mean_env.reset(seed=0)
    assert mean_env.step(same)[1] == pytest.approx(1.0)  # what the old reward paid for ten copies


def test_async_vector_envs_run_with_the_default_context() -> None:
    """A forked worker must not wait for the OpenMP threads of its parent (it used to hang forever)."""
    code = (
        "import gymnasium as gym, numpy as np, papa_env\n"
        "envs = gym.make_vec('PAPA-MNIST-v0', num_envs=2, vectorization_mode='async', feedback_budget=20)\n"
        "envs.reset(seed=0)\n"
        "obs, r, *_ = envs.step(np.zeros(envs.action_space.shape, np.float32))\n"
        "assert r.shape == (2,)\n"
        "envs.close()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=240)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_rl_zoo3_trains_on_the_noise_id_as_the_readme_says(algo: str, tmp_path) -> None:
    pytest.importorskip("rl_zoo3")
    cmd = [sys.executable, "-m", "rl_zoo3.train", "--algo", algo, "--env", "PAPA-MNIST-Noise-v0", "--gym-packages",
           "papa_env", "-conf", f"papa_env.rl_zoo.{algo}", "--log-folder", str(tmp_path), "-n", "20",
           "--env-kwargs", "feedback_budget:100", *(["squashed:True"] if algo == "sac" else []),
           "num_steps:2"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert list(tmp_path.glob(f"{algo}/PAPA-MNIST-Noise-v0_1/PAPA-MNIST-Noise-v0.zip"))
