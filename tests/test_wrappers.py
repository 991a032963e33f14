"""papa_env/wrappers.py: BudgetFraction's observation, ReplyLog's journal."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import Bright

from papa_env.env import PreferenceEnv
from papa_env.wrappers import BudgetFraction, ReplyLog


def test_budget_fraction_scales_replies_left(tiny_unet) -> None:

    env = BudgetFraction(PreferenceEnv(Bright(), queries_per_step=2, feedback_budget=6))
    obs, _ = env.reset(seed=0)
    assert obs["replies_left"].tolist() == [1.0] and obs in env.observation_space
    obs, *_ = env.step(env.action_space.sample())
    assert obs["replies_left"].tolist() == pytest.approx([4 / 6]) and obs in env.observation_space


def test_reply_log_persists_each_step_in_the_run_folders_journal_before_returning(tmp_path) -> None:
    env = ReplyLog(PreferenceEnv(Bright(), queries_per_step=2, feedback_budget=6), tmp_path)
    env.reset(seed=0)
    action = np.stack([np.full((1, 28, 28), v, np.float32) for v in (0.5, -0.5)])
    _, _, _, _, info = env.step(action)
    line = json.loads((tmp_path / "replies.jsonl").read_text())
    assert line["step"] == 1 and line["replies"] == [1, -1] == info["replies"].tolist()
    assert np.array_equal(np.load(tmp_path / line["queries"])["queries"], action)
    again = ReplyLog(PreferenceEnv(Bright(), queries_per_step=2, feedback_budget=6), tmp_path)  # continues
    again.reset(seed=0)
    again.step(action)
    assert [json.loads(x)["step"] for x in (tmp_path / "replies.jsonl").read_text().splitlines()] == [1, 2]
    with pytest.raises(NotADirectoryError):
        ReplyLog(PreferenceEnv(Bright(), queries_per_step=2, feedback_budget=6), tmp_path / "replies.jsonl")
