"""How often does the suite's like-rate fall flag fire on a session whose like-rate never changes? (lab log:
``suite-defaults.md``, "The strata shares shrunk toward the base's mix")

``papa_env.evaluation.collapse_report`` flags a session when an evaluation's judge like-rate falls more than
``tolerance`` (0.05) below the best one before it — and, since 2026-12-06 (afternoon), when told the evaluations'
``samples``, more than ``FALL_Z`` (3) standard errors of the difference of two such binomial estimates. Each
evaluation is a binomial estimate on ``--samples`` images, so a flat session at like-rate p still shows falls: this
draws ``--trials`` flat sessions (the suite's evaluations at 0, 50, ..., 300 replies; the one at 0 replies is the
base's, at ``--base``) and runs the real ``collapse_report`` on each, by the tolerance alone and with ``samples``.
Machine-independent (no model): a few seconds.

    python docs/experiments/flag_noise.py                  # 100, 200 and 400 samples, p = 0.7 ... 0.95
    python docs/experiments/flag_noise.py --fall 0.1 0.15  # instead: sessions whose like-rate falls from 0.9 by
        # that much for their last three evaluations, the share flagged (the rule's power)
"""

from __future__ import annotations

import argparse

import numpy as np

from papa_env.evaluation import FALL_Z, collapse_report


def flat_session(p: float, samples: int, base: float, rng: np.random.Generator, fall: float = 0.0) -> list[dict]:
    """A session's 7 evaluations: the base's, then 6 at like-rate ``p`` (the last three at ``p - fall``)."""
    true = np.array([p, p, p, p - fall, p - fall, p - fall])
    rates = [base] + list(rng.binomial(samples, true) / samples)
    return [{"replies": 50 * i, "eval/like_rate_judge": float(r)} for i, r in enumerate(rates)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[100, 200, 400])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.7, 0.8, 0.9, 0.95])
    parser.add_argument("--base", type=float, default=0.2, help="the like-rate of the evaluation at 0 replies")
    parser.add_argument("--trials", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fall", type=float, nargs="*", help="falls from --rates to measure the rule's power on")
    args = parser.parse_args()
    if args.fall:
        return power(args)
    rng = np.random.default_rng(args.seed)
    print("| evaluation samples, rule | " + " | ".join(f"flat at {p:.2f}" for p in args.rates) + " |")
    print("|---" * (len(args.rates) + 1) + "|")
    for n in args.samples:
        for rule, samples in (("tolerance 0.05 alone", None), (f"and {FALL_Z:g} standard errors", n)):
            shares = []
            for p in args.rates:
                sessions = (flat_session(p, n, args.base, rng) for _ in range(args.trials))
                shares.append(sum(bool(collapse_report(s, samples=samples)) for s in sessions) / args.trials)
            print(f"| {n}, {rule} | " + " | ".join(f"{s:.3f}" for s in shares) + " |")
    print(f"\nshare of {args.trials} flat sessions flagged by a like-rate fall, seed {args.seed}")


def power(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    print("| evaluation samples, rule | " + " | ".join(f"{p:.2f} -> {p - f:.2f}" for p in args.rates for f in args.fall)
          + " |")  # fmt: skip
    print("|---" * (len(args.rates) * len(args.fall) + 1) + "|")
    for n in args.samples:
        for rule, samples in (("tolerance 0.05 alone", None), (f"and {FALL_Z:g} standard errors", n)):
            shares = []
            for p in args.rates:
                for f in args.fall:
                    sessions = (flat_session(p, n, args.base, rng, f) for _ in range(args.trials))
                    shares.append(sum(bool(collapse_report(s, samples=samples)) for s in sessions) / args.trials)
            print(f"| {n}, {rule} | " + " | ".join(f"{s:.3f}" for s in shares) + " |")
    print(
        f"\nshare of {args.trials} sessions flagged whose like-rate falls for the last three evaluations, "
        f"seed {args.seed}"
    )


if __name__ == "__main__":
    main()
