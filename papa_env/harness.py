"""The benchmark harness: agents compared under one feedback budget, on one user or on the user suite.

    papa bench --env PAPA-MNIST-v0 --agents papa,epapa,ddpo,d3po,reward-model,base --seeds 5 --workers 2
    papa bench --env PAPA-MNIST-v0 --preference "[0, 3]" --mistake-rate 0.1 --agents epapa --seeds 3
    papa bench --suite held-out --agents epapa --seeds 3 --workers 2        # the user suite (papa_env.suite)
    papa bench --agents epapa --override '{"lr": 2e-4}' --suite tuning      # a variant, labelled epapa+lr=2e-4
    papa bench --quick                                                      # a smoke test in minutes

Every session is a :class:`SessionSpec`, run in ``<out>/<tag>/[<taste>/]<agent>[+<variant>]-s<seed>``: a finished
one is read back from its ``result.json`` (never rerun, and refused if it was run with other settings), an
unfinished learner resumes from its run folder, an unfinished SB3 run starts over. ``--workers N`` runs N sessions
side by side, each in its own process with its share of the CPU threads.

Writes under ``<out>/<tag>``: ``results.jsonl`` (every session: its spec, evaluation records and
:func:`papa_env.evaluation.session_metrics`), ``table.csv`` (numeric columns) and ``table.md`` (like-rate at each
evaluation, mean and 95% CI over seeds; class shares, confidence, seconds per interaction at the end),
``welch.md`` (PAPA / EPAPA vs every other agent: Welch's t-test), ``like_rate.png`` and ``final_samples.png``; with
``--suite``, ``table.md`` (per taste group and per taste: like-rate at 50 / 100 / 200 / 300, the worst taste,
replies to 0.9, the liked share of what the user was shown, confidence, relative balance, collapse flags) and
``like_rate_groups.png``. ``oracle-best-of-n`` reads the user's true taste: a ceiling, not a legal agent; the
references (``base``, the ceiling) ask the user nothing: one evaluation, reported at both ends of the budget.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import time
from collections import Counter
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PAPA_AGENTS = ("papa", "epapa", "authors-mc", "faithful", "faithful-epapa")  # PAPA presets by name
LEARNERS = (*PAPA_AGENTS, "ddpo", "d3po", "reward-model")
SB3 = ("sb3-ppo", "sb3-sac")
REFERENCES = ("base", "oracle-best-of-n")
ALL = LEARNERS + SB3 + REFERENCES
PAIRWISE_ONLY = ("d3po",)
"""Agents that need which-of-two replies: on a like / dislike user they ask its pairwise version."""


@dataclass
class SessionSpec:
    """One session of a comparison: which agent, which user, which seed, how it is evaluated."""

    agent: str
    env: str = "PAPA-MNIST-v0"
    seed: int = 0
    budget: int = 300
    eval_every: int = 50
    eval_samples: int = 200
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    taste: str = ""
    group: str = ""
    model: str = ""
    """A base model file (``papa pretrain``'s safetensors) instead of the env's shipped one; ``""``: the shipped one."""

    @property
    def label(self) -> str:
        """The agent, and its config overrides if any: ``epapa+lr=0.0002``."""
        return self.agent + "".join(f"+{k}={v}" for k, v in sorted(self.overrides.items()))

    def folder(self, root: Path) -> Path:
        return root / (self.taste or ".") / f"{self.label}-s{self.seed}"

    def mode(self) -> str:
        return "pairwise" if self.agent in PAIRWISE_ONLY else self.env_kwargs.get("mode", "binary")


def apply_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    """``config`` (a dataclass) with ``overrides``; ValueError naming the fields it has for an unknown one."""
    names = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"{type(config).__name__} has no field {unknown}; its fields: {names}")
    return dataclasses.replace(config, **overrides)


def make_agent(spec: SessionSpec, env) -> Any:
    """The agent ``spec.agent`` around the env's base model, with its (preset) config, seed and overrides."""
    from papa_env.agents.d3po import D3PO, D3POConfig
    from papa_env.agents.ddpo import DDPO, DDPOConfig
    from papa_env.agents.pairwise import Pairwise, select_pairs
    from papa_env.agents.papa import PAPA, PRESETS
    from papa_env.agents.references import BaseModel, OracleBestOfN
    from papa_env.agents.reward_model import RewardModelConfig, RewardModelDDPO

    name, seed = spec.agent, spec.seed
    unet = base_unet(spec, env)
    pairs = env.unwrapped.mode == "pairwise" and name not in PAIRWISE_ONLY
    k = env.unwrapped.queries_per_step * (2 if pairs else 1)
    if name in PAPA_AGENTS:
        config = dataclasses.replace(PRESETS[name], seed=seed, queries_per_step=k)
        if pairs and name == "epapa":  # its selection for pairs, chosen on the tuning half's pairwise user
            config = select_pairs(config)
        agent = PAPA(unet, apply_overrides(config, spec.overrides))
    elif name == "ddpo":
        agent = DDPO(unet, apply_overrides(DDPOConfig(queries_per_step=k), spec.overrides))
    elif name == "d3po":
        agent = D3PO(unet, apply_overrides(D3POConfig(queries_per_step=k), spec.overrides))
    elif name == "reward-model":
        agent = RewardModelDDPO(unet, apply_overrides(RewardModelConfig(seed=seed, queries_per_step=k), spec.overrides))
    elif name == "base":
        agent = BaseModel(unet, queries_per_step=k)
    elif name == "oracle-best-of-n":
        agent = OracleBestOfN(unet, env, queries_per_step=k)
    else:
        raise ValueError(f"unknown agent {name!r}; expected one of {ALL}")
    return Pairwise(agent) if pairs and name not in REFERENCES else agent


def base_unet(spec: SessionSpec, env):
    """The session's base model: ``spec.model``'s file, or the env's shipped model."""
    from papa_env.models import load_model, load_pretrained

    return load_model(spec.model) if spec.model else load_pretrained(env.unwrapped.base_model)


def _check_base_model(path: str) -> None:
    """SystemExit unless ``path`` holds a UNet saved by ``papa pretrain ddpm`` / ``save_model`` (before any session)."""
    from diffusers import UNet2DModel

    from papa_env.models import load_model

    expected = "expected a UNet saved by `papa pretrain ddpm` (safetensors)"
    try:
        model = load_model(path)
    except (FileNotFoundError, ValueError, OSError) as err:
        raise SystemExit(f"--model {path}: {err}; {expected}") from None
    if not isinstance(model, UNet2DModel):
        raise SystemExit(f"--model {path} holds a {type(model).__name__}; {expected}")


def _same_spec(stored: dict[str, Any] | None, spec: SessionSpec) -> bool:
    """Whether a finished session's stored spec is ``spec`` (results written before a field existed have its
    default)."""
    if stored is None:
        return False
    defaults = {f.name: f.default for f in dataclasses.fields(SessionSpec) if f.default is not MISSING}
    return {**defaults, **stored} == json.loads(json.dumps(asdict(spec)))


def make_env(spec: SessionSpec):
    import gymnasium as gym

    import papa_env  # noqa: F401  (registers the ids)

    kwargs = {k: v for k, v in spec.env_kwargs.items() if k != "mode"}
    return gym.make(spec.env, feedback_budget=spec.budget, mode=spec.mode(), **kwargs)


def run_one(spec: SessionSpec, root: str | os.PathLike, threads: int | None = None) -> dict[str, Any]:
    """One session in ``spec.folder(root)``; its result is cached in ``result.json`` there.

    A finished session is read back, not rerun (ValueError if it ran with another spec). An unfinished learner
    resumes from its run folder (no reply lost); an unfinished SB3 session starts over in a clean folder (SB3's
    ``learn`` keeps its rollouts / replay buffer in memory, so a half-done one cannot be resumed faithfully).
    """
    import torch

    from papa_env.evaluation import Evaluator, liked_classes, session_metrics
    from papa_env.session import run_session

    if threads:
        torch.set_num_threads(threads)
    run_dir = spec.folder(Path(root))
    done = run_dir / "result.json"
    if done.exists():
        result = json.loads(done.read_text())
        if not _same_spec(result.get("spec"), spec):
            raise ValueError(
                f"{run_dir} holds a session run with other settings ({result.get('spec')}); use another --out"
            )
        return result
    env = make_env(spec)
    evaluator = Evaluator(env, n=spec.eval_samples)
    t0 = time.perf_counter()
    if spec.agent in SB3:
        import shutil

        from papa_env.agents.sb3 import run_sb3

        shutil.rmtree(run_dir, ignore_errors=True)
        env.reset(seed=spec.seed)
        records = run_sb3(spec.agent, env, evaluator, spec.seed, spec.eval_every, run_dir, base_unet(spec, env))
    else:
        agent = make_agent(spec, env)
        if spec.agent in REFERENCES:
            # The references never learn, so they ask the user nothing: their samples at the end of the budget are
            # their samples at the start (the evaluation's noises are fixed). One evaluation, reported at both ends.
            env.reset(seed=spec.seed)
            metrics, _ = evaluator(agent)
            records = [{"replies": 0, **metrics}, {"replies": spec.budget, **metrics}]
        else:
            records = run_session(
                agent, env, run_dir, eval_every=spec.eval_every, evaluator=evaluator, seed=spec.seed, progress=False
            )
    metrics = session_metrics(records, liked_classes(env), samples=spec.eval_samples)
    result = {
        "spec": asdict(spec),
        "agent": spec.label,
        "seed": spec.seed,
        "taste": spec.taste,
        "group": spec.group,
        "records": records,
        "wall": time.perf_counter() - t0,
        "metrics": metrics,
        "collapse": metrics["collapse"],
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(result))
    print(f"{spec.taste or spec.env} {spec.label} seed {spec.seed}: {result['wall']:.0f} s", flush=True)
    return result


def run_many(
    specs: list[SessionSpec],
    root: str | os.PathLike,
    workers: int = 1,
    backend: str = "local",
    address: str | None = None,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Every session; results in spec order, each with ``threads`` torch threads (default: this machine's CPUs
    shared among the workers; with one local worker, torch's own default).

    ``backend="local"``: in ``workers`` processes of this machine (each with its share of the CPU threads).
    ``backend="ray"``: each session a Ray task asking for that many CPUs, on a local Ray started here with
    ``workers`` x threads CPUs, or on the cluster at ``address`` (``"auto"``: the one this machine belongs to); a
    task's run folder comes back to ``root`` with its result when the driver does not see the worker's disk.
    """
    given, threads = threads, threads or max(1, (os.cpu_count() or 1) // workers)
    if backend == "ray":
        return _run_on_ray(specs, Path(root), workers, threads, address)
    if backend != "local":
        raise ValueError(f"unknown backend {backend!r}; expected 'local' or 'ray'")
    if workers <= 1:
        return [run_one(s, root, given) for s in specs]
    return in_processes(run_one, [(s, root, threads) for s in specs], workers)


def in_processes(fn, calls: list[tuple], workers: int) -> list[Any]:
    """``[fn(*args) for args in calls]`` in ``workers`` spawned processes, results in order. Stopped (an error, Ctrl-C,
    or SIGTERM to this process: ``kill <pid>``), it ends its workers too instead of leaving them to finish the queued
    calls (a session's folder resumes from its last checkpoint either way)."""
    import multiprocessing as mp
    import signal
    import threading
    from concurrent.futures import ProcessPoolExecutor

    def stop(signum, frame):  # SIGTERM -> SystemExit in the main thread: the except below runs
        raise SystemExit(128 + signum)

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop) if main else None
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
    try:
        futures = [pool.submit(fn, *args) for args in calls]
        results = [f.result() for f in futures]
    except BaseException:
        for process in list((getattr(pool, "_processes", None) or {}).values()):  # the pool's workers, still running
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        if main:  # None: a handler installed outside Python, which cannot be put back from here
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    pool.shutdown()
    return results


def _run_packed(spec: SessionSpec, root: str, threads: int, pack: bool) -> tuple[dict[str, Any], bytes | None]:
    """:func:`run_one`, and (``pack``) the session's folder as a tar.gz, for a driver that cannot see this disk."""
    result = run_one(spec, root, threads)
    if not pack:
        return result, None
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(spec.folder(Path(root)), arcname=".")
    return result, buf.getvalue()


def _run_on_ray(specs, root: Path, workers: int, threads: int, address: str | None) -> list[dict[str, Any]]:
    try:
        import ray
    except ImportError as err:
        raise ImportError("the ray backend needs ray: pip install 'papa-env[ray]'") from err
    started = not ray.is_initialized()
    if started:
        kwargs = {"address": address} if address else {"num_cpus": workers * threads}
        ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
    try:
        task = ray.remote(num_cpus=threads)(_run_packed)
        pack = address is not None  # a cluster's workers may not share this disk
        outputs = ray.get([task.remote(s, str(root.resolve()), threads, pack) for s in specs])
    finally:
        if started:
            ray.shutdown()
    results = []
    for spec, (result, archive) in zip(specs, outputs):
        folder = spec.folder(root)
        if archive is not None and not (folder / "result.json").exists():
            import tarfile

            folder.mkdir(parents=True, exist_ok=True)
            with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
                tar.extractall(folder, filter="data")
        results.append(result)
    return results


# ------------------------------------------------------------------------------------------------
# tables


def _t95(n: int) -> float:
    """Half-width factor of a 95% CI of a mean over ``n`` seeds: Student's t with n - 1 dof (12.7 at n = 2)."""
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1))


def _like_key(runs: list[dict]) -> str:
    """The judge's like-rate where the user's taste is made of classes, else the user's own."""
    return "eval/like_rate_judge" if "eval/like_rate_judge" in runs[0]["records"][0] else "eval/like_rate_oracle"


def mean_ci(vals: np.ndarray) -> tuple[float, float | None]:
    """Mean and 95% CI half-width (Student's t) over seeds; no half-width for a single seed."""
    vals = np.asarray(vals, dtype=float)
    half = _t95(len(vals)) * vals.std(ddof=1) / np.sqrt(len(vals)) if len(vals) > 1 else None
    return float(vals.mean()), (None if half is None else float(half))


def _fmt(mean: float, half: float | None, n: int | None = None) -> str:
    text = f"{mean:.3f}" if half is None else f"{mean:.3f} +- {half:.3f}"
    return text + (f" (n = {n})" if n is not None else "")


def _curves(runs: list[dict], key: str) -> tuple[list[int], np.ndarray]:
    """The evaluations' reply counts (union over seeds, sorted) and ``key`` at each: (seeds, evaluations), NaN where
    a seed has no evaluation at that count (matched by reply count, never by position)."""
    xs = sorted({rec["replies"] for r in runs for rec in r["records"]})
    y = np.full((len(runs), len(xs)), np.nan)
    for i, r in enumerate(runs):
        for rec in r["records"]:
            y[i, xs.index(rec["replies"])] = rec[key]
    return xs, y


def _class_names(runs: list[dict]) -> list[str]:
    from papa_env.data import class_names

    dataset = "fashion-mnist" if "Fashion" in runs[0]["spec"]["env"] else "mnist"
    return list(class_names(dataset))


def table(results: list[dict]) -> list[dict]:
    """One row per agent: like-rate mean and 95% CI at each evaluation (numbers), and end-of-session figures."""
    rows = []
    for name in dict.fromkeys(r["agent"] for r in results):
        runs = [r for r in results if r["agent"] == name]
        key = _like_key(runs)
        row: dict[str, Any] = {"agent": name, "seeds": len(runs), "metric": key.removeprefix("eval/")}
        xs, y = _curves(runs, key)
        for x, col in zip(xs, y.T):
            vals = col[~np.isnan(col)]
            row[f"like@{x}"], row[f"like@{x}_ci95"] = mean_ci(vals)
            row[f"like@{x}_n"] = len(vals)
        ends = [r["records"][-1] for r in runs]
        row["judge_conf"] = float(np.mean([e["eval/judge_confidence"] for e in ends]))
        # how far the samples moved from the agent's own samples before learning (judge features; learners only)
        fds = [e["eval/fd_to_base"] for e in ends if "eval/fd_to_base" in e and name not in REFERENCES]
        row["fd_to_base"] = float(np.mean(fds)) if fds else None
        for c, label in enumerate(_class_names(runs)):
            row[f"share/{label}"] = float(np.nanmean([e.get(f"eval/class_share/{c}", np.nan) for e in ends]))
        secs = [e.get("charts/seconds_per_interaction") for e in ends if e.get("charts/seconds_per_interaction")]
        row["s/interaction"] = float(np.mean(secs)) if secs else None
        row["steps/interaction"], row["rows/interaction"] = _compute(runs)
        shown = [e.get("session/shown_like_rate") for e in ends if e.get("session/shown_like_rate") is not None]
        row["shown_like_rate"] = float(np.mean(shown)) if shown else None
        flagged = [r["seed"] for r in runs if r["collapse"]]
        row["collapsed"] = ("seeds " + ", ".join(map(str, flagged))) if flagged else "none"
        rows.append(row)
    return rows


def table_markdown(rows: list[dict]) -> str:
    """``rows`` of :func:`table` as a markdown table: like-rate mean +- CI, shares labelled, numbers rounded."""
    likes = sorted({int(k[5:]) for row in rows for k in row if k.startswith("like@") and k[5:].isdigit()})
    shares = [k for k in rows[0] if k.startswith("share/")]
    head = [
        "agent",
        "seeds",
        "metric",
        *[f"like@{x}" for x in likes],
        "judge conf.",
        "FD to start",
        "shown liked",
        "s / interaction",
        "optimizer steps / interaction",
        "update rows / interaction",
        "class shares at the end",
        "collapsed",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["agent"], str(row["seeds"]), row["metric"]]
        for x in likes:
            n = row.get(f"like@{x}_n")
            cells.append(
                _fmt(row[f"like@{x}"], row[f"like@{x}_ci95"], n if n != row["seeds"] else None)
                if f"like@{x}" in row
                else "-"
            )
        cells += [
            f"{row['judge_conf']:.3f}",
            "-" if row["fd_to_base"] is None else f"{row['fd_to_base']:.1f}",
            "-" if row["shown_like_rate"] is None else f"{row['shown_like_rate']:.3f}",
            "-" if row["s/interaction"] is None else f"{row['s/interaction']:.2f}",
            "-" if row.get("steps/interaction") is None else f"{row['steps/interaction']:.1f}",
            "-" if row.get("rows/interaction") is None else f"{row['rows/interaction']:.0f}",
            " ".join(f"{k[6:]} {row[k]:.2f}" for k in shares),
            row["collapsed"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
    for name in (n for n in names if n.split("+")[0] in against):
        x = _end_values(results, name)
        for other in (n for n in names if n != name):
            y = _end_values(results, other)
            row = {"agent": name, "vs": other, "diff": float(x.mean() - y.mean())}
            row.update(ci_low=np.nan, ci_high=np.nan, t=np.nan, p=np.nan)
            vx, vy = (x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)) if min(len(x), len(y)) > 1 else (0.0, 0.0)
            if vx + vy > 0:
                # Welch: t = diff / se, se^2 = s_x^2/n_x + s_y^2/n_y, Welch-Satterthwaite degrees of freedom
                se = float(np.sqrt(vx + vy))
                dof = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
                half = float(stats.t.ppf(0.975, dof)) * se
                row.update(ci_low=row["diff"] - half, ci_high=row["diff"] + half, t=row["diff"] / se)
                row["p"] = float(2 * stats.t.sf(abs(row["t"]), dof))
            rows.append(row)
    return rows


def suite_tables(results: list[dict], target: float = 0.9) -> str:
    """The user suite's report (markdown): per agent and taste group, then per taste."""
    refs = Counter(r["metrics"]["balance_reference"] for r in results if "balance_reference" in r.get("metrics", {}))
    out = [
        "Relative balance: the smallest ratio, over a taste's liked classes, of a class's share of the liked samples "
        "to its share of the base model's liked samples, those measured on "
        + ", ".join(f"{ref} ({n} sessions)" for ref, n in refs.items())
        + ".\n"
    ] if refs else []  # fmt: skip
    many = sum(r.get("metrics", {}).get("base_confidence") is not None for r in results)
    if many:
        out.append(f"Judge confidence: the base's is read on the base reference's samples for {many} of "
                   f"{len(results)} sessions, on each session's first evaluation for the rest.\n")  # fmt: skip
    checkpoints = (50, 100, 200, 300)
    for name in dict.fromkeys(r["agent"] for r in results):
        runs = [r for r in results if r["agent"] == name]
        tastes = list(dict.fromkeys(r["taste"] for r in runs))
        per_taste = {t: [r for r in runs if r["taste"] == t] for t in tastes}
        out.append(f"### {name}\n")
        steps, rows = _compute(runs)
        if steps is not None:
            secs = [r["records"][-1].get("charts/seconds_per_interaction") for r in runs if r.get("records")]
            secs = [v for v in secs if v]
            line = f"Update per interaction (mean of its sessions): {steps:.1f} optimizer steps"
            line += "" if rows is None else f", {rows:.0f} (image, timestep) rows backpropagated through the UNet"
            line += f", {np.mean(secs):.2f} s (last evaluation's window, on the machine that ran it)" if secs else ""
            out.append(line + ".\n")
        head = [
            "group",
            "tastes",
            "sessions",
            *[f"like@{c}" for c in checkpoints],
            "worst taste @300",
            f"replies to {target} (median)",
            "shown liked",
            "judge conf. base -> end",
            "relative balance mean (min)",
            "collapse flags",
        ]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        groups = list(dict.fromkeys(r["group"] for r in runs))
        for group in [*groups, "all"]:
            gr = [r for r in runs if group in ("all", r["group"])]
            out.append("| " + " | ".join(_suite_row(group, gr, per_taste, checkpoints)) + " |")
        out.append("")
        head = [
            "taste",
            "seeds",
            *[f"like@{c}" for c in checkpoints],
            f"replies to {target}",
            "shown liked",
            "conf. base -> end",
            "balance mean (min)",
            "flags",
        ]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for t in tastes:
            rs = per_taste[t]
            cells = [t, str(len(rs))]
            for c in checkpoints:
                vals = [r["metrics"]["like_rate"][str(c)] for r in rs if str(c) in r["metrics"]["like_rate"]]
                cells.append(f"{np.mean(vals):.3f}" if vals else "-")
            reach = [r["metrics"]["replies_to_target"] for r in rs]
            cells.append(" / ".join("-" if v is None else str(v) for v in reach))
            cells.append(_mean_of([r["metrics"]["shown_like_rate"] for r in rs]))
            cells.append(_confidence_cell(rs))
            cells.append(_balance_cell(rs))
            cells.append(str(sum(bool(r["collapse"]) for r in rs)))
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def _compute(runs: list[dict]) -> tuple[float | None, float | None]:
    """Optimizer steps and update rows per interaction, means over the sessions that logged them (learners)."""
    from papa_env.evaluation import per_interaction

    out = []
    for key in ("compute/updates", "compute/rows"):
        vals = [v for v in (per_interaction(r.get("records", []), key) for r in runs) if v is not None]
        out.append(float(np.mean(vals)) if vals else None)
    return out[0], out[1]


def _confidence_cell(runs: list[dict]) -> str:
    """The sessions' judge confidence, the base's (on many samples where scored so) -> at the end, means."""
    from papa_env.evaluation import confidence_start

    start = np.mean([confidence_start(r["metrics"]) for r in runs])
    return f"{start:.3f} -> {np.mean([r['metrics']['judge_confidence'][1] for r in runs]):.3f}"


def _balance_cell(runs: list[dict]) -> str:
    """The sessions' relative balance: mean (and the worst session's), "-" for tastes without one."""
    vals = [r["metrics"]["relative_balance"] for r in runs if r["metrics"]["relative_balance"] is not None]
    return f"{np.mean(vals):.3f} ({min(vals):.3f})" if vals else "-"


def _mean_of(values: list, how=np.mean) -> str:
    vals = [v for v in values if v is not None]
    return f"{how(vals):.3f}" if vals else "-"


def _suite_row(group: str, runs: list[dict], per_taste: dict, checkpoints) -> list[str]:
    tastes = list(dict.fromkeys(r["taste"] for r in runs))
    cells = [group, str(len(tastes)), str(len(runs))]
    for c in checkpoints:
        vals = [r["metrics"]["like_rate"].get(str(c)) for r in runs]
        cells.append(_mean_of(vals))
    ends = {
        t: np.mean([r["metrics"]["like_rate"][str(300)] for r in per_taste[t] if "300" in r["metrics"]["like_rate"]])
        for t in tastes
        if any("300" in r["metrics"]["like_rate"] for r in per_taste[t])
    }
    worst = min(ends, key=ends.get) if ends else None
    cells.append(f"{ends[worst]:.3f} ({worst})" if worst else "-")
    reach = [r["metrics"]["replies_to_target"] for r in runs]
    cells.append(f"{np.median([np.inf if v is None else v for v in reach]):g}")
    cells.append(_mean_of([r["metrics"]["shown_like_rate"] for r in runs]))
    cells.append(_confidence_cell(runs))
    cells.append(_balance_cell(runs))
    cells.append(f"{sum(bool(r['collapse']) for r in runs)} / {len(runs)}")
    return cells


def write_outputs(results: list[dict], root: Path, title: str, suite: bool = False) -> list[dict]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root.mkdir(parents=True, exist_ok=True)
    with (root / "results.jsonl").open("w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    if suite:
        (root / "table.md").write_text(f"# {title}\n\n" + suite_tables(results))
        _group_plot(results, root / "like_rate_groups.png", title)
        return []
    rows = table(results)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with (root / "table.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    (root / "table.md").write_text(table_markdown(rows))
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
        m = np.array([np.nanmean(col) for col in y.T])
        half = np.array([mean_ci(col[~np.isnan(col)])[1] or 0.0 for col in y.T])
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


def _group_plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(r["group"] for r in results))
    fig, axes = plt.subplots(1, len(groups), figsize=(3 * len(groups), 3), squeeze=False, sharey=True)
    for ax, group in zip(axes[0], groups):
        for name in dict.fromkeys(r["agent"] for r in results):
            runs = [r for r in results if r["agent"] == name and r["group"] == group]
            if not runs:
                continue
            xs = sorted({int(x) for r in runs for x in r["metrics"]["like_rate"]})
            means = [
                np.mean([r["metrics"]["like_rate"][str(x)] for r in runs if str(x) in r["metrics"]["like_rate"]])
                for x in xs
            ]
            ax.plot(xs, means, marker="o", ms=3, label=name)
        ax.set(title=group, xlabel="replies", ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("like-rate (judge; style: the user's)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def final_sampler(spec: SessionSpec, root: Path):
    """Seed 0's agent at the end of its session, as something with ``generate(n, generator)``: learners and
    references rebuilt with their last checkpoint; SB3 policies from their saved weights."""
    from papa_env.checkpoint import load_state
    from papa_env.runfolder import CHECKPOINT

    env = make_env(spec)
    run_dir = spec.folder(root)
    if spec.agent in SB3:
        from papa_env.agents.sb3 import load_sampler

        return load_sampler(spec.agent, env, run_dir, base_unet(spec, env))
    agent = make_agent(spec, env)
    if (run_dir / CHECKPOINT).exists():
        agent.load_state_dict(load_state(run_dir / CHECKPOINT)["agent"])
    return agent


def final_grid(specs: list[SessionSpec], root: Path, title: str, path: Path) -> None:
    """A labelled row of 10 final samples per spec (seed 0 of each agent / taste), each sampled its own way; only
    specs whose session folder is under ``root`` (sessions read back from ``--reuse`` left no weights here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from papa_env.viz import grid_array

    drawn = [s for s in specs if s.agent in REFERENCES or (s.folder(root) / "result.json").exists()]
    missing = [s.label for s in specs if s not in drawn]
    if missing:
        print(f"{path.name}: no seed-0 session folder here for {missing} (reused), so no row for them")
    if not drawn:
        return
    fig, axes = plt.subplots(len(drawn), 1, figsize=(7, 0.8 * len(drawn) + 0.3), squeeze=False)
    for ax, spec in zip(axes[:, 0], drawn):
        images = final_sampler(spec, root).generate(10, torch.Generator().manual_seed(0))
        ax.imshow(grid_array(torch.as_tensor(images[:10]).reshape(-1, 1, 28, 28), nrow=10))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(spec.taste or spec.label, rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def not_reused(specs: list[SessionSpec], reused: list[dict]) -> list[SessionSpec]:
    """The specs no reused session stands for: none with the same agent label, seed and taste."""
    have = {(r["agent"], r["seed"], r.get("taste") or "") for r in reused}
    return [s for s in specs if (s.label, s.seed, s.taste or "") not in have]


def rescore(
    results: list[dict],
    liked: dict[str, tuple[int, ...] | None],
    references: dict[tuple[str, str], dict] | None = None,
    label: str = "base samples",
) -> None:
    """Suite sessions scored (again) from their evaluations by today's :func:`session_metrics` (a metric redefined
    since they ran applies to them too; a like-rate fall is read against their own evaluations' sample size);
    ``liked``: the liked classes by taste name; ``references``: the base's judge reading by (env id, model) from
    :func:`base_references` (``shares``, and ``confidence`` where known), for sessions whose agent samples as the
    reference did (``label`` says which in each session's metrics)."""
    from papa_env.evaluation import session_metrics

    for r in results:
        if r.get("taste") in liked:
            ref = (references or {}).get(_reference_key(r), {}) if _samples_by_default(r) else {}
            samples = (r.get("spec") or {}).get("eval_samples")
            r["metrics"] = session_metrics(
                r["records"], liked[r["taste"]], reference=ref.get("shares"), samples=samples,
                base_confidence=ref.get("confidence"),
            )  # fmt: skip
            if len(liked[r["taste"]] or ()) > 1:  # a balance to read: say against what
                r["metrics"]["balance_reference"] = label if ref.get("shares") is not None else "first evaluation"
            r["collapse"] = r["metrics"]["collapse"]


def _reference_key(result: dict) -> tuple[str, str]:
    spec = result.get("spec") or {}
    return spec.get("env", ""), spec.get("model", "")


def _samples_by_default(result: dict) -> bool:
    """Whether a session's agent draws its samples with the default sampler (the reference's): not the faithful
    presets (1000-step DDPM), no sampling override."""
    spec = result.get("spec") or {}
    sampling = {"sampler", "num_sampling_steps", "eta"} & set(spec.get("overrides") or {})
    return bool(spec) and spec.get("agent") not in ("faithful", "faithful-epapa") and not sampling


def base_references(results: list[dict], n: int, root: Path) -> dict[tuple[str, str], dict]:
    """The judge's reading of ``n`` samples of each (env id, base model) the suite's sessions started from
    (:func:`papa_env.evaluation.base_reference`): ``shares``, the relative balance's reference, and ``confidence``,
    the confidence goal's. Against the first 100-sample evaluation instead, noise alone flags a perfectly balanced
    model in up to 17% of sessions on 4-5-class tastes, and on real tuned models it tracks the truth less well
    (``benchmarks/results/balance-noise/``); that evaluation's confidence is one draw of 100 images shared by every
    session of an env (0.902 on MNIST against 0.920 on 2,000). Cached in ``root / base_reference.json`` (shares) and
    ``root / base_confidence.json`` by env, model, weights and n; a base model file missing here gets none (its
    sessions keep the first evaluation as their reference)."""
    import gymnasium as gym

    import papa_env  # noqa: F401  (registers the ids)
    from papa_env.evaluation import base_reference
    from papa_env.models import load_model, load_pretrained, weights_sha256

    paths = {"shares": root / "base_reference.json", "confidence": root / "base_confidence.json"}
    caches = {k: json.loads(p.read_text()) if p.exists() else {} for k, p in paths.items()}
    out, readings = {}, {}  # readings by (dataset, weights): the Style env draws the MNIST model's samples once
    for env_id, model in dict.fromkeys(_reference_key(r) for r in results if r.get("spec")):
        if model and not Path(model).is_file():  # a reused session's base model that is not on this machine
            print(f"the base reference of the sessions on {model}: their first evaluation (the file is missing)")
            continue
        env = gym.make(env_id).unwrapped
        unet = load_model(model) if model else load_pretrained(env.base_model)
        sha = weights_sha256(unet)
        key = f"{env_id}|{model}|{sha}|{n}"
        if any(key not in cache for cache in caches.values()):
            if (env.dataset, sha) not in readings:
                readings[env.dataset, sha] = base_reference(unet, load_pretrained(f"{env.dataset}-judge"), n=n)
            reading = readings[env.dataset, sha]
            root.mkdir(parents=True, exist_ok=True)
            for what, cache in caches.items():
                cache.setdefault(key, reading[what])  # shares cached before confidence was: kept as they were
                paths[what].write_text(json.dumps(cache, indent=1))
        out[(env_id, model)] = {
            "shares": {int(c): v for c, v in caches["shares"][key].items()},
            "confidence": caches["confidence"][key],
        }
    return out


def load_reused(path: str, seeds: int, budget: int, eval_every: int) -> list[dict]:
    """Sessions of an earlier comparison's ``results.jsonl`` with seed < ``seeds``, checked against this comparison's
    budget and evaluation schedule (that they saw the same user is the caller's word: the folder it came from)."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"--reuse expects an earlier comparison's results.jsonl; {path} is not a file")
    learner_schedule = list(range(0, budget + 1, eval_every))
    if learner_schedule[-1] != budget:
        learner_schedule.append(budget)
    reused = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        try:
            r = json.loads(line)
            r["agent"], r["seed"], r["records"]  # noqa: B018  (a session line has all three)
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SystemExit(f"{path}:{line_no}: not a session line of a results.jsonl ({e!r})") from None
        if r["agent"].split("+")[0] not in ALL:
            raise SystemExit(f"{path}:{line_no}: unknown agent {r['agent']!r}; expected from {ALL}")
        schedule = [rec["replies"] for rec in r["records"]]
        expected = [0, budget] if r["agent"] in REFERENCES else learner_schedule
        if schedule != expected:
            raise SystemExit(
                f"{path}:{line_no}: {r['agent']} seed {r['seed']} was evaluated at replies {schedule}, this "
                f"comparison (--budget {budget}, --eval-every {eval_every}) evaluates at {expected}"
            )
        if r["seed"] < seeds:
            r.setdefault("taste", "")
            r.setdefault("group", "")
            reused.append(r)
    return reused


# ------------------------------------------------------------------------------------------------
# the command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="papa bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--env", default=None, help="a registered env id (default PAPA-MNIST-v0; not with --suite)")
    p.add_argument("--preference", default=None, help="the user's taste as JSON, e.g. '[0, 3]' or '\"thin\"'")
    p.add_argument("--oracle", default=None, help="a registered user name (default: the env id's user)")
    p.add_argument("--mistake-rate", type=float, default=0.0, help="share of replies the user flips")
    p.add_argument(
        "--suite",
        choices=("tuning", "held-out"),
        default=None,
        help="run every taste of this half of the user suite (papa_env.suite) instead of one user",
    )
    p.add_argument("--tastes", default=None, help="with --suite: only these tastes (comma-separated names)")
    p.add_argument("--agents", default=",".join(ALL), help=f"comma-separated, from {ALL}")
    p.add_argument(
        "--override",
        default=None,
        metavar="JSON",
        help="config fields set for every agent, e.g. '{\"lr\": 2e-4}' (the label gets +lr=0.0002)",
    )
    p.add_argument(
        "--model",
        default="",
        metavar="PATH",
        help="a base model file (e.g. from `papa pretrain ddpm`) for every agent instead of the env's shipped one",
    )
    p.add_argument("--seeds", type=int, default=5, help="sessions per agent (and per taste): seeds 0..N-1")
    p.add_argument("--budget", type=int, default=300, help="replies per session (a multiple of 10)")
    p.add_argument("--eval-every", type=int, default=50, help="replies between evaluations")
    p.add_argument("--eval-samples", type=int, default=200, help="fresh samples per evaluation")
    p.add_argument(
        "--quick",
        action="store_true",
        help="1 seed, 20 replies, 50-sample evaluations every 10 (with --suite: 3 tastes)",
    )
    p.add_argument("--out", default="runs/benchmarks/compare", help="root folder of the comparison's sessions")
    p.add_argument(
        "--reuse",
        metavar="RESULTS_JSONL",
        help="an earlier comparison's results.jsonl (same env, budget, evaluations): its sessions are read "
        "back, not rerun, and its agents join this comparison",
    )
    p.add_argument("--workers", type=int, default=1, help="sessions side by side, each in its own process")
    p.add_argument("--threads", type=int, default=None, help="torch threads per session (default: CPUs / workers)")
    p.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: a process pool on this machine; ray: Ray tasks (pip install 'papa-env[ray]')",
    )
    p.add_argument(
        "--address",
        default=None,
        help="with --backend ray: a running cluster's address ('auto': the one this machine is in); "
        "default: a local Ray with --workers x threads CPUs",
    )
    p.add_argument(
        "--base-reference",
        "--balance-reference",
        dest="balance_reference",
        type=int,
        default=2000,
        metavar="N",
        help="with --suite: the base model's class shares (the relative balance's reference) and judge confidence "
        "come from N samples of it (drawn once, cached; --quick: 100), not from the first evaluation; 0: from the "
        "first evaluation",
    )
    p.add_argument("--no-grid", action="store_true", help="skip the final samples grid")
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    """``papa bench``: run the comparison and write its tables; returns the table rows (``[]`` with --suite)."""
    from papa_env.suite import liked_by_taste, make_suite, quick_suite

    p = build_parser()
    a = p.parse_args(argv)
    if a.workers < 1:
        p.error(f"--workers must be >= 1, got {a.workers}")
    if a.quick:  # quick values for the flags left at their defaults
        for flag, value in dict(seeds=1, budget=20, eval_every=10, eval_samples=50, balance_reference=100).items():
            if getattr(a, flag) == p.get_default(flag):
                setattr(a, flag, value)
    if a.balance_reference < 0:
        p.error(f"--base-reference must be >= 0 samples, got {a.balance_reference}")
    if a.budget < 10 or a.budget % 10:
        p.error(f"--budget must be a positive multiple of 10, got {a.budget}")
    one_user = [f"--{k.replace('_', '-')}" for k in ("env", "preference", "oracle", "mistake_rate") if getattr(a, k)]
    if a.suite and one_user:  # the suite's tastes carry their own users: these would be silently dropped
        p.error(f"{', '.join(one_user)} choose one user; --suite {a.suite} runs its own tastes: drop one or the other")
    if a.tastes and not a.suite:
        p.error("--tastes picks tastes of --suite tuning or --suite held-out; without --suite there is one user")
    a.env = a.env or "PAPA-MNIST-v0"
    agents = a.agents.split(",")
    unknown = [x for x in agents if x not in ALL]
    if unknown:
        raise SystemExit(f"unknown agents {unknown}; expected from {ALL}")
    try:
        overrides = json.loads(a.override) if a.override else {}
        env_kwargs = {"preference": json.loads(a.preference)} if a.preference else {}
    except json.JSONDecodeError as err:
        raise SystemExit(f"--override and --preference take JSON: {err}") from None
    if not isinstance(overrides, dict):
        raise SystemExit(f"--override must be a JSON object of config fields, got {a.override!r}")
    if a.mistake_rate:
        env_kwargs["mistake_rate"] = a.mistake_rate
    if a.oracle:
        env_kwargs["oracle"] = a.oracle
    if a.model:
        _check_base_model(a.model)
    base = dict(budget=a.budget, eval_every=a.eval_every, eval_samples=a.eval_samples, overrides=overrides)
    if a.model:
        base["model"] = str(Path(a.model).resolve())
    if a.suite:
        tastes = quick_suite() if a.quick else make_suite(a.suite)
        if a.tastes:
            names = a.tastes.split(",")
            unknown_tastes = sorted(set(names) - {t.name for t in tastes})
            if unknown_tastes:
                raise SystemExit(f"unknown tastes {unknown_tastes}; the {a.suite} half has {[t.name for t in tastes]}")
            tastes = [t for t in tastes if t.name in names]
        specs = [
            SessionSpec(name, t.env, seed, env_kwargs=dict(t.env_kwargs), taste=t.name, group=t.group, **base)
            for t in tastes
            for name in agents
            for seed in range(a.seeds)
            if not (t.mode == "pairwise" and name in SB3)
        ]
        tag = f"suite-{a.suite}" + ("-quick" if a.quick else "")
    else:
        specs = [
            SessionSpec(name, a.env, seed, env_kwargs=dict(env_kwargs), **base)
            for name in agents
            for seed in range(a.seeds)
        ]
        tag = a.env + (f"-mistakes{a.mistake_rate:g}" if a.mistake_rate else "") + ("-quick" if a.quick else "")
        if a.preference or a.oracle:
            tag += "".join(
                f"-{v}"
                for v in (a.oracle, json.dumps(env_kwargs.get("preference")).replace(" ", ""))
                if v and v != "null"
            )
    root = Path(a.out) / tag
    reused = load_reused(a.reuse, a.seeds, a.budget, a.eval_every) if a.reuse else []
    todo = not_reused(specs, reused)
    done = run_many(todo, root, a.workers, a.backend, a.address, a.threads)
    results = _ordered([*reused, *done])
    if a.suite:  # every session scored by today's metrics, the balance against the base's shares on many samples
        liked = liked_by_taste()
        refs = base_references(results, a.balance_reference, root) if a.balance_reference else None
        rescore(results, liked, refs, f"{a.balance_reference} base samples")
    rows = write_outputs(results, root, tag, suite=bool(a.suite))
    if not a.no_grid:
        first = [s for s in todo if s.seed == 0]
        if a.suite:
            first = [next(s for s in first if s.taste == t) for t in dict.fromkeys(s.taste for s in first)]
        final_grid(first, root, f"{tag}: samples after {a.budget} replies (seed 0)", root / "final_samples.png")
    report = root / "table.md"
    print(report.read_text())
    if (root / "welch.md").exists() and not a.suite:
        print((root / "welch.md").read_text())
    print(f"wrote {root}/results.jsonl and {report.name}")
    return rows


def _ordered(results: list[dict]) -> list[dict]:
    """Results in ``ALL``'s agent order (reused sessions take their place), then taste and seed as run."""
    base = [r["agent"].split("+")[0] for r in results]
    order = sorted(range(len(results)), key=lambda i: (ALL.index(base[i]), i))
    return [results[i] for i in order]
