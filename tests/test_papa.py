"""agents/papa.py: the loss against hand-computed values, its Monte-Carlo estimate, the agent's options, learning."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import Linear, ToyEval, bright_env

import papa_env.agents.papa as papa_mod
from papa_env.agents.papa import PAPA, PRESETS, PAPAConfig, draw_timesteps, papa_loss, reply_signs
from papa_env.diffusion import SwitchedUNet, elbo_weights, sample
from papa_env.models import make_scheduler
from papa_env.session import run_session

# ------------------------------------------------------------------------------------------------
# the loss


def test_loss_matches_a_hand_computed_value() -> None:
    cfg = PAPAConfig(pref_coef=0.1, model_coef=0.009, k=400, timesteps_per_image=2)
    x0 = torch.stack([torch.full((1, 28, 28), 0.5), torch.full((1, 28, 28), -0.25)])
    noise = torch.stack([torch.full((1, 28, 28), 1.0), torch.full((1, 28, 28), -2.0)])
    y = torch.tensor([1.0, -1.0])
    ts = torch.tensor([[410, 500], [999, 400]])
    unet, base = Linear(0.5), Linear(0.2, b=1.0)
    out = papa_loss(unet, base, x0, y, ts, noise, cfg)

    w, abar = elbo_weights(make_scheduler()).double(), make_scheduler().alphas_cumprod.double()
    scale = (1000 - 400) / 2  # two uniform draws estimate a sum of 600 terms
    expected = 0.0
    for i in range(2):
        for t in ts[i].tolist():
            xt = abar[t].sqrt() * x0[i, 0, 0, 0].double() + (1 - abar[t]).sqrt() * noise[i, 0, 0, 0].double()
            mse = (0.5 * xt - noise[i, 0, 0, 0].double()) ** 2
            expected += 0.1 * y[i].item() * scale * w[t] * mse
            if y[i] > 0:
                expected += 0.009 * (0.5 * xt - (0.2 * xt + t / 1000)) ** 2 / 2  # the anchor: a mean over 2 draws
    expected /= 2  # averaged over the queries
    assert out["tensor"].item() == pytest.approx(float(expected), rel=1e-5)
    assert out["loss"] == pytest.approx(float(expected), rel=1e-5)


def test_chunked_backward_gives_the_same_gradient() -> None:
    torch.manual_seed(0)  # unseeded draws once put the two terms' gradients in near-cancellation (a 1e-5 flake)
    cfg = PAPAConfig(timesteps_per_image=5)
    x0, noise = torch.rand(2, 1, 28, 28) * 2 - 1, torch.randn(2, 1, 28, 28)
    ts = torch.randint(0, 1000, (2, 5))
    y = torch.tensor([1.0, -1.0])
    a, b = Linear(0.3), Linear(0.3)
    papa_loss(a, Linear(0.1), x0, y, ts, noise, cfg, chunk=1000)["tensor"].backward()
    papa_loss(b, Linear(0.1), x0, y, ts, noise, cfg, backward=True, chunk=3)
    assert a.a.grad.item() == pytest.approx(b.a.grad.item(), rel=1e-5)


def test_monte_carlo_estimate_is_unbiased(tiny_unet) -> None:
    """The mean of the m-timestep estimate over many draws matches the full sum over the T - k timesteps, for
    both terms (the anchor to a different base model included)."""
    torch.manual_seed(0)
    base = copy.deepcopy(tiny_unet)
    with torch.no_grad():
        for param in base.parameters():  # another model: the anchor term is not zero
            param.add_(0.05 * torch.randn_like(param))
    x0, noise = torch.rand(1, 1, 28, 28) * 2 - 1, torch.randn(1, 1, 28, 28)
    y = torch.tensor([1.0])
    cfg_full = PAPAConfig(timesteps_per_image=None, model_coef=0.5, k=100)
    cfg_mc = replace(cfg_full, timesteps_per_image=16)
    with torch.no_grad():
        full = papa_loss(tiny_unet, base, x0, y, draw_timesteps(1, cfg_full, torch.Generator()), noise, cfg_full)
        g = torch.Generator().manual_seed(1)
        draws = []
        for _ in range(400):
            ts = draw_timesteps(1, cfg_mc, g)
            assert ts.min() >= 100 and ts.shape == (1, 16)
            draws.append(papa_loss(tiny_unet, base, x0, y, ts, noise, cfg_mc))
    for key in ("losses/pref", "losses/model"):
        values = [d[key] for d in draws]
        mean, sem = np.mean(values), np.std(values) / np.sqrt(len(values))
        print(f"{key}: full sum {full[key]:.5f}; MC mean {mean:.5f} +- {sem:.5f}")
        assert full[key] > 0 and abs(mean - full[key]) < 4 * sem + 1e-6


def test_reply_weight_scales_the_reply_term_while_the_anchor_follows_the_sign() -> None:
    cfg = PAPAConfig(pref_coef=0.1, model_coef=0.009, timesteps_per_image=2)
    x0, noise = torch.rand(2, 1, 28, 28) * 2 - 1, torch.randn(2, 1, 28, 28)
    ts, y = torch.tensor([[10, 500], [999, 3]]), torch.tensor([1.0, -1.0])
    unet, base = Linear(0.5), Linear(0.2, b=1.0)
    raw = papa_loss(unet, base, x0, y, ts, noise, cfg)
    only_like = papa_loss(unet, base, x0, torch.tensor([1.0, 0.0]), ts, noise, cfg)
    only_dislike = papa_loss(unet, base, x0, torch.tensor([0.0, -1.0]), ts, noise, cfg)
    centred = papa_loss(unet, base, x0, y, ts, noise, cfg, reply_weight=torch.tensor([0.25, -1.75]))
    expected_pref = 0.25 * only_like["losses/pref"] + 1.75 * only_dislike["losses/pref"]
    assert centred["losses/pref"] == pytest.approx(expected_pref, rel=1e-5)
    assert raw["losses/model"] > 0  # the liked query's anchor, unchanged by the weights
    assert centred["losses/model"] == pytest.approx(raw["losses/model"], rel=1e-6)
    assert raw["losses/pref"] == pytest.approx(only_like["losses/pref"] + only_dislike["losses/pref"], rel=1e-5)


def test_dislike_margin_stops_pushing_a_disliked_query_past_the_cap() -> None:
    """Bounded dislike term: a disliked row whose error exceeds (1 + margin) x the base's gives no gradient."""
    x0, noise = torch.full((1, 1, 28, 28), 0.5), torch.full((1, 1, 28, 28), 1.0)
    ts, y = torch.tensor([[300]]), torch.tensor([-1.0])
    cfg = PAPAConfig(model_coef=0.0, dislike_margin=0.5, timesteps_per_image=1)
    abar = make_scheduler().alphas_cumprod[300]
    xt = float(abar.sqrt() * 0.5 + (1 - abar).sqrt())

    def grad(a: float, base_a: float, margin: float | None) -> float:
        unet = Linear(a)
        papa_loss(unet, Linear(base_a), x0, y, ts, noise, replace(cfg, dislike_margin=margin), backward=True)
        return unet.a.grad.item()

    base_a = 1 / xt  # the base denoises this row perfectly: cap = 0 -> any error > cap, no push
    assert grad(0.0, base_a, 0.5) == 0.0
    assert grad(0.0, base_a, None) != 0.0  # the authors' unbounded term still pushes
    base_a = 0.0  # the base's error is 1: cap 1.5; the tuned model's error (a xt - 1)^2 = 0.25 < cap: pushes
    a = 0.5 / xt
    assert grad(a, base_a, 0.5) == pytest.approx(grad(a, base_a, None), rel=1e-6) != 0.0


def test_epapa_trains_and_samples_the_tuned_model_only_above_k() -> None:
    seen: dict[str, list[int]] = {"tuned": [], "base": []}

    class Spy(Linear):
        def __init__(self, name: str) -> None:
            super().__init__(0.1)
            self.name = name

        def forward(self, x, t):
            seen[self.name] += torch.as_tensor(t).expand(len(x)).tolist()
            return super().forward(x, t)

    switched = SwitchedUNet(Spy("tuned"), Spy("base"), k=400)
    sample(switched, 2, num_steps=10, generator=torch.Generator().manual_seed(0))
    assert min(seen["tuned"]) >= 400 and max(seen["base"]) < 400 and seen["base"]
    mixed = switched(torch.zeros(4, 1, 28, 28), torch.tensor([0, 399, 400, 999])).sample
    assert mixed.shape == (4, 1, 28, 28)
    assert draw_timesteps(3, PAPAConfig(k=400, timesteps_per_image=50), torch.Generator()).min() >= 400
    full = draw_timesteps(1, PAPAConfig(k=400, timesteps_per_image=None), torch.Generator())
    assert full.tolist() == [list(range(400, 1000))]


def test_switched_unet_keeps_the_frozen_base_in_eval_mode() -> None:
    tuned, base = Linear(0.1), Linear(0.2).eval()
    switched = SwitchedUNet(tuned, base, k=300)
    switched.train()
    assert tuned.training and not base.training
    sample(switched, 1, num_steps=2, generator=torch.Generator().manual_seed(0))  # restores the caller's mode
    assert switched.training and tuned.training and not base.training


# ------------------------------------------------------------------------------------------------
# config and presets


def test_replies_and_config_errors(tiny_unet) -> None:
    assert reply_signs(np.array([1, -1, 0]), True).tolist() == [1, -1, 0]
    assert reply_signs(np.array([1, -1, 0]), False).tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match="replies must be"):
        reply_signs(np.array([2]), True)
    with pytest.raises(ValueError, match="preset"):
        PAPA(tiny_unet, "fastest")
    assert PRESETS["faithful"].timesteps_per_image is None and PRESETS["faithful"].num_sampling_steps == 1000
    assert PRESETS["faithful-epapa"].k == 400 and PRESETS["epapa"].k == 300
    assert len(PRESETS) <= 5


@pytest.mark.parametrize(
    "bad",
    [
        {"lr": 0.0},
        {"k": 1000},
        {"k": -1},
        {"timesteps_per_image": 0},
        {"updates_per_interaction": 0},
        {"replay": -1},
        {"dislike_margin": -0.5},
        {"reply_baseline": 0},
        {"reply_baseline": 10, "full_exploitation": False},
        {"catch_up_updates": -1},
        {"catch_up_updates": 2, "reply_baseline": None},
        {"catch_up_below": 1.5},
        {"base_queries": 11},
        {"ema_decay": 1.0},
        {"ema_decay": 0.0},
        {"ema_start": -1},
        {"sampler": "euler"},
        {"num_sampling_steps": 0},
        {"generate_candidates": 0},
        {"generate_feature_pool": 0},
        {"generate_strata": 4},  # needs generate_candidates > 1
        {"generate_strata": 1, "generate_candidates": 4},
        {"generate_strata_prior": 5.0},  # needs generate_strata
        {"generate_strata_prior": -1.0, "generate_strata": 4, "generate_candidates": 4},
        {"generate_optimism": 1.0},  # needs generate_candidates > 1
        {"generate_optimism": -0.5, "generate_candidates": 4},
        {"filter_queries": True},  # needs generate_candidates > 1
        {"filter_queries": True, "generate_candidates": 4, "pool_size": 20},  # a selector's pool: one choice at a time
        {"filter_queries": True, "generate_candidates": 4, "tuned_candidates": 3},
        {"generate_base_candidates": 4, "generate_candidates": 4},  # needs generate_strata
        {"generate_base_candidates": -1, "generate_candidates": 4, "generate_strata": 4},
        {"generate_strata_mass": True, "generate_candidates": 4, "generate_strata": 4},  # needs the base's draws
        {"generate_typical": True, "generate_candidates": 4},  # needs generate_strata
        {"filter_queries_bank": 100, "generate_candidates": 4, "generate_strata": 4, "generate_base_candidates": 4},
        {"filter_queries_bank": 100, "generate_candidates": 4, "filter_queries": True},  # needs base candidates
        {"bank_base_queries": True, "generate_candidates": 4, "generate_strata": 4},  # needs filter_queries_bank
    ],
)
def test_config_rejects_bad_values_when_built(bad) -> None:
    field = next(iter(bad))
    with pytest.raises(ValueError, match=rf"invalid PAPAConfig: .*{field} must be"):
        PAPAConfig(**bad)
    with pytest.raises(ValueError, match="invalid PAPAConfig"):  # replace() validates too
        replace(PRESETS["epapa"], **bad)


def test_epapa_spends_half_of_papas_update_rows(tiny_unet) -> None:
    """The EPAPA default's update costs half of PAPA's once replay is on (the paper's compute saving)."""
    rows, steps = {}, {}
    for name in ("papa", "epapa"):
        agent = PAPA(tiny_unet, replace(PRESETS[name], num_sampling_steps=2))
        replies = np.array([1, -1] * 5)
        for _ in range(2):  # the first interaction has nothing to replay yet
            stats = agent.learn(agent.propose(torch.Generator().manual_seed(0)), replies)
        rows[name], steps[name] = stats["compute/rows"], stats["compute/updates"]
    assert rows == {"papa": 256, "epapa": 128}
    assert steps == {"papa": 2, "epapa": 4}  # (10 new + 22 replayed) x 4 timesteps a step; x 1 timestep
    assert "charts/reply_baseline" in stats  # epapa's reply term is baselined


# ------------------------------------------------------------------------------------------------
# the agent's options


def _agent(tiny_unet, **kw) -> PAPA:
    cfg = PAPAConfig(lr=3e-3, batch_size=10, timesteps_per_image=16, num_sampling_steps=8, **kw)
    return PAPA(tiny_unet, cfg)


def _weights(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


REPLIES = np.array([1, -1, 0, 1, 1, -1, -1, 0, 1, 1])


def test_replay_and_several_updates_per_interaction(tiny_unet) -> None:
    agent = _agent(tiny_unet, updates_per_interaction=3, replay=4)
    q = agent.propose(torch.Generator().manual_seed(0))
    agent.learn(q, REPLIES)
    assert agent.updates == 3 and len(agent.buffer_y) == 8  # skips are not kept
    batches = list(agent._batches(torch.as_tensor(q), torch.ones(10), torch.ones(10)))
    assert len(batches) == 3 and all(len(xb) == len(yb) == len(wb) == 14 for xb, yb, wb in batches)  # 10 new + 4
    other = _agent(tiny_unet, updates_per_interaction=3, replay=4)
    other.load_state_dict(agent.state_dict())
    assert torch.equal(other.buffer_x, agent.buffer_x) and torch.equal(other.buffer_y, agent.buffer_y)


def test_ema_samples_from_a_tail_average_of_the_trained_weights_and_survives_a_resume(tiny_unet) -> None:
    agent = _agent(tiny_unet, ema_decay=0.5, ema_start=1, updates_per_interaction=1, k=300)
    assert agent.model() is agent.sampled is agent.policy.tuned and agent.sampled is not agent.unet
    q = agent.propose(torch.Generator().manual_seed(0))
    for _ in range(2):  # updates 1 and 2: diffusers' update_after_step = 1 -> decay 0, the latest weights
        agent.learn(q, REPLIES)
        assert all(torch.equal(a, b) for a, b in zip(_weights(agent.sampled), _weights(agent.unet)))
    w2 = _weights(agent.unet)
    state = copy.deepcopy(agent.state_dict())
    agent.learn(q, REPLIES)  # update 3: the full decay 0.5 at once (no warm-up)
    expected = [0.5 * a + 0.5 * b for a, b in zip(w2, _weights(agent.unet))]
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(_weights(agent.sampled), expected))
    resumed = _agent(tiny_unet, ema_decay=0.5, ema_start=1, updates_per_interaction=1, k=300)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(_weights(resumed.sampled), w2))
    resumed.learn(q, REPLIES)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(_weights(resumed.sampled), _weights(agent.sampled)))
    latest = _agent(tiny_unet, updates_per_interaction=1)  # the authors': sample from the latest weights
    assert latest.model() is latest.sampled is latest.unet is latest.policy


def test_reply_baseline_is_the_mean_of_recent_signed_replies_and_mutes_likes_when_all_are_liked(tiny_unet) -> None:
    agent = _agent(tiny_unet, reply_baseline=50, updates_per_interaction=1)
    q = agent.propose(torch.Generator().manual_seed(0))
    assert agent.learn(q, REPLIES)["charts/reply_baseline"] == pytest.approx(0.25)  # 5 likes, 3 dislikes
    short = _agent(tiny_unet, reply_baseline=4, updates_per_interaction=1)
    assert short.learn(q, REPLIES)["charts/reply_baseline"] == pytest.approx(0.0)  # the last 4: -1, -1, +1, +1
    assert "charts/reply_baseline" not in _agent(tiny_unet, updates_per_interaction=1).learn(q, REPLIES)
    # every recent reply liked: b = 1, a like weighs 1 - b = 0 -> no reply gradient (and no anchor here): no step
    muted = _agent(tiny_unet, reply_baseline=50, updates_per_interaction=1, model_coef=0.0)
    before = copy.deepcopy(muted.unet.state_dict())
    assert muted.learn(q, np.ones(10))["charts/reply_baseline"] == 1.0
    assert all(torch.equal(before[n], p) for n, p in muted.unet.state_dict().items())
    plain = _agent(tiny_unet, updates_per_interaction=1, model_coef=0.0)
    plain.learn(q, np.ones(10))
    assert any(not torch.equal(before[n], p) for n, p in plain.unet.state_dict().items())


def test_catch_up_updates_apply_only_while_few_recent_replies_are_likes(tiny_unet) -> None:
    def rows(replies: np.ndarray, **kw) -> float:
        agent = _agent(tiny_unet, reply_baseline=50, updates_per_interaction=2, replay=3, **kw)
        agent.learn(queries, -np.ones(10))  # an earlier interaction: 10 dislikes
        return agent.learn(queries, replies)["compute/rows"]

    queries = _agent(tiny_unet).propose(torch.Generator().manual_seed(0))
    rows_per_step = (10 + 3) * 16  # 10 new + 3 replayed queries x 16 timesteps
    rare = np.array([1, 1] + [-1] * 8)  # 2 likes in the last 20 replies: like-rate 0.1 < 0.5 -> 2 + 3 steps
    assert rows(rare, catch_up_updates=3) == 5 * rows_per_step
    assert rows(rare) == 2 * rows_per_step  # off by default
    assert rows(rare, catch_up_updates=3, catch_up_below=0.05) == 2 * rows_per_step  # not under 0.05
    common = np.ones(10)  # 10 likes in the last 20: 0.5, not under 0.5 -> the usual 2 steps
    assert rows(common, catch_up_updates=3) == 2 * rows_per_step
    assert rows(common, catch_up_updates=3, paired_replies=True) == 5 * rows_per_step  # pairs: like-rate unknown


def test_fewer_base_queries_once_the_tuned_models_own_queries_are_liked(tiny_unet) -> None:
    agent = _agent(tiny_unet, reply_baseline=10, base_queries=5, fewer_base_queries=True)
    gen = torch.Generator().manual_seed(0)

    def interaction(tuned: int, base: int) -> np.ndarray:
        """Ask, reply ``tuned`` to the tuned model's queries and ``base`` to the base model's, learn; the sources."""
        queries = agent.propose(gen)
        source = agent.proposal_state()["source"]
        agent.learn(queries, np.where(source == 0, tuned, base))
        return source

    assert agent.base_count() == 5  # nothing replied yet: all of base_queries
    assert (interaction(tuned=1, base=-1) == 1).sum() == 5
    assert agent.base_count() == 1  # the tuned model's 5 queries all liked: one base query left
    assert (interaction(tuned=-1, base=1) == 1).sum() == 1  # 9 tuned queries disliked; the base one liked
    assert agent.base_count() == 5  # the tuned model's last 10 replies: 1 like (the base's never count)
    for likes, expected in [(10, 1), (9, 1), (8, 2), (7, 3), (6, 4), (5, 5), (0, 5)]:
        agent.tuned_y = torch.tensor([1.0] * likes + [-1.0] * (10 - likes))
        assert agent.base_count() == expected, likes  # max(1, round(5 min(1, 2 (1 - r))))
    assert agent.state_dict()["tuned_y"].tolist() == agent.tuned_y.tolist()
    with pytest.raises(ValueError, match="fewer_base_queries must be False without"):
        PAPAConfig(fewer_base_queries=True, base_queries=5)
    off = _agent(tiny_unet, reply_baseline=10, base_queries=5)
    off.learn(off.propose(gen), np.ones(10))
    assert off.base_count() == 5 and off.proposal_state() == {}  # off: the constant, nothing more persisted


def test_base_candidates_show_the_base_queries_farthest_from_those_shown_before(tiny_unet, monkeypatch) -> None:
    agent = _agent(tiny_unet, base_queries=2, base_candidates=3)
    calls = []
    real = papa_mod.spread_from
    monkeypatch.setattr(
        papa_mod, "spread_from", lambda f, s, k: calls.append((f, s.clone(), real(f, s, k))) or calls[-1][2]
    )
    gen = torch.Generator().manual_seed(0)
    q = agent.propose(gen)
    source = agent.proposal_state()["source"]
    assert q.shape == (10, 1, 28, 28) and source.tolist() == [0] * 8 + [1] * 2
    feats, shown, picked = calls[0]
    assert len(feats) == 6 and len(shown) == 0  # 3 candidates per base query; nothing shown before
    assert torch.allclose(agent.base_features(torch.as_tensor(q[8:])), feats[picked], atol=1e-5)  # shown: the picked
    agent.learn(q, np.array([1, -1] * 5))
    assert torch.allclose(agent.shown_base, feats[picked], atol=1e-5)  # what the next choice spreads away from
    agent.propose(gen)
    assert torch.equal(calls[1][1], agent.shown_base)
    other = _agent(tiny_unet, base_queries=2, base_candidates=3)
    other.load_state_dict(agent.state_dict())
    assert torch.equal(other.shown_base, agent.shown_base)
    with pytest.raises(ValueError, match="base_candidates must be 1, or > 1 with base_queries > 0"):
        PAPAConfig(base_candidates=3)


def test_tuned_candidates_show_the_tuned_queries_spread_over_their_candidates(tiny_unet, monkeypatch) -> None:
    agent = _agent(tiny_unet, base_queries=2, tuned_candidates=3)
    calls = []
    real = papa_mod.k_center
    monkeypatch.setattr(papa_mod, "k_center", lambda f, k: calls.append((f, real(f, k))) or calls[-1][1])
    gen = torch.Generator().manual_seed(0)
    q = agent.propose(gen)
    feats, picked = calls[0]
    assert q.shape == (10, 1, 28, 28) and len(feats) == 24 and len(picked) == 8  # 3 candidates per tuned query
    assert torch.allclose(agent.base_features(torch.as_tensor(q[:8])), feats[picked], atol=1e-5)  # shown: the picked
    assert torch.equal(picked, real(feats, 8))  # spread: greedy k-center over the candidates' base-UNet features
    replay = _agent(tiny_unet, base_queries=2, tuned_candidates=3)  # the same generator state: the same choice
    assert np.array_equal(replay.propose(torch.Generator().manual_seed(0)), q)
    plain = _agent(tiny_unet, base_queries=2).propose(torch.Generator().manual_seed(0))
    assert not np.array_equal(plain[:8], q[:8])
    with pytest.raises(ValueError, match="tuned_candidates must be 1, or > 1 with no pool_size"):
        PAPAConfig(tuned_candidates=2, pool_size=20)


def test_base_strata_show_the_base_queries_by_the_quota_of_its_strata(tiny_unet) -> None:
    agent = _agent(tiny_unet, base_queries=3, base_candidates=4, base_strata=3)
    assert agent.centroids.shape[0] == 3 and float(agent.shares.sum()) == pytest.approx(1.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        q = agent.propose(gen)
        assert agent.proposal_state()["source"].tolist() == [0] * 7 + [1] * 3
        agent.learn(q, np.array([1, -1] * 5))
    shown = torch.bincount(agent.stratum(agent.shown_base), minlength=3).float()
    assert len(agent.shown_base) == 12 and shown.sum() == 12
    rebuilt = _agent(tiny_unet, base_queries=3, base_candidates=4, base_strata=3)  # a resumed session's agent
    assert torch.equal(rebuilt.centroids, agent.centroids) and torch.equal(rebuilt.shares, agent.shares)
    with pytest.raises(ValueError, match="base_strata must be 0, or > 1 with base_candidates > 1"):
        PAPAConfig(base_queries=3, base_strata=3)


def test_base_queries_come_from_the_frozen_base_model(tiny_unet) -> None:
    def moved_agent(base_queries: int) -> PAPA:
        agent = _agent(tiny_unet, base_queries=base_queries)
        with torch.no_grad():
            for param in agent.unet.parameters():  # the tuned model has moved away from the base
                param.add_(0.1)
        return agent

    steps = _agent(tiny_unet).cfg.num_sampling_steps
    agent = moved_agent(3)
    q = agent.propose(torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    tuned = sample(agent.unet, 7, num_steps=steps, generator=g)  # the first 7 from the tuned model,
    base = sample(agent.base, 3, num_steps=steps, generator=g)  # then 3 from the base, one generator stream
    # the two models run side by side (sample_many): the same images up to the float rounding of fewer threads
    assert q.shape == (10, 1, 28, 28) and np.allclose(q, torch.cat([tuned, base]).numpy(), atol=1e-4)
    agent.side_by_side = False  # one after the other: the same images
    assert np.allclose(agent.propose(torch.Generator().manual_seed(0)), q, atol=1e-4)
    g = torch.Generator().manual_seed(0)
    sample(agent.unet, 7, num_steps=steps, generator=g)
    assert not np.allclose(q[7:], sample(agent.unet, 3, num_steps=steps, generator=g).numpy())  # not the tuned's
    assert agent.learn(q, np.array([1, -1] * 5))["compute/rows"] > 0
    only_base = moved_agent(10).propose(torch.Generator().manual_seed(0))
    expected = sample(agent.base, 10, num_steps=steps, generator=torch.Generator().manual_seed(0))
    assert np.allclose(only_base, expected.numpy())


def test_state_dict_round_trips_through_a_checkpoint_file(tiny_unet, tmp_path) -> None:
    """What a session saves of PAPA (no pickle) restores an agent that continues exactly."""
    from papa_env.checkpoint import load_state, save_state

    agent = PAPA(tiny_unet, replace(PRESETS["epapa"], num_sampling_steps=2, ema_start=0))
    for seed in range(2):
        agent.learn(agent.propose(torch.Generator().manual_seed(seed)), np.array([1, -1] * 5))
    save_state({"agent": agent.state_dict()}, tmp_path / "ck.safetensors")
    other = PAPA(tiny_unet, replace(PRESETS["epapa"], num_sampling_steps=2, ema_start=0))
    other.load_state_dict(load_state(tmp_path / "ck.safetensors")["agent"])
    q = agent.propose(torch.Generator().manual_seed(5))
    assert np.array_equal(q, other.propose(torch.Generator().manual_seed(5)))
    agent.learn(q, np.array([1, -1] * 5))
    other.learn(q, np.array([1, -1] * 5))
    assert all(torch.equal(a, b) for a, b in zip(_weights(agent.sampled), _weights(other.sampled)))


# ------------------------------------------------------------------------------------------------
# learning a trivial user


@pytest.mark.parametrize("k", [0, 400])
def test_tiny_agent_learns_a_trivial_user(tiny_unet, k: int) -> None:
    probe = _agent(tiny_unet)
    base_brightness = probe.generate(200, torch.Generator().manual_seed(0)).mean((1, 2, 3))
    threshold = float(base_brightness.quantile(0.7))  # the base model's like-rate is ~0.3
    env = bright_env(200, threshold)
    records = run_session(_agent(tiny_unet, k=k), env, eval_every=100, evaluator=ToyEval(env), progress=False)
    rates = [r["eval/like_rate_oracle"] for r in records]
    print(f"k={k}: like-rate {rates}")
    assert rates[0] < 0.45 and rates[-1] > rates[0] + 0.25  # chance-level drift is < 0.1 at 100 samples


def test_pairwise_replies_teach_the_preferred_image_as_a_like(tiny_unet) -> None:
    from papa_env.agents.pairwise import Pairwise

    single = _agent(tiny_unet, queries_per_step=4, updates_per_interaction=1)
    assert not single.cfg.paired_replies
    agent = Pairwise(single)
    assert agent.cfg.paired_replies and single.cfg.paired_replies  # half of its replies are likes whatever the taste
    pairs = agent.propose(torch.Generator().manual_seed(0))
    assert pairs.shape == (2, 2, 1, 28, 28)
    agent.learn(pairs, np.array([1, 0]))  # the first pair: first preferred; the second: a tie (two skips)
    assert agent.agent.buffer_y.tolist() == [1.0, -1.0]
    assert torch.equal(agent.agent.buffer_x, torch.as_tensor(pairs[0]))
    with pytest.raises(ValueError, match="pairs"):
        agent.learn(pairs[:, 0], np.array([1, 0]))
    env = bright_env(40, k=2, mode="pairwise")
    records = run_session(agent, env, eval_every=20, evaluator=ToyEval(env), progress=False)
    assert [r["replies"] for r in records] == [0, 20, 40]


def test_selected_pairs_hold_the_agents_predicted_likes_first(tiny_unet) -> None:
    """``select_pairs``: each pair shown is (one of the pool's likeliest by the agent's own ensemble, another image)
    (random pixel features: the tiny UNet's own carry nothing)."""
    from papa_env.agents.pairwise import Pairwise, select_pairs

    cfg = select_pairs(PAPAConfig(lr=3e-3, timesteps_per_image=4, num_sampling_steps=8, queries_per_step=8,
                                  updates_per_interaction=1, selector_features="random"))  # fmt: skip
    assert (cfg.pool_size, cfg.base_queries, cfg.selector, cfg.liked_share) == (16, 8, "liked", 0.5)
    agent = Pairwise(PAPA(tiny_unet, cfg))
    env = bright_env(24, k=4, mode="pairwise")
    run_session(agent, env, eval_every=24, evaluator=ToyEval(env), progress=False)
    seen, select = {}, agent.agent.selector.select
    agent.agent.selector.select = lambda pool, k, g: seen.setdefault("chosen", (pool, select(pool, k, g)))[1]
    pairs = torch.as_tensor(agent.propose(torch.Generator().manual_seed(0)))
    pool, chosen = seen["chosen"]
    assert torch.equal(pairs.flatten(0, 1), pool.images[chosen])  # consecutive choices are the pairs
    score = agent.agent.selector.scores(pool.features).mean(0)
    top_half = set(score.argsort(descending=True)[:8].tolist())
    assert set(chosen[0::2].tolist()) <= top_half  # the first of each pair: a predicted like
    assert len(set(chosen.tolist())) == 8
