"""Is a taste's confidence shortfall quality lost, or the kind of image the taste likes? (offline, no session)

    python docs/experiments/confidence_reference.py RESULTS.jsonl [--suite held-out] [--n 1000]

The user-suite's confidence goal compares the judge's mean confidence of a session's final samples with that of the
base model's samples (the session's first evaluation: all of them). A taste that likes thin strokes, or a kind the
judge finds hard, is given samples of that kind, which the judge may be less sure of at equal quality. This draws n
base samples per base model (20-step DDIM, eta 1, seed 0), and for each taste of the suite prints the judge's mean
confidence over all of them and over those the user likes (its rational verdict, ``env.privileged.likes``: no
noise), beside the final confidence of the sessions in RESULTS.jsonl (a suite run's result lines), averaged over
their seeds. It reads the held-out half only as a report: nothing here is tuned.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import gymnasium as gym
import numpy as np
import torch

import papa_env  # noqa: F401  (registers the ids)
from papa_env.diffusion import sample
from papa_env.metrics import judge
from papa_env.models import load_pretrained
from papa_env.suite import make_suite


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results")
    p.add_argument("--suite", default="held-out")
    p.add_argument("--n", type=int, default=1000)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    ends: dict[str, list[float]] = defaultdict(list)
    for line in open(a.results):
        r = json.loads(line)
        ends[r["taste"]].append(r["metrics"]["judge_confidence"][1])
    drawn: dict[str, tuple[torch.Tensor, np.ndarray]] = {}  # base model -> (samples, the judge's confidence)
    rows = []
    print("| taste | base, all | base, the user's likes (share) | sessions' end (seeds) | end - all | end - likes |")
    print("|---|---|---|---|---|---|")
    for taste in make_suite(a.suite):
        if taste.name not in ends:
            continue
        env = gym.make(taste.env, **taste.env_kwargs).unwrapped
        if env.base_model not in drawn:
            g = torch.Generator().manual_seed(0)
            x = sample(load_pretrained(env.base_model), a.n, generator=g)
            drawn[env.base_model] = (x, judge(load_pretrained(f"{env.dataset}-judge"), x).confidence.numpy())
        x, conf = drawn[env.base_model]
        likes = env.privileged.likes(x)
        end = float(np.mean(ends[taste.name]))
        of_liked = float(conf[likes].mean()) if likes.any() else None  # mnist-5: no like among few samples
        row = {"taste": taste.name, "all": float(conf.mean()), "likes": of_liked, "liked_share": float(likes.mean()),
               "end": end, "seeds": len(ends[taste.name])}  # fmt: skip
        rows.append(row)
        of_likes = ("-", "-") if row["likes"] is None else (f"{row['likes']:.3f}", f"{end - row['likes']:+.3f}")
        print(f"| `{taste.name}` | {row['all']:.3f} | {of_likes[0]} ({row['liked_share']:.3f}) | {end:.3f} "
              f"({row['seeds']}) | {end - row['all']:+.3f} | {of_likes[1]} |", flush=True)  # fmt: skip
    under = ([r for r in rows if r["end"] < r["all"]],
             [r for r in rows if r["likes"] is not None and r["end"] < r["likes"]])  # fmt: skip
    print(f"{len(rows)} tastes: end under the base's all-sample confidence on {len(under[0])} "
          f"({', '.join(r['taste'] for r in under[0])}); under the base's liked samples' on {len(under[1])} "
          f"({', '.join(r['taste'] for r in under[1])})")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
