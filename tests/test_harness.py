"""The comparison harness's quick mode produces its table and plot files, for every kind of agent."""

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
    rows = run.main([*args, "--agents", "epapa-mixed", "--reuse", reuse, "--out", str(tmp_path / "b")])
    assert [r["agent"] for r in rows] == ["epapa", "epapa-mixed", "base"]  # ALL's order, the new one in place
    assert rows[0] == earlier[0] and rows[2] == earlier[1]  # read back, figure for figure
    root = tmp_path / "b" / "PAPA-MNIST-v0-quick"
    assert not (root / "epapa-s0").exists()  # not rerun: no reply spent on it
    assert json.loads((root / "epapa-mixed-s1" / "config.json").read_text())["agent_config"]["base_queries"] == 5
    assert len((root / "results.jsonl").read_text().splitlines()) == 6
    assert (root / "final_samples.png").exists()  # epapa-mixed and base: the rows it can draw
    welch = (root / "welch.md").read_text()
    assert "| epapa-mixed | epapa |" in welch and "| epapa | epapa-mixed |" in welch
    with pytest.raises(SystemExit, match=r"evaluated at replies \[0, 10\].*evaluates at \[0, 5, 10\]"):
        run.main([*args, "--eval-every", "5", "--agents", "base", "--reuse", reuse, "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="results.jsonl"):
        run.main([*args, "--agents", "base", "--reuse", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "c")])
    garbled = tmp_path / "garbled.jsonl"
    garbled.write_text(reuse_text := open(reuse).read().splitlines()[0] + "\n{not json\n")
    with pytest.raises(SystemExit, match="garbled.jsonl:2: not a session line"):
        run.main([*args, "--agents", "base", "--reuse", str(garbled), "--out", str(tmp_path / "c")])
    assert open(reuse).read().startswith(reuse_text.splitlines()[0])  # the earlier file is only read


@pytest.mark.slow
def test_papa_goals_script_runs_and_summarizes(tmp_path) -> None:
    from benchmarks import papa_goals

    args = ["--presets", "epapa", "--seeds", "1", "--budget", "20", "--eval-every", "10", "--eval-samples", "20"]
    summary = papa_goals.main([*args, "--set", "model_coef=0.5", "--out", str(tmp_path)])
    assert list(summary) == ["epapa+model_coef=0.5"]  # a variant is labelled, never mistaken for the preset
    s = summary["epapa+model_coef=0.5"]
    assert s["replies"] == [0, 10, 20] and len(s["like_rate_mean"]) == 3
    assert 0 <= s["min_liked_share_end"] <= 1 and s["seconds_per_interaction"] > 0
    root = tmp_path / "PAPA-MNIST-v0"
    agent_config = json.loads((root / "epapa+model_coef=0.5-s0" / "config.json").read_text())["agent_config"]
    assert agent_config["model_coef"] == 0.5 and agent_config["k"] == 300  # the override, on top of the preset
    assert not (root / "epapa-s0").exists()
    assert (root / "summary.md").read_text().startswith("| preset") and (root / "like_rate.png").exists()


@pytest.mark.slow
def test_papa_sweep_applies_overrides_and_rejects_unknown_fields(tmp_path) -> None:
    from benchmarks import papa_sweep

    log = tmp_path / "sweep.jsonl"
    args = ["--preset", "epapa", "--set", "k=500", "--set", "dislike_margin=None", "--budget", "10"]
    result = papa_sweep.main([*args, "--eval-every", "10", "--eval-samples", "10", "--log", str(log)])
    assert result["overrides"] == {"k": 500, "dislike_margin": None}
    assert result["replies"] == [0, 10] and len(result["like_rate"]) == 2
    shares = result["liked_shares_end"]  # the user's liked digits, each with its share of the last evaluation
    assert sorted(shares) == ["1", "4", "7", "9"] and min(shares.values()) == result["min_liked_share_end"]
    assert json.loads(log.read_text())["seed"] == 0
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        papa_sweep.main(["--set", "learning_rate=1"])
    with pytest.raises(SystemExit, match="model_coef expects a value of type float"):  # before any session
        papa_sweep.main(["--set", "model_coef=abc"])


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


@pytest.mark.parametrize("name", ["epapa", "ddpo"])
def test_remeasure_rebuilds_a_finished_session_exactly(tmp_path, name) -> None:
    import gymnasium as gym

    from benchmarks import remeasure
    from papa_env.models import load_pretrained
    from papa_env.session import Evaluator, run_session

    env = gym.make("PAPA-MNIST-v0", feedback_budget=10)
    agent = run.make_agent(name, load_pretrained("mnist-ddpm"), env, seed=3, queries_per_step=10)
    run_session(agent, env, tmp_path / name, eval_every=0, progress=False)
    expected, _ = Evaluator(env, n=30, seed=7)(agent)  # the trained agent, in memory
    got = remeasure.remeasure(tmp_path / name, samples=30, noise_seed=7)  # rebuilt from its folder
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    assert got["liked_classes"] == [1, 4, 7, 9] and got["samples"] == 30
    assert got["min_liked_share"] == min(expected[f"eval/class_share/{c}"] for c in (1, 4, 7, 9))
    if name == "epapa":  # the rebuilt agent is the trained one, not the base model: its samples differ
        base, _ = Evaluator(env, n=30, seed=7)(run.make_agent("base", load_pretrained("mnist-ddpm"), env, 0, 10))
        assert any(base[k] != pytest.approx(expected[k], abs=1e-6) for k in expected)


def test_remeasure_rejects_folders_it_cannot_rebuild(tmp_path) -> None:
    from benchmarks import remeasure

    with pytest.raises(FileNotFoundError, match="config.json and model.safetensors"):
        remeasure.remeasure(tmp_path, samples=10, noise_seed=0)
    with pytest.raises(SystemExit):  # the CLI checks every folder before measuring any
        remeasure.main([str(tmp_path), str(tmp_path / "missing")])
    (tmp_path / "config.json").write_text(json.dumps({"agent": "sb3-ppo", "env": "PAPA-MNIST-v0"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="cannot rebuild agent 'sb3-ppo'"):
        remeasure.remeasure(tmp_path, samples=10, noise_seed=0)
    with pytest.raises(SystemExit):
        remeasure.main([str(tmp_path), "--samples", "0"])


def test_importance_weights_are_one_when_the_tuned_model_is_the_base(tmp_path) -> None:
    from benchmarks import importance_weights
    from papa_env.models import load_pretrained, save_model

    save_model(load_pretrained("mnist-ddpm"), tmp_path / "model.safetensors")
    config = {"agent": "epapa", "agent_config": {"k": 300, "num_sampling_steps": 5}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    out = importance_weights.main([str(tmp_path), "--samples", "6", "--reference-timesteps", "3"])
    assert sum(c["count"] for c in out["classes"].values()) == 6
    for c in out["classes"].values():
        assert c["elbo"] == pytest.approx(0.0, abs=1e-3) and c["path"] == pytest.approx(0.0, abs=1e-3)
    assert out["cheap_noise_std"] == pytest.approx(0.0, abs=1e-3)
    assert out["trajectory_ess_fraction"] == pytest.approx(1.0)
    with pytest.raises(SystemExit):
        importance_weights.main([str(tmp_path / "missing")])
    config["agent"] = "ddpo"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit):
        importance_weights.main([str(tmp_path)])


def test_speed_benchmark_interleaves_the_presets_and_reports_their_ratio(tmp_path) -> None:
    from benchmarks import speed

    out = tmp_path / "speed.json"
    argv = ["--preset", "epapa-mixed-avg,epapa", "--reference", "authors-mc", "--interactions", "3"]
    argv += ["--reference-interactions", "2", "--eval-samples", "4", "--sequential-too", "--out", str(out)]
    result = speed.main(argv)
    assert json.loads(out.read_text())["ratio"] == pytest.approx(result["ratio"])
    per = result["seconds_per_interaction"]
    sequential = "epapa-mixed-avg (models one after the other)"
    assert set(per) == {"authors-mc", "epapa-mixed-avg", "epapa", sequential}
    assert result["ratio"] == pytest.approx(per["authors-mc"] / per["epapa-mixed-avg"])  # the first preset's
    assert result["ratios"]["epapa"] == pytest.approx(per["authors-mc"] / per["epapa"])
    assert [b["interactions"] for b in result["blocks"]] == [2, 1] and len(result["block_ratios"]) == 2
    like = result["like_rate"]
    assert like["epapa-mixed-avg"]["replies"] == like["epapa"]["replies"] == 30 and like["authors-mc"]["replies"] == 20
    for bad in (
        ["--preset", "nope"],
        ["--preset", "epapa,nope"],
        ["--interactions", "1", "--reference-interactions", "2"],
    ):
        with pytest.raises(SystemExit):
            speed.main([*bad, "--out", str(out)])
