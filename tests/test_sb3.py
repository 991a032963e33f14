"""agents/sb3.py: the noise action wrapper, and SB3's PPO / SAC running unchanged on it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from helpers import Bright

from papa_env.agents.sb3 import NoiseToImage
from papa_env.env import PreferenceEnv
from papa_env.wrappers import BudgetFraction


@pytest.mark.parametrize("mode", ["binary", "pairwise"])
def test_noise_wrapper_decodes_with_the_base_model_and_passes_check_env(tiny_unet, mode) -> None:
    from stable_baselines3.common.env_checker import check_env

    from papa_env.diffusion import sample

    env = NoiseToImage(
        PreferenceEnv(Bright(), mode=mode, queries_per_step=2, feedback_budget=6), tiny_unet, num_steps=3
    )

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, warn=True)
    # the one expected remark: the action is x_T ~ N(0, 1) on purpose, not a [-1, 1] box
    assert [str(w.message) for w in caught if "symmetric and normalized Box" not in str(w.message)] == []
    env.reset(seed=0)
    noise = np.random.default_rng(0).standard_normal(env.action_space.shape).astype(np.float32)
    images = env.action(noise)
    flat = torch.from_numpy(noise).clamp(-3, 3).reshape(-1, 1, 28, 28)
    expected = sample(tiny_unet, len(flat), num_steps=3, eta=0.0, initial_noise=flat).reshape(noise.shape)
    assert np.allclose(images, expected.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="noise_bound"):
        NoiseToImage(env.env, tiny_unet, noise_bound=0)


def test_squashed_noise_wrapper_decodes_atanh_and_has_a_normalised_box(tiny_unet) -> None:
    from stable_baselines3.common.env_checker import check_env

    plain = NoiseToImage(PreferenceEnv(Bright(), queries_per_step=2, feedback_budget=6), tiny_unet, num_steps=2)
    env = NoiseToImage(
        BudgetFraction(PreferenceEnv(Bright(), queries_per_step=2, feedback_budget=6)),
        tiny_unet,
        num_steps=2,
        squashed=True,
    )

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, warn=True)
    assert [str(w.message) for w in caught] == []  # a [-1, 1] box and observations in their space
    assert env.action_space.low.min() == -1.0 and env.action_space.high.max() == 1.0
    z = np.random.default_rng(0).standard_normal(env.action_space.shape).astype(np.float32)
    assert np.allclose(env.action(np.tanh(z)), plain.action(z), atol=1e-4)
    # the box's edges are finite noise, clipped like the plain wrapper's
    edge = env.noise(np.ones(env.action_space.shape, np.float32))
    assert torch.isfinite(edge).all() and float(edge.max()) == pytest.approx(3.0)


def test_untrained_sac_on_the_squashed_wrapper_samples_near_standard_normal_noise(tiny_unet) -> None:
    """SAC's untrained policy must start near the base model: its decoded x_T close to N(0, 1) per pixel."""
    import stable_baselines3 as sb3

    def decoded_noise(squashed: bool, scaled: bool) -> np.ndarray:
        env = PreferenceEnv(Bright(), queries_per_step=2, feedback_budget=300)
        env = NoiseToImage(BudgetFraction(env) if scaled else env, tiny_unet, num_steps=1, squashed=squashed)
        model = sb3.SAC("MultiInputPolicy", env, buffer_size=10, seed=0, device="cpu")
        obs, _ = env.reset(seed=0)
        return np.stack([env.noise(model.predict(obs)[0]).numpy() for _ in range(20)])

    x = decoded_noise(squashed=True, scaled=True)
    assert abs(x.mean()) < 0.1 and 0.8 < x.std() < 1.25
    # what it replaces: 3 * tanh(z) of a policy fed the raw reply count, mostly at the box's edges
    raw = decoded_noise(squashed=False, scaled=False)
    assert raw.std() > 2.0


@pytest.mark.parametrize("algo", ["PPO", "SAC"])
def test_sb3_runs_unchanged_on_the_wrapped_env(tiny_unet, algo) -> None:
    import stable_baselines3 as sb3

    env = NoiseToImage(PreferenceEnv(Bright(), queries_per_step=2, feedback_budget=8), tiny_unet, num_steps=2)
    kwargs = (
        dict(n_steps=4, batch_size=4, n_epochs=1)
        if algo == "PPO"
        else dict(buffer_size=50, learning_starts=2, batch_size=2)
    )
    model = getattr(sb3, algo)("MultiInputPolicy", env, seed=0, device="cpu", **kwargs)
    model.learn(total_timesteps=8)
    action, _ = model.predict(env.reset(seed=1)[0], deterministic=True)
    assert action.shape == (2, 1, 28, 28) and np.abs(action).max() <= 3.0


@pytest.mark.parametrize(("budget", "n_steps"), [(300, 10), (150, 5), (40, 4), (70, 7), (110, 1), (10, 1)])
def test_ppo_collects_no_reply_past_the_budget(tiny_unet, tmp_path, budget, n_steps) -> None:
    """SB3 collects whole rollouts of n_steps: the runner's n_steps divides the budget's interactions, so the last
    rollout ends with the budget instead of resetting the env and asking a new episode's questions."""
    from papa_env.agents.sb3 import make_model, wrap_for

    env = PreferenceEnv(Bright(), queries_per_step=10, feedback_budget=budget)
    assert make_model("sb3-ppo", wrap_for("sb3-ppo", env, tiny_unet), seed=0).n_steps == n_steps


def test_an_sb3_session_spends_exactly_its_budget(tiny_unet, tmp_path) -> None:
    from papa_env.agents.sb3 import run_sb3

    for budget in (10, 110):  # 1 and 11 interactions: rollouts of 1 step (of 2 or 10 they would ask past the end)
        env = PreferenceEnv(Bright(), queries_per_step=10, feedback_budget=budget)
        env.reset(seed=0)
        records = run_sb3("sb3-ppo", env, lambda s: ({}, None), 0, 10, tmp_path / str(budget), tiny_unet)
        assert [r["replies"] for r in records] == list(range(0, budget + 1, 10))
        assert len((tmp_path / str(budget) / "replies.jsonl").read_text().splitlines()) == budget // 10
