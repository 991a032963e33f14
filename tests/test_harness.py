"""papa_env/harness.py (``papa bench``, ``python -m benchmarks.run``): the comparison harness and the user suite."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from papa_env import evaluation, harness
from papa_env.harness import SessionSpec


def _quick(tmp_path, agents: str, *extra: str) -> list[dict]:
    args = ["--quick", "--budget", "10", "--eval-every", "10", "--eval-samples", "20", "--agents", agents]
    return harness.main([*args, "--out", str(tmp_path), *extra])


def _results(out) -> list[dict]:
    return [json.loads(x) for x in (out / "PAPA-MNIST-v0-quick" / "results.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_quick_mode_writes_table_and_plots_for_every_kind_of_agent(tmp_path, tiny_model_file) -> None:
    """Every kind of agent through the quick mode, on the tiny UNet (`--model`): the plumbing, not the figures."""
    agents = "papa,epapa,ddpo,d3po,sb3-ppo,sb3-sac,reward-model,base,oracle-best-of-n"
    rows = _quick(tmp_path, agents, "--model", tiny_model_file)
    root = tmp_path / "PAPA-MNIST-v0-quick"
    for name in ("results.jsonl", "table.csv", "table.md", "welch.md", "like_rate.png", "final_samples.png"):
        assert (root / name).exists(), name
    assert [r["agent"] for r in rows] == [a for a in harness.ALL if a in agents.split(",")]  # ALL's order
    results = [json.loads(line) for line in (root / "results.jsonl").read_text().splitlines()]
    for r in results:
        assert [rec["replies"] for rec in r["records"]] == [0, 10], r["agent"]
        assert 0 <= r["records"][-1]["eval/like_rate_judge"] <= 1
        assert set(r["metrics"]) >= {"replies_to_target", "shown_like_rate", "relative_balance", "collapse"}
        # the update's compute, logged by every learner that steps an optimizer on the UNet (not SB3's policy)
        logged = r["metrics"]["optimizer_steps_per_interaction"] is not None
        assert logged == (r["agent"] in harness.LEARNERS), r["agent"]
        assert (r["metrics"]["update_rows_per_interaction"] is not None) == logged, r["agent"]
    # every learner persisted its replies before learning; SB3 through the ReplyLog wrapper
    learners = [n for n in agents.split(",") if n not in harness.REFERENCES]
    for name in learners:
        assert (root / f"{name}-s0" / "replies.jsonl").exists(), name
    # the references ask the user nothing: one evaluation, the same at both ends
    for r in (r for r in results if r["agent"] in harness.REFERENCES):
        assert not (root / f"{r['agent']}-s0" / "replies.jsonl").exists()
        assert {k: v for k, v in r["records"][0].items() if k != "replies"} == {
            k: v for k, v in r["records"][1].items() if k != "replies"
        }
    with pytest.raises(SystemExit, match="unknown agents"):
        harness.main(["--quick", "--agents", "papa,dpo", "--out", str(tmp_path)])
    # a rerun reads the finished sessions back instead of spending replies again
    before = {n: (root / f"{n}-s0" / "replies.jsonl").read_text() for n in learners}
    assert _quick(tmp_path, agents, "--model", tiny_model_file) == rows
    assert before == {n: (root / f"{n}-s0" / "replies.jsonl").read_text() for n in learners}
    # one seed: a plain number, no interval; numeric CSV columns; labelled class shares
    table = (root / "table.md").read_text()
    assert "+-" not in table and "share/" not in table.splitlines()[0] and "1 0." in table
    assert "| optimizer steps / interaction | update rows / interaction |" in table.splitlines()[0]
    csv_head = (root / "table.csv").read_text().splitlines()[0].split(",")
    assert "like@10" in csv_head and "like@10_ci95" in csv_head and "share/7" in csv_head


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--suite", "tuning", "--env", "PAPA-MNIST-v0"], "--env choose one user; --suite tuning runs its own"),
        (["--suite", "held-out", "--preference", "[3]", "--mistake-rate", "0.1"], "--preference, --mistake-rate"),
        (["--tastes", "mnist-3"], "--tastes picks tastes of --suite"),
        (["--suite", "tuning", "--balance-reference", "-1"], "--base-reference must be >= 0 samples, got -1"),
    ],
)
def test_suite_and_one_user_flags_are_refused_together(argv, match, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):  # before any session: nothing is written
        harness.main([*argv, "--agents", "base", "--out", str(tmp_path)])
    assert match in capsys.readouterr().err and not any(tmp_path.iterdir())


@pytest.mark.slow
def test_workers_run_sessions_in_processes_with_the_same_results(tmp_path, tiny_model_file) -> None:
    args = ["--quick", "--agents", "base,epapa", "--seeds", "2", "--budget", "10", "--eval-every", "10"]
    args += ["--eval-samples", "10", "--no-grid", "--model", tiny_model_file]
    serial = harness.main([*args, "--out", str(tmp_path / "serial")])
    parallel = harness.main([*args, "--workers", "2", "--out", str(tmp_path / "parallel")])
    # same sessions, same order; like-rates equal up to thread-count float noise
    assert [r["agent"] for r in parallel] == [r["agent"] for r in serial]
    for a, b in zip(serial, parallel):
        assert a["like@0"] == b["like@0"] and a["seeds"] == b["seeds"] == 2
    assert all(r["spec"]["model"] == tiny_model_file for r in _results(tmp_path / "parallel"))  # the file given
    with pytest.raises(SystemExit):
        harness.main([*args, "--workers", "0", "--out", str(tmp_path / "bad")])
    with pytest.raises(SystemExit, match="no weights file"):
        harness.main([*args, "--model", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "bad")])


def _alive_children(pid: int) -> set[int]:
    """Running (not zombie) processes whose parent is ``pid``, from /proc."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_processes_keep_the_order_of_the_calls() -> None:
    assert harness.in_processes(pow, [(2, 3), (3, 2), (2, 0)], 2) == [8, 9, 1]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_a_stopped_run_ends_its_worker_processes() -> None:
    # `kill <pid>` of a suite run: its workers must not go on running the queued sessions
    script = "import time; from papa_env.harness import in_processes; in_processes(time.sleep, [(60,)] * 6, 2)"
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while len(children := _alive_children(parent.pid)) < 3 and time.monotonic() < deadline:  # 2 workers + tracker
        time.sleep(0.2)
    assert len(children) >= 2, "the workers did not start"
    time.sleep(1.0)  # let them pick up their first call
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) != 0
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in children), "worker processes outlived the stopped run"


def test_a_reused_session_stands_only_for_its_own_agent_seed_and_taste() -> None:
    specs = [
        harness.SessionSpec("epapa", "PAPA-MNIST-v0", seed, taste=taste)
        for taste in ("mnist-3", "mnist-5")
        for seed in (0, 1)
    ]
    reused = [
        {"agent": "epapa", "seed": 0, "taste": "mnist-3"},
        {"agent": "epapa+lr=0.0002", "seed": 1, "taste": "mnist-5"},
    ]
    assert [(s.taste, s.seed) for s in harness.not_reused(specs, reused)] == [
        ("mnist-3", 1),
        ("mnist-5", 0),
        ("mnist-5", 1),
    ]
    plain = [harness.SessionSpec("epapa", "PAPA-MNIST-v0", 0)]  # one user, no taste: an older results.jsonl has none
    assert harness.not_reused(plain, [{"agent": "epapa", "seed": 0}]) == []


def test_reused_suite_sessions_are_scored_again_by_todays_metrics() -> None:
    """A session stored with an older collapse rule gets today's from its own evaluations and its taste's classes."""
    shares = [{7: 0.05, 9: 0.14, 2: 0.4, 0: 0.41}, {7: 0.21, 9: 0.75, 2: 0.04}]  # the base's 26% / 74% split, kept
    records = [{"replies": n, "eval/like_rate_judge": like, "eval/judge_confidence": 0.8,
                "eval/max_class_share": max(sh.values()), **{f"eval/class_share/{c}": v for c, v in sh.items()}}
               for n, like, sh in zip((0, 300), (0.19, 0.96), shares)]  # fmt: skip
    stale = ["300 replies: one class holds 75% of samples"]
    old = {"agent": "epapa", "seed": 0, "taste": "fashion-7-9", "records": records, "collapse": stale}
    other = {"agent": "epapa", "seed": 0, "taste": "not-a-suite-taste", "records": records, "collapse": stale}
    harness.rescore([old, other], {"fashion-7-9": (7, 9)})
    assert old["collapse"] == [] and old["metrics"]["relative_balance"] == pytest.approx((0.21 / 0.96) / (0.05 / 0.19))
    assert other["collapse"] == stale  # a taste it does not know: left as it was
    # against the base's shares on many samples (7: 0.3 of the liked), for sessions sampled as the reference was
    spec = {"env": "PAPA-FashionMNIST-v0", "model": "", "agent": "epapa", "overrides": {}}
    refs = {("PAPA-FashionMNIST-v0", ""): {"shares": {7: 0.06, 9: 0.14, 0: 0.8}, "confidence": 0.85}}
    plain, faithful = ({**old, "spec": {**spec, **change}} for change in ({}, {"agent": "faithful"}))
    harness.rescore([plain, faithful], {"fashion-7-9": (7, 9)}, refs, "2000 base samples")
    assert plain["metrics"]["relative_balance"] == pytest.approx((0.21 / 0.96) / 0.3)
    assert plain["metrics"]["balance_reference"] == "2000 base samples"
    assert faithful["metrics"]["balance_reference"] == "first evaluation"  # 1000-step DDPM: not the reference's sampler
    # the confidence goal read against the base's on many samples, where the session sampled as the reference did
    assert plain["metrics"]["base_confidence"] == 0.85 and faithful["metrics"]["base_confidence"] is None
    report = harness.suite_tables([{**r, "group": "fashion", "agent": r["spec"]["agent"]} for r in (plain, faithful)])
    assert report.count("| 0.850 -> 0.800 |") == 3 and report.count("| 0.800 -> 0.800 |") == 3  # group, all, taste
    assert "base's is read on the base reference's samples for 1 of 2 sessions" in report


def test_rescored_like_rate_falls_are_read_against_each_sessions_own_evaluation_size() -> None:
    records = [{"replies": n, "eval/like_rate_judge": like, "eval/judge_confidence": 0.8, "eval/max_class_share": 0.3,
                "eval/class_share/3": like} for n, like in ((0, 0.1), (150, 0.93), (300, 0.86))]  # fmt: skip
    small, large = ({"agent": "epapa", "seed": 0, "taste": "mnist-3", "records": records, "collapse": [],
                     "spec": {"eval_samples": n}} for n in (100, 2000))  # fmt: skip
    harness.rescore([small, large], {"mnist-3": (3,)})
    assert small["collapse"] == []  # 0.07 on 100 images: within their noise
    assert large["collapse"] == ["300 replies: eval/like_rate_judge fell to 0.860 from 0.930"]


def test_a_reused_sessions_missing_base_model_keeps_the_first_evaluation_as_its_reference(tmp_path, capsys) -> None:
    spec = {"env": "PAPA-MNIST-v0", "model": str(tmp_path / "gone.safetensors"), "agent": "epapa", "overrides": {}}
    assert harness.base_references([{"spec": spec}], 10, tmp_path) == {}
    assert "first evaluation (the file is missing)" in capsys.readouterr().out
    assert not (tmp_path / "base_reference.json").exists()


@pytest.mark.slow
def test_reuse_adds_an_agent_to_an_earlier_comparison_without_rerunning_it(tmp_path, tiny_model_file) -> None:
    args = ["--quick", "--seeds", "2", "--budget", "10", "--eval-every", "10", "--eval-samples", "10"]
    args += ["--model", tiny_model_file]
    earlier = harness.main([*args, "--agents", "epapa,base", "--out", str(tmp_path / "a")])
    reuse = str(tmp_path / "a" / "PAPA-MNIST-v0-quick" / "results.jsonl")
    rows = harness.main([*args, "--agents", "ddpo", "--reuse", reuse, "--out", str(tmp_path / "b")])
    assert [r["agent"] for r in rows] == ["epapa", "ddpo", "base"]  # ALL's order, the new one in place
    assert rows[0] == earlier[0] and rows[2] == earlier[1]  # read back, figure for figure
    root = tmp_path / "b" / "PAPA-MNIST-v0-quick"
    assert not (root / "epapa-s0").exists()  # not rerun: no reply spent on it
    assert len((root / "results.jsonl").read_text().splitlines()) == 6
    welch = (root / "welch.md").read_text()
    assert "| epapa | ddpo |" in welch and "| epapa | base |" in welch
    with pytest.raises(SystemExit, match=r"evaluated at replies \[0, 10\].*evaluates at \[0, 5, 10\]"):
        harness.main([*args, "--eval-every", "5", "--agents", "base", "--reuse", reuse, "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="results.jsonl"):
        harness.main([*args, "--agents", "base", "--reuse", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path)])
    garbled = tmp_path / "garbled.jsonl"
    garbled.write_text(open(reuse).read().splitlines()[0] + "\n{not json\n")
    with pytest.raises(SystemExit, match="garbled.jsonl:2: not a session line"):
        harness.main([*args, "--agents", "base", "--reuse", str(garbled), "--out", str(tmp_path / "c")])


@pytest.mark.slow
def test_the_suite_quick_mode_runs_end_to_end_and_reports_per_group(tmp_path, tiny_model_file) -> None:
    """The suite's quick mode (on the tiny model): three tastes, one of them noisy."""
    args = ["--suite", "tuning", "--quick", "--agents", "epapa", "--budget", "10", "--eval-samples", "20"]
    args += ["--model", tiny_model_file]
    harness.main([*args, "--no-grid", "--out", str(tmp_path)])
    root = tmp_path / "suite-tuning-quick"
    report = (root / "table.md").read_text()
    assert "| mnist |" in report and "| style |" in report and "| noisy |" in report and "| all |" in report
    results = [json.loads(line) for line in (root / "results.jsonl").read_text().splitlines()]
    assert len({r["taste"] for r in results}) == 3 and (root / "like_rate_groups.png").exists()
    style = next(r for r in results if r["group"] == "style")
    assert style["metrics"]["metric"] == "like_rate_oracle" and style["metrics"]["relative_balance"] is None
    # the balance's reference: the tiny base model's class shares on 100 samples (--quick), cached once per env
    two = next(r for r in results if r["taste"] == "mnist-2-3+mistakes0.15")  # the one taste with a balance
    assert two["metrics"]["balance_reference"] == "100 base samples" and "100 base samples (1 sessions)" in report
    assert all("balance_reference" not in r["metrics"] for r in results if r is not two)
    cached = json.loads((root / "base_reference.json").read_text())
    assert sorted(k.split("|")[0] for k in cached) == ["PAPA-MNIST-Style-v0", "PAPA-MNIST-v0"]  # every env's
    assert all(sum(shares.values()) == pytest.approx(1.0) for shares in cached.values())
    confidence = json.loads((root / "base_confidence.json").read_text())  # the same samples' mean confidence
    assert confidence.keys() == cached.keys() and all(0.1 <= c <= 1 for c in confidence.values())
    assert two["metrics"]["base_confidence"] == next(c for k, c in confidence.items() if k.startswith("PAPA-MNIST-v0|"))


def test_a_finished_session_with_other_settings_is_refused(tmp_path) -> None:
    spec = SessionSpec("base", seed=0, budget=10, eval_samples=10)
    folder = spec.folder(tmp_path)
    folder.mkdir(parents=True)
    other = {**spec.__dict__, "budget": 20}
    (folder / "result.json").write_text(json.dumps({"spec": other}))
    with pytest.raises(ValueError, match="other settings"):
        harness.run_one(spec, tmp_path)


def test_overrides_are_checked_against_the_agents_config() -> None:
    from papa_env.agents.papa import PRESETS

    assert harness.apply_overrides(PRESETS["epapa"], {"lr": 2e-4}).lr == 2e-4
    with pytest.raises(ValueError, match="no field.*learning_rate"):
        harness.apply_overrides(PRESETS["epapa"], {"learning_rate": 1})
    assert SessionSpec("epapa", overrides={"lr": 2e-4, "k": 200}).label == "epapa+k=200+lr=0.0002"


def test_epapa_with_a_pairwise_user_selects_its_pairs_and_an_override_restores_the_drawn_ones(tiny_model_file) -> None:
    pairwise = dict(env_kwargs={"mode": "pairwise"}, model=tiny_model_file, budget=20)
    spec = SessionSpec("epapa", **pairwise)
    cfg = harness.make_agent(spec, harness.make_env(spec)).cfg  # 2K = 20 queries from a pool of 40, half the base's
    assert (cfg.queries_per_step, cfg.pool_size, cfg.base_queries, cfg.selector, cfg.liked_share) == (
        20, 40, 20, "liked", 0.5)  # fmt: skip
    assert cfg.paired_replies
    drawn = SessionSpec("epapa", overrides={"selector": "random", "pool_size": None, "base_queries": 5}, **pairwise)
    cfg = harness.make_agent(drawn, harness.make_env(drawn)).cfg
    assert (cfg.pool_size, cfg.selector, cfg.base_queries) == (None, "random", 5)
    binary = SessionSpec("epapa", model=tiny_model_file, budget=20)  # a like / dislike user: unchanged
    cfg = harness.make_agent(binary, harness.make_env(binary)).cfg
    assert (cfg.queries_per_step, cfg.pool_size, cfg.selector) == (10, None, "random")


def _fake_results(ends: dict[str, list[float]]) -> list[dict]:
    """Harness results whose last judge like-rates are ``ends[agent]`` (one per seed)."""
    return [
        {"agent": name, "seed": s, "spec": {"env": "PAPA-MNIST-v0"}, "collapse": [],
         "records": [{"replies": 0, "eval/like_rate_judge": 0.4, "eval/judge_confidence": 0.9},
                     {"replies": 300, "eval/like_rate_judge": v, "eval/judge_confidence": 0.9}]}
        for name, vals in ends.items()
        for s, v in enumerate(vals)
    ]  # fmt: skip


def test_welch_tests_match_a_hand_computed_welch_test() -> None:
    from scipy import stats

    epapa, ddpo = [0.9, 0.95, 1.0], [0.5, 0.7]
    rows = harness.welch_tests(_fake_results({"epapa": epapa, "ddpo": ddpo, "base": [0.38, 0.38]}))
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
    lone = harness.welch_tests(_fake_results({"papa": [0.9], "ddpo": ddpo}))
    assert np.isnan(lone[0]["p"]) and lone[0]["diff"] == pytest.approx(0.3)
    assert harness.welch_tests(_fake_results({"ddpo": ddpo, "base": [0.38, 0.38]})) == []
    both_flat = harness.welch_tests(_fake_results({"papa": [0.9, 0.9], "base": [0.38, 0.38]}))
    assert np.isnan(both_flat[0]["p"]) and both_flat[0]["diff"] == pytest.approx(0.52)


def test_table_matches_evaluations_by_reply_count_not_position() -> None:
    results = _fake_results({"epapa": [0.9, 0.8]})
    results[1]["records"].insert(1, {"replies": 150, "eval/like_rate_judge": 0.6, "eval/judge_confidence": 0.9})
    results[0]["records"][-1]["eval/fd_to_base"] = 3.0
    results[1]["records"][-1]["eval/fd_to_base"] = 6.0
    row = harness.table(results)[0]
    assert row["fd_to_base"] == 4.5
    assert harness.table(_fake_results({"base": [0.4]}))[0]["fd_to_base"] is None  # a reference: no own start
    assert (row["like@0"], row["like@0_ci95"]) == (0.4, 0.0)
    assert (row["like@150"], row["like@150_ci95"], row["like@150_n"]) == (0.6, None, 1)
    assert row["like@300"] == pytest.approx(0.85) and row["like@300_ci95"] > 0
    md = harness.table_markdown([row])
    assert "0.600 (n = 1)" in md and "0.850 +- " in md
    assert (row["steps/interaction"], row["rows/interaction"]) == (None, None)  # nothing logged: "-"


def test_tables_report_the_updates_compute_per_interaction_weighted_by_the_replies_between_evaluations() -> None:
    """Each record holds its window's mean (session.py); a session's figure weighs the windows by their replies."""
    results = _fake_results({"ddpo": [0.5, 0.6]})
    for r, counts in zip(results, ([(4, 80), (4, 80)], [(2, 40), (8, 160)])):
        r["records"].insert(1, {"replies": 100, "eval/like_rate_judge": 0.4, "eval/judge_confidence": 0.9})
        for rec, (steps, rows) in zip(r["records"][1:], counts):
            rec["compute/updates"], rec["compute/rows"] = steps, rows
    assert [rec["replies"] for rec in results[1]["records"]] == [0, 100, 300]
    assert evaluation.per_interaction(results[1]["records"], "compute/updates") == pytest.approx(
        (2 * 100 + 8 * 200) / 300
    )
    assert evaluation.per_interaction(results[1]["records"], "compute/missing") is None
    row = harness.table(results)[0]
    assert row["steps/interaction"] == pytest.approx((4 + 6) / 2) and row["rows/interaction"] == pytest.approx(100)
    assert "| 5.0 | 100 |" in harness.table_markdown([row])
    suite = [{**r, "taste": "mnist-3", "group": "mnist", "collapse": [],
              "metrics": {"like_rate": {"300": 0.5}, "replies_to_target": None, "shown_like_rate": 0.4,
                          "judge_confidence": [0.9, 0.9], "relative_balance": None}} for r in results]  # fmt: skip
    assert "5.0 optimizer steps, 100 (image, timestep) rows" in harness.suite_tables(suite)


def test_suite_report_aggregates_groups_and_finds_the_worst_taste() -> None:
    def result(taste, group, like300, reach, seed=0, balance=None):
        return {"agent": "epapa", "taste": taste, "group": group, "seed": seed, "collapse": [],
                "metrics": {"like_rate": {"0": 0.3, "50": 0.5, "100": 0.8, "200": 0.9, "300": like300},
                            "replies_to_target": reach, "shown_like_rate": 0.7, "judge_confidence": [0.9, 0.92],
                            "relative_balance": balance}}  # fmt: skip

    results = [result("a", "mnist", 0.95, 200, balance=0.8), result("b", "mnist", 0.85, None, balance=0.4),
               result("c", "style", 0.9, 300)]  # fmt: skip
    report = harness.suite_tables(results)
    assert "| mnist | 2 | 2 | 0.500 | 0.800 | 0.900 | 0.900 | 0.850 (b) | inf |" in report
    assert "| 0.900 -> 0.920 | 0.600 (0.400) | 0 / 2 |" in report  # balance: the mean, the worst session's
    assert "| 0.900 -> 0.920 | - | 0 / 1 |" in report  # the style group has none
    assert "| all | 3 | 3 |" in report and "0.850 (b)" in report.split("| all |")[1]


@pytest.mark.slow
def test_ray_on_a_local_cluster_writes_the_same_results_as_the_local_pool(tmp_path, tiny_model_file) -> None:
    pytest.importorskip("ray")
    args = ["--quick", "--agents", "base,epapa", "--seeds", "1", "--budget", "10", "--eval-every", "10"]
    args += ["--eval-samples", "10", "--no-grid", "--model", tiny_model_file]
    local = harness.main([*args, "--workers", "2", "--out", str(tmp_path / "local")])
    on_ray = harness.main([*args, "--workers", "2", "--backend", "ray", "--out", str(tmp_path / "ray")])
    assert [r["agent"] for r in on_ray] == [r["agent"] for r in local]
    for a, b in zip(local, on_ray):  # the same sessions: like-rates equal up to thread-count float noise
        assert a["like@0"] == b["like@0"] and abs(a["like@10"] - b["like@10"]) <= 0.1
    root = tmp_path / "ray" / "PAPA-MNIST-v0-quick"
    assert (root / "results.jsonl").exists() and (root / "epapa-s0" / "replies.jsonl").exists()
    harness.main([*args, "--workers", "2", "--backend", "ray", "--out", str(tmp_path / "ray")])  # read back: no rerun


def test_threads_reach_every_session(monkeypatch, tmp_path) -> None:
    seen = []
    monkeypatch.setattr(harness, "run_one", lambda spec, root, threads=None: seen.append(threads) or {})
    specs = [SessionSpec("base", seed=s) for s in range(2)]
    harness.run_many(specs, tmp_path, workers=1, threads=1)
    harness.run_many(specs, tmp_path, workers=1)  # one local worker: torch's own default (OMP_NUM_THREADS)
    assert seen == [1, 1, None, None]
    with pytest.raises(SystemExit):
        harness.main(["--threads", "x"])


def test_a_base_model_that_is_not_a_unet_is_refused_before_any_session(tmp_path) -> None:
    from papa_env.models import pretrained_path

    (tmp_path / "garbage.safetensors").write_bytes(b"not safetensors")
    for path, match in (
        (pretrained_path("mnist-judge"), "holds a JudgeCNN"),
        (tmp_path / "garbage.safetensors", "expected a UNet"),
    ):
        with pytest.raises(SystemExit, match=match):
            harness.main(["--quick", "--agents", "base", "--model", str(path), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()  # nothing ran
