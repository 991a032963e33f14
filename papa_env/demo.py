"""``papa demo``: the main job (what ``make demo`` runs).

Aligns the shipped MNIST base model to the default user of ``PAPA-MNIST-v0`` (likes digits 1, 4, 7, 9) with EPAPA
(the ``epapa-mixed-avg`` preset: half of each interaction's queries from the frozen base model, samples from a tail
average of the tuned weights) over the 300-reply budget on the CPU, then prints a before / after table. The run
folder (``runs/demo`` by default) holds every reply, the sample grids, the like-rate curve and the final weights;
rerunning the command resumes it (and a finished run just reprints its table).
"""

from __future__ import annotations

import time
from pathlib import Path

import gymnasium as gym


def run_demo(
    out: str | Path = "runs/demo",
    seed: int = 0,
    preset: str = "epapa-mixed-avg",
    budget: int = 300,
    eval_samples: int = 200,
) -> list[dict]:
    """Run the demo session and print its table; returns the evaluation records."""
    import papa_env  # noqa: F401  (registers the env ids)
    from papa_env.agents.papa import PAPA
    from papa_env.models import load_pretrained
    from papa_env.session import Evaluator, run_session

    env = gym.make("PAPA-MNIST-v0", feedback_budget=budget)
    agent = PAPA(load_pretrained("mnist-ddpm"), preset)
    print(
        f"papa demo: {agent.name} ({preset} preset) aligns mnist-ddpm to {env.unwrapped.oracle!r} "
        f"with {budget} replies; run folder {out}"
    )
    t0 = time.perf_counter()
    records = run_session(agent, env, out, eval_every=100, evaluator=Evaluator(env, n=eval_samples), seed=seed)
    secs = time.perf_counter() - t0
    print_table(records)
    print(
        f"\n{secs:.0f} s in this call; grids: {Path(out) / 'samples_before.png'}, {Path(out) / 'samples_after.png'};"
        f" curve: {Path(out) / 'like_rate.png'}"
    )
    return records


def print_table(records: list[dict]) -> None:
    """Like-rate (user and judge), judge confidence and the largest class share at each evaluation."""
    print(
        f"\n{'replies':>7} | {'like-rate (user)':>16} | {'like-rate (judge)':>17} | {'judge conf.':>11} | "
        f"{'max class share':>15}"
    )
    for r in records:
        judge = r.get("eval/like_rate_judge", float("nan"))
        print(
            f"{r['replies']:>7} | {r['eval/like_rate_oracle']:>16.3f} | {judge:>17.3f} | "
            f"{r['eval/judge_confidence']:>11.3f} | {r['eval/max_class_share']:>15.3f}"
        )
