from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from papa_env.agents.d3po import D3PO, D3POConfig, d3po_loss
from papa_env.agents.ddpo import DDPO, DDPOConfig, advantages_from_replies, ddpo_loss
from papa_env.oracles import Oracle

from papa_env.diffusion import trajectory_log_probs
from papa_env.env import PreferenceEnv


def test_ddpo_loss_hand_computed() -> None:
    log_prob = torch.full((2,), math.log(1.5))
    loss, stats = ddpo_loss(log_prob, torch.zeros(2), torch.tensor([1.0, -1.0]), clip_range=0.2)
    # A = +1: max(-1.5, -1.2) = -1.2; A = -1: max(1.5, 1.2) = 1.5; mean 0.15
    assert loss.item() == pytest.approx(0.15)
    assert stats["clipfrac"] == 1.0 and stats["approx_kl"] == pytest.approx(0.5 * math.log(1.5) ** 2)


def test_ddpo_advantages() -> None:
    adv = advantages_from_replies(np.array([1, 1, -1, -1]))
    assert adv.tolist() == pytest.approx([1, 1, -1, -1])
    assert advantages_from_replies(np.array([1, 1, 1])).abs().sum() == 0
    assert advantages_from_replies(np.array([1] * 99 + [-1]), adv_clip_max=5.0).min() == -5.0


def test_ddpo_ratio_is_one_on_the_first_inner_step_and_learning_moves_the_model(tiny_unet) -> None:
    agent = DDPO(tiny_unet, DDPOConfig(queries_per_step=4, num_sampling_steps=5, lr=1e-3))
    queries = agent.propose(torch.Generator().manual_seed(0))
    traj = agent._traj
    for j in range(4):
        ratio = torch.exp(trajectory_log_probs(agent.unet, traj, j) - traj.log_probs[j])
        assert torch.allclose(ratio, torch.ones(4), atol=1e-5)
    before = [p.detach().clone() for p in agent.unet.parameters()]
    stats = agent.learn(queries, np.array([1, -1, 1, -1]))
    assert stats["charts/clipfrac"] == 0.0 and stats["losses/policy"] == pytest.approx(0.0, abs=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.unet.parameters()))
    with pytest.raises(ValueError, match="propose"):
        agent.learn(np.zeros_like(queries), np.array([1, -1, 1, -1]))


def test_d3po_loss_hand_computed_and_bounded() -> None:
    lw, ll = torch.tensor([math.log(1.05)]), torch.tensor([math.log(0.8)])
    loss = d3po_loss(lw, torch.zeros(1), ll, torch.zeros(1), beta=0.1, eps=0.1)
    expected = -math.log(1 / (1 + math.exp(-0.1 * (math.log(1.05) - math.log(0.9)))))  # 0.8 clamps to 0.9
    assert loss.item() == pytest.approx(expected)
    at_start = d3po_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), 0.1, 0.1)
    assert at_start.item() == pytest.approx(math.log(2))
    extreme = d3po_loss(torch.tensor([10.0]), torch.zeros(1), torch.tensor([-10.0]), torch.zeros(1), 0.1, 0.1)
    assert 0.683 < extreme.item() < 0.703  # the clamp bounds the loss (their issue #20)


class Bright(Oracle):
    threshold = 0.0
    preference = "bright"

    def set_preference(self, preference) -> None:
        pass

    def utility(self, images):
        return images.mean((1, 2, 3))


def test_d3po_pairs_share_their_start_and_ties_give_no_gradient(tiny_unet) -> None:
    agent = D3PO(tiny_unet, D3POConfig(queries_per_step=3, num_sampling_steps=5, lr=1e-3))
    env = PreferenceEnv(Bright(), mode="pairwise", queries_per_step=3, feedback_budget=6)
    env.reset(seed=0)
    pairs = agent.propose(torch.Generator().manual_seed(0))
    assert pairs.shape == (3, 2, 1, 28, 28)
    lat = agent._traj.latents[0]
    assert torch.equal(lat[0], lat[1]) and torch.equal(lat[2], lat[3]) and not torch.equal(lat[0], lat[2])
    _, _, _, _, info = env.step(pairs)
    before = [p.detach().clone() for p in agent.unet.parameters()]
    assert agent.learn(pairs, np.zeros(3, np.int8))["charts/decided_pairs"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, agent.unet.parameters()))
    stats = agent.learn(pairs, np.array([1, -1, 0]))
    assert stats["charts/decided_pairs"] == 2 and stats["losses/d3po"] == pytest.approx(math.log(2), abs=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.unet.parameters()))


@pytest.mark.parametrize("cls", [DDPO, D3PO])
def test_restored_proposal_learns_exactly_like_the_original(tiny_unet, cls) -> None:
    cfg = (DDPOConfig if cls is DDPO else D3POConfig)(queries_per_step=2, num_sampling_steps=4, lr=1e-3)
    a, b = cls(tiny_unet, cfg), cls(tiny_unet, cfg)
    queries = a.propose(torch.Generator().manual_seed(3))
    b.restore_proposal(a.proposal_state())
    replies = np.array([1, -1])
    a.learn(queries, replies)
    b.learn(queries, replies)
    assert all(torch.allclose(x, y) for x, y in zip(a.unet.parameters(), b.unet.parameters()))


@pytest.mark.parametrize(("cls", "cfg"), [(DDPO, DDPOConfig(eta=0.0)), (D3PO, D3POConfig(eps=1.5))])
def test_bad_configs(tiny_unet, cls, cfg) -> None:
    with pytest.raises(ValueError):
        cls(tiny_unet, cfg)


# ------------------------------------------------------------------------------------------------
# Stable-Baselines3 on the noise


@pytest.mark.parametrize("mode", ["binary", "pairwise"])
def test_noise_wrapper_decodes_with_the_base_model_and_passes_check_env(tiny_unet, mode) -> None:
    from stable_baselines3.common.env_checker import check_env

    from papa_env.diffusion import sample
    from papa_env.wrappers import NoiseToImage

    env = NoiseToImage(
        PreferenceEnv(Bright(), mode=mode, queries_per_step=2, feedback_budget=6), tiny_unet, num_steps=3
    )
    import warnings

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

    from papa_env.wrappers import BudgetFraction, NoiseToImage

    plain = NoiseToImage(PreferenceEnv(Bright(), queries_per_step=2, feedback_budget=6), tiny_unet, num_steps=2)
    env = NoiseToImage(
        BudgetFraction(PreferenceEnv(Bright(), queries_per_step=2, feedback_budget=6)),
        tiny_unet,
        num_steps=2,
        squashed=True,
    )
    import warnings

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


def test_budget_fraction_scales_replies_left(tiny_unet) -> None:
    from papa_env.wrappers import BudgetFraction

    env = BudgetFraction(PreferenceEnv(Bright(), queries_per_step=2, feedback_budget=6))
    obs, _ = env.reset(seed=0)
    assert obs["replies_left"].tolist() == [1.0] and obs in env.observation_space
    obs, *_ = env.step(env.action_space.sample())
    assert obs["replies_left"].tolist() == pytest.approx([4 / 6]) and obs in env.observation_space


def test_untrained_sac_on_the_squashed_wrapper_samples_near_standard_normal_noise(tiny_unet) -> None:
    """SAC's untrained policy must start near the base model: its decoded x_T close to N(0, 1) per pixel."""
    import stable_baselines3 as sb3

    from papa_env.wrappers import BudgetFraction, NoiseToImage

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

    from papa_env.wrappers import NoiseToImage

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


def test_a_session_persists_the_proposal_a_resume_needs(tiny_unet, tmp_path) -> None:
    """Each reply batch's npz carries the sampled trajectory, so a resume can learn a persisted batch."""
    from papa_env.session import run_session

    cfg = DDPOConfig(queries_per_step=2, num_sampling_steps=3, lr=1e-3)
    env = PreferenceEnv(Bright(), queries_per_step=2, feedback_budget=4)
    run_session(DDPO(tiny_unet, cfg), env, tmp_path, eval_every=0, progress=False, stop_after_steps=1)
    data = np.load(tmp_path / "queries" / "step_0001.npz")
    state = {k.removeprefix("proposal/"): data[k] for k in data.files if k.startswith("proposal/")}
    assert state, data.files
    DDPO(tiny_unet, cfg).restore_proposal(state)  # what a resume does with a persisted, unlearned batch
