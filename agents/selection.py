"""Active queries: draw a pool of M candidates cheaply, then choose which K the user is asked about.

Preference learning's classic lever (PEBBLE and B-Pref: ensemble disagreement / entropy of a reward model fitted on
the replies so far). An agent draws its pool (:func:`draw_pool`: from its tuned model and, optionally, the frozen
base model), a :class:`Selector` picks K of them, the user answers those, and the selector sees the replies
(``observe``). A selector sees only the agent's own samples and the replies: never the user, the judge or the env's
privileged access. Its state (the replies' features and labels, its generator) is saved with the agent, so a
resumed session chooses exactly as before.

Rules (``SELECTORS``):

* ``random``: the first K of the pool (with M = K: the agent's queries as they were drawn; the control);
* ``disagreement``: where an ensemble of reward models fitted on the replies so far disagrees most (PEBBLE);
* ``entropy``: where the ensemble's mean prediction is least sure (B-Pref's entropy);
* ``diversity``: spread over the pool (greedy k-center) in the agent's own feature space;
* ``liked``: mostly the predicted likes, what a person sees (``liked_share`` of K, spread by k-center over the pool's
  2 x as many likeliest), the rest by disagreement, shown alternately (a pairwise user's pairs then each hold a
  predicted like and a disputed image);
* ``thompson``: the top K of one ensemble member drawn at random (Thompson sampling);
* ``proportional``: K drawn at random with known inclusion probabilities, higher for the predicted likes
  (:func:`inclusion_probabilities`, :func:`systematic_sample`): a person is shown more of what they like, and an
  agent that weights each reply by K / (M x its inclusion probability) (Horvitz-Thompson) learns in expectation
  what it would from K of the pool drawn at random (``inclusion``; PAPA does).

Features (``FEATURES``), both the agent's own: ``unet``, the frozen base UNet's mid-block activations at t = 200,
average-pooled to 2 x 2, as a direction and a log-norm (``UNetFeatures``); ``random``, a fixed, seeded random
network on the pixels (``RandomFeatures``: what a base model whose features carry little, e.g. an untrained one,
still offers). The reward models are ridge regressions of the replies (+1 / -1) on
them and a bias, each on a bootstrap resample of the replies (a deterministic, millisecond fit).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from papa_env.diffusion import sample, sample_many


class Pool(NamedTuple):
    """Candidate queries: images (M, 1, 28, 28) in [-1, 1], which model drew each (M,) (0 tuned, 1 base), and their
    features (M, D)."""

    images: torch.Tensor
    source: torch.Tensor
    features: torch.Tensor


def draw_pool(policy, base, n_tuned: int, n_base: int, features: Any, generator: torch.Generator,
              side_by_side: bool = True, **sampler: Any) -> Pool:  # fmt: skip
    """``n_tuned`` samples of ``policy`` then ``n_base`` of ``base``, from one generator stream (the two models side
    by side: :func:`papa_env.diffusion.sample_many`), with ``features(images)`` (None: no features)."""
    if n_tuned and n_base:
        images = torch.cat(sample_many([policy, base], [n_tuned, n_base], generator=generator,
                                       side_by_side=side_by_side, **sampler))  # fmt: skip
    else:
        images = sample(policy if n_tuned else base, n_tuned + n_base, generator=generator, **sampler)
    source = torch.cat([torch.zeros(n_tuned, dtype=torch.long), torch.ones(n_base, dtype=torch.long)])
    return Pool(images, source, features(images) if features is not None else torch.zeros(len(images), 0))


class UNetFeatures:
    """The frozen base UNet's mid-block activations at t = 200 for an image, average-pooled to 2 x 2: their direction
    (L2-normalised) and their log-norm. Features the agent owns (neither the user's nor the judge's classifier).
    ``block`` ("mid", or "down0", "down1", ...: that down block's output), ``t`` and ``pool`` pick others (the
    diagnostic ``docs/experiments/feature_spaces.py`` compares them)."""

    def __init__(self, base: torch.nn.Module, t: int = 200, pool: int = 2, block: str = "mid") -> None:
        self.base, self.t, self.pool = base, t, pool
        downs = [f"down{i}" for i in range(len(base.down_blocks))]
        if block != "mid" and block not in downs:
            raise ValueError(f"block must be 'mid' or one of {downs}, got {block!r}")
        self.block = base.mid_block if block == "mid" else base.down_blocks[downs.index(block)]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from papa_env.diffusion import noise_schedule

        captured: list[torch.Tensor] = []  # a down block returns (output, skips)
        hook = self.block.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
        try:
            abar = noise_schedule()[0][self.t]
            # the deterministic part of x_t (no noise): what the base sees of the image at t
            x_t = abar.sqrt() * images.to(next(self.base.parameters()).device)
            self.base(x_t, torch.full((len(images),), self.t, device=x_t.device))
        finally:
            hook.remove()
        if self.pool > min(captured[0].shape[-2:]):
            raise ValueError(f"pool must be <= the block's map size {tuple(captured[0].shape[-2:])}, got {self.pool}")
        f = torch.nn.functional.adaptive_avg_pool2d(captured[0], self.pool).flatten(1).float().cpu()
        norm = f.norm(dim=1, keepdim=True).clamp_min(1e-8)
        return torch.cat([f / norm, norm.log()], 1)  # the direction, and the magnitude on its own


class RandomFeatures:
    """A fixed random network on the pixels (seeded; never trained): the image average-pooled to 4 x 4, and 32 random
    5 x 5 then 3 x 3 ReLU convolutions average-pooled to 2 x 2 (144 features)."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(16, 1, 5, 5, generator=g) / 5  # ~unit-variance activations for unit-variance pixels
        self.w2 = torch.randn(32, 16, 3, 3, generator=g) / 12

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().cpu()
        h = torch.relu(torch.nn.functional.conv2d(x, self.w1, stride=2, padding=2))
        h = torch.relu(torch.nn.functional.conv2d(h, self.w2, stride=2, padding=1))
        pool = torch.nn.functional.adaptive_avg_pool2d
        return torch.cat([pool(x, 4).flatten(1), pool(h, 2).flatten(1)], 1)


FEATURES = ("unet", "random")


def make_features(name: str, base: torch.nn.Module, seed: int = 0) -> Any:
    """The selector's feature space ``name`` (one of :data:`FEATURES`) for an agent around the frozen ``base``."""
    if name not in FEATURES:
        raise ValueError(f"unknown feature space {name!r}; expected one of {FEATURES}")
    return UNetFeatures(base) if name == "unet" else RandomFeatures(seed)


class Selector(Protocol):
    """What an agent asks of a query selector."""

    name: str

    def select(self, pool: Pool, k: int, generator: torch.Generator) -> torch.Tensor:
        """(k,) indices into the pool: the candidates shown to the user, in the order shown."""

    def inclusion(self, pool: Pool, k: int) -> torch.Tensor | None:
        """(M,) each candidate's probability of being shown by ``select``, where the rule draws at random with known
        probabilities (the agent can then weight the replies back); None otherwise."""

    def observe(self, features: torch.Tensor, replies: torch.Tensor) -> None:
        """The replies (B,) in {+1, -1, 0} to shown candidates with ``features`` (B, D)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class RandomSelector:
    """The first K of the pool: with a pool of exactly K, the queries as they were drawn (the control)."""

    name = "random"

    def select(self, pool: Pool, k: int, generator: torch.Generator) -> torch.Tensor:
        return torch.arange(k)

    def inclusion(self, pool: Pool, k: int) -> None:
        return None  # a fixed choice: nothing to weight back

    def observe(self, features: torch.Tensor, replies: torch.Tensor) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class EnsembleSelector:
    """Rules on an ensemble of ridge-regression reward models fitted online on the replies so far.

    Args:
        rule: ``disagreement``, ``entropy``, ``diversity``, ``liked``, ``thompson`` or ``proportional`` (see the
            module docstring).
        members: ensemble size; each member sees a bootstrap resample of the replies.
        ridge: the L2 penalty of each member.
        liked_share: with ``liked``, the share of the K chosen as the predicted likes (the rest informative).
        seed: seed of the bootstrap resamples.
    """

    def __init__(self, rule: str = "disagreement", members: int = 8, ridge: float = 1.0, liked_share: float = 0.7,
                 seed: int = 0) -> None:  # fmt: skip
        if rule not in ("disagreement", "entropy", "diversity", "liked", "thompson", "proportional"):
            raise ValueError(f"unknown selection rule {rule!r}; expected one of {sorted(SELECTORS)}")
        if members < 2 or ridge <= 0 or not 0 <= liked_share <= 1:
            raise ValueError("members must be >= 2, ridge > 0 and liked_share in [0, 1]")
        self.name, self.members, self.ridge, self.liked_share, self.seed = rule, members, ridge, liked_share, seed
        self.features = torch.zeros(0, 0)
        self.labels = torch.zeros(0)
        self.weights: torch.Tensor | None = None  # (members, D)

    def observe(self, features: torch.Tensor, replies: torch.Tensor) -> None:
        keep = replies != 0  # skips say nothing about the taste
        new_f, new_y = features[keep].double(), replies[keep].double()
        self.features = new_f if not len(self.features) else torch.cat([self.features, new_f])
        self.labels = torch.cat([self.labels.double(), new_y])
        self._fit()

    def _fit(self) -> None:
        """Each member: :func:`weighted_ridge` of the replies with the bootstrap counts as weights (deterministic
        per size); the features get a constant column (the bias, penalised like the rest)."""
        n = len(self.features)
        if n == 0:
            self.weights = None
            return
        features = _with_bias(self.features)
        g = torch.Generator().manual_seed(self.seed * 100_003 + n)
        counts = torch.stack([torch.bincount(torch.randint(n, (n,), generator=g), minlength=n) for _ in
                              range(self.members)]).double()  # fmt: skip
        self.weights = torch.stack([weighted_ridge(features, self.labels, c, self.ridge) for c in counts])

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """(members, M) each member's predicted reply (about +1 like, -1 dislike); zeros before any reply."""
        if self.weights is None:
            return torch.zeros(self.members, len(features), dtype=torch.float64)
        return self.weights @ _with_bias(features.double()).T

    def inclusion(self, pool: Pool, k: int) -> torch.Tensor | None:
        """(M,) the probability that ``select`` shows each candidate (``proportional``; None for the other rules,
        whose choice is not random): :func:`inclusion_probabilities` of the ensemble's mean predicted like."""
        if self.name != "proportional":
            return None
        return inclusion_probabilities(like_chance(self.scores(pool.features)), k)

    def select(self, pool: Pool, k: int, generator: torch.Generator) -> torch.Tensor:
        if self.name == "proportional":
            return systematic_sample(self.inclusion(pool, k), generator)
        s = self.scores(pool.features)
        if self.weights is None and self.name != "diversity":  # nothing learned yet: the drawn order
            return torch.arange(k)
        if self.name == "disagreement":
            return _top(s.std(0), k)
        if self.name == "entropy":
            p = torch.sigmoid(2 * s.mean(0))
            return _top(-(p * p.clamp_min(1e-12).log() + (1 - p) * (1 - p).clamp_min(1e-12).log()), k)
        if self.name == "diversity":
            return k_center(pool.features, k)
        if self.name == "thompson":
            member = int(torch.randint(self.members, (1,), generator=generator))
            return _top(s[member], k)
        n_liked = round(self.liked_share * k)  # "liked": predicted likes, then the most disputed of the rest
        likely = _top(s.mean(0), min(2 * n_liked, len(pool.images)))  # up to twice as many as needed: as many
        sure = int((s.mean(0) - s.std(0) > 0)[likely].sum())  # of the likeliest as the ensemble agrees are likes
        likely = likely[: max(n_liked, sure)]  # (mean - std > 0), at least n_liked; spread over them
        liked = likely[k_center(pool.features[likely], n_liked)] if n_liked else likely[:0]
        rest = torch.tensor([i for i in range(len(pool.images)) if i not in set(liked.tolist())])
        informative = rest[_top(s.std(0)[rest], k - n_liked)] if k > n_liked else rest[:0]
        return _alternate(liked, informative)

    def state_dict(self) -> dict[str, Any]:
        return {"features": self.features.clone(), "labels": self.labels.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.features, self.labels = state["features"].double(), state["labels"].double()
        self._fit()


def like_chance(scores: torch.Tensor) -> torch.Tensor:
    """(M,) a reward ensemble's mean predicted reply (its ``scores``: (members, M), about +1 like, -1 dislike) read
    as the chance of a like, in [0, 1]."""
    return ((1 + scores.mean(0)) / 2).clamp(0, 1)


def inclusion_probabilities(liked: torch.Tensor, k: int, uniform: float = 0.3) -> torch.Tensor:
    """(M,) inclusion probabilities summing to ``k``, each in [``uniform`` k / M, 1]: a mixture of probabilities
    proportional to ``liked`` (M,) (>= 0; capped at 1, the excess passed on to the rest in proportion) and, with weight
    ``uniform``, the same k / M for every candidate — so no candidate is shown with probability under
    ``uniform`` k / M and a Horvitz-Thompson weight, K / (M pi), stays under 1 / ``uniform``. Equal ``liked`` (or
    none > 0): k / M each."""
    m = len(liked)
    if not 0 < k <= m or not 0 < uniform <= 1:
        raise ValueError(f"expected 0 < k <= M and uniform in (0, 1], got k={k!r}, M={m}, uniform={uniform!r}")
    a = liked.double().clamp_min(0) + 1e-9
    pps, capped = torch.zeros(m, dtype=torch.float64), torch.zeros(m, dtype=torch.bool)
    for _ in range(m):  # proportional to a, capped at 1 (each round caps at least one more, or is done)
        pps = torch.where(capped, 1.0, (k - capped.sum()) * a / a[~capped].sum())
        if not bool((pps > 1 + 1e-12).any()):
            break
        capped |= pps > 1
    return (1 - uniform) * pps.clamp(max=1.0) + uniform * k / m


def systematic_sample(inclusion: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """round(sum pi) distinct candidates, each included with exactly its probability ``inclusion`` (M,) (each <= 1):
    systematic sampling (Madow) over a random order of the candidates (one uniform start u; candidate i is taken when
    a point u + j falls in its stretch of the cumulative sum). Returned in the random order."""
    order = torch.randperm(len(inclusion), generator=generator)
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), inclusion[order].double().cumsum(0)])
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    taken = torch.floor(cum[1:] - u + 1e-9) > torch.floor(cum[:-1] - u + 1e-9)  # a point u + j in (cum_i-1, cum_i]
    return order[taken]


def weighted_ridge(features: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, ridge: float) -> torch.Tensor:
    """(D,) w = argmin sum_i c_i (f_i . w - y_i)^2 + ridge |w|^2 = (F^T C F + ridge I)^-1 F^T C y for features F
    (N, D), targets y (N,) and weights c (N,). With fewer rows than features, the same w from the N x N system
    w = F^T C (F F^T C + ridge I)^-1 y (push-through identity): 3,137 unpooled UNet features fit in ms, not seconds."""
    n, d = features.shape
    if n < d:
        alpha = torch.linalg.solve(features @ features.T * weights[None, :] + ridge * torch.eye(n, dtype=y.dtype), y)
        return features.T @ (weights * alpha)
    fw = features * weights[:, None]
    return torch.linalg.solve(features.T @ fw + ridge * torch.eye(d, dtype=y.dtype), fw.T @ y)


def _with_bias(features: torch.Tensor) -> torch.Tensor:
    return torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype)], 1)


def _alternate(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``first[0], second[0], first[1], second[1], ...``, the longer one's rest at the end: consecutive queries are
    a pair for a pairwise user (agents/pairwise.py), so each pair holds one of each while both last."""
    n = min(len(first), len(second))
    both = torch.stack([first[:n], second[:n]], 1).reshape(-1)
    return torch.cat([both, first[n:], second[n:]])


def _top(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest values, ties broken by position (a stable, deterministic choice)."""
    order = sorted(range(len(values)), key=lambda i: (-float(values[i]), i))
    return torch.tensor(order[:k], dtype=torch.long)


def _farthest_first(f: torch.Tensor, dist: torch.Tensor, chosen: list[int], k: int) -> torch.Tensor:
    """Add to ``chosen`` the candidate farthest (squared distance ``dist``) from those chosen, until there are k."""
    dist[chosen] = -1.0  # never chosen twice, duplicates included
    while len(chosen) < k:
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = torch.minimum(dist, ((f - f[nxt]) ** 2).sum(1))
        dist[chosen] = -1.0
    return torch.tensor(chosen, dtype=torch.long)


def k_center(features: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy k-center: start at the candidate nearest the pool's mean, then repeatedly add the one farthest from
    those chosen (spreads the K over the pool)."""
    f = features.double()
    first = int(((f - f.mean(0)) ** 2).sum(1).argmin())
    return _farthest_first(f, ((f - f[first]) ** 2).sum(1), [first], k)


def spread_from(features: torch.Tensor, shown: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy k-center continued from ``shown`` (S, D), the features of what was chosen before: repeatedly the
    candidate farthest from everything chosen so far (without ``shown``: :func:`k_center`)."""
    if not len(shown):
        return k_center(features, k)
    f = features.double()
    return _farthest_first(f, torch.cdist(f, shown.double()).pow(2).min(1).values, [], k)


def kmeans(features: torch.Tensor, k: int, generator: torch.Generator, iters: int = 25) -> torch.Tensor:
    """(k, D) centroids of Lloyd's k-means on ``features`` (N, D), k-means++ seeding from ``generator``."""
    f = features.double()
    centroids = f[torch.randint(len(f), (1,), generator=generator)]
    while len(centroids) < k:
        d2 = torch.cdist(f, centroids).pow(2).min(1).values
        nxt = torch.multinomial(d2 / d2.sum() if d2.sum() > 0 else torch.ones(len(f)), 1, generator=generator)
        centroids = torch.cat([centroids, f[nxt]])
    for _ in range(iters):
        nearest = torch.cdist(f, centroids).argmin(1)
        centroids = torch.stack([f[nearest == j].mean(0) if (nearest == j).any() else centroids[j] for j in range(k)])
    return centroids.float()


def quota_pick(strata: torch.Tensor, shares: torch.Tensor, counts: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` of the candidates (their strata (M,)), one at a time the one whose stratum is furthest under its quota
    (``shares`` (S,) of everything shown; ``counts`` (S,) shown so far): systematic, not independent, sampling, so a
    few picks already follow ``shares`` (ties: the first candidate)."""
    counts, shares, chosen = counts.double().tolist(), shares.double().tolist(), []
    waiting: dict[int, list[int]] = {}  # stratum -> its candidates not yet chosen, in order
    for i, s in enumerate(strata.tolist()):
        waiting.setdefault(s, []).append(i)
    for _ in range(min(n, len(strata))):
        total = sum(counts) + 1
        s = max((s for s in waiting if waiting[s]), key=lambda s: (shares[s] * total - counts[s], -waiting[s][0]))
        chosen.append(waiting[s].pop(0))
        counts[s] += 1
    return torch.tensor(chosen, dtype=torch.long)


def rejection_draw(draw: Any, score: Any, n: int, candidates: int) -> torch.Tensor:
    """``n`` images, each the first of up to ``candidates`` draws that ``score`` predicts liked (> 0), else the best
    scored of them: rejection sampling by a reward model. ``draw(k)`` -> (k, ...) images; ``score(images)`` -> (k,).
    Only the images not yet predicted liked are drawn again, so it costs about 1 / (the predicted like-rate) draws
    per image, at most ``candidates``."""
    images = draw(n)
    best = score(images)
    for _ in range(candidates - 1):
        again = (best <= 0).nonzero().flatten()
        if not len(again):
            break
        new = draw(len(again))
        new_score = score(new)
        better = new_score > best[again]
        images[again[better]] = new[better]
        best[again[better]] = new_score[better]
    return images


def stratified_pick(score: torch.Tensor, strata: torch.Tensor, shares: torch.Tensor, n: int,
                    counts: torch.Tensor | None = None,
                    backup: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """``n`` of the candidates (their ``score`` (M,) and strata (M,)) in the proportions ``shares`` (S,) over the
    strata: only those predicted liked (score > 0; fewer than n: the best scored of the rest as well), each stratum's
    best scored first, by :func:`quota_pick` (a stratum out of candidates gives its place to the next owed; ``counts``
    (S,): how many were picked from each before, default none). ``backup`` (M,) bool: candidates a stratum takes only
    after its others (a shortfall of the others' predicted likes made up from the others too) and only if predicted
    liked."""
    backup = torch.zeros(len(score), dtype=torch.bool) if backup is None else backup
    liked = ((score > 0) & ~backup).nonzero().flatten()
    if len(liked) < n:
        rest = ((score <= 0) & ~backup).nonzero().flatten()
        liked = torch.cat([liked, rest[score[rest].argsort(descending=True, stable=True)][: n - len(liked)]])
    spare = ((score > 0) & backup).nonzero().flatten()
    ordered = torch.cat([liked[score[liked].argsort(descending=True, stable=True)],
                         spare[score[spare].argsort(descending=True, stable=True)]])  # fmt: skip
    counts = torch.zeros(len(shares)) if counts is None else counts
    return ordered[quota_pick(strata[ordered], shares, counts, n)]


SELECTORS = ("random", "disagreement", "entropy", "diversity", "liked", "thompson", "proportional")


def make_selector(name: str, seed: int = 0, liked_share: float = 0.7) -> Any:
    """The selector ``name`` (one of :data:`SELECTORS`)."""
    if name == "random":
        return RandomSelector()
    return EnsembleSelector(name, liked_share=liked_share, seed=seed)


def selection_errors(cfg: Any) -> list[str]:
    """What is wrong with an agent config's ``pool_size``, ``selector`` and ``selector_features`` (empty: fine)."""
    errors = []
    if cfg.pool_size is not None and cfg.pool_size < cfg.queries_per_step:
        errors.append(f"pool_size must be >= queries_per_step or None, got {cfg.pool_size!r}")
    if cfg.selector not in SELECTORS:
        errors.append(f"selector must be one of {SELECTORS}, got {cfg.selector!r}")
    elif cfg.selector == "proportional":  # its choice is undone only by weighting the replies: PAPA does, these don't
        others = tuple(r for r in SELECTORS if r != "proportional")
        errors.append(f"selector 'proportional' is PAPA's (it weights each reply by its query's inclusion "
                      f"probability); for {type(cfg).__name__} choose one of {others}")  # fmt: skip
    if cfg.selector_features not in FEATURES:
        errors.append(f"selector_features must be one of {FEATURES}, got {cfg.selector_features!r}")
    if not 0 <= getattr(cfg, "liked_share", 0.7) <= 1:
        errors.append(f"liked_share must be in [0, 1], got {cfg.liked_share!r}")
    return errors


PAIR_SELECTORS = ("random", "disagreement", "entropy", "diversity")


class QuerySelection:
    """An agent's query selection in one object, for agents that draw their pool from their own model only (DDPO,
    reward-model-then-DDPO, D3PO): ``choose`` the K of M candidates to show, ``observe`` the replies to them.

    With ``pairs`` (D3PO) a candidate is a pair of consecutive images and its features are the difference of the
    two images' features: the ridge ensemble then fits a linear Bradley-Terry utility on the which-of-two replies,
    and ``disagreement`` / ``entropy`` pick the pairs whose outcome it is least sure of (PEBBLE's pair selection).

    Args:
        base: the frozen base UNet (the ``unet`` feature space); cfg: the agent's config, with ``queries_per_step``,
            ``pool_size``, ``selector``, ``selector_features``, ``seed`` and optionally ``liked_share``.
    """

    def __init__(self, base: torch.nn.Module, cfg: Any, pairs: bool = False) -> None:
        if pairs and cfg.selector not in PAIR_SELECTORS:
            raise ValueError(f"a selector of pairs must be one of {PAIR_SELECTORS}, got {cfg.selector!r}")
        self.k, self.pool_size, self.pairs = cfg.queries_per_step, cfg.pool_size or cfg.queries_per_step, pairs
        self.selector = make_selector(cfg.selector, cfg.seed, getattr(cfg, "liked_share", 0.7))
        self.features = None if cfg.selector == "random" else make_features(cfg.selector_features, base)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        if self.features is None:
            return torch.zeros(len(images) // 2 if self.pairs else len(images), 0)
        f = self.features(images)
        return f[0::2] - f[1::2] if self.pairs else f

    def choose(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(K,) indices into the pool ``images`` (M, 1, 28, 28), or of its pairs (2M images, consecutive ones paired):
        the queries shown, in the order shown."""
        features = self._features(images)
        candidates = images.view(len(features), -1, *images.shape[1:]) if self.pairs else images  # one row a pair
        pool = Pool(candidates, torch.zeros(len(features), dtype=torch.long), features)
        return self.selector.select(pool, self.k, generator)

    def observe(self, images: torch.Tensor, replies: Any) -> None:
        """The replies (K,) to the queries ``images`` shown (K images, or K pairs as 2K consecutive images)."""
        if self.features is not None:
            self.selector.observe(self._features(images), torch.as_tensor(np.asarray(replies)).double())

    def state_dict(self) -> dict[str, Any]:
        return self.selector.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.selector.load_state_dict(state)
