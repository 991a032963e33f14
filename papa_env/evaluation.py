"""Privileged evaluation of a session: what the user and an independent judge think of fresh samples.

Nothing here spends budget or is seen by the agent (:class:`papa_env.env.Privileged`). :func:`papa_env.session.
run_session` calls an :class:`Evaluator` before the first interaction and every ``eval_every`` replies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from papa_env.metrics import embed, frechet_distance, judge


class Evaluator:
    """Privileged metrics of an agent's current samples (no budget spent).

    * ``eval/like_rate_oracle``: share of samples the (rational) user likes;
    * ``eval/like_rate_judge``: share the independent judge classifies into a liked class (classifier users);
    * ``eval/class_share/<c>`` and ``eval/max_class_share``: the judge's class shares (collapse check);
    * ``eval/judge_confidence``: mean max-softmax of the judge (sample quality);
    * ``eval/fd_to_base``: Frechet distance, in the judge's features, to the agent's samples before learning.

    Args:
        env: the (possibly wrapped) PreferenceEnv.
        n: samples per evaluation.
        seed: the samples of every evaluation start from the same noise (comparable across time).
    """

    def __init__(self, env, n: int = 200, seed: int = 12345) -> None:
        from papa_env.models import load_pretrained

        if n < 2:
            raise ValueError(f"an evaluation needs n >= 2 samples, got {n!r}")
        self.env = env.unwrapped
        self.n, self.seed = int(n), int(seed)
        self.judge = load_pretrained(f"{self.env.dataset}-judge")
        self.base_features: np.ndarray | None = None  # judge features of the samples before learning

    def settings(self) -> dict[str, Any]:
        """What makes two evaluations comparable (recorded in a run folder's config)."""
        return {"evaluator": type(self).__name__, "samples": self.n, "seed": self.seed}

    def set_base(self, base_samples: torch.Tensor) -> None:
        """The samples before learning (B, 1, 28, 28) in [-1, 1]: the reference of ``eval/fd_to_base``."""
        self.base_features = embed(self.judge, base_samples)

    def state_dict(self) -> dict[str, Any]:
        return {"base_features": self.base_features}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_features = state.get("base_features")

    def __call__(self, agent) -> tuple[dict[str, float], torch.Tensor]:
        images = agent.generate(self.n, torch.Generator().manual_seed(self.seed))
        rep = judge(self.judge, images)
        out = {
            "eval/like_rate_oracle": self.env.privileged.like_rate(images),
            "eval/judge_confidence": float(rep.confidence.mean()),
            "eval/max_class_share": float(rep.class_shares.max()),
        }
        liked = liked_classes(self.env)
        if liked is not None:  # the judge can say "liked" only for a taste made of classes
            out["eval/like_rate_judge"] = float(torch.isin(rep.labels, torch.tensor(liked)).float().mean())
        for c, s in enumerate(rep.class_shares):
            out[f"eval/class_share/{c}"] = float(s)
        if self.base_features is not None:
            out["eval/fd_to_base"] = frechet_distance(embed(self.judge, images), self.base_features)
        return out, images


def liked_classes(env) -> tuple[int, ...] | None:
    """The liked classes of a classifier user (its noise wrappers looked through); None for other users."""
    from papa_env.oracles import ClassifierOracle

    user = env.unwrapped.oracle.unwrapped
    return tuple(user.preference) if isinstance(user, ClassifierOracle) else None


FALL_Z = 3.0
"""How many standard errors of two evaluations' difference a like-rate fall must exceed to be flagged (with
``samples``): ~2% of the sessions of a model that never changes are flagged, whatever its like-rate or the number of
evaluations of a suite session (the fall is read against the best of the evaluations before it)."""


def _fall_se(best: float, now: float, samples: int) -> float:
    """The standard error of the difference of two like-rates, ``best`` and ``now``, each the share of ``samples``
    independent images (binomial)."""
    return float(np.sqrt((best * (1 - best) + now * (1 - now)) / samples))


def collapse_report(
    records: list[dict],
    max_share: float = 0.6,
    tolerance: float = 0.05,
    liked: tuple[int, ...] | None = None,
    reference: dict[int, float] | None = None,
    samples: int | None = None,
) -> list[str]:
    """Signs of collapse in a session's evaluations (empty list: none).

    A session collapses when the judge's like-rate (the user's, for users without a judge) falls more than
    ``tolerance`` below the best it reached before, or when its samples crowd onto one class. With ``samples`` (the
    images per evaluation) a fall must also be more than :data:`FALL_Z` standard errors of the difference of two
    like-rates measured on that many images: a 100-sample evaluation alone wobbles by +-0.04-0.05, so without it a
    session whose model never changes reads a fall in 31-84% of cases at like-rates 0.95-0.70, with it in ~2%
    (``docs/experiments/flag_noise.py``). Crowding, by what is
    known of the user: without ``liked``, one class holds more than ``max_share`` of the samples; with two or more
    liked classes, a liked class falls below half of its share among the base's liked samples (records[0]; the
    balance goal of the user suite: a 26% / 74% split the base model already has is not crowding) at two
    evaluations in a row (one dip of a 100-sample evaluation is within its noise), or a class the user does not
    like holds more than ``max_share``; with one liked class, only a disliked class holding more than ``max_share``
    (the liked one taking every sample is the goal). ``reference``: the base's class shares measured on a larger
    sample (:func:`base_class_shares`) instead of records[0]'s (see :func:`relative_balance`).
    """
    if samples is not None and samples < 1:
        raise ValueError(f"samples (images per evaluation) must be >= 1 or None, got {samples!r}")
    problems = []
    key = "eval/like_rate_judge" if records and "eval/like_rate_judge" in records[0] else "eval/like_rate_oracle"
    shares = liked is not None and bool(records) and f"eval/class_share/{liked[0]}" in records[0]
    low = [
        i > 0
        and shares
        and len(liked) > 1
        and (b := relative_balance(records, liked, i, reference)) is not None
        and b < 0.5
        for i in range(len(records))
    ]  # fmt: skip  (the first evaluation is the base: never crowded)
    best = -1.0
    for i, r in enumerate(records):
        if not shares:
            if r.get("eval/max_class_share", 0.0) > max_share and not (liked is not None and len(liked) == 1):
                problems.append(f"{r['replies']} replies: one class holds {r['eval/max_class_share']:.0%} of samples")
        else:
            top = max((k for k in r if k.startswith("eval/class_share/")), key=r.get)
            if int(top.rsplit("/", 1)[1]) not in liked and r[top] > max_share:
                problems.append(f"{r['replies']} replies: class {top.rsplit('/', 1)[1]}, not liked, holds "
                                f"{r[top]:.0%} of samples")  # fmt: skip
            if i and low[i - 1] and low[i]:
                balance = relative_balance(records, liked, i, reference)
                problems.append(f"{r['replies']} replies: a liked class at {balance:.2f} of its base share")
        if r[key] < best - tolerance and (samples is None or best - r[key] > FALL_Z * _fall_se(best, r[key], samples)):
            problems.append(f"{r['replies']} replies: {key} fell to {r[key]:.3f} from {best:.3f}")
        best = max(best, r[key])
    return problems


def relative_balance(
    records: list[dict], liked: tuple[int, ...], at: int = -1, reference: dict[int, float] | None = None
) -> float | None:
    """The smallest ratio, over the liked classes, of a class's share among the liked samples at evaluation ``at``
    to its share among the base model's liked samples: 1 keeps the base model's proportions, 0.5 means a liked class
    fell to half of its share. The base's shares are ``reference`` (class -> share of the base's samples, from
    :func:`base_class_shares`) or else the first evaluation's (records[0], before learning) — a 100-sample estimate
    whose noise alone pulls the minimum down (``benchmarks/balance_noise.py``). None with fewer than 2 liked
    classes, no class shares, or no liked sample from the base."""
    if len(liked) < 2 or f"eval/class_share/{liked[0]}" not in records[0]:
        return None
    if reference is not None:
        base = np.array([reference.get(c, 0.0) for c in liked])
    else:
        base = np.array([records[0][f"eval/class_share/{c}"] for c in liked])
    now = np.array([records[at][f"eval/class_share/{c}"] for c in liked])
    if base.sum() <= 0:
        return None  # the base drew no liked sample: no share to keep
    if now.sum() <= 0:
        return 0.0
    base, now = base / base.sum(), now / now.sum()
    return float(min(n / b for n, b in zip(now, base) if b > 0))


def base_reference(
    unet: torch.nn.Module, judge_net: torch.nn.Module, n: int = 2000, seed: int = 0, batch: int = 500, **sampling: Any
) -> dict[str, Any]:
    """The judge's reading of ``n`` samples of a (base) model, drawn in batches of ``batch`` with the default sampler
    unless ``sampling`` (sampler, num_steps, eta) says otherwise: ``shares`` (class -> share, the reference of
    :func:`relative_balance`) and ``confidence`` (the mean max-softmax, the user suite's quality reference). Every
    evaluation of a session draws the same noises, so its first one is a single 100-sample draw shared by all the
    sessions of an env: the shipped MNIST model reads 0.902 there and 0.920 on 2,000 samples."""
    from papa_env.diffusion import sample

    if n < 1:
        raise ValueError(f"base_reference needs n >= 1 samples, got {n!r}")
    gen, counts, confidence = torch.Generator().manual_seed(seed), np.zeros(10), 0.0
    with torch.no_grad():
        for start in range(0, n, batch):
            report = judge(judge_net, sample(unet, min(batch, n - start), generator=gen, **sampling))
            counts += np.bincount(report.labels.numpy(), minlength=10)[:10]
            confidence += float(report.confidence.double().sum())
    return {"shares": {c: float(v / n) for c, v in enumerate(counts)}, "confidence": confidence / n}


def base_class_shares(
    unet: torch.nn.Module, judge_net: torch.nn.Module, n: int = 2000, seed: int = 0, batch: int = 500, **sampling: Any
) -> dict[int, float]:
    """The class shares of :func:`base_reference`."""
    return base_reference(unet, judge_net, n, seed, batch, **sampling)["shares"]


def session_metrics(
    records: list[dict],
    liked: tuple[int, ...] | None = None,
    target: float = 0.9,
    reference: dict[int, float] | None = None,
    samples: int | None = None,
    base_confidence: float | None = None,
) -> dict[str, Any]:
    """What the user suite reports of one session (issue 22): like-rate at every evaluation, replies to first reach
    ``target`` (feedback efficiency; None if never), the liked share of what the user was shown, judge confidence
    before and after (and ``base_confidence``, the base's on many samples, when given: :func:`base_reference`;
    :func:`confidence_start` reads it first), the relative balance of the liked classes at the end
    (:func:`relative_balance`, against ``reference`` when given), collapse flags (a like-rate fall read against
    the noise of ``samples`` images per evaluation when given: :func:`collapse_report`) and the update's compute per
    interaction (optimizer steps, update rows; issue 23)."""
    key = "eval/like_rate_judge" if "eval/like_rate_judge" in records[0] else "eval/like_rate_oracle"
    reached = [r["replies"] for r in records if r[key] >= target]
    return {
        "metric": key.removeprefix("eval/"),
        "like_rate": {str(r["replies"]): r[key] for r in records},
        "replies_to_target": reached[0] if reached else None,
        "target": target,
        "shown_like_rate": records[-1].get("session/shown_like_rate"),
        "judge_confidence": [records[0]["eval/judge_confidence"], records[-1]["eval/judge_confidence"]],
        "base_confidence": base_confidence,
        "relative_balance": relative_balance(records, liked, reference=reference) if liked else None,
        "collapse": collapse_report(records, liked=liked, reference=reference, samples=samples),
        "optimizer_steps_per_interaction": per_interaction(records, "compute/updates"),
        "update_rows_per_interaction": per_interaction(records, "compute/rows"),
    }


def per_interaction(records: list[dict], key: str) -> float | None:
    """A session's mean of ``key`` per interaction (``compute/updates``: optimizer steps; ``compute/rows``: the
    (image, timestep) rows backpropagated through the UNet): each record holds its mean over the interactions since
    the one before (:mod:`papa_env.session`), weighted here by the replies between them. None if never logged.
    Records written before 2026-12-07 hold the last interaction's count instead: the same for a constant schedule."""
    pairs = [(r["replies"] - prev["replies"], r[key]) for prev, r in zip(records, records[1:]) if key in r]
    weight = sum(w for w, _ in pairs)
    return round(sum(w * v for w, v in pairs) / weight, 2) if weight else None


def confidence_start(metrics: dict[str, Any]) -> float:
    """The judge confidence a session's end is read against: the base's on many samples where the session was
    scored with one (``base_confidence``), else its own first evaluation."""
    base = metrics.get("base_confidence")
    return metrics["judge_confidence"][0] if base is None else base


def summarize(records: list[dict], liked: tuple[int, ...] | None = None, samples: int | None = None) -> dict[str, Any]:
    """A session's evaluations in one line: like-rate at each evaluation (the judge's where the taste is made of
    classes, else the user's), judge confidence before -> after, the largest class share at any evaluation, each
    liked class's share at the end, seconds per interaction, update rows and any collapse."""
    if not records:
        return {"replies": []}  # a session run without evaluations
    key = "eval/like_rate_judge" if "eval/like_rate_judge" in records[0] else "eval/like_rate_oracle"
    liked_shares = {str(c): round(records[-1][f"eval/class_share/{c}"], 3) for c in liked or ()}
    secs = [r["charts/seconds_per_interaction"] for r in records if "charts/seconds_per_interaction" in r]
    return {
        "metric": key.removeprefix("eval/"),
        "replies": [r["replies"] for r in records],
        "like_rate": [round(r[key], 3) for r in records],
        "user_like_rate": [round(r["eval/like_rate_oracle"], 3) for r in records],
        "judge_confidence": [
            round(records[0]["eval/judge_confidence"], 3),
            round(records[-1]["eval/judge_confidence"], 3),
        ],
        "max_class_share_any": round(max(r["eval/max_class_share"] for r in records), 3),
        "liked_shares_end": liked_shares,
        "min_liked_share_end": min(liked_shares.values(), default=None),
        "shown_like_rate": records[-1].get("session/shown_like_rate"),
        "seconds_per_interaction": round(float(np.mean(secs)), 2) if secs else None,
        "optimizer_steps_per_interaction": per_interaction(records, "compute/updates"),
        "update_rows_per_interaction": per_interaction(records, "compute/rows"),
        "collapse": collapse_report(records, liked=liked, samples=samples),
    }
