"""A diagnostic of issue 22, never a candidate: what would the tuned model's own queries, chosen by the user's liked
classes in the base's proportions, buy the balance? (lab log `suite-defaults.md`, "An upper bound for a class-aware
spread ...")

    python docs/experiments/oracle_tuned_quota.py --suite tuning --tastes mnist-0-1-5-7 --agents epapa --seeds 3 \
        --workers 1 --threads 1 --eval-samples 100 --no-grid --override '{"tuned_candidates": 3}' \
        --out runs/oracle-tuned-quota

``python -m benchmarks.suite`` with one change: of the ``tuned_candidates`` x as many tuned-model candidates as
tuned queries, `epapa` shows as many liked ones as the first drawn hold (what the person would see without it), each
of the *liked* class furthest under its quota (the base's class shares on 2,000 samples, renormalised over the
user's liked classes; counted over the tuned queries shown so far in the session), and for the rest the first
disliked ones drawn. It is the best that a feature space separating the user's kinds perfectly could do with this
lever at the like share as drawn. ``--only-likes``: the first version, liked candidates while any is left (it also
shows more likes). The agent sees the user's classes: privileged, which is why this lives here and not in
``agents/``. ``--workers 1`` only.
"""

from __future__ import annotations

import sys

import torch
from oracle_strata import base_shares, user_classes

import papa_env.agents.papa as papa
import papa_env.harness as harness
from papa_env.agents.selection import quota_pick

_make_agent = harness.make_agent
state: dict = {}  # of the session being run (one at a time in this process)
ONLY_LIKES = "--only-likes" in sys.argv  # the first version: liked candidates first, whatever the share drawn


def quota_of_liked(features: torch.Tensor, n: int) -> torch.Tensor:
    """Stands in for ``k_center`` on the tuned candidates (``features``: one-hot user classes): as many liked ones as
    the first ``n`` drawn hold (the share the person would see as drawn), each of the liked class furthest under its
    quota, and the rest the first disliked ones drawn. With ``state["only_likes"]``: liked ones while any is left."""
    classes = features.argmax(1).tolist()
    is_liked = [bool(state["shares"][c] > 0) for c in classes]
    n_liked = n if state["only_likes"] else sum(is_liked[:n])
    liked = [i for i in range(len(classes)) if is_liked[i]]
    strata = torch.tensor([classes[i] for i in liked], dtype=torch.long)
    picked = quota_pick(strata, state["shares"], state["counts"], min(n_liked, len(liked)))
    chosen = [liked[j] for j in picked]
    for i in chosen:
        state["counts"][classes[i]] += 1
    chosen += [i for i in range(len(classes)) if i not in chosen and not is_liked[i]][: n - len(chosen)]
    chosen += [i for i in range(len(classes)) if i not in chosen][: n - len(chosen)]  # too few dislikes drawn
    return torch.tensor(chosen, dtype=torch.long)


def make_agent(spec, env):
    agent = _make_agent(spec, env)
    if not getattr(agent, "cfg", None) or agent.cfg.tuned_candidates < 2:
        return agent
    user = env.unwrapped.oracle.unwrapped  # the classifier user, under any noise wrapper
    shares = base_shares(user)
    mask = torch.zeros(10)
    mask[list(user.preference)] = 1.0
    state["shares"] = shares * mask / (shares * mask).sum()
    state["counts"] = torch.zeros(10, dtype=torch.float64)
    state["only_likes"] = ONLY_LIKES
    agent.base_features = user_classes(user)
    return agent


if __name__ == "__main__":
    argv = [a for a in sys.argv[1:] if a != "--only-likes"]
    if "--workers" in argv and argv[argv.index("--workers") + 1] != "1":
        sys.exit("expected --workers 1: the change to the agent is made in this process only")
    papa.k_center = quota_of_liked
    harness.make_agent = make_agent
    harness.main(argv)
