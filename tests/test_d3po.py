"""agents/d3po.py: the loss by hand, pairs from one start, ties without gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import Bright

from papa_env.agents.d3po import D3PO, D3POConfig, d3po_loss
from papa_env.env import PreferenceEnv


def test_d3po_loss_hand_computed_and_bounded() -> None:
    lw, ll = torch.tensor([math.log(1.05)]), torch.tensor([math.log(0.8)])
    loss = d3po_loss(lw, torch.zeros(1), ll, torch.zeros(1), beta=0.1, eps=0.1)
    expected = -math.log(1 / (1 + math.exp(-0.1 * (math.log(1.05) - math.log(0.9)))))  # 0.8 clamps to 0.9
    assert loss.item() == pytest.approx(expected)
    at_start = d3po_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), 0.1, 0.1)
    assert at_start.item() == pytest.approx(math.log(2))
    extreme = d3po_loss(torch.tensor([10.0]), torch.zeros(1), torch.tensor([-10.0]), torch.zeros(1), 0.1, 0.1)
    assert 0.683 < extreme.item() < 0.703  # the clamp bounds the loss (their issue #20)


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
    assert stats["charts/decided_pairs"] == 2 and stats["compute/updates"] == 2  # one optimizer step per pair
    assert stats["compute/rows"] == 2 * 2 * int(
        agent._traj.stochastic.sum()
    )  # each pair's 2 trajectories x their steps
    assert stats["losses/d3po"] == pytest.approx(math.log(2), abs=1e-3)
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.unet.parameters()))


def test_d3po_loss_moves_on_a_toy_pair_set_and_replay_reuses_stored_pairs(tiny_unet) -> None:
    """Learning the same preferences pass after pass lowers the loss below log 2; replayed pairs are trained on."""
    agent = D3PO(tiny_unet, D3POConfig(queries_per_step=3, num_sampling_steps=4, lr=1e-2, inner_epochs=5, replay=2))
    pairs = agent.propose(torch.Generator().manual_seed(0))
    stats = agent.learn(pairs, np.array([1, -1, 1]))
    assert stats["compute/updates"] == 15 and stats["losses/d3po"] < math.log(2) - 1e-4
    assert len(agent.buffer) == 3
    again = agent.learn(agent.propose(torch.Generator().manual_seed(1)), np.array([0, 0, 0]))  # ties: replay only
    assert again["compute/updates"] == 10 and again["charts/decided_pairs"] == 0
    other = D3PO(tiny_unet, agent.cfg)
    other.load_state_dict(agent.state_dict())
    assert len(other.buffer) == 3 and torch.equal(other.buffer[0].latents, agent.buffer[0].latents)
