"""papa_env/evaluation.py: collapse flags, the session summary, and a reckless learner caught by them."""

from __future__ import annotations

import pytest
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
