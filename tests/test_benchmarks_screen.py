"""benchmarks/screen.py: arms paired on the sessions they share, and the choosing rule applied to every learner."""

from __future__ import annotations

import json

import pytest

from benchmarks import screen


def _session(agent, taste, seed, like300, balance, conf_end, base_conf=0.9, collapse=()):
    metrics = {
        "like_rate": {"100": like300 - 0.2, "200": like300 - 0.1, "300": like300},
        "replies_to_target": None,
        "shown_like_rate": 0.5,
        "judge_confidence": [0.85, conf_end],
        "base_confidence": base_conf,
        "relative_balance": balance,
        "collapse": list(collapse),
        "optimizer_steps_per_interaction": 4.0,
    }
    return {"agent": agent, "taste": taste, "seed": seed, "group": "mnist", "metrics": metrics}  # fmt: skip


def _write(path, sessions) -> str:
    path.write_text("".join(json.dumps(s) + "\n" for s in sessions))
    return str(path)


def test_the_rule_picks_the_best_qualifying_setting_per_learner_on_the_shared_sessions(tmp_path, capsys) -> None:
    tastes = ("mnist-3", "mnist-7-9")
    ours = [_session("epapa", t, 0, 0.80, 0.6, 0.91) for t in tastes]
    ours.append(_session("epapa", "mnist-0-1-6", 0, 0.10, 0.0, 0.5))  # not run by the others: left out
    ddpo = [_session("ddpo+lr=0.0001", t, 0, 0.95, 0.1, 0.90, collapse=["100 replies: ..."]) for t in tastes]
    ddpo += [_session("ddpo+lr=3e-05", t, 0, 0.85, 0.7, 0.89) for t in tastes]  # confidence 0.01 under: allowed
    ddpo += [_session("ddpo+lr=1e-05", t, 0, 0.60, 0.9, 0.95) for t in tastes]
    d3po = [_session("d3po", t, 0, 0.99, 0.9, 0.85) for t in tastes]  # 0.05 under the base's confidence
    files = [_write(tmp_path / "ours.jsonl", ours), _write(tmp_path / "theirs.jsonl", ddpo + d3po)]
    text = screen.main([*files, "--base-reference", "0", "--against", "epapa", "--out", str(tmp_path / "r.md")])
    assert (tmp_path / "r.md").read_text() == text and text in capsys.readouterr().out
    assert text.startswith("2 sessions every arm ran (2 tastes, seeds [0])")
    assert "- ddpo: `ddpo+lr=3e-05` (like@300 0.850); by like@300 alone `ddpo+lr=0.0001` (0.950)" in text
    assert "- d3po: none qualifies; by like@300 alone `d3po` (0.990)" in text
    assert "- epapa: `epapa` (like@300 0.800)" in text  # its third taste did not count
    assert "misses: balance 0.100 < 0.5" in text and "misses: confidence 0.850 < base 0.900 - 0.02" in text
    assert "| 0.900 -> 0.910 | 0 | 4.0 | qualifies |" in text
    assert "- `ddpo+lr=0.0001`: like@100 2 / 0 of 2 (0.150), like@300 2 / 0 of 2 (0.150), balance 0 / 2 of 2" in text
    stricter = screen.main([*files, "--base-reference", "0", "--confidence-margin", "0"])
    assert "- ddpo: `ddpo+lr=1e-05` (like@300 0.600)" in stricter  # 3e-5's confidence no longer passes
    assert "Paired" not in stricter


def test_screen_refuses_what_it_cannot_compare(tmp_path) -> None:
    a = _write(tmp_path / "a.jsonl", [_session("epapa", "mnist-3", 0, 0.8, 0.6, 0.9)])
    b = _write(tmp_path / "b.jsonl", [_session("ddpo", "mnist-7-9", 0, 0.8, 0.6, 0.9)])
    twice = _write(tmp_path / "twice.jsonl", [_session("ddpo", "mnist-3", 0, 0.8, 0.6, 0.9)] * 2)
    plain = _write(tmp_path / "plain.jsonl", [{"agent": "epapa", "seed": 0, "records": []}])  # not a suite session
    for argv, match in (
        ([a, b], "share no"),
        ([twice], "appears twice"),
        ([plain], "not a suite session"),
        ([a, "--against", "ddpo"], "not an arm"),
    ):
        with pytest.raises(SystemExit, match=match):
            screen.main([*argv, "--base-reference", "0"])
    for argv in ([str(tmp_path / "none.jsonl")], [a, "--base-reference", "-1"], [a, "--balance-floor", "2"]):
        with pytest.raises(SystemExit):  # argparse's errors
            screen.main(argv)
