"""papa_env/evaluation.py: collapse flags, the session summary, and a reckless learner caught by them."""

from __future__ import annotations

import pytest
import torch
from helpers import ToyEval, bright_env

from papa_env.agents.papa import PAPA, PAPAConfig
from papa_env.evaluation import collapse_report, summarize
from papa_env.session import run_session


def _rec(replies, like, share, **extra):
    return {"replies": replies, "eval/like_rate_judge": like, "eval/like_rate_oracle": like,
            "eval/max_class_share": share, "eval/judge_confidence": 0.9, **extra}  # fmt: skip


def test_collapse_report_flags_a_dominant_class_and_a_falling_like_rate() -> None:
    healthy = [_rec(0, 0.4, 0.12), _rec(100, 0.7, 0.3), _rec(200, 0.72, 0.35)]
    assert collapse_report(healthy) == []
    collapsed = [_rec(0, 0.4, 0.12), _rec(100, 0.7, 0.65), _rec(200, 0.5, 0.4)]
    problems = collapse_report(collapsed)
    assert len(problems) == 2 and "65%" in problems[0] and "fell to 0.500" in problems[1]


def test_a_like_rate_fall_is_read_against_the_noise_of_the_evaluations_sample_size() -> None:
    """0.93 -> 0.86 on 100 images each is within their noise (1.8 standard errors); on 2,000 images it is a fall (8);
    0.95 -> 0.75 is a fall on 100 images too. Without ``samples``, any fall over the tolerance counts."""
    wobble = [_rec(0, 0.2, 0.1), _rec(50, 0.93, 0.3), _rec(100, 0.86, 0.3)]
    assert collapse_report(wobble, samples=100) == []
    assert collapse_report(wobble, samples=2000) == ["100 replies: eval/like_rate_judge fell to 0.860 from 0.930"]
    assert collapse_report(wobble) == collapse_report(wobble, samples=2000)
    fall = [_rec(0, 0.2, 0.1), _rec(50, 0.95, 0.3), _rec(100, 0.75, 0.3)]
    assert collapse_report(fall, samples=100) == ["100 replies: eval/like_rate_judge fell to 0.750 from 0.950"]
    from_one = [_rec(0, 0.2, 0.1), _rec(50, 1.0, 0.3), _rec(100, 0.88, 0.3)]  # 3.7 standard errors
    assert collapse_report(from_one, samples=100) == ["100 replies: eval/like_rate_judge fell to 0.880 from 1.000"]
    assert collapse_report(from_one, samples=100, tolerance=0.15) == []  # and the tolerance still applies
    with pytest.raises(ValueError, match="samples"):
        collapse_report(from_one, samples=0)


def test_flat_sessions_read_a_fall_rarely_and_real_falls_are_seen() -> None:
    """The rule's false alarms and power, simulated: 2,000 sessions of a model that never changes (7 evaluations of
    100 binomial samples) at like-rates 0.7 / 0.9 are flagged in under 4% (the tolerance alone: 60-85%), and a
    model whose like-rate drops for good from 0.9 to 0.7 at the fourth evaluation in over 95%."""
    import numpy as np

    rng = np.random.default_rng(0)

    def flagged(rates: list[float], samples: int | None) -> float:
        hits = 0
        for _ in range(2000):
            drawn = rng.binomial(100, rates) / 100
            hits += bool(collapse_report([_rec(50 * i, float(r), 0.3) for i, r in enumerate(drawn)], samples=samples))
        return hits / 2000

    for p in (0.7, 0.9):
        flat = [0.2] + [p] * 6
        assert flagged(flat, 100) < 0.04 and flagged(flat, None) > 0.55, p
    assert flagged([0.2, 0.9, 0.9, 0.9, 0.7, 0.7, 0.7], 100) > 0.95


def test_summarize_reads_the_judge_like_rate_and_the_liked_classes_shares() -> None:
    shares = {f"eval/class_share/{c}": 0.1 for c in range(10)}
    records = [_rec(0, 0.4, 0.12, **shares), _rec(100, 0.8, 0.3, **shares, **{"charts/seconds_per_interaction": 2.0})]
    s = summarize(records, liked=(1, 4))
    assert s["metric"] == "like_rate_judge" and s["like_rate"] == [0.4, 0.8] and s["replies"] == [0, 100]
    assert s["liked_shares_end"] == {"1": 0.1, "4": 0.1} and s["min_liked_share_end"] == 0.1
    assert s["seconds_per_interaction"] == 2.0 and s["collapse"] == []


def test_tiny_agent_with_a_reckless_learning_rate_is_caught_collapsing(tiny_unet) -> None:
    """The authors' loss is unbounded on disliked samples: a large lr degenerates, and the detector says so."""
    env = bright_env(100)
    agent = PAPA(tiny_unet, PAPAConfig(lr=0.3, batch_size=10, timesteps_per_image=16, num_sampling_steps=8))
    records = run_session(agent, env, eval_every=20, evaluator=ToyEval(env), progress=False)
    rates = [r["eval/like_rate_oracle"] for r in records]
    print(f"lr 0.3: like-rate {rates}")
    assert collapse_report(records, tolerance=0.05), rates
    with pytest.raises(ValueError, match="n >= 2"):
        from papa_env.evaluation import Evaluator

        Evaluator(env, n=1)


def _record(replies: int, like: float, shares: dict[int, float], conf: float = 0.9, shown: float | None = None) -> dict:
    r = {"replies": replies, "eval/like_rate_judge": like, "eval/like_rate_oracle": like, "eval/judge_confidence": conf,
         "eval/max_class_share": max(shares.values())}  # fmt: skip
    r |= {f"eval/class_share/{c}": s for c, s in shares.items()}
    if shown is not None:
        r["session/shown_like_rate"] = shown
    return r


def test_session_metrics_on_hand_made_records() -> None:
    from papa_env.evaluation import relative_balance, session_metrics

    records = [
        _record(0, 0.2, {1: 0.10, 4: 0.10, 7: 0.05}, conf=0.90),
        _record(50, 0.92, {1: 0.40, 4: 0.30, 7: 0.22}, shown=0.5),  # first >= 0.9
        _record(100, 0.88, {1: 0.40, 4: 0.40, 7: 0.08}, shown=0.6),
        _record(150, 0.95, {1: 0.50, 4: 0.40, 7: 0.05}, conf=0.93, shown=0.7),
    ]
    m = session_metrics(records, liked=(1, 4, 7))
    assert m["replies_to_target"] == 50 and m["like_rate"]["150"] == 0.95 and m["metric"] == "like_rate_judge"
    assert m["shown_like_rate"] == 0.7 and m["judge_confidence"] == [0.90, 0.93]
    # digit 7: 0.05 / 0.25 of the liked samples at the start, 0.05 / 0.95 at the end -> (0.05/0.95) / 0.2
    assert m["relative_balance"] == pytest.approx((0.05 / 0.95) / 0.2)
    assert relative_balance(records, (1, 4, 7), at=1) == pytest.approx((0.30 / 0.92) / 0.4)  # digit 4 lags
    # 0.92 -> 0.88 is within the 0.05 tolerance; digit 7 is under half its base share at 100 and 150 replies
    assert m["collapse"] == ["150 replies: a liked class at 0.26 of its base share"]
    never = session_metrics([_record(0, 0.2, {3: 0.1}), _record(50, 0.5, {3: 0.2}), _record(100, 0.4, {3: 0.9})], (3,))
    assert never["replies_to_target"] is None and never["relative_balance"] is None  # one liked class: no balance
    assert never["shown_like_rate"] is None and len(never["collapse"]) == 1  # 0.5 -> 0.4 fell; one class is the goal


def test_relative_balance_against_a_reference_measured_on_more_base_samples() -> None:
    from papa_env.evaluation import relative_balance

    # the first evaluation drew one 7 and nine 9s; the base's shares on many samples say 7 is a third of its likes
    records = [_record(0, 0.10, {7: 0.01, 9: 0.09}), _record(100, 0.9, {7: 0.12, 9: 0.78})]
    assert relative_balance(records, (7, 9)) == pytest.approx((0.78 / 0.9) / 0.9)  # against one 7: 7 looks fine
    reference = {7: 0.05, 9: 0.10, 3: 0.85}
    assert relative_balance(records, (7, 9), reference=reference) == pytest.approx((0.12 / 0.9) / (1 / 3))
    assert collapse_report(records, liked=(7, 9), reference=reference) == []  # once under 0.5 is not a flag
    records.append(_record(200, 0.9, {7: 0.1, 9: 0.8}))
    flagged = collapse_report(records, liked=(7, 9), reference=reference)
    assert flagged == ["200 replies: a liked class at 0.33 of its base share"]
    assert collapse_report(records, liked=(7, 9)) == []  # against the one-sample reference: 7 still looks fine


def test_base_class_shares_counts_the_judges_labels_of_the_models_samples(tiny_unet) -> None:
    from papa_env.evaluation import base_class_shares
    from papa_env.models import load_pretrained

    judge_net = load_pretrained("mnist-judge")
    shares = base_class_shares(tiny_unet, judge_net, n=30, batch=8, num_steps=4)
    assert set(shares) == set(range(10)) and sum(shares.values()) == pytest.approx(1.0)
    assert all(v * 30 == pytest.approx(round(v * 30)) for v in shares.values())  # counts of 30 samples
    assert base_class_shares(tiny_unet, judge_net, n=30, batch=8, num_steps=4) == shares  # seeded
    with pytest.raises(ValueError, match="n >= 1"):
        base_class_shares(tiny_unet, judge_net, n=0)


def test_base_reference_reads_the_shares_and_the_mean_confidence_of_the_same_samples(tiny_unet) -> None:
    from papa_env.diffusion import sample
    from papa_env.evaluation import base_class_shares, base_reference, confidence_start, session_metrics
    from papa_env.metrics import judge
    from papa_env.models import load_pretrained

    judge_net = load_pretrained("mnist-judge")
    reading = base_reference(tiny_unet, judge_net, n=30, batch=8, num_steps=4)
    assert reading["shares"] == base_class_shares(tiny_unet, judge_net, n=30, batch=8, num_steps=4)
    gen = torch.Generator().manual_seed(0)  # the same draws, in the same batches
    images = torch.cat([sample(tiny_unet, b, generator=gen, num_steps=4) for b in (8, 8, 8, 6)])
    assert reading["confidence"] == pytest.approx(float(judge(judge_net, images).confidence.mean()), abs=1e-6)
    # a session's confidence is read against it when given, else against its own first evaluation
    records = [{"replies": n, "eval/like_rate_judge": 0.5, "eval/judge_confidence": c, "eval/max_class_share": 0.2}
               for n, c in ((0, 0.90), (300, 0.93))]  # fmt: skip
    plain, scored = session_metrics(records), session_metrics(records, base_confidence=0.95)
    assert (confidence_start(plain), confidence_start(scored)) == (0.90, 0.95)
    assert plain["judge_confidence"] == scored["judge_confidence"] == [0.90, 0.93]  # the evaluations, untouched
    with pytest.raises(ValueError, match="n >= 1"):
        base_reference(tiny_unet, judge_net, n=0)


def test_collapse_report_reads_crowding_against_the_base_when_the_liked_classes_are_known() -> None:
    """A split the base model already has is not crowding (Fashion-MNIST {7, 9}: 26% / 74% of the base's liked
    samples), a liked class crowded out is, and so is a disliked class taking most samples."""
    base = {0: 0.14, 2: 0.17, 7: 0.05, 9: 0.14, 5: 0.50}
    kept = [_record(0, 0.19, base), _record(100, 0.96, {7: 0.21, 9: 0.75, 2: 0.04})]
    assert collapse_report(kept, liked=(7, 9)) == []
    assert collapse_report(kept) == ["100 replies: one class holds 75% of samples"]  # no taste known: the old rule
    crowded = [*kept, _record(200, 0.94, {7: 0.10, 9: 0.84, 2: 0.06})]  # 7: 0.106 of the liked vs 0.263
    assert collapse_report(crowded, liked=(7, 9)) == []  # once: within a 100-sample evaluation's noise
    crowded.append(_record(300, 0.95, {7: 0.09, 9: 0.86, 2: 0.05}))
    assert collapse_report(crowded, liked=(7, 9)) == ["300 replies: a liked class at 0.36 of its base share"]
    disliked = [_record(0, 0.19, base), _record(100, 0.2, {5: 0.7, 7: 0.05, 9: 0.15})]
    assert collapse_report(disliked, liked=(9,)) == ["100 replies: class 5, not liked, holds 70% of samples"]
    assert collapse_report([_record(0, 0.5, {9: 1.0})], liked=(9,)) == []  # one liked class taking all: the goal
