"""A diagnostic of issue 22, never a candidate: would the base model as a backfill for the reward filter's strata
(``generate_base_candidates``, 87e3695, refuted offline; lab log ``suite-defaults.md``, last section) restore the
balance if the strata separated the classes? The strata here are the *user's own classifier's* classes: privileged,
which is why this lives here and not in ``agents/``.

    python docs/experiments/oracle_backfill.py RUN_DIR [--tag suite-tuning] [--tastes A,B] [--sessions T:S,..]
        [--base-candidates 4] [--out FILE]

For each finished session under ``RUN_DIR/<tag>/<taste>/<agent>-s<seed>`` this loads the agent after the last reply
with the gate's filter (``generate_candidates`` 4, ``generate_strata_prior`` 2, ``generate_optimism`` 1) and draws
the session's last evaluation (the same ``Evaluator``, seed and size) three ways, printing the judge like-rate and the
relative balance (the base's shares from ``RUN_DIR/<tag>/base_reference.json``) of each:

- ``gate``: the agent's own filter (k-means strata of its features, ``generate_strata`` 10);
- ``classes``: the same filter with the user's classes as strata, each class's share the likes of the base model's
  queries in it (shrunk by the prior, as the agent computes its strata's shares);
- ``classes+base``: that, and B x n base-model candidates a class takes (by the ensemble's mean > 0) once its
  tuned candidates predicted liked are used up (never to make up a shortfall of predicted likes); and per liked
  class, how many base-model candidates it had and how many the ensemble predicted liked.

The tuned draws are the same in the three (the first n: the weights alone).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch
from reward_filter_final import _env, finished_sessions  # a session's environment; the sessions of a run


def class_filter(agent, classes, base_candidates: int, seen: dict | None = None):
    """``generate`` of ``agent`` with ``classes(images)`` -> (N,) as its strata; ``base_candidates`` x n draws of the
    frozen base model as the backfill (0: none). ``seen``: filled with, per class, how many base-model candidates it
    had and how many of them the ensemble predicts liked."""
    from papa_env.agents.selection import stratified_pick
    from papa_env.diffusion import sample

    def generate(n: int, generator: torch.Generator) -> torch.Tensor:
        cfg = agent.cfg
        images = torch.cat([sample(agent.policy, n, generator=generator, **agent.sampling)
                            for _ in range(cfg.generate_candidates)])  # fmt: skip
        tuned = len(images)
        if base_candidates:
            images = torch.cat([images, sample(agent.base, base_candidates * n, generator=generator, **agent.sampling)])
        members = agent.reward_model().scores(torch.cat([agent.reward_features(x) for x in images.split(250)]))
        score = agent._filter_score(members)
        backup = torch.arange(len(images)) >= tuned
        score[backup] = members[:, backup].mean(0).to(score.dtype)
        strata = classes(images)
        if seen is not None:
            for c in range(10):
                mine = backup & (strata == c)
                seen[c] = (int(mine.sum()), int((mine & (score > 0)).sum()))
        replied = classes(agent.buffer_x)  # the strata's shares: the likes of base-model queries, as the agent's
        liked, base = agent.buffer_y.cpu() > 0, agent.buffer_src.cpu() > 0
        replies = base if bool((liked & base).any()) else torch.ones_like(liked)
        count = torch.bincount(replied[liked & replies], minlength=10).double()
        if a := cfg.generate_strata_prior:
            asked = torch.bincount(replied[replies], minlength=10).double()
            count = asked * (count + a * count.sum() / asked.sum()) / (asked + a)
        shares = count / count.sum().clamp_min(1)
        return images[stratified_pick(score, strata, shares, n, torch.zeros(10), backup)]

    return generate


def user_classes(user):
    """(N,) images -> the user's own classifier's class of each: privileged."""
    return lambda images: torch.cat([user.probabilities(x.float()).argmax(-1) for x in images.split(250)])


def main(argv: list[str] | None = None) -> list[dict]:
    from papa_env.agents.papa import PAPA, PAPAConfig
    from papa_env.checkpoint import load_state
    from papa_env.evaluation import Evaluator, liked_classes, relative_balance
    from papa_env.models import load_pretrained

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--tag", default="suite-tuning", help="the suite's folder under RUN_DIR")
    p.add_argument("--tastes", help="only these tastes (comma-separated)")
    p.add_argument("--sessions", help="only these sessions (comma-separated TASTE:SEED)")
    p.add_argument("--base-candidates", type=int, default=4, help="B: base-model draws per image for the backfill")
    p.add_argument("--out", help="write one JSON line per session here")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(a.run_dir) / a.tag
    cache = json.loads((root / "base_reference.json").read_text())
    known = {f.name for f in fields(PAPAConfig)}
    rows = []
    for folder, config, records, result in finished_sessions(root, a.tastes):
        if a.sessions and f"{folder.parent.name}:{result['spec']['seed']}" not in a.sessions.split(","):
            continue
        env = _env(result["spec"])
        liked = liked_classes(env)
        if len(liked) < 2:
            continue  # no balance to restore
        cfg = PAPAConfig(**{k: v for k, v in config["agent_config"].items() if k in known})
        cfg = replace(cfg, generate_candidates=4, generate_strata=10, generate_strata_prior=2.0, generate_optimism=1.0)
        agent = PAPA(load_pretrained(env.unwrapped.base_model), cfg)
        agent.load_state_dict(load_state(folder / "checkpoint.safetensors")["agent"])
        classes = user_classes(env.unwrapped.oracle.unwrapped)  # the classifier user, under any noise wrapper
        key = next(k for k in cache if k.startswith(f"{result['spec']['env']}|"))
        reference = {int(c): s for c, s in cache[key].items()}
        evaluate = Evaluator(env, n=config["evaluation"]["samples"], seed=config["evaluation"]["seed"])
        last = records[-1]
        row = {"taste": folder.parent.name, "seed": result["spec"]["seed"], "replies": last["replies"],
               "stored_like": last.get("eval/like_rate_judge", last["eval/like_rate_oracle"])}  # fmt: skip
        seen: dict[int, tuple[int, int]] = {}
        for name, generate in (("gate", agent.generate), ("classes", class_filter(agent, classes, 0)),
                               ("classes+base", class_filter(agent, classes, a.base_candidates, seen))):  # fmt: skip
            agent.generate = generate
            metrics, _ = evaluate(agent)
            row[f"{name}_like"] = metrics.get("eval/like_rate_judge", metrics["eval/like_rate_oracle"])
            row[f"{name}_balance"] = relative_balance([records[0], metrics], liked, -1, reference)
        row["base_predicted_liked"] = {c: seen[c] for c in liked}  # class: (base candidates, predicted liked)
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    for name in ("gate", "classes", "classes+base"):
        bal = np.array([r[f"{name}_balance"] for r in rows])
        like = np.mean([r[f"{name}_like"] for r in rows])
        print(f"{name}: {len(rows)} sessions, judge like-rate {like:.3f}, mean balance {bal.mean():.3f}, "
              f"under 0.5: {(bal < 0.5).sum()}")  # fmt: skip
    if a.out:
        Path(a.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


if __name__ == "__main__":
    main()
