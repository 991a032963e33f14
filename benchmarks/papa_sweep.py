"""One PAPA / EPAPA session with config overrides: the screening behind the presets' values.

    python -m benchmarks.papa_sweep --preset fast --set lr=3e-4 --set k=300 --seed 0
    python -m benchmarks.papa_sweep --preset authors-mc --budget 100 --threads 1

Runs a 300-reply session on PAPA-MNIST-v0 (evaluations of 200 samples every 100 replies, nothing written but
one JSON line) and prints: the judge's like-rate at each evaluation, the judge confidence before -> after, the
largest class share at any evaluation, each liked class's share at the end (and the smallest), seconds per update,
update rows per interaction and any collapse. ``--log`` appends the line to a file. README's tuning table lists
the exact overrides of each row.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields, replace

import gymnasium as gym
import numpy as np
import torch
from papa_env.agents.papa import PAPA, PRESETS, PAPAConfig

import papa_env  # noqa: F401
from papa_env.models import load_pretrained
from papa_env.session import Evaluator, collapse_report, run_session


def parse_overrides(items: list[str]) -> dict:
    """``["lr=1e-4", "k=300", "dislike_margin=None"]`` -> typed PAPAConfig overrides (JSON values)."""
    types = {f.name: f.type for f in fields(PAPAConfig)}
    names = set(types)
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in names:
            raise SystemExit(f"--set expects FIELD=VALUE with FIELD one of {sorted(names)}; got {item!r}")
        try:
            out[key] = None if value == "None" else json.loads(value)
        except json.JSONDecodeError:  # a bare string, e.g. sampler=ddpm
            out[key] = value
        kind = str(types[key])  # e.g. "float | None", "bool", "Literal['ddim', 'ddpm']"
        v = out[key]
        ok = (
            ("None" in kind)
            if v is None
            else isinstance(v, bool)
            if kind == "bool"
            else isinstance(v, (int, float)) and not isinstance(v, bool)
            if kind.split(" |")[0] in ("int", "float")
            else isinstance(v, str)
        )
        if not ok:
            raise SystemExit(f"--set {key} expects a value of type {kind}; got {value!r}")
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fast", choices=sorted(PRESETS))
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a PAPAConfig field")
    p.add_argument("--env", default="PAPA-MNIST-v0")
    p.add_argument("--mistake-rate", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-samples", type=int, default=200)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--log", default=None, help="append the result line to this file")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    overrides = parse_overrides(a.set)
    env_kwargs = {"mistake_rate": a.mistake_rate} if a.mistake_rate else {}
    env = gym.make(a.env, feedback_budget=a.budget, **env_kwargs)
    agent = PAPA(load_pretrained(env.unwrapped.base_model), replace(PRESETS[a.preset], seed=a.seed, **overrides))
    t0 = time.perf_counter()
    evaluator = Evaluator(env, n=a.eval_samples)
    records = run_session(agent, env, None, eval_every=a.eval_every, evaluator=evaluator, seed=a.seed, progress=False)
    key = "eval/like_rate_judge" if "eval/like_rate_judge" in records[0] else "eval/like_rate_oracle"
    liked = getattr(env.unwrapped.oracle.unwrapped, "preference", []) if key.endswith("judge") else []
    liked_shares = {str(c): round(records[-1][f"eval/class_share/{c}"], 3) for c in liked}
    result = {
        "preset": a.preset,
        "overrides": overrides,
        "env": a.env,
        "mistake_rate": a.mistake_rate,
        "seed": a.seed,
        "replies": [r["replies"] for r in records],
        "like_rate": [round(r[key], 3) for r in records],
        "user_like_rate": [round(r["eval/like_rate_oracle"], 3) for r in records],
        "judge_confidence": [
            round(records[0]["eval/judge_confidence"], 3),
            round(records[-1]["eval/judge_confidence"], 3),
        ],
        "max_class_share_any": round(max(r["eval/max_class_share"] for r in records), 3),
        "min_liked_share_end": min(liked_shares.values(), default=np.nan),
        "liked_shares_end": liked_shares,
        "seconds_per_interaction": round(float(np.mean([r["charts/seconds_per_interaction"] for r in records[1:]])), 2),
        "update_rows_per_interaction": records[-1].get("compute/rows"),
        "wall": round(time.perf_counter() - t0),
        "collapse": collapse_report(records),
    }
    line = json.dumps(result)
    print(line)
    if a.log:
        with open(a.log, "a") as f:
            f.write(line + "\n")
    return result


if __name__ == "__main__":
    main()
