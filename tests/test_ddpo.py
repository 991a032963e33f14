"""agents/ddpo.py and what DDPO and D3PO share (agents/trajectory.py)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from papa_env.agents.d3po import D3PO, D3POConfig, d3po_loss
from papa_env.agents.ddpo import DDPO, DDPOConfig, advantages_from_replies, ddpo_loss, ddpo_update
from papa_env.diffusion import sample_trajectory, trajectory_log_probs


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
    agent = DDPO(tiny_unet, DDPOConfig(queries_per_step=4, num_sampling_steps=5, lr=1e-3, train_batch_size=4))
    queries = agent.propose(torch.Generator().manual_seed(0))
    traj = agent._traj
    for j in range(4):
        ratio = torch.exp(trajectory_log_probs(agent.unet, traj, j) - traj.log_probs[j])
        assert torch.allclose(ratio, torch.ones(4), atol=1e-5)
    before = [p.detach().clone() for p in agent.unet.parameters()]
    stats = agent.learn(queries, np.array([1, -1, 1, -1]))
    assert stats["charts/clipfrac"] == 0.0 and stats["losses/policy"] == pytest.approx(0.0, abs=1e-6)
    assert stats["compute/updates"] == 1 and stats["compute/rows"] == 4 * int(traj.stochastic.sum())  # 4 trajectories
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.unet.parameters()))
    with pytest.raises(ValueError, match="propose"):
        agent.learn(np.zeros_like(queries), np.array([1, -1, 1, -1]))


def test_ddpo_clip_acts_after_the_first_minibatch_as_in_the_reference(tiny_unet) -> None:
    """Several optimizer steps per interaction: every step after the first sees ratio != 1, and the clip bites."""
    cfg = DDPOConfig(queries_per_step=4, num_sampling_steps=5, lr=1e-3, train_batch_size=2, inner_epochs=2)
    agent = DDPO(tiny_unet, cfg)
    stats = agent.learn(agent.propose(torch.Generator().manual_seed(0)), np.array([1, -1, 1, -1]))
    assert stats["compute/updates"] == 4  # 2 minibatches x 2 passes
    assert stats["compute/rows"] == 2 * 4 * int(agent._traj.stochastic.sum())  # each pass: 4 trajectories x their steps
    assert stats["charts/clipfrac"] > 0.3 and stats["charts/approx_kl"] > 0  # the ratio moved past 1 +- 1e-4


def test_ddpo_kl_to_the_base_is_zero_at_the_start_and_pulls_back(tiny_unet) -> None:
    cfg = DDPOConfig(queries_per_step=4, num_sampling_steps=5, lr=1e-3, train_batch_size=2, kl_coef=1.0)
    agent = DDPO(tiny_unet, cfg)
    first = agent.learn(agent.propose(torch.Generator().manual_seed(0)), np.array([1, -1, 1, -1]))
    assert first["charts/kl_to_base"] >= 0
    second = agent.learn(agent.propose(torch.Generator().manual_seed(1)), np.array([1, -1, 1, -1]))
    assert second["charts/kl_to_base"] > 0  # the tuned model has left the base: the regulariser now pulls


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


@pytest.mark.parametrize(
    ("cls", "bad"),
    [(DDPOConfig, {"eta": 0.0}), (DDPOConfig, {"train_batch_size": 0}), (DDPOConfig, {"kl_coef": -1}),
     (D3POConfig, {"eps": 1.5}), (D3POConfig, {"replay": -1}), (D3POConfig, {"inner_epochs": 0})],
)  # fmt: skip
def test_bad_configs_are_refused_when_built(cls, bad) -> None:
    with pytest.raises(ValueError):
        cls(**bad)


def _perturbed(unet: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy of ``unet`` nudged off it (so the ratios to its trajectories are not 1 and the clip can act)."""
    out = copy.deepcopy(unet).requires_grad_(True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return out


def _grads(unet: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in unet.parameters()]


def test_ddpo_update_takes_the_gradient_of_the_reference_s_per_step_accumulation(tiny_unet) -> None:
    """All steps in one UNet call (ddpo_update) give the gradient of the reference's loop: each stochastic step's
    PPO-clip loss (+ its KL to the base) / S backpropagated on its own and accumulated."""
    cfg = DDPOConfig(queries_per_step=3, num_sampling_steps=5, train_batch_size=3, kl_coef=0.5, grad_clip=1e9)
    traj = sample_trajectory(tiny_unet, 3, num_steps=5, generator=torch.Generator().manual_seed(0))
    adv = advantages_from_replies(np.array([1, -1, 1]))
    unet = _perturbed(tiny_unet, 1)
    reference = copy.deepcopy(unet)
    stats = ddpo_update(unet, torch.optim.Adam(unet.parameters(), lr=1e-3), traj, adv, cfg,
                        torch.Generator().manual_seed(0), base=tiny_unet)  # fmt: skip
    steps = [j for j in range(5) if traj.stochastic[j]]
    clipfrac = 0.0
    for j in steps:
        log_prob, mean, std = trajectory_log_probs(reference, traj, j, cfg.eta, with_mean=True)
        loss, s = ddpo_loss(log_prob, traj.log_probs[j], adv, cfg.clip_range)
        with torch.no_grad():
            _, base_mean, _ = trajectory_log_probs(tiny_unet, traj, j, cfg.eta, with_mean=True)
        kl = (((mean - base_mean) ** 2).mean((1, 2, 3)) / (2 * std**2)).mean()
        ((loss + cfg.kl_coef * kl) / len(steps)).backward()
        clipfrac += s["clipfrac"] / len(steps)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(_grads(unet), _grads(reference)))
    assert stats["charts/clipfrac"] == pytest.approx(clipfrac) and clipfrac > 0  # the clip acted on some rows


def test_d3po_step_takes_the_gradient_of_the_reference_s_per_step_accumulation(tiny_unet) -> None:
    agent = D3PO(tiny_unet, D3POConfig(num_sampling_steps=5, grad_clip=1e9))
    agent.unet = _perturbed(tiny_unet, 2)
    agent.opt = torch.optim.AdamW(agent.unet.parameters(), lr=1e-3)
    reference = copy.deepcopy(agent.unet)
    pair = sample_trajectory(tiny_unet, 2, num_steps=5, generator=torch.Generator().manual_seed(3))
    steps = [j for j in range(5) if pair.stochastic[j]]
    loss = agent._step(pair, steps)
    total = 0.0
    for j in steps:
        log_prob = trajectory_log_probs(reference, pair, j)
        ref = trajectory_log_probs(tiny_unet, pair, j).detach()
        step_loss = d3po_loss(log_prob[:1], ref[:1], log_prob[1:], ref[1:], agent.cfg.beta, agent.cfg.eps).mean()
        (step_loss / len(steps)).backward()
        total += step_loss.item() / len(steps)
    assert loss == pytest.approx(total) and sum(float(g.abs().sum()) for g in _grads(reference)) > 0
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(_grads(agent.unet), _grads(reference)))
