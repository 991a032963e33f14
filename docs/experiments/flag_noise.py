"""How often does the suite's like-rate fall flag fire on a session whose like-rate never changes? (lab log:
``suite-defaults.md``, "The strata shares shrunk toward the base's mix")

``papa_env.evaluation.collapse_report`` flags a session when an evaluation's judge like-rate falls more than
``tolerance`` (0.05) below the best one before it. Each evaluation is a binomial estimate on ``--samples`` images, so
a flat session at like-rate p still shows falls: this draws ``--trials`` flat sessions (the suite's evaluations at
0, 50, ..., 300 replies; the one at 0 replies is the base's, at ``--base``) and runs the real ``collapse_report`` on
each. Machine-independent (no model): a few seconds.

    python docs/experiments/flag_noise.py                  # 100 and 200 samples, p = 0.7 ... 0.95
"""

from __future__ import annotations

import argparse

import numpy as np

from papa_env.evaluation import collapse_report


def flat_session(p: float, samples: int, base: float, rng: np.random.Generator) -> list[dict]:
    rates = [base] + list(rng.binomial(samples, p, size=6) / samples)
    return [{"replies": 50 * i, "eval/like_rate_judge": float(r)} for i, r in enumerate(rates)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[100, 200])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.7, 0.8, 0.9, 0.95])
    parser.add_argument("--base", type=float, default=0.2, help="the like-rate of the evaluation at 0 replies")
    parser.add_argument("--trials", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print("| evaluation samples | " + " | ".join(f"flat at {p:.2f}" for p in args.rates) + " |")
    print("|---" * (len(args.rates) + 1) + "|")
    for n in args.samples:
        shares = []
        for p in args.rates:
            flagged = sum(bool(collapse_report(flat_session(p, n, args.base, rng))) for _ in range(args.trials))
            shares.append(flagged / args.trials)
        print(f"| {n} | " + " | ".join(f"{s:.2f}" for s in shares) + " |")
    print(f"\nshare of {args.trials} flat sessions flagged by a like-rate fall (tolerance 0.05), seed {args.seed}")


if __name__ == "__main__":
    main()
