"""``papa demo`` and ``papa run``: one PAPA / EPAPA session against a registered env, with a printed table.

``papa demo`` (what ``make demo`` runs) aligns the shipped MNIST base model to the default user of
``PAPA-MNIST-v0`` (likes digits 1, 4, 7, 9) with EPAPA's default preset over the 300-reply budget on the CPU, then
prints a before / after table. The run folder (``runs/demo`` by default) holds every reply, the sample grids, the
like-rate curve and the final weights; rerunning the command resumes it (and a finished run reprints its table).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import gymnasium as gym


def run_papa(
    env_id: str,
    config: Any,
    out: str | Path,
    *,
    seed: int = 0,
    budget: int = 300,
    eval_every: int = 50,
    eval_samples: int = 200,
    env_kwargs: dict[str, Any] | None = None,
    label: str = "",
    unet: Any = None,
    device: str = "cpu",
) -> tuple[list[dict], dict[str, Any]]:
    """One session of ``PAPA(<env's base model>, config)`` in ``out``; prints its table, returns its evaluation
    records and their summary (:func:`papa_env.evaluation.summarize`)."""
    import papa_env  # noqa: F401  (registers the env ids)
    from papa_env.agents.papa import PAPA
    from papa_env.distributed import world
    from papa_env.evaluation import Evaluator, liked_classes, summarize
    from papa_env.models import load_pretrained
    from papa_env.session import run_session

    env = gym.make(env_id, feedback_budget=budget, **(env_kwargs or {}))
    agent = PAPA((unet if unet is not None else load_pretrained(env.unwrapped.base_model)).to(device), config)
    quiet = world()[0] > 0  # under torchrun, only rank 0 reports
    if quiet:
        return run_session(agent, env, out, eval_every=eval_every, seed=seed, progress=False), {}
    print(f"papa: {agent.name}{f' ({label} preset)' if label else ''} aligns {env.unwrapped.base_model} to "
          f"{env.unwrapped.oracle!r} with {budget} replies; run folder {out}")  # fmt: skip
    t0 = time.perf_counter()
    records = run_session(agent, env, out, eval_every=eval_every, evaluator=Evaluator(env, n=eval_samples), seed=seed)
    secs = time.perf_counter() - t0
    print_table(records)
    print(f"\n{secs:.0f} s in this call; grids: {Path(out) / 'samples_before.png'}, {Path(out) / 'samples_after.png'};"
          f" curve: {Path(out) / 'like_rate.png'}")  # fmt: skip
    summary = {"env": env_id, "env_kwargs": env_kwargs or {}, "seed": seed, "label": label, "out": str(out),
               **summarize(records, liked_classes(env), samples=eval_samples), "wall": round(secs)}  # fmt: skip
    return records, summary


def run_demo(
    out: str | Path = "runs/demo",
    seed: int = 0,
    preset: str = "epapa",
    budget: int = 300,
    eval_samples: int = 200,
    device: str = "cpu",
) -> list[dict]:
    """Run the demo session and print its table; returns the evaluation records."""
    from dataclasses import replace

    from papa_env.agents.papa import PRESETS

    records, _ = run_papa("PAPA-MNIST-v0", replace(PRESETS[preset], seed=0), out, seed=seed, budget=budget,
                          eval_every=100, eval_samples=eval_samples, label=preset, device=device)  # fmt: skip
    return records


def print_table(records: list[dict]) -> None:
    """Like-rate (user and judge), judge confidence and the largest class share at each evaluation."""
    print(
        f"\n{'replies':>7} | {'like-rate (user)':>16} | {'like-rate (judge)':>17} | {'judge conf.':>11} | "
        f"{'max class share':>15} | {'liked among shown':>17}"
    )
    for r in records:
        judge = r.get("eval/like_rate_judge", float("nan"))
        shown = r.get("session/shown_like_rate", float("nan"))
        print(
            f"{r['replies']:>7} | {r['eval/like_rate_oracle']:>16.3f} | {judge:>17.3f} | "
            f"{r['eval/judge_confidence']:>11.3f} | {r['eval/max_class_share']:>15.3f} | {shown:>17.3f}"
        )
