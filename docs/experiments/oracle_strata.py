"""A diagnostic of issue 22, never a candidate: what would base-model queries shown in the base's exact class
proportions buy the balance? (lab log `suite-defaults.md`, "The model copies the class balance ...")

    python docs/experiments/oracle_strata.py --suite tuning --tastes mnist-0-1-5-7 --agents epapa --seeds 3 \
        --workers 1 --threads 1 --eval-samples 100 --no-grid --override '{"base_candidates": 3, "base_strata": 10}' \
        --out runs/oracle-strata

``python -m benchmarks.suite`` with one change: `epapa`'s ``base_strata`` (each base-model query from the stratum
furthest under its share, of ``base_candidates`` x as many drawn) takes as strata the *user's own classifier's*
classes and as shares the base's class shares on 2,000 samples, instead of k-means strata of its own features. The
agent then sees the user's classes: privileged, which is why this lives here and not in ``agents/``. ``--workers 1``
only (the change is made in this process).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import papa_env.harness as harness

REFERENCE = Path(__file__).parents[2] / "benchmarks/results/suite-held-out/base_reference.json"
_make_agent = harness.make_agent


def base_shares(user) -> torch.Tensor:
    """(10,) the base model's class shares on 2,000 samples, for the data set of ``user``."""
    refs = json.loads(REFERENCE.read_text())
    shares = next(v for k, v in refs.items() if ("Fashion" in k) == ("fashion" in user.dataset))
    return torch.tensor([shares[str(c)] for c in range(10)], dtype=torch.float64) / sum(shares.values())


def user_classes(user):
    """Features that are the user's own classifier's class of each image, one-hot (10,): privileged."""
    return lambda images: torch.nn.functional.one_hot(user.probabilities(images.float()).argmax(-1), 10).float()


def make_agent(spec, env):
    agent = _make_agent(spec, env)
    if not getattr(agent, "cfg", None) or not agent.cfg.base_strata:
        return agent
    user = env.unwrapped.oracle.unwrapped  # the classifier user, under any noise wrapper
    agent.base_features = user_classes(user)
    agent.centroids = torch.eye(10)  # a one-hot row's nearest centroid is its class
    agent.shares = base_shares(user).float()
    return agent


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--workers" in argv and argv[argv.index("--workers") + 1] != "1":
        sys.exit("expected --workers 1: the change to the agent is made in this process only")
    harness.make_agent = make_agent
    harness.main(argv)
