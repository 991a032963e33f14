"""benchmarks/run.py: the comparison harness (quick mode for every kind of agent, workers, reuse, statistics)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import run


@pytest.mark.slow
def test_quick_mode_writes_table_and_plots(tmp_path) -> None:
    agents = "papa,epapa,ddpo,d3po,sb3-ppo,sb3-sac,reward-model,base,oracle-best-of-n"
    rows = run.main(
        [
            "--quick",
            "--budget",
            "20",
            "--eval-every",
            "20",
            "--eval-samples",
            "20",
            "--agents",
            agents,
            "--out",
            str(tmp_path),
        ]
    )
    root = tmp_path / "PAPA-MNIST-v0-quick"
    for name in ("results.jsonl", "table.csv", "table.md", "welch.md", "like_rate.png", "final_samples.png"):
        assert (root / name).exists(), name
    assert [r["agent"] for r in rows] == agents.split(",")
    results = [json.loads(line) for line in (root / "results.jsonl").read_text().splitlines()]
    for r in results:
        assert [rec["replies"] for rec in r["records"]] == [0, 20], r["agent"]
        assert 0 <= r["records"][-1]["eval/like_rate_judge"] <= 1
    # every learner persisted its replies before learning; SB3 through the ReplyLog wrapper
    learners = [n for n in agents.split(",") if n not in run.REFERENCES]
    for name in learners:
        assert (root / f"{name}-s0" / "replies.jsonl").exists(), name
    # the references ask the user nothing: one evaluation, the same at both ends
    for r in (r for r in results if r["agent"] in run.REFERENCES):
        assert not (root / f"{r['agent']}-s0" / "replies.jsonl").exists()
        assert {k: v for k, v in r["records"][0].items() if k != "replies"} == {
            k: v for k, v in r["records"][1].items() if k != "replies"
        }
    with pytest.raises(SystemExit, match="unknown agents"):
        run.main(["--quick", "--agents", "papa,dpo", "--out", str(tmp_path)])
    # a rerun reads the finished sessions back instead of spending replies again
    before = {n: (root / f"{n}-s0" / "replies.jsonl").read_text() for n in learners}
    again = run.main(["--quick", "--budget", "20", "--eval-every", "20", "--eval-samples", "20", "--agents", agents,
                      "--out", str(tmp_path)])  # fmt: skip
    assert again == rows
    assert before == {n: (root / f"{n}-s0" / "replies.jsonl").read_text() for n in learners}


@pytest.mark.slow
def test_workers_run_sessions_in_processes_with_the_same_results(tmp_path) -> None:
    args = ["--quick", "--agents", "base,epapa", "--seeds", "2", "--budget", "10", "--eval-every", "10"]
    args += ["--eval-samples", "10"]
    serial = run.main([*args, "--out", str(tmp_path / "serial")])
    parallel = run.main([*args, "--workers", "2", "--out", str(tmp_path / "parallel")])
    # same sessions, same order; like-rates equal up to thread-count float noise
    assert [r["agent"] for r in parallel] == [r["agent"] for r in serial]
    for a, b in zip(serial, parallel):
        assert a["like@0"] == b["like@0"] and a["seeds"] == b["seeds"] == 2
    with pytest.raises(SystemExit):
        run.main([*args, "--workers", "0", "--out", str(tmp_path / "bad")])


@pytest.mark.slow
def test_reuse_adds_an_agent_to_an_earlier_comparison_without_rerunning_it(tmp_path) -> None:
    args = ["--quick", "--seeds", "2", "--budget", "10", "--eval-every", "10", "--eval-samples", "10"]
    earlier = run.main([*args, "--agents", "epapa,base", "--out", str(tmp_path / "a")])
    reuse = str(tmp_path / "a" / "PAPA-MNIST-v0-quick" / "results.jsonl")
    rows = run.main([*args, "--agents", "ddpo", "--reuse", reuse, "--out", str(tmp_path / "b")])
    assert [r["agent"] for r in rows] == ["epapa", "ddpo", "base"]  # ALL's order, the new one in place
    assert rows[0] == earlier[0] and rows[2] == earlier[1]  # read back, figure for figure
    root = tmp_path / "b" / "PAPA-MNIST-v0-quick"
    assert not (root / "epapa-s0").exists()  # not rerun: no reply spent on it
    assert json.loads((root / "ddpo-s1" / "config.json").read_text())["agent"] == "ddpo"
    assert len((root / "results.jsonl").read_text().splitlines()) == 6
    assert (root / "final_samples.png").exists()  # ddpo and base: the rows it can draw
    welch = (root / "welch.md").read_text()
    assert "| epapa | ddpo |" in welch and "| epapa | base |" in welch
    with pytest.raises(SystemExit, match=r"evaluated at replies \[0, 10\].*evaluates at \[0, 5, 10\]"):
        run.main([*args, "--eval-every", "5", "--agents", "base", "--reuse", reuse, "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="results.jsonl"):
        run.main([*args, "--agents", "base", "--reuse", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "c")])
    garbled = tmp_path / "garbled.jsonl"
    garbled.write_text(reuse_text := open(reuse).read().splitlines()[0] + "\n{not json\n")
    with pytest.raises(SystemExit, match="garbled.jsonl:2: not a session line"):
        run.main([*args, "--agents", "base", "--reuse", str(garbled), "--out", str(tmp_path / "c")])
    assert open(reuse).read().startswith(reuse_text.splitlines()[0])  # the earlier file is only read


def _fake_results(ends: dict[str, list[float]]) -> list[dict]:
    """Harness results whose last judge like-rates are ``ends[agent]`` (one per seed)."""
    return [
        {"agent": name, "seed": s, "records": [{"replies": 0, "eval/like_rate_judge": 0.4},
                                                {"replies": 300, "eval/like_rate_judge": v}]}
        for name, vals in ends.items()
        for s, v in enumerate(vals)
    ]  # fmt: skip


def test_welch_tests_match_a_hand_computed_welch_test() -> None:
    from scipy import stats

    epapa, ddpo = [0.9, 0.95, 1.0], [0.5, 0.7]
    rows = run.welch_tests(_fake_results({"epapa": epapa, "ddpo": ddpo, "base": [0.38, 0.38]}))
    assert [(r["agent"], r["vs"]) for r in rows] == [("epapa", "ddpo"), ("epapa", "base")]
    w = rows[0]
    # by hand: means 0.95 and 0.6, variances of the means 0.0025/3 and 0.02/2
    vx, vy = 0.0025 / 3, 0.02 / 2
    t = 0.35 / (vx + vy) ** 0.5
    dof = (vx + vy) ** 2 / (vx**2 / 2 + vy**2 / 1)
    assert w["diff"] == pytest.approx(0.35)
    assert w["t"] == pytest.approx(t)
    assert w["p"] == pytest.approx(2 * stats.t.sf(t, dof))
    assert w["p"] == pytest.approx(stats.ttest_ind(epapa, ddpo, equal_var=False).pvalue)
    half = stats.t.ppf(0.975, dof) * (vx + vy) ** 0.5
    assert (w["ci_low"], w["ci_high"]) == pytest.approx((0.35 - half, 0.35 + half))
    assert w["ci_low"] < 0 < w["p"] - 0.05  # 2 seeds of ddpo: the difference is not significant
    # a reference with zero spread across seeds still gets a test; one seed gets none
    assert rows[1]["p"] < 0.05
    lone = run.welch_tests(_fake_results({"papa": [0.9], "ddpo": ddpo}))
    assert np.isnan(lone[0]["p"]) and lone[0]["diff"] == pytest.approx(0.3)
    assert run.welch_tests(_fake_results({"ddpo": ddpo, "base": [0.38, 0.38]})) == []
    both_flat = run.welch_tests(_fake_results({"papa": [0.9, 0.9], "base": [0.38, 0.38]}))
    assert np.isnan(both_flat[0]["p"]) and both_flat[0]["diff"] == pytest.approx(0.52)


def test_table_matches_evaluations_by_reply_count_not_position() -> None:
    results = _fake_results({"epapa": [0.9, 0.8]})
    results[1]["records"].insert(1, {"replies": 150, "eval/like_rate_judge": 0.6})  # only seed 1 has @150
    for r in results:
        for rec in r["records"]:
            rec["eval/judge_confidence"] = 0.9
        r["collapse"] = []
    results[0]["records"][-1]["eval/fd_to_base"] = 3.0
    results[1]["records"][-1]["eval/fd_to_base"] = 6.0
    row = run.table(results)[0]
    assert row["fd_to_base"] == "4.5"
    base = _fake_results({"base": [0.4]})
    base[0]["collapse"] = []
    for rec in base[0]["records"]:
        rec["eval/judge_confidence"] = 0.9
    assert run.table(base)[0]["fd_to_base"] == "-"  # a reference has no own before-learning samples
    assert row["like@0"] == "0.400 +- 0.000"
    assert row["like@150"] == "0.600 +- 0.000 (n = 1)"
    assert row["like@300"].startswith("0.850 +- ")
