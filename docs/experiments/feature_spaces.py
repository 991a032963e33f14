"""A diagnostic of issue 22: which of the agent's own feature spaces lets the reward filter's ridge ensemble tell a
liked class from its disliked neighbours? (``oracle_backfill.py`` found the ensemble in the base UNet's mid-block
features at t = 200, pooled 2 x 2, rejecting 42-45 of 46 base-drawn shirts on ``fashion-3-6-7``.)

    python docs/experiments/feature_spaces.py RUN_DIR [--tag suite-tuning] [--tastes A,B] [--draws 400]
        [--spaces mid200x2,mid50x2,...] [--oracle-fit N] [--out FILE]

For each finished multi-class session under ``RUN_DIR/<tag>``, the agent after its last reply is loaded; its replies
(the buffer the filter fits on: what the user answered, nothing more) are embedded in each feature space and the same
ensemble as the agent's (``make_selector("disagreement")``: 8 bootstrap ridge members) is fitted on them. Fresh draws
of the frozen base model and of the tuned model (``--draws`` each, seeded) are then labelled by the user's own
classifier -- privileged, which is why this is a diagnostic here and not in ``agents/`` -- and the ensemble's mean
score is read against those labels: ROC AUC on the base draws; per liked class, its AUC against the disliked draws and
the share of its base draws predicted liked (score > 0), the worst liked class being the backfill's limit; and the
precision of the predicted likes among the tuned draws (what the filter shows).

A feature space is named ``<block><t>x<pool>``: the base UNet's ``mid`` block, or ``down0`` / ``down1`` (the 28 -> 14
and 14 -> 7 down blocks' outputs), run on the noiseless part of x_t at timestep t, average-pooled to pool x pool, taken
as its direction and log-norm (``UNetFeatures`` with those three); ``+`` joins spaces; ``random`` is the agent's fixed
random network; a trailing ``~rbf`` maps the space through 2,048 random Fourier features of a Gaussian kernel
(bandwidth: the median distance between the fitted images' standardised features), so the same ridge ensemble fits a
nonlinear reward (kernel ridge, approximately): whether a nonlinear head over the space separates what a linear one
cannot. ``--oracle-fit N`` fits on N fresh base draws labelled by the user's classifier instead: how far a space
goes with replies spread as the base draws (a bound, not something an agent can have).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from oracle_backfill import user_classes  # the user's own classifier: privileged
from reward_filter_final import _env, finished_sessions  # a session's environment; the sessions of a run


def make_space(name: str, base: torch.nn.Module):
    """``name`` (see the module docstring) -> images (N, 1, 28, 28) -> features (N, D)."""
    from papa_env.agents.selection import RandomFeatures, UNetFeatures

    parts = []
    for part in name.split("+"):
        if part == "random":
            parts.append(RandomFeatures(0))
            continue
        block = "mid" if part.startswith("mid") else part[: len("down") + 1]
        t, pool = part[len(block) :].split("x")
        parts.append(UNetFeatures(base, int(t), int(pool), block))
    return lambda images: torch.cat([torch.cat([p(x) for p in parts], 1) for x in images.split(250)])


def rbf_head(space, fit_images: torch.Tensor, width: int = 2048, seed: int = 0):
    """``space`` followed by random Fourier features of a Gaussian kernel, standardised and scaled on ``fit_images``."""
    f = space(fit_images)
    mean, std = f.mean(0), f.std(0).clamp_min(1e-6)
    z = (f - mean) / std
    bandwidth = torch.cdist(z, z).median().clamp_min(1e-6)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(z.shape[1], width, generator=g, dtype=z.dtype) / bandwidth
    b = torch.rand(width, generator=g, dtype=z.dtype) * 2 * torch.pi
    return lambda images: torch.cos((space(images) - mean) / std @ w + b) * (2 / width) ** 0.5


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """ROC AUC of ``score`` for the boolean ``label`` (ties count a half)."""
    pos, neg = score[label], score[~label]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).mean()
    return float(greater + 0.5 * (pos[:, None] == neg[None, :]).mean())


def main(argv: list[str] | None = None) -> list[dict]:
    from papa_env.agents.papa import PAPA, PAPAConfig
    from papa_env.agents.selection import make_selector
    from papa_env.checkpoint import load_state
    from papa_env.diffusion import sample
    from papa_env.evaluation import liked_classes
    from papa_env.models import load_pretrained

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--tag", default="suite-tuning", help="the suite's folder under RUN_DIR")
    p.add_argument("--tastes", help="only these tastes (comma-separated)")
    p.add_argument("--draws", type=int, default=400, help="fresh draws of each model to score")
    p.add_argument(
        "--spaces",
        default="mid200x2,mid50x2,mid200x4,mid50x4,down1200x4,down0200x4,mid50x2+mid400x2,mid200x2+random,random",
    )
    p.add_argument("--oracle-fit", type=int, default=0, metavar="N",
                   help="fit on N fresh base draws labelled by the user's classifier instead of the session's replies "
                        "(how far the space goes with replies spread as the base draws)")  # fmt: skip
    p.add_argument("--out", help="write one JSON line per session here")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    known = {f.name for f in fields(PAPAConfig)}
    spaces = a.spaces.split(",")
    rows = []
    for folder, config, _, result in finished_sessions(Path(a.run_dir) / a.tag, a.tastes):
        env = _env(result["spec"])
        liked = liked_classes(env)
        if len(liked) < 2:
            continue
        cfg = PAPAConfig(**{k: v for k, v in config["agent_config"].items() if k in known})
        agent = PAPA(load_pretrained(env.unwrapped.base_model), cfg)
        agent.load_state_dict(load_state(folder / "checkpoint.safetensors")["agent"])

        user_class = user_classes(env.unwrapped.oracle.unwrapped)  # the classifier user, under any noise wrapper

        def classes(images: torch.Tensor, user_class=user_class) -> np.ndarray:
            return user_class(images).numpy()

        g = torch.Generator().manual_seed(1000 + result["spec"]["seed"])
        with torch.no_grad():
            base = sample(agent.base, a.draws, generator=g, **agent.sampling)
            tuned = sample(agent.policy, a.draws, generator=g, **agent.sampling)
            fit_x, fit_y = agent.buffer_x.cpu(), agent.buffer_y.cpu()
            if a.oracle_fit:
                fit_x = sample(agent.base, a.oracle_fit, generator=g, **agent.sampling)
                fit_y = torch.as_tensor(np.isin(classes(fit_x), liked), dtype=torch.float64) * 2 - 1
        base_c, tuned_c = classes(base), classes(tuned)
        base_y, tuned_y = np.isin(base_c, liked), np.isin(tuned_c, liked)
        row = {"taste": folder.parent.name, "seed": result["spec"]["seed"], "replies": len(fit_y),
               "base_liked": float(base_y.mean()), "tuned_liked": float(tuned_y.mean())}  # fmt: skip
        for name in spaces:
            features = make_space(name.removesuffix("~rbf"), agent.base)
            if name.endswith("~rbf"):
                features = rbf_head(features, fit_x, seed=cfg.seed)
            ensemble = make_selector("disagreement", cfg.seed)
            ensemble.observe(features(fit_x), fit_y)
            sb = ensemble.scores(features(base)).mean(0).numpy()
            st = ensemble.scores(features(tuned)).mean(0).numpy()
            recall = {int(c): float((sb[base_c == c] > 0).mean()) for c in liked if (base_c == c).any()}
            worst = min(auc(sb[(base_c == c) | ~base_y], base_c[(base_c == c) | ~base_y] == c) for c in recall)
            precision = float(tuned_y[st > 0].mean()) if (st > 0).any() else float("nan")
            row[name] = {"auc": auc(sb, base_y), "worst_auc": worst, "worst_recall": min(recall.values()),
                         "recall": float((sb[base_y] > 0).mean()), "false": float((sb[~base_y] > 0).mean()),
                         "tuned_precision": precision}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        "| space | base AUC | worst liked class's AUC | liked recall | worst liked class recall | disliked passed | "
        "tuned precision |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in spaces:
        m = {k: np.nanmean([r[name][k] for r in rows]) for k in rows[0][name]}
        cells = ("auc", "worst_auc", "recall", "worst_recall", "false", "tuned_precision")
        print(f"| {name} | " + " | ".join(f"{m[c]:.3f}" for c in cells) + " |")
    if a.out:
        Path(a.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


if __name__ == "__main__":
    main()
