from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers.models.unets.unet_2d import UNet2DOutput
from papa_env.agents.papa import PAPA, PRESETS, PAPAConfig, draw_timesteps, papa_loss, reply_weights
from papa_env.oracles import Oracle

from papa_env.diffusion import SwitchedUNet, elbo_weights
from papa_env.env import PreferenceEnv
from papa_env.models import make_scheduler
from papa_env.session import collapse_report, run_session


class Linear(torch.nn.Module):
    """eps_hat = a * x_t + b * t / 1000: a toy denoiser whose loss is easy to compute by hand."""

    def __init__(self, a: float, b: float = 0.0) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a))
        self.b = b
        self.config = type("C", (), {"sample_size": 28, "in_channels": 1})()

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=torch.float32).expand(len(x)).view(-1, 1, 1, 1)
        return UNet2DOutput(sample=self.a * x + self.b * t / 1000)


def test_loss_matches_a_hand_computed_value() -> None:
    cfg = PAPAConfig(pref_coef=0.1, model_coef=0.009)
    x0 = torch.stack([torch.full((1, 28, 28), 0.5), torch.full((1, 28, 28), -0.25)])
    noise = torch.stack([torch.full((1, 28, 28), 1.0), torch.full((1, 28, 28), -2.0)])
    y = torch.tensor([1.0, -1.0])
    ts = torch.tensor([[10, 500], [999, 0]])
    unet, base = Linear(0.5), Linear(0.2, b=1.0)
    out = papa_loss(unet, base, x0, y, ts, noise, 3.0, cfg)

    w, abar = elbo_weights(make_scheduler()).double(), make_scheduler().alphas_cumprod.double()
    expected = 0.0
    for i in range(2):
        for t in ts[i].tolist():
            xt = abar[t].sqrt() * x0[i, 0, 0, 0].double() + (1 - abar[t]).sqrt() * noise[i, 0, 0, 0].double()
            mse = (0.5 * xt - noise[i, 0, 0, 0].double()) ** 2
            expected += 0.1 * y[i].item() * 3.0 * w[t] * mse
            if y[i] > 0:
                expected += 0.009 * (0.5 * xt - (0.2 * xt + t / 1000)) ** 2 / 2
    expected /= 2  # averaged over the queries
    assert out["tensor"].item() == pytest.approx(float(expected), rel=1e-5)
    assert out["loss"] == pytest.approx(float(expected), rel=1e-5)


def test_chunked_backward_gives_the_same_gradient() -> None:
    cfg = PAPAConfig(chunk=3)
    x0, noise = torch.rand(2, 1, 28, 28) * 2 - 1, torch.randn(2, 1, 28, 28)
    ts = torch.randint(0, 1000, (2, 5))
    y = torch.tensor([1.0, -1.0])
    a, b = Linear(0.3), Linear(0.3)
    papa_loss(a, Linear(0.1), x0, y, ts, noise, 2.0, replace(cfg, chunk=1000))["tensor"].backward()
    papa_loss(b, Linear(0.1), x0, y, ts, noise, 2.0, cfg, backward=True)
    assert a.a.grad.item() == pytest.approx(b.a.grad.item(), rel=1e-5)


@pytest.mark.parametrize("sampling", ["uniform", "elbo"])
def test_monte_carlo_estimate_is_unbiased(tiny_unet, sampling: str) -> None:
    """The mean of the m-timestep estimate over many draws matches the full sum over the T - k timesteps, for
    both terms (the anchor to a different base model included) and both ways of drawing the timesteps."""
    torch.manual_seed(0)
    base = copy.deepcopy(tiny_unet)
    with torch.no_grad():
        for param in base.parameters():  # another model: the anchor term is not zero
            param.add_(0.05 * torch.randn_like(param))
    x0, noise = torch.rand(1, 1, 28, 28) * 2 - 1, torch.randn(1, 1, 28, 28)
    y = torch.tensor([1.0])
    cfg_full = PAPAConfig(timesteps_per_image=None, model_coef=0.5, k=100, chunk=1000)
    cfg_mc = replace(cfg_full, timesteps_per_image=16, timestep_sampling=sampling)
    with torch.no_grad():
        ts, scale = draw_timesteps(1, cfg_full, torch.Generator())
        full = papa_loss(tiny_unet, base, x0, y, ts, noise, scale, cfg_full)
        g = torch.Generator().manual_seed(1)
        draws = []
        for _ in range(400):
            ts, scale = draw_timesteps(1, cfg_mc, g)
            assert ts.min() >= 100 and ts.shape == (1, 16)
            draws.append(papa_loss(tiny_unet, base, x0, y, ts, noise, scale, cfg_mc))
    for key in ("losses/pref", "losses/model"):
        values = [d[key] for d in draws]
        mean, sem = np.mean(values), np.std(values) / np.sqrt(len(values))
        print(f"{sampling} {key}: full sum {full[key]:.5f}; MC mean {mean:.5f} +- {sem:.5f}")
        assert full[key] > 0 and abs(mean - full[key]) < 4 * sem + 1e-6


def test_elbo_timestep_sampling_draws_small_t_often_and_weighs_every_row_the_same() -> None:
    cfg = PAPAConfig(timesteps_per_image=4000, timestep_sampling="elbo")
    ts, scale = draw_timesteps(1, cfg, torch.Generator().manual_seed(0))
    w = elbo_weights(make_scheduler())
    assert 0.15 < float((ts < 10).float().mean()) < 0.3  # 22% of sum_t w_t lies below t = 10 (uniform: 1%)
    assert torch.allclose(scale * w[ts], torch.full_like(scale, float(w.sum()) / 4000), rtol=1e-4)
    with pytest.raises(ValueError, match="timestep_sampling"):
        PAPA(Linear(0.1), replace(cfg, timestep_sampling="stratified"))


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
    from papa_env.diffusion import sample

    sample(switched, 2, num_steps=10, generator=torch.Generator().manual_seed(0))
    assert min(seen["tuned"]) >= 400 and max(seen["base"]) < 400 and seen["base"]
    mixed = switched(torch.zeros(4, 1, 28, 28), torch.tensor([0, 399, 400, 999])).sample
    assert mixed.shape == (4, 1, 28, 28)
    ts, scale = draw_timesteps(3, PAPAConfig(k=400, timesteps_per_image=50), torch.Generator().manual_seed(0))
    assert ts.min() >= 400 and scale == pytest.approx(600 / 50)
    full, s = draw_timesteps(1, PAPAConfig(k=400, timesteps_per_image=None), torch.Generator())
    assert full.shape == (1, 600) and s == 1.0


def test_replies_and_config_errors(tiny_unet) -> None:
    assert reply_weights(np.array([1, -1, 0]), True).tolist() == [1, -1, 0]
    assert reply_weights(np.array([1, -1, 0]), False).tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match="replies must be"):
        reply_weights(np.array([2]), True)
    with pytest.raises(ValueError, match="preset"):
        PAPA(tiny_unet, "fastest")
    with pytest.raises(ValueError, match="k must be"):
        PAPA(tiny_unet, PAPAConfig(k=1000))
    assert PRESETS["faithful"].timesteps_per_image is None and PRESETS["faithful"].num_sampling_steps == 1000
    assert PRESETS["faithful-epapa"].k == 400 and PRESETS["epapa"].k == 300


# ------------------------------------------------------------------------------------------------
# learning and sessions on a trivial user


class Bright(Oracle):
    """Likes images brighter than ``threshold`` (mean pixel)."""

    preference = "bright"

    def __init__(self, threshold: float = -0.9) -> None:
        self.threshold = threshold

    def set_preference(self, preference) -> None:
        pass

    def utility(self, images):
        return images.mean((1, 2, 3))


def _env(budget: int, threshold: float) -> PreferenceEnv:
    return PreferenceEnv(Bright(threshold), feedback_budget=budget, queries_per_step=10)


class _Eval:
    """A privileged evaluator for the toy user (no judge needed)."""

    def __init__(self, env) -> None:
        self.env = env

    def __call__(self, agent):
        images = agent.generate(100, torch.Generator().manual_seed(0))
        return {"eval/like_rate_oracle": self.env.privileged.like_rate(images)}, images

    def set_base(self, images) -> None:
        pass


def _agent(tiny_unet, **kw) -> PAPA:
    cfg = PAPAConfig(lr=3e-3, batch_size=10, timesteps_per_image=16, num_sampling_steps=8, **kw)
    return PAPA(tiny_unet, cfg)


@pytest.mark.parametrize("k", [0, 400])
def test_tiny_agent_learns_a_trivial_user(tiny_unet, k: int) -> None:
    probe = _agent(tiny_unet)
    base_brightness = probe.generate(200, torch.Generator().manual_seed(0)).mean((1, 2, 3))
    threshold = float(base_brightness.quantile(0.7))  # the base model's like-rate is ~0.3
    env = _env(200, threshold)
    records = run_session(_agent(tiny_unet, k=k), env, eval_every=100, evaluator=_Eval(env), progress=False)
    rates = [r["eval/like_rate_oracle"] for r in records]
    print(f"k={k}: like-rate {rates}")
    assert rates[0] < 0.45 and rates[-1] > rates[0] + 0.25  # chance-level drift is < 0.1 at 100 samples


def test_resume_after_interruption_reproduces_the_run(tiny_unet, tmp_path) -> None:
    threshold = 0.0
    straight = tmp_path / "straight"
    run_session(_agent(tiny_unet), _env(60, threshold), straight, eval_every=0, progress=False)
    interrupted = tmp_path / "interrupted"
    run_session(_agent(tiny_unet), _env(60, threshold), interrupted, eval_every=0, progress=False, stop_after_steps=2)
    # a kill after the step-3 replies were persisted but before the agent learned from them:
    lines = (straight / "replies.jsonl").read_text().splitlines()
    (interrupted / "replies.jsonl").write_text("\n".join(lines[:3]) + "\n")
    (interrupted / "queries" / "step_0003.npz").write_bytes((straight / "queries" / "step_0003.npz").read_bytes())
    run_session(_agent(tiny_unet), _env(60, threshold), interrupted, eval_every=0, progress=False)

    def replies(run) -> list:
        return [json.loads(line)["replies"] for line in (run / "replies.jsonl").read_text().splitlines()]

    assert replies(straight) == replies(interrupted) and len(replies(straight)) == 6
    a = torch.load(straight / "checkpoint.pt", weights_only=False)["agent"]["unet"]
    b = torch.load(interrupted / "checkpoint.pt", weights_only=False)["agent"]["unet"]
    assert all(torch.allclose(a[key], b[key], atol=1e-6) for key in a)
    assert (straight / "model.safetensors").exists() and (interrupted / "model.safetensors").exists()


def test_resuming_with_other_settings_is_refused_before_touching_the_folder(tiny_unet, tmp_path) -> None:
    from papa_env.errors import RunMismatchError

    run = tmp_path / "run"
    run_session(_agent(tiny_unet), _env(60, 0.0), run, eval_every=0, progress=False, stop_after_steps=2)
    before = {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()}
    with pytest.raises(RunMismatchError, match=r"agent_config.pref_coef: 0.1 -> 0.2.*new run folder"):
        run_session(_agent(tiny_unet, pref_coef=0.2), _env(60, 0.0), run, eval_every=0, progress=False)
    with pytest.raises(RunMismatchError, match=r"feedback_budget: 60 -> 50"):
        run_session(_agent(tiny_unet), _env(50, 0.0), run, eval_every=0, progress=False)
    assert {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()} == before  # nothing was touched
    # a folder started before a config field existed resumes if the field holds its default
    config = json.loads((run / "config.json").read_text())
    del config["agent_config"]["base_queries"]
    (run / "config.json").write_text(json.dumps(config))
    records = run_session(_agent(tiny_unet), _env(60, 0.0), run, eval_every=0, progress=False)
    assert len((run / "replies.jsonl").read_text().splitlines()) == 6 and records == []
    with pytest.raises(RunMismatchError, match="base_queries: 0 -> 2"):
        run_session(_agent(tiny_unet, base_queries=2), _env(60, 0.0), run, eval_every=0, progress=False)


class _KilledAt(_Eval):
    """An evaluator whose ``n``-th call dies (as a kill would) after the update before it was checkpointed."""

    def __init__(self, env, n: int) -> None:
        super().__init__(env)
        self.calls, self.n = 0, n

    def __call__(self, agent):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return super().__call__(agent)


def test_a_run_killed_during_an_evaluation_redoes_it_on_resume(tiny_unet, tmp_path) -> None:
    threshold = 0.0
    straight = run_session(_agent(tiny_unet), _env(60, threshold), tmp_path / "a", eval_every=20,
                           evaluator=_Eval(_env(60, threshold)), progress=False)  # fmt: skip
    assert [r["replies"] for r in straight] == [0, 20, 40, 60]
    run = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):  # the evaluation at 40 replies dies
        run_session(_agent(tiny_unet), _env(60, threshold), run, eval_every=20,
                    evaluator=_KilledAt(_env(60, threshold), 3), progress=False)  # fmt: skip
    resumed = run_session(_agent(tiny_unet), _env(60, threshold), run, eval_every=20,
                          evaluator=_Eval(_env(60, threshold)), progress=False)  # fmt: skip
    assert [r["replies"] for r in resumed] == [0, 20, 40, 60]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["replies"] for r in lines] == [0, 20, 40, 60]  # the lost one logged once, late, in order
    for a, b in zip(straight, resumed):
        assert a["eval/like_rate_oracle"] == b["eval/like_rate_oracle"]  # the same run, evaluated late
    # a finished run read again evaluates nothing more
    again = run_session(_agent(tiny_unet), _env(60, threshold), run, eval_every=20,
                        evaluator=_KilledAt(_env(60, threshold), 1), progress=False)  # fmt: skip
    assert again == resumed


def test_collapse_report_flags_a_dominant_class_and_a_falling_like_rate() -> None:
    def rec(replies, like, share):
        return {
            "replies": replies,
            "eval/like_rate_judge": like,
            "eval/like_rate_oracle": like,
            "eval/max_class_share": share,
        }

    healthy = [rec(0, 0.4, 0.12), rec(100, 0.7, 0.3), rec(200, 0.72, 0.35)]
    assert collapse_report(healthy) == []
    collapsed = [rec(0, 0.4, 0.12), rec(100, 0.7, 0.65), rec(200, 0.5, 0.4)]
    problems = collapse_report(collapsed)
    assert len(problems) == 2 and "65%" in problems[0] and "fell to 0.500" in problems[1]


def test_tiny_agent_with_a_reckless_learning_rate_is_caught_collapsing(tiny_unet) -> None:
    """The authors' loss is unbounded on disliked samples: a large lr degenerates, and the detector says so."""
    env = _env(100, 0.0)
    agent = PAPA(tiny_unet, PAPAConfig(lr=0.3, batch_size=10, timesteps_per_image=16, num_sampling_steps=8))
    records = run_session(agent, env, eval_every=20, evaluator=_Eval(env), progress=False)
    rates = [r["eval/like_rate_oracle"] for r in records]
    print(f"lr 0.3: like-rate {rates}")
    assert collapse_report(records, tolerance=0.05), rates


def test_dislike_margin_stops_pushing_a_disliked_query_past_the_cap() -> None:
    """Bounded dislike term: a disliked row whose error exceeds (1 + margin) x the base's gives no gradient."""
    x0, noise = torch.full((1, 1, 28, 28), 0.5), torch.full((1, 1, 28, 28), 1.0)
    ts, y = torch.tensor([[300]]), torch.tensor([-1.0])
    cfg = PAPAConfig(model_coef=0.0, dislike_margin=0.5)
    abar = make_scheduler().alphas_cumprod[300]
    xt = float(abar.sqrt() * 0.5 + (1 - abar).sqrt())

    def grad(a: float, base_a: float, margin: float | None) -> float:
        unet = Linear(a)
        papa_loss(unet, Linear(base_a), x0, y, ts, noise, 1.0, replace(cfg, dislike_margin=margin), backward=True)
        return unet.a.grad.item()

    # the base's error (0.9 xt - 1)^2; a = 0.9 is at the cap's lower side, a = 0.0 far above it (error 1 vs ~0)
    base_a = 1 / xt  # the base denoises this row perfectly: cap = 0 -> any error > cap, no push
    assert grad(0.0, base_a, 0.5) == 0.0
    assert grad(0.0, base_a, None) != 0.0  # the authors' unbounded term still pushes
    base_a = 0.0  # the base's error is 1: cap 1.5; the tuned model's error (a xt - 1)^2 = 0.25 < cap: pushes
    a = 0.5 / xt
    assert grad(a, base_a, 0.5) == pytest.approx(grad(a, base_a, None), rel=1e-6) != 0.0


def test_replay_and_several_updates_per_interaction(tiny_unet) -> None:
    agent = _agent(tiny_unet, updates_per_interaction=3, replay=4)
    q = agent.propose(torch.Generator().manual_seed(0))
    agent.learn(q, np.array([1, -1, 0, 1, 1, -1, -1, 0, 1, 1]))
    assert agent.updates == 3 and len(agent.buffer_y) == 8  # skips are not kept
    batches = list(agent._batches(torch.as_tensor(q), torch.ones(10), torch.zeros(10, dtype=torch.bool)))
    assert len(batches) == 3 and all(len(xb) == len(bb) == 14 for xb, _, bb in batches)  # 10 new + 4 replayed
    state = agent.state_dict()
    other = _agent(tiny_unet, updates_per_interaction=3, replay=4)
    other.load_state_dict(state)
    assert torch.equal(other.buffer_x, agent.buffer_x) and torch.equal(other.buffer_y, agent.buffer_y)


def test_epapa_presets_spend_half_of_papas_update_rows(tiny_unet) -> None:
    """The EPAPA goal's compute: each EPAPA preset's update costs half of PAPA's (``fast``) once replay is on."""
    rows = {}
    for name in ("fast", "epapa", "epapa-baseline", "epapa-mixed", "epapa-mixed-avg", "epapa-mixed-avg-ddim14"):
        agent = PAPA(tiny_unet, replace(PRESETS[name], num_sampling_steps=2))
        replies = np.array([1, -1] * 5)
        for _ in range(2):  # the first interaction has nothing to replay yet
            stats = agent.learn(agent.propose(torch.Generator().manual_seed(0)), replies)
        rows[name] = stats["compute/rows"]
    assert rows == {
        "fast": 256,
        "epapa": 128,
        "epapa-baseline": 128,
        "epapa-mixed": 128,
        "epapa-mixed-avg": 128,
        "epapa-mixed-avg-ddim14": 128,
    }
    assert "charts/reply_baseline" in stats  # epapa-baseline's (and epapa-mixed's) reply term is baselined


def test_lr_half_life_halves_the_learning_rate_per_half_life_of_replies_and_survives_a_resume(tiny_unet) -> None:
    agent = _agent(tiny_unet, lr_half_life=20, updates_per_interaction=1)
    q = agent.propose(torch.Generator().manual_seed(0))
    replies = np.array([1, -1, 0, 1, 1, -1, -1, 0, 1, 1])  # skips count: the clock is replies given
    lrs = [agent.learn(q, replies)["charts/learning_rate"] for _ in range(3)]
    assert lrs == pytest.approx([3e-3, 3e-3 * 0.5**0.5, 3e-3 * 0.5])
    assert agent.opt.param_groups[0]["lr"] == pytest.approx(3e-3 * 0.5)  # what Adam actually stepped with
    other = _agent(tiny_unet, lr_half_life=20, updates_per_interaction=1)
    other.load_state_dict(agent.state_dict())
    assert other.replies_seen == 30
    assert other.learn(q, replies)["charts/learning_rate"] == pytest.approx(3e-3 * 0.5**1.5)
    constant = _agent(tiny_unet, updates_per_interaction=1)  # the authors': no schedule
    assert [constant.learn(q, replies)["charts/learning_rate"] for _ in range(2)] == [3e-3, 3e-3]


def test_ema_samples_from_the_moving_average_of_the_trained_weights_and_survives_a_resume(tiny_unet) -> None:
    agent = _agent(tiny_unet, ema_decay=0.5, updates_per_interaction=1, k=300)
    assert agent.model() is agent.sampled is agent.policy.tuned and agent.sampled is not agent.unet
    q = agent.propose(torch.Generator().manual_seed(0))
    replies = np.array([1, -1, 0, 1, 1, -1, -1, 0, 1, 1])

    def weights(module) -> list[torch.Tensor]:
        return [p.detach().clone() for p in module.parameters()]

    agent.learn(q, replies)
    w1 = weights(agent.unet)  # diffusers' warm-up: decay 0 at the first update -> the average is w1
    assert all(torch.equal(a, b) for a, b in zip(weights(agent.sampled), w1))
    state = copy.deepcopy(agent.state_dict())
    agent.learn(q, replies)
    w2 = weights(agent.unet)  # then decay min(0.5, 2 / 11)
    expected = [2 / 11 * a + 9 / 11 * b for a, b in zip(w1, w2)]
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(weights(agent.sampled), expected))
    assert any(not torch.equal(a, b) for a, b in zip(weights(agent.sampled), w2))  # not the latest weights
    resumed = _agent(tiny_unet, ema_decay=0.5, updates_per_interaction=1, k=300)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(weights(resumed.sampled), w1))
    resumed.learn(q, replies)
    # the same update (to float rounding, as a resumed run: see test_resume_after_interruption_reproduces_the_run)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(weights(resumed.sampled), weights(agent.sampled)))
    latest = _agent(tiny_unet, updates_per_interaction=1)  # the authors': sample from the latest weights
    assert latest.model() is latest.sampled is latest.unet is latest.policy


def test_ema_start_averages_only_the_tail_at_the_full_decay(tiny_unet) -> None:
    agent = _agent(tiny_unet, ema_decay=0.5, ema_start=1, updates_per_interaction=1, k=300)
    q = agent.propose(torch.Generator().manual_seed(0))
    replies = np.array([1, -1, 0, 1, 1, -1, -1, 0, 1, 1])

    def weights(module) -> list[torch.Tensor]:
        return [p.detach().clone() for p in module.parameters()]

    for _ in range(2):  # updates 1 and 2: diffusers' update_after_step = 1 -> decay 0, the latest weights
        agent.learn(q, replies)
        assert all(torch.equal(a, b) for a, b in zip(weights(agent.sampled), weights(agent.unet)))
    w2 = weights(agent.unet)
    agent.learn(q, replies)  # update 3: the full decay 0.5 at once (no warm-up, which would give 2 / 11)
    expected = [0.5 * a + 0.5 * b for a, b in zip(w2, weights(agent.unet))]
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(weights(agent.sampled), expected))


def test_reply_weight_scales_the_reply_term_while_the_anchor_follows_the_sign() -> None:
    cfg = PAPAConfig(pref_coef=0.1, model_coef=0.009)
    x0, noise = torch.rand(2, 1, 28, 28) * 2 - 1, torch.randn(2, 1, 28, 28)
    ts, y = torch.tensor([[10, 500], [999, 3]]), torch.tensor([1.0, -1.0])
    unet, base = Linear(0.5), Linear(0.2, b=1.0)
    raw = papa_loss(unet, base, x0, y, ts, noise, 2.0, cfg)
    only_like = papa_loss(unet, base, x0, torch.tensor([1.0, 0.0]), ts, noise, 2.0, cfg)
    only_dislike = papa_loss(unet, base, x0, torch.tensor([0.0, -1.0]), ts, noise, 2.0, cfg)
    centred = papa_loss(unet, base, x0, y, ts, noise, 2.0, cfg, reply_weight=torch.tensor([0.25, -1.75]))
    expected_pref = 0.25 * only_like["losses/pref"] + 1.75 * only_dislike["losses/pref"]
    assert centred["losses/pref"] == pytest.approx(expected_pref, rel=1e-5)
    assert raw["losses/model"] > 0  # the liked query's anchor, unchanged by the weights
    assert centred["losses/model"] == pytest.approx(raw["losses/model"], rel=1e-6)
    assert raw["losses/pref"] == pytest.approx(only_like["losses/pref"] + only_dislike["losses/pref"], rel=1e-5)


def test_reply_baseline_is_the_mean_of_recent_signed_replies_and_mutes_likes_when_all_are_liked(tiny_unet) -> None:
    agent = _agent(tiny_unet, reply_baseline=50, updates_per_interaction=1)
    q = agent.propose(torch.Generator().manual_seed(0))
    replies = np.array([1, -1, 0, 1, 1, -1, -1, 0, 1, 1])  # signed: 5 likes, 3 dislikes; skips do not count
    assert agent.learn(q, replies)["charts/reply_baseline"] == pytest.approx(0.25)
    short = _agent(tiny_unet, reply_baseline=4, updates_per_interaction=1)
    assert short.learn(q, replies)["charts/reply_baseline"] == pytest.approx(0.0)  # the last 4: -1, -1, +1, +1
    assert "charts/reply_baseline" not in _agent(tiny_unet, updates_per_interaction=1).learn(q, replies)
    capped = _agent(tiny_unet, reply_baseline=50, reply_baseline_max=0.1, updates_per_interaction=1)
    assert capped.learn(q, replies)["charts/reply_baseline"] == pytest.approx(0.1)  # 0.25 capped
    assert capped.learn(q, -np.ones(10))["charts/reply_baseline"] == pytest.approx(-8 / 18)  # under the cap
    # every recent reply liked: b = 1, a like weighs 1 - b = 0 -> no reply gradient (and no anchor here): no step
    muted = _agent(tiny_unet, reply_baseline=50, updates_per_interaction=1, model_coef=0.0)
    before = copy.deepcopy(muted.unet.state_dict())
    assert muted.learn(q, np.ones(10))["charts/reply_baseline"] == 1.0
    assert all(torch.equal(before[n], p) for n, p in muted.unet.state_dict().items())
    plain = _agent(tiny_unet, updates_per_interaction=1, model_coef=0.0)
    plain.learn(q, np.ones(10))
    assert any(not torch.equal(before[n], p) for n, p in plain.unet.state_dict().items())


@pytest.mark.parametrize(
    "bad",
    [
        {"updates_per_interaction": 0},
        {"replay": -1},
        {"dislike_margin": -0.5},
        {"replay_balance": 0.0},
        {"lr_half_life": 0},
        {"reply_baseline": 0},
        {"reply_baseline": 10, "full_exploitation": False},
        {"reply_baseline_max": 0.5},
        {"ema_decay": 1.0},
        {"ema_decay": 0.0},
        {"ema_start": 5},
        {"ema_decay": 0.9, "ema_start": -1},
        {"reply_baseline": 10, "reply_baseline_max": 1.5},
        {"reply_baseline": 10, "reply_baseline_max": -1.0},
    ],
)
def test_new_fast_options_reject_bad_values(tiny_unet, bad) -> None:
    with pytest.raises(ValueError, match="must be"):
        PAPA(tiny_unet, PAPAConfig(**bad))


def test_balanced_replay_favours_rare_replies_and_keeps_each_signs_share(tiny_unet) -> None:
    agent = _agent(tiny_unet, updates_per_interaction=1, replay=4, replay_balance=0.5)
    g = torch.Generator().manual_seed(0)
    crowd = torch.full((8, 1, 28, 28), 0.5) + 0.01 * torch.randn(8, 1, 28, 28, generator=g)  # one liked "digit"
    rare = torch.full((1, 1, 28, 28), -0.5)  # another liked one, seen once
    disliked = torch.randn(3, 1, 28, 28, generator=g)
    agent.buffer_x = torch.cat([crowd, rare, disliked])
    agent.buffer_y = torch.tensor([1.0] * 9 + [-1.0] * 3)
    agent.buffer_from_base = torch.zeros(12, dtype=torch.bool)
    p = agent._replay_probs()
    assert p.sum().item() == pytest.approx(1.0)
    assert p[:9].sum().item() == pytest.approx(9 / 12) and p[9:].sum().item() == pytest.approx(3 / 12)
    # the lone liked reply is replayed about as often as the whole crowd of near-copies together
    assert p[8].item() == pytest.approx(p[:8].sum().item(), rel=0.15)
    assert 6 * p[0].item() < p[8].item() < 9 * p[0].item()
    # equally spaced replies stay uniform; and learning runs with it
    agent.buffer_x, agent.buffer_y = torch.eye(4).repeat_interleave(196, 1).view(4, 1, 28, 28), torch.ones(4)
    agent.buffer_from_base = torch.zeros(4, dtype=torch.bool)
    assert torch.allclose(agent._replay_probs(), torch.full((4,), 0.25))
    q = agent.propose(torch.Generator().manual_seed(0))
    assert agent.learn(q, np.ones(10))["compute/rows"] > 0


def test_base_queries_come_from_the_frozen_base_model(tiny_unet) -> None:
    from papa_env.diffusion import sample

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
    g = torch.Generator().manual_seed(0)
    sample(agent.unet, 7, num_steps=steps, generator=g)
    assert not np.allclose(q[7:], sample(agent.unet, 3, num_steps=steps, generator=g).numpy())  # not the tuned's
    assert agent.learn(q, np.array([1, -1] * 5))["compute/rows"] > 0
    only_base = moved_agent(10).propose(torch.Generator().manual_seed(0))
    expected = sample(agent.base, 10, num_steps=steps, generator=torch.Generator().manual_seed(0))
    assert np.allclose(only_base, expected.numpy())
    with pytest.raises(ValueError, match="base_queries"):
        PAPA(tiny_unet, PAPAConfig(base_queries=11))


def test_tuned_like_weight_mutes_likes_on_the_tuned_models_own_queries(tiny_unet) -> None:
    def stats(weight: float, replies: list[int], **kw) -> tuple[PAPA, dict]:
        agent = _agent(tiny_unet, base_queries=3, tuned_like_weight=weight, model_coef=0.5, **kw)
        q = agent.propose(torch.Generator().manual_seed(0))
        return agent, agent.learn(q, np.array(replies))

    tuned_likes = [1] * 7 + [0] * 3  # the 7 tuned queries liked, the 3 base queries (last) skipped
    _, muted = stats(0.0, tuned_likes)
    _, full = stats(1.0, tuned_likes)
    _, half = stats(0.5, tuned_likes)
    assert muted["losses/pref"] == 0.0 and muted["losses/model"] > 0  # the anchor still holds liked queries
    assert full["losses/pref"] != 0 and half["losses/pref"] == pytest.approx(full["losses/pref"] / 2, rel=1e-5)
    base_likes = [-1] * 7 + [1] * 3  # likes on base queries and every dislike keep their weight
    assert stats(0.0, base_likes)[1]["losses/pref"] == pytest.approx(stats(1.0, base_likes)[1]["losses/pref"])
    # replayed replies keep where they came from, through a checkpoint too
    agent, _ = stats(0.0, [1, -1, 1, 0, 1, -1, 1, 1, 0, 1], replay=4, updates_per_interaction=2)
    assert agent.buffer_from_base.tolist() == [False] * 6 + [True, True]  # the two skips are dropped
    other = _agent(tiny_unet, base_queries=3, tuned_like_weight=0.0, replay=4, updates_per_interaction=2)
    other.load_state_dict(agent.state_dict())
    assert torch.equal(other.buffer_from_base, agent.buffer_from_base)
    replies_before = {k: v for k, v in agent.state_dict().items() if k != "buffer_from_base"}
    other.load_state_dict(replies_before)  # a checkpoint from before the option: every reply the tuned model's
    assert not other.buffer_from_base.any() and len(other.buffer_from_base) == len(agent.buffer_y)
    with pytest.raises(ValueError, match="tuned_like_weight must be in"):
        PAPA(tiny_unet, PAPAConfig(base_queries=3, tuned_like_weight=1.5))
    with pytest.raises(ValueError, match="needs base_queries"):
        PAPA(tiny_unet, PAPAConfig(tuned_like_weight=0.0))
