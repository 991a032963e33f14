"""PAPA / EPAPA against the goals of the agents issue: like-rate, collapse, quality, speed, over seeds.

    python -m benchmarks.papa_goals --presets fast,epapa --seeds 5               # the 300-reply table
    python -m benchmarks.papa_goals --presets fast,epapa --seeds 5 --time-faithful 3   # + the authors' recipe timed
    # (timed after the presets' sessions; benchmarks.speed interleaves the two, which a drifting machine needs)
    python -m benchmarks.papa_goals --env PAPA-MNIST-Style-v0 --presets epapa --seeds 3
    python -m benchmarks.papa_goals --presets epapa --set model_coef=0.5 --eval-samples 1000   # a variant

``--set FIELD=VALUE`` overrides a PAPAConfig field of every preset run (as in ``benchmarks.papa_sweep``); the
variant is then labelled ``<preset>+FIELD=VALUE`` (its folders and summary rows too), so it never resumes from,
or overwrites, the preset's own sessions.

Each (preset, seed) is a resumable session in ``<out>/<env>/<preset>-s<seed>`` (rerunning skips finished
ones). Prints and writes ``summary.json`` and ``like_rate.png`` (mean +- std bands) under ``<out>/<env>``:
judge (or user) like-rate at each evaluation, the smallest liked-class share and the judge confidence at
the end, seconds per interaction (sampling the queries + the update), and any collapse.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
from papa_env.agents.papa import PAPA, PRESETS

import papa_env  # noqa: F401
from benchmarks.papa_sweep import parse_overrides
from papa_env.models import load_pretrained
from papa_env.session import Evaluator, collapse_report, run_session


def run_one(
    env_id: str,
    preset: str,
    seed: int,
    budget: int,
    eval_every: int,
    eval_samples: int,
    out: Path,
    env_kwargs: dict,
    overrides: dict | None = None,
) -> dict:
    env = gym.make(env_id, feedback_budget=budget, **env_kwargs)
    agent = PAPA(load_pretrained(env.unwrapped.base_model), replace(PRESETS[preset], seed=seed, **(overrides or {})))
    t0 = time.perf_counter()
    records = run_session(
        agent, env, out, eval_every=eval_every, evaluator=Evaluator(env, n=eval_samples), seed=seed, progress=True
    )
    secs = [r["charts/seconds_per_interaction"] for r in records if "charts/seconds_per_interaction" in r]
    return {
        "preset": label(preset, overrides),
        "seed": seed,
        "records": records,
        "wall": time.perf_counter() - t0,
        "seconds_per_interaction": float(np.mean(secs)) if secs else None,
        "collapse": collapse_report(records),
        "liked_classes": [int(c) for c in getattr(env.unwrapped.oracle.unwrapped, "preference", [])]
        if "eval/like_rate_judge" in records[0]
        else [],
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="PAPA-MNIST-v0")
    p.add_argument("--presets", default="fast,epapa", help=f"comma-separated, from {sorted(PRESETS)}")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--budget", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-samples", type=int, default=200)
    p.add_argument("--mistake-rate", type=float, default=0.0, help="a user who errs this often")
    p.add_argument("--out", default="runs/benchmarks/papa")
    p.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="override a PAPAConfig field of every preset"
    )
    p.add_argument(
        "--time-faithful",
        type=int,
        default=0,
        metavar="N",
        help="also run the `faithful` preset (seed 0) for N interactions in this process and compare speeds",
    )
    a = p.parse_args(argv)
    presets = a.presets.split(",")
    unknown = [x for x in presets if x not in PRESETS]
    if unknown:
        raise SystemExit(f"unknown presets {unknown}; expected from {sorted(PRESETS)}")
    overrides = parse_overrides(a.set)
    env_kwargs = {"mistake_rate": a.mistake_rate} if a.mistake_rate else {}
    tag = a.env + (f"-mistakes{a.mistake_rate:g}" if a.mistake_rate else "")
    root = Path(a.out) / tag
    results = [
        run_one(
            a.env,
            preset,
            seed,
            a.budget,
            a.eval_every,
            a.eval_samples,
            root / f"{label(preset, overrides)}-s{seed}",
            env_kwargs,
            overrides,
        )
        for preset in presets
        for seed in range(a.seeds)
    ]
    summary = summarize(results)
    root.mkdir(parents=True, exist_ok=True)
    (root / "summary.json").write_text(json.dumps({"args": vars(a), "summary": summary}, indent=2))
    plot(results, root / "like_rate.png", tag)
    (root / "summary.md").write_text(markdown(summary))
    print_summary(summary, tag)
    if a.time_faithful:
        k = gym.make(a.env).unwrapped.queries_per_step
        budget = a.time_faithful * k
        slow = run_one(a.env, "faithful", 0, budget, budget, a.eval_samples, root / "faithful-s0", env_kwargs)
        summary["faithful"] = summarize([slow])["faithful"]
        summary["faithful"]["interactions"] = a.time_faithful
        (root / "summary.json").write_text(json.dumps({"args": vars(a), "summary": summary}, indent=2))
        print_speed(summary, a.time_faithful)
    return summary


def label(preset: str, overrides: dict | None) -> str:
    """``epapa`` with ``{"model_coef": 0.5}`` -> ``epapa+model_coef=0.5``: a variant's sessions and rows."""
    return preset + "".join(f"+{k}={v}" for k, v in sorted((overrides or {}).items()))


def print_speed(summary: dict, interactions: int) -> None:
    """Seconds per interaction of each preset and its speed-up over the authors' recipe."""
    slow = summary["faithful"]["seconds_per_interaction"]
    print(f"\nspeed (same process, same model; faithful run for {interactions} interactions only)")
    for preset, s in summary.items():
        secs = s["seconds_per_interaction"]
        print(
            f"  {preset:>14}: {secs:8.2f} s/interaction  x{slow / secs:7.1f} faster than faithful;"
            f" like-rate {s['like_rate_mean'][-1]:.3f} after {s['replies'][-1]} replies"
        )


def summarize(results: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for preset in dict.fromkeys(r["preset"] for r in results):
        runs = [r for r in results if r["preset"] == preset]
        key = "eval/like_rate_judge" if "eval/like_rate_judge" in runs[0]["records"][0] else "eval/like_rate_oracle"
        replies = [rec["replies"] for rec in runs[0]["records"]]
        curve = np.array([[rec[key] for rec in r["records"]] for r in runs])
        final = [r["records"][-1] for r in runs]
        liked_shares = [  # the smallest share of a liked class at the end, per seed (collapse onto a few)
            min((rec[f"eval/class_share/{c}"] for c in r["liked_classes"]), default=float("nan"))
            for r, rec in zip(runs, final)
        ]
        out[preset] = {
            "metric": key,
            "replies": replies,
            "like_rate_mean": curve.mean(0).tolist(),
            "like_rate_std": curve.std(0).tolist(),
            "user_like_rate_mean": np.mean(
                [[rec["eval/like_rate_oracle"] for rec in r["records"]] for r in runs], 0
            ).tolist(),
            "judge_confidence_start": float(np.mean([r["records"][0]["eval/judge_confidence"] for r in runs])),
            "judge_confidence_end": float(np.mean([rec["eval/judge_confidence"] for rec in final])),
            "max_class_share_end": float(np.mean([rec["eval/max_class_share"] for rec in final])),
            "min_liked_share_end": float(np.min(liked_shares)),
            "max_class_share_any": float(max(rec["eval/max_class_share"] for r in runs for rec in r["records"])),
            "seconds_per_interaction": float(np.mean([r["seconds_per_interaction"] or np.nan for r in runs])),
            "update_rows_per_interaction": float(
                np.mean([rec["compute/rows"] for r in runs for rec in r["records"] if "compute/rows" in rec])
            ),
            "collapsed_seeds": [r["seed"] for r in runs if r["collapse"]],
            "seeds": len(runs),
        }
    return out


def markdown(summary: dict) -> str:
    """The summary as a Markdown table (what README shows)."""
    presets = [p for p in summary if p != "faithful" or "interactions" not in summary[p]]
    replies = summary[presets[0]]["replies"]
    head = ["preset", *[f"@{n}" for n in replies[1:]], "judge conf.", "smallest liked share", "largest share (any)"]
    head += ["s / interaction", "update rows", "collapsed seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for preset in presets:
        s = summary[preset]
        cells = [f"{m:.3f} +- {sd:.3f}" for m, sd in zip(s["like_rate_mean"][1:], s["like_rate_std"][1:])]
        cells += [
            f"{s['judge_confidence_start']:.3f} -> {s['judge_confidence_end']:.3f}",
            f"{s['min_liked_share_end']:.3f}",
            f"{s['max_class_share_any']:.3f}",
            f"{s['seconds_per_interaction']:.2f}",
            f"{s['update_rows_per_interaction']:.0f}",
            ", ".join(map(str, s["collapsed_seeds"])) or "none",
        ]
        lines.append(f"| `{preset}` ({s['seeds']} seeds) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def print_summary(summary: dict, tag: str) -> None:
    print(f"\n{tag}")
    for preset, s in summary.items():
        cells = "  ".join(
            f"{n}: {m:.3f}+-{sd:.3f}" for n, m, sd in zip(s["replies"], s["like_rate_mean"], s["like_rate_std"])
        )
        print(f"  {preset:>14} ({s['seeds']} seeds, {s['metric']}) {cells}")
        if s["metric"] != "eval/like_rate_oracle":
            user = "  ".join(f"{n}: {m:.3f}" for n, m in zip(s["replies"], s["user_like_rate_mean"]))
            print(f"  {'':>14} (the user's own like-rate, mean) {user}")
        print(
            f"  {'':>14} judge confidence {s['judge_confidence_start']:.3f} -> {s['judge_confidence_end']:.3f};"
            f" smallest liked-class share {s['min_liked_share_end']:.3f} (worst seed);"
            f" max class share {s['max_class_share_end']:.3f}; {s['seconds_per_interaction']:.2f} s/interaction"
            f" ({s['update_rows_per_interaction']:.0f} update rows);"
            f" collapsed seeds: {s['collapsed_seeds'] or 'none'}"
        )


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for preset, s in summarize(results).items():
        m, sd = np.array(s["like_rate_mean"]), np.array(s["like_rate_std"])
        ax.plot(s["replies"], m, marker="o", label=preset)
        ax.fill_between(s["replies"], m - sd, m + sd, alpha=0.2)
    ax.set(xlabel="replies", ylabel="like-rate", ylim=(0, 1), title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
