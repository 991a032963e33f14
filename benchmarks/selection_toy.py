"""The toy of issue 24: does a query selector teach the tiny UNet a rare brightness taste in fewer replies than
``random``? (``docs/experiments/selection.md``: not robustly, so it is a benchmark, not a test.)

    python -m benchmarks.selection_toy                          # liked vs random, the brightest 10%, seeds 0-2
    python -m benchmarks.selection_toy --quantile 0.8           # a commoner taste
    python -m benchmarks.selection_toy --rule diversity --seeds 10 --budget 40   # another rule against random
    python -m benchmarks.selection_toy --rule diversity --quantile 0.95 --queries 2 --pool 20 --seeds 10 --budget 20
        # a rarer taste, 2 images shown of 20 candidates (--first-seed 10: the next ten seeds)

The user and the tiny UNet are the tests' (``tests/helpers.py``: ``Bright``; ``tests/conftest.py``: ``TINY_UNET``).
PAPA learns from likes only (lr 3e-4, 2 updates per interaction, 20 replayed replies); the rule (``--rule``, default
``liked``) chooses ``--queries`` (10) of a pool of ``--pool`` (30) in a fixed random network's features. Prints the
like-rate of 100 samples every 20 replies and the replies each session needed to reach ``--level``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from conftest import TINY_UNET
    from helpers import Bright, ToyEval

    from papa_env.agents.papa import PAPA, PAPAConfig
    from papa_env.agents.selection import SELECTORS
    from papa_env.env import PreferenceEnv
    from papa_env.models import make_unet
    from papa_env.session import run_session

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quantile", type=float, default=0.9, help="the user likes samples brighter than this quantile")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed ... first-seed + seeds - 1")
    p.add_argument("--budget", type=int, default=80, help="replies per session")
    p.add_argument("--level", type=float, default=0.7, help="the like-rate whose first reaching is counted")
    p.add_argument("--queries", type=int, default=10, help="images shown per interaction (K)")
    p.add_argument("--pool", type=int, default=30, help="candidates the rule chooses the K from (M)")
    p.add_argument(
        "--rule",
        default="liked",
        choices=[r for r in SELECTORS if r != "random"],
        help="the selector measured against random (agents/selection.py)",
    )
    a = p.parse_args(argv)
    if not 0 < a.quantile < 1 or a.budget < 20 or a.budget % 20 or a.seeds < 1 or 20 % a.queries or a.pool < a.queries:
        p.error(
            "expected 0 < --quantile < 1, --budget a positive multiple of 20, --seeds >= 1, --queries dividing 20 "
            "and --pool >= --queries"
        )

    def unet() -> torch.nn.Module:
        torch.manual_seed(0)  # the tests' tiny_unet fixture
        return make_unet(**TINY_UNET).eval()

    probe = PAPA(unet(), PAPAConfig(num_sampling_steps=8))
    threshold = float(probe.generate(200, torch.Generator().manual_seed(0)).mean((1, 2, 3)).quantile(a.quantile))
    out: dict = {}
    for rule, pool in (("random", None), (a.rule, a.pool)):
        for seed in range(a.first_seed, a.first_seed + a.seeds):
            cfg = PAPAConfig(lr=3e-4, timesteps_per_image=4, updates_per_interaction=2, replay=20, seed=seed,
                             full_exploitation=False, num_sampling_steps=8, pool_size=pool, selector=rule,
                             selector_features="random", queries_per_step=a.queries)  # fmt: skip
            env = PreferenceEnv(Bright(threshold), queries_per_step=a.queries, feedback_budget=a.budget)
            records = run_session(PAPA(unet(), cfg), env, eval_every=20, evaluator=ToyEval(env), progress=False,
                                  seed=seed)  # fmt: skip
            curve = [round(r["eval/like_rate_oracle"], 2) for r in records if "eval/like_rate_oracle" in r]
            reached = next((20 * i for i, r in enumerate(curve) if r >= a.level), None)
            out[f"{rule}-s{seed}"] = {"like_rate": curve, "replies_to_level": reached}
            print(f"{rule} seed {seed}: like-rate every 20 replies {curve}, {a.level} reached after {reached}")
    return out


if __name__ == "__main__":
    main()
