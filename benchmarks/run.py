"""Compare agents under one feedback budget: the same env, evaluation schedule and judge for all.

    python -m benchmarks.run --env PAPA-MNIST-v0 \\
        --agents papa,epapa,ddpo,d3po,sb3-ppo,sb3-sac,reward-model,base,oracle-best-of-n --seeds 5 --budget 300
    python -m benchmarks.run --quick          # 1 seed, 20 replies, small evaluations: a smoke test in minutes
    python -m benchmarks.run --env PAPA-MNIST-v0 --mistake-rate 0.1 ...   # a user who errs 10% of the time
    python -m benchmarks.run --agents epapa-mixed \\
        --reuse benchmarks/results/compare-PAPA-MNIST-v0/results.jsonl   # add an agent to an earlier comparison

Every (agent, seed) is a session in ``<out>/<tag>/<agent>-s<seed>``: a finished one is read back from its
``result.json`` when rerun, an unfinished learner resumes, an unfinished SB3 run starts over. ``--workers 2``
runs two sessions side by side (one process and one CPU thread each on 2 cores).
Writes under ``<out>/<tag>``: ``results.jsonl`` (every evaluation record), ``table.csv`` and ``table.md``
(like-rate at each evaluation, mean and 95% CI over seeds; liked-class shares, judge confidence and seconds per
interaction at the end), ``welch.md`` (PAPA and EPAPA vs every other agent at the end: Welch's t-test over seeds),
``like_rate.png`` (mean +- 95% CI bands, Student's t as in the table) and ``final_samples.png`` (a row per agent).
``--reuse FILE`` reads the sessions of an earlier comparison's ``results.jsonl`` (same env, budget and
evaluations: its reply schedule is checked) instead of running them, and adds its agents to this comparison; the
samples grid then shows only the agents whose seed-0 session folder is here (and the references).
``papa`` and ``epapa`` are the PAPA presets of those names.
``oracle-best-of-n`` reads the user's true taste: a ceiling, not a legal agent. The references (``base``, the ceiling)
do not learn, so they ask the user nothing: one evaluation, reported at the start and at the end of the budget.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import papa_env  # noqa: F401
from papa_env.checkpoint import load_state
from papa_env.evaluation import Evaluator, collapse_report
from papa_env.models import load_pretrained
from papa_env.runfolder import CHECKPOINT
from papa_env.session import run_session

PAPA_AGENTS = ("papa", "epapa")  # the PAPA presets of those names
LEARNERS = (*PAPA_AGENTS, "ddpo", "d3po", "reward-model")
SB3 = ("sb3-ppo", "sb3-sac")
REFERENCES = ("base", "oracle-best-of-n")
ALL = LEARNERS + SB3 + REFERENCES
PAIRWISE = ("d3po",)


def make_agent(name: str, unet: torch.nn.Module, env, seed: int, queries_per_step: int):
    """The agent ``name`` around ``unet`` with its default (preset) config and ``seed``."""
    from papa_env.agents.d3po import D3PO, D3POConfig
    from papa_env.agents.ddpo import DDPO, DDPOConfig
    from papa_env.agents.papa import PAPA, PRESETS
    from papa_env.agents.references import BaseModel, OracleBestOfN
    from papa_env.agents.reward_model import RewardModelConfig, RewardModelDDPO

    k = queries_per_step
    if name in PAPA_AGENTS:
        return PAPA(unet, replace(PRESETS[name], seed=seed, queries_per_step=k))
    if name == "ddpo":
        return DDPO(unet, DDPOConfig(queries_per_step=k))
    if name == "d3po":
        return D3PO(unet, D3POConfig(queries_per_step=k))
    if name == "reward-model":
        return RewardModelDDPO(unet, RewardModelConfig(seed=seed, queries_per_step=k))
    if name == "base":
        return BaseModel(unet, queries_per_step=k)
    if name == "oracle-best-of-n":
        return OracleBestOfN(unet, env, queries_per_step=k)
    raise ValueError(f"unknown agent {name!r}; expected one of {ALL}")


def run_one(a: argparse.Namespace, name: str, seed: int, threads: int | None = None) -> dict:
    """One (agent, seed) session under ``<out>/<tag>/<agent>-s<seed>``; its result is cached in ``result.json``.

    A finished session is read back, not rerun. An unfinished learner session resumes from its folder (no reply
    lost); an unfinished SB3 session starts over in a clean folder (SB3's ``learn`` keeps its replay buffer /
    rollouts in memory, so a half-done one cannot be resumed faithfully).
    """
    if threads:
        torch.set_num_threads(threads)
    run_dir = Path(a.out) / a.tag / f"{name}-s{seed}"
    done = run_dir / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    env_kwargs = {"mistake_rate": a.mistake_rate} if a.mistake_rate else {}
    mode = "pairwise" if name in PAIRWISE else "binary"
    env = gym.make(a.env, feedback_budget=a.budget, mode=mode, **env_kwargs)
    evaluator = Evaluator(env, n=a.eval_samples)
    t0 = time.perf_counter()
    if name in SB3:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
        env.reset(seed=seed)
        from papa_env.agents.sb3 import run_sb3

        records = run_sb3(name, env, evaluator, seed, a.eval_every, run_dir)
    else:
        agent = make_agent(name, load_pretrained(env.unwrapped.base_model), env, seed, env.unwrapped.queries_per_step)
        if name in REFERENCES:
            # The references never learn, so they ask the user nothing: their samples at the end of the budget are
            # their samples at the start (the evaluation's noises are fixed). One evaluation, reported at both ends.
            env.reset(seed=seed)
            metrics, _ = evaluator(agent)
            records = [{"replies": 0, **metrics}, {"replies": a.budget, **metrics}]
        else:
            records = run_session(agent, env, run_dir, eval_every=a.eval_every, evaluator=evaluator, seed=seed)
    result = {
        "agent": name,
        "seed": seed,
        "records": records,
        "wall": time.perf_counter() - t0,
        "collapse": collapse_report(records),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(result))
    print(f"{name} seed {seed}: {result['wall']:.0f} s")
    return result


def load_reused(a: argparse.Namespace) -> dict[tuple[str, int], dict]:
    """Sessions of ``a.reuse`` (an earlier comparison's ``results.jsonl``) with seed < ``a.seeds``, by (agent, seed).

    Each must have been run with this comparison's budget and evaluation schedule (checked on its reply counts);
    that it saw the same env and evaluation samples is the caller's word (the tag of the folder it came from).
    """
    path = Path(a.reuse)
    if not path.is_file():
        raise SystemExit(f"--reuse expects an earlier comparison's results.jsonl; {path} is not a file")
    learner_schedule = list(range(0, a.budget + 1, a.eval_every))
    if learner_schedule[-1] != a.budget:
        learner_schedule.append(a.budget)
    reused = {}
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        try:
            r = json.loads(line)
            r["agent"], r["seed"], r["records"]  # noqa: B018  (a session line has all three)
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SystemExit(f"{path}:{line_no}: not a session line of a results.jsonl ({e!r})") from None
        if r["agent"] not in ALL:
            raise SystemExit(f"{path}:{line_no}: unknown agent {r['agent']!r}; expected from {ALL}")
        schedule = [rec["replies"] for rec in r["records"]]
        expected = [0, a.budget] if r["agent"] in REFERENCES else learner_schedule
        if schedule != expected:
            raise SystemExit(
                f"{path}:{line_no}: {r['agent']} seed {r['seed']} was evaluated at replies {schedule}, this "
                f"comparison (--budget {a.budget}, --eval-every {a.eval_every}) evaluates at {expected}"
            )
        if r["seed"] < a.seeds:
            reused[(r["agent"], r["seed"])] = r
    return reused


def run_all(a: argparse.Namespace) -> list[dict]:
    """Every (agent, seed) session, in ``a.workers`` processes (each with its share of the CPU threads).

    With ``a.reuse``, the sessions found there are read back instead of run, and their agents join the comparison;
    the results then come in ``ALL``'s agent order.
    """
    agents = a.agents.split(",")
    unknown = [x for x in agents if x not in ALL]
    if unknown:
        raise SystemExit(f"unknown agents {unknown}; expected from {ALL}")
    reused = load_reused(a) if getattr(a, "reuse", None) else {}
    if reused:
        agents = sorted(set(agents) | {name for name, _ in reused}, key=ALL.index)
    jobs = [(name, seed) for name in agents for seed in range(a.seeds)]
    todo = [job for job in jobs if job not in reused]
    workers = max(1, int(getattr(a, "workers", 1)))
    if workers == 1:
        done = {job: run_one(a, *job) for job in todo}
    else:
        import multiprocessing as mp
        import os
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {job: pool.submit(run_one, a, *job, threads) for job in todo}
            done = {job: f.result() for job, f in futures.items()}
    return [reused[job] if job in reused else done[job] for job in jobs]  # in job order, whatever order they ran


def _t95(n: int) -> float:
    """Half-width factor of a 95% CI of a mean over ``n`` seeds: Student's t with n - 1 dof (12.7 at n = 2)."""
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1))


def _like_key(runs: list[dict]) -> str:
    """The judge's like-rate where the user's taste is made of classes, else the user's own."""
    return "eval/like_rate_judge" if "eval/like_rate_judge" in runs[0]["records"][0] else "eval/like_rate_oracle"


def _mean_ci(vals: np.ndarray) -> tuple[float, float]:
    """Mean and 95% CI half-width (Student's t) over seeds; half-width 0 for a single seed."""
    half = _t95(len(vals)) * vals.std(ddof=1) / np.sqrt(len(vals)) if len(vals) > 1 else 0.0
    return float(vals.mean()), float(half)


def _curves(runs: list[dict], key: str) -> tuple[list[int], np.ndarray]:
    """The evaluations' reply counts (union over seeds, sorted) and ``key`` at each: (seeds, evaluations), NaN where
    a seed has no evaluation at that count (matched by reply count, never by position)."""
    xs = sorted({rec["replies"] for r in runs for rec in r["records"]})
    y = np.full((len(runs), len(xs)), np.nan)
    for i, r in enumerate(runs):
        for rec in r["records"]:
            y[i, xs.index(rec["replies"])] = rec[key]
    return xs, y


def table(results: list[dict]) -> list[dict]:
    """One row per agent: like-rate mean and 95% CI at each evaluation, and end-of-session figures."""
    rows = []
    for name in dict.fromkeys(r["agent"] for r in results):
        runs = [r for r in results if r["agent"] == name]
        key = _like_key(runs)
        row: dict = {"agent": name, "seeds": len(runs), "metric": key.removeprefix("eval/")}
        xs, y = _curves(runs, key)
        for x, col in zip(xs, y.T):
            vals = col[~np.isnan(col)]
            mean, half = _mean_ci(vals)
            short = f" (n = {len(vals)})" if len(vals) < len(runs) else ""  # a seed without this evaluation
            row[f"like@{x}"] = f"{mean:.3f} +- {half:.3f}{short}"
        ends = [r["records"][-1] for r in runs]
        row["judge_conf"] = f"{np.mean([e['eval/judge_confidence'] for e in ends]):.3f}"
        # how far the samples moved from the agent's own samples before learning (judge features; learners only)
        fds = [e["eval/fd_to_base"] for e in ends if "eval/fd_to_base" in e and name not in REFERENCES]
        row["fd_to_base"] = f"{np.mean(fds):.1f}" if fds else "-"
        shares = [[e.get(f"eval/class_share/{c}", np.nan) for c in range(10)] for e in ends]
        row["class_shares"] = " ".join(f"{s:.2f}" for s in np.mean(shares, 0))
        secs = [e.get("charts/seconds_per_interaction") for e in ends if e.get("charts/seconds_per_interaction")]
        row["s/interaction"] = f"{np.mean(secs):.2f}" if secs else "-"
        row["collapsed_seeds"] = ",".join(str(r["seed"]) for r in runs if r["collapse"]) or "none"
        rows.append(row)
    return rows


def _end_values(results: list[dict], name: str) -> np.ndarray:
    """The judge's (else the user's) like-rate at the last evaluation of each of ``name``'s seeds."""
    runs = [r for r in results if r["agent"] == name]
    return np.array([r["records"][-1][_like_key(runs)] for r in runs], dtype=float)


def welch_tests(results: list[dict], against: tuple[str, ...] = PAPA_AGENTS) -> list[dict]:
    """Each agent of ``against`` vs every other agent at the end of the budget: Welch's two-sided t-test over seeds.

    Rows: ``agent``, ``vs``, the difference of mean like-rates, its 95% CI (Welch-Satterthwaite dof), t and p.
    Both sides need >= 2 seeds; where both have zero spread the test is undefined and t, p and the CI are NaN.
    """
    from scipy import stats

    names = list(dict.fromkeys(r["agent"] for r in results))
    rows = []
    for name in (n for n in against if n in names):
        x = _end_values(results, name)
        for other in (n for n in names if n != name):
            y = _end_values(results, other)
            row = {"agent": name, "vs": other, "diff": float(x.mean() - y.mean())}
            if len(x) < 2 or len(y) < 2:
                row.update(ci_low=np.nan, ci_high=np.nan, t=np.nan, p=np.nan)
            else:
                # Welch: t = diff / se, se^2 = s_x^2/n_x + s_y^2/n_y, Welch-Satterthwaite degrees of freedom
                vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
                if vx + vy > 0:
                    se = float(np.sqrt(vx + vy))
                    dof = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
                    t = row["diff"] / se
                    half = float(stats.t.ppf(0.975, dof)) * se
                    row.update(ci_low=row["diff"] - half, ci_high=row["diff"] + half, t=t)
                    row["p"] = float(2 * stats.t.sf(abs(t), dof))
                else:
                    row.update(ci_low=np.nan, ci_high=np.nan, t=np.nan, p=np.nan)
            rows.append(row)
    return rows


def write_outputs(results: list[dict], root: Path, title: str) -> list[dict]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root.mkdir(parents=True, exist_ok=True)
    with (root / "results.jsonl").open("w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    rows = table(results)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with (root / "table.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    md = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    md += ["| " + " | ".join(str(row.get(k, "")) for k in fields) + " |" for row in rows]
    (root / "table.md").write_text("\n".join(md) + "\n")
    tests = welch_tests(results)
    if tests:
        md = ["| agent | vs | difference @end | 95% CI | t | p (Welch) |", "|---|---|---|---|---|---|"]
        for w in tests:
            ci = "-" if np.isnan(w["p"]) else f"[{w['ci_low']:+.3f}, {w['ci_high']:+.3f}]"
            t, pv = ("-", "-") if np.isnan(w["p"]) else (f"{w['t']:.2f}", f"{w['p']:.2g}")
            md.append(f"| {w['agent']} | {w['vs']} | {w['diff']:+.3f} | {ci} | {t} | {pv} |")
        (root / "welch.md").write_text("\n".join(md) + "\n")
    else:  # no papa / epapa in this comparison: no stale tests from an earlier one
        (root / "welch.md").unlink(missing_ok=True)

    fig, ax = plt.subplots(figsize=(6, 3.8))
    judged = _like_key(results) == "eval/like_rate_judge"
    for name in dict.fromkeys(r["agent"] for r in results):
        runs = [r for r in results if r["agent"] == name]
        x, y = _curves(runs, _like_key(runs))
        m, half = np.array([_mean_ci(col[~np.isnan(col)]) for col in y.T]).T
        ax.plot(x, m, marker="o", ms=3, label=name)
        ax.fill_between(x, m - half, m + half, alpha=0.15)
    ax.set(xlabel="replies", ylim=(0, 1), title=title)
    ax.set(ylabel="like-rate (judge)" if judged else "like-rate (the user's own)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(root / "like_rate.png", dpi=120)
    plt.close(fig)
    return rows


def final_sampler(a: argparse.Namespace, root: Path, name: str):
    """Seed 0's agent ``name`` at the end of its session, as something with ``generate(n, generator)``.

    Learners and references are rebuilt and given their last checkpoint (so EPAPA samples with the base model
    below k, best-of-N filters, ...); SB3 policies are loaded from the ``sb3_model.zip`` their run saved.
    """
    run_dir = root / f"{name}-s0"
    mode = "pairwise" if name in PAIRWISE else "binary"
    env_kwargs = {"mistake_rate": a.mistake_rate} if a.mistake_rate else {}
    env = gym.make(a.env, feedback_budget=a.budget, mode=mode, **env_kwargs)  # the same user as the session's
    if name in SB3:
        from papa_env.agents.sb3 import load_sampler

        return load_sampler(name, env, run_dir)
    agent = make_agent(name, load_pretrained(env.unwrapped.base_model), env, 0, env.unwrapped.queries_per_step)
    if (run_dir / CHECKPOINT).exists():
        agent.load_state_dict(load_state(run_dir / CHECKPOINT)["agent"])
    return agent


def final_grid(a: argparse.Namespace, root: Path, names: list[str]) -> None:
    """``final_samples.png``: a labelled row of 10 final samples per agent (seed 0), each sampled its own way.

    Only agents whose seed-0 session folder is under ``root`` (and the references, which need none) get a row: a
    session read back from ``--reuse`` left no weights here to sample from.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from papa_env.viz import grid_array

    missing = [n for n in names if n not in REFERENCES and not (root / f"{n}-s0" / "result.json").exists()]
    if missing:
        print(f"final_samples.png: no seed-0 session folder here for {missing} (reused), so no row for them")
    names = [n for n in names if n not in missing]
    if not names:
        return
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 0.8 * len(names) + 0.3), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        images = final_sampler(a, root, name).generate(10, torch.Generator().manual_seed(0))
        ax.imshow(grid_array(torch.as_tensor(images[:10]).reshape(-1, 1, 28, 28), nrow=10))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"{a.tag}: samples after {a.budget} replies (seed 0)", fontsize=9)
    fig.tight_layout()
    fig.savefig(root / "final_samples.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="PAPA-MNIST-v0")
    p.add_argument("--agents", default=",".join(ALL), help=f"comma-separated, from {ALL}")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--budget", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-samples", type=int, default=200)
    p.add_argument("--mistake-rate", type=float, default=0.0)
    p.add_argument("--quick", action="store_true", help="1 seed, 20 replies, 50-sample evaluations every 10")
    p.add_argument("--out", default="runs/benchmarks/compare")
    p.add_argument(
        "--reuse",
        metavar="RESULTS_JSONL",
        help="an earlier comparison's results.jsonl (same env, budget, evaluations): its sessions are read back, "
        "not rerun, and its agents join this comparison",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="sessions run side by side, each in its own process (CPU threads split)"
    )
    a = p.parse_args(argv)
    if a.workers < 1:
        p.error(f"--workers must be >= 1, got {a.workers}")
    if a.quick:  # quick values for the flags left at their defaults
        for flag, value in dict(seeds=1, budget=20, eval_every=10, eval_samples=50).items():
            if getattr(a, flag) == p.get_default(flag):
                setattr(a, flag, value)
    a.tag = a.env + (f"-mistakes{a.mistake_rate:g}" if a.mistake_rate else "") + ("-quick" if a.quick else "")
    root = Path(a.out) / a.tag
    results = run_all(a)
    rows = write_outputs(results, root, a.tag)
    final_grid(a, root, list(dict.fromkeys(r["agent"] for r in results)))
    print((root / "table.md").read_text())
    if (root / "welch.md").exists():
        print((root / "welch.md").read_text())
    print(f"wrote {root}/results.jsonl, table.csv, table.md, welch.md, like_rate.png, final_samples.png")
    return rows


if __name__ == "__main__":
    main()
