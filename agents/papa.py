"""PAPA and EPAPA (arXiv 2607.00486; the authors' tools/train_papa.py): a diffusion model aligned directly from a
user's replies, no reward model. Per interaction, sample K queries x0 from the current model, read the replies y
(+1 like, -1 dislike; 0 skip), and for each query minimise

    pref_coef * y * sum_{t >= k} w_t ||eps_theta(x_t, t) - eps||^2                    the reply term
  + model_coef * [y = +1] * mean_{t >= k} ||eps_theta(x_t, t) - eps_base(x_t, t)||^2   the anchor to the base

with x_t ~ q(x_t | x0) (one eps per query, shared across t) and w_t the ELBO weights: a liked image becomes more
likely, a disliked one less. EPAPA (``k > 0``) tunes and samples the tuned model only for t >= k; the frozen base
denoises t < k. Read top to bottom: the config (defaults: the authors'), the presets (ours, measured in ``docs/``).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from diffusers.training_utils import EMAModel

from papa_env.agents.selection import (
    FEATURES,
    SELECTORS,
    Pool,
    UNetFeatures,
    draw_pool,
    inclusion_probabilities,
    k_center,
    kmeans,
    like_chance,
    make_features,
    make_selector,
    quota_pick,
    rejection_draw,
    spread_from,
    stratified_pick,
    systematic_sample,
)
from papa_env.diffusion import SwitchedUNet, denoising_error, noise_schedule, q_sample, sample, sample_calls
from papa_env.distributed import all_reduce_gradients, all_reduce_sum, shard
from papa_env.models import SCHEDULER_CONFIG, weights_sha256

T = SCHEDULER_CONFIG["num_train_timesteps"]
LOSSES = ("loss", "losses/pref", "losses/model")
# Where a query came from: the tuned model, the frozen base as a base query, or a base draw the filter served in a
# tuned query's place (filter_queries with generate_base_candidates: the agent's own query, not a base query)
TUNED, BASE, SERVED_BASE = 0, 1, 2
TYPICAL_T, TYPICAL_NOISES = 300, 2  # generate_typical: the base's denoising error at this t (quality_proxy.py)
BANK_CHUNK = 50  # filter_queries_bank: base draws added to the bank at a time


@dataclass
class PAPAConfig:
    """PAPA / EPAPA settings (defaults: the authors')."""

    lr: float = 1e-5
    """Adam learning rate"""
    pref_coef: float = 0.1
    """weight of the reply term"""
    model_coef: float = 0.009
    """weight of the anchor to the base model, on liked queries"""
    full_exploitation: bool = True
    """a dislike counts -1; False: 0 (only likes teach: the authors' {+1, 0} variant)"""
    k: int = 0
    """EPAPA: the tuned model trains and samples only timesteps t >= k (0: PAPA; the authors' EPAPA: 400)"""
    timesteps_per_image: int | None = 32
    """timesteps drawn per query, an unbiased Monte-Carlo estimate of the sum over t >= k (None: the full sum)"""
    batch_size: int = 1
    """queries per optimizer step when an interaction makes one pass over its queries (the authors': 1)"""
    updates_per_interaction: int | None = None
    """optimizer steps per interaction, each on all K new queries (None: one pass in batches of batch_size)"""
    replay: int = 0
    """earlier replies, drawn uniformly from all so far, added to each optimizer step"""
    reply_baseline: int | None = None
    """subtract b, the mean of the last this many signed replies, from each reply: a like counts 1 - b"""
    catch_up_updates: int = 0
    """with reply_baseline: optimizer steps added to an interaction while under ``catch_up_below`` of those replies
    are likes: a model far from its user's taste (a rare taste, or early) moves further"""
    catch_up_below: float = 0.5
    """the like-rate of the recent replies under which ``catch_up_updates`` apply"""
    paired_replies: bool = False
    """replies to pairs (agents/pairwise.py sets it): half are likes whatever the taste, so the like-rate is unknown
    and ``catch_up_updates`` always apply"""
    dislike_margin: float | None = None
    """a disliked query stops pushing once its error is (1 + margin) x the base model's (None: unbounded)"""
    base_queries: int = 0
    """of the queries drawn (K, or pool_size), this many come from the frozen base model (drawn last)"""
    base_candidates: int = 1
    """base-model candidates drawn per base query shown; the ones shown are spread over the session (greedy k-center
    in the base UNet's features, continued from every base query shown before), so the base's images a user replies
    to cover its kinds evenly instead of as a few draws happen to (1: shown as drawn)"""
    tuned_candidates: int = 1
    """tuned-model candidates drawn per tuned query shown; the ones shown are spread over them (greedy k-center in
    the base UNet's features), so the likes the model learns from cover the kinds it draws less often, not only
    the kinds it already favours (1: shown as drawn)"""
    base_strata: int = 0
    """with base_candidates: instead of spreading, the base queries follow the base's own proportions over this many
    strata (k-means of the base UNet's features of 100 base samples drawn when the agent is built; each base query
    from the stratum furthest under its share so far), so a few base-model likes already come in its proportions"""
    fewer_base_queries: bool = False
    """with reply_baseline: ``base_queries`` shrink as the tuned model's own queries are liked, to
    max(1, round(base_queries * min(1, 2 (1 - r)))) at like-rate r of its last ``reply_baseline`` replied queries:
    all while r <= 0.5, one at r >= 0.9 (a person is shown more of what the tuned model has learned)"""
    pool_size: int | None = None
    """draw this many candidates and let ``selector`` choose the K shown (None: draw K, all shown)"""
    selector: str = "random"
    """which K of the pool are shown: agents/selection.py's rules (random: the first K, as drawn); with
    "proportional" (K drawn at random, predicted likes more often) each reply is weighted by K / (M x the chance its
    query had to be shown), in the update, its replays and the reply baseline: the update is, in expectation, the
    one of K queries drawn at random from the pool, while a person is shown more of what they like"""
    liked_share: float = 0.7
    """with selector="liked": the share of the K chosen as predicted likes (the rest: where the ensemble disagrees)"""
    selector_features: str = "unet"
    """the selector's feature space: the base UNet's own ("unet") or a fixed random network on the pixels ("random")"""
    generate_candidates: int = 1
    """``generate`` (the samples a session is judged on and its user gets, not the queries) draws up to this many
    candidates per image and keeps the first the agent's reward ensemble predicts liked, else the likeliest:
    rejection sampling by ridge regressions of every reply so far on the base UNet's features (1: off)"""
    generate_strata: int = 0
    """with generate_candidates > 1: ``generate`` draws generate_candidates x n images at once and keeps n of those
    predicted liked (the likeliest first) in the proportions the person's likes of the base model's queries have over
    this many strata (k-means of the base UNet's features of the replied images): the base's own mix of what is
    liked, which the tuned model thins where the reward model under-rates a liked kind (0: each image the first
    predicted like of its draws)"""
    generate_strata_prior: float = 0.0
    """with generate_strata: each stratum's like-rate among the base model's queries is shrunk toward their overall
    like-rate by this many pseudo-replies (a beta prior), and its share is its queries' count times that rate: the
    base's own mix while a stratum has few replies, the likes' once it has many (0: the likes' counts alone)"""
    generate_optimism: float = 0.0
    """with generate_candidates > 1: the filter scores a candidate by the ensemble's mean predicted reply plus this
    many standard deviations over its members, so a kind the replies have not yet shown disliked (the members
    disagree) passes the gate: an early filter, fitted on a few likes, does not thin the liked kinds it has not yet
    seen liked (0: the mean)"""
    generate_base_candidates: int = 0
    """with generate_strata: ``generate`` also draws this many x n images from the frozen base model, and a stratum
    whose quota the tuned model's predicted likes cannot fill takes the base's predicted likes there (by the
    ensemble's mean: no optimism for them): the liked kinds the tuning crowded out come back from the model that
    still draws them (0: off)"""
    generate_strata_mass: bool = False
    """with generate_base_candidates: a stratum's share is the base model's mass in it (its share of that call's
    base-model candidates) times its like-rate among the replied base queries (shrunk by generate_strata_prior), not
    its replied count times that rate: the base's proportions from free draws, not from the few queries replied to"""
    generate_typical: bool = False
    """with generate_strata: inside each stratum the predicted likes are taken the most typical of the base model
    first (the lowest base-UNet denoising error at t = TYPICAL_T, TYPICAL_NOISES noises), not the likeliest first:
    the strata still set how many of each kind, the base model's own loss which of them (a quality tie-break the
    agent owns; it costs one base-UNet pass per candidate and noise)"""
    generate_feature_pool: int = 2
    """with generate_candidates > 1: the reward ensemble's space is the base UNet's mid-block features average-pooled
    to this many x this many (2: 257 features; 7, unpooled on 28 x 28 images: 3,137)"""
    filter_queries: bool = False
    """with generate_candidates > 1: the tuned model's queries pass the same reward filter as its samples (with
    generate_strata, the strata quota continued over every such query replied to so far; with
    generate_base_candidates, a stratum the tuned model cannot fill takes the base's predicted likes, recorded as
    served, not as base queries), so a person is shown more of what they like; the base model's queries stay as
    drawn. What is learned from is then the filter's choice"""
    filter_queries_bank: int = 0
    """with filter_queries and generate_base_candidates: the base draws a tuned query's place can be filled from are
    a bank of at least this many base samples never shown (a seeded stream drawn in chunks of 50: a served one is
    never offered again, a chunk more is drawn when too few are left), and with generate_strata_mass the base's mass
    is counted over every draw of the bank: a few base draws an interaction instead of generate_base_candidates x n
    (0: fresh draws each interaction, as for the evaluation's samples)"""
    bank_base_queries: bool = False
    """with filter_queries_bank: the base model's queries are the bank's unshown draws too, drawn at random with
    known inclusion probabilities pi, higher for the predicted likes (selection.inclusion_probabilities of the reward
    ensemble's mean: 0.3 of them uniform; systematic sampling), each reply weighted by n / (M pi) for M unshown draws
    (Horvitz-Thompson: in the update, the reply baseline and the strata's like-rates, as if drawn at random), so a
    person is shown more liked base images without biasing what the strata learn of the base"""
    ema_decay: float | None = None
    """queries and samples come from a moving average of the tuned weights at this decay (None: the latest)"""
    ema_start: int = 0
    """the moving average takes only the optimizer updates after this many (a tail average)"""
    queries_per_step: int = 10
    """K, queries per interaction (must match the env's)"""
    sampler: Literal["ddim", "ddpm"] = "ddim"
    """sampler of queries and evaluation samples (the authors': ddpm)"""
    num_sampling_steps: int = 20
    """denoising steps of the sampler (the authors': 1000)"""
    eta: float = 1.0
    """DDIM noise scale"""
    seed: int = 0
    """seed of the loss's noise, timestep and replay draws"""

    def __post_init__(self) -> None:
        # fmt: off
        rules = [  # (does it hold for a value, what is expected, of which fields)
            (lambda v: v > 0, "> 0", ("lr",)),
            (lambda v: v >= 0, ">= 0", ("pref_coef", "model_coef", "replay", "ema_start", "base_queries")),
            (lambda v: v >= 1, ">= 1", ("batch_size", "queries_per_step", "generate_candidates",
                                        "generate_feature_pool")),
            (lambda v: v is None or v >= self.queries_per_step, ">= queries_per_step or None", ("pool_size",)),
            (lambda v: v in SELECTORS, f"one of {SELECTORS}", ("selector",)),
            (lambda v: v in FEATURES, f"one of {FEATURES}", ("selector_features",)),
            (lambda v: v is None or v >= 1, ">= 1 or None", ("timesteps_per_image", "updates_per_interaction")),
            (lambda v: v is None or v >= 1 and self.full_exploitation, ">= 1, or None (it must be None with "
             "full_exploitation=False: every signed reply is then a like)", ("reply_baseline",)),
            (lambda v: v <= (self.pool_size or self.queries_per_step), "<= the queries drawn", ("base_queries",)),
            (lambda v: v is None or v >= 0, ">= 0 or None", ("dislike_margin",)),
            (lambda v: v == 1 or v > 1 and self.base_queries > 0 and self.pool_size is None, "1, or > 1 with "
             "base_queries > 0 and no pool_size", ("base_candidates",)),
            (lambda v: v == 1 or v > 1 and self.pool_size is None, "1, or > 1 with no pool_size",
             ("tuned_candidates",)),
            (lambda v: v == 0 or v > 1 and self.base_candidates > 1, "0, or > 1 with base_candidates > 1",
             ("base_strata",)),
            (lambda v: v == 0 or v > 1 and self.generate_candidates > 1, "0, or > 1 with generate_candidates > 1",
             ("generate_strata",)),
            (lambda v: v == 0 or v > 0 and self.generate_strata > 1, "0, or > 0 with generate_strata > 1",
             ("generate_strata_prior",)),
            (lambda v: v == 0 or v > 0 and self.generate_candidates > 1, "0, or > 0 with generate_candidates > 1",
             ("generate_optimism",)),
            (lambda v: v == 0 or v > 0 and self.generate_strata > 1, "0, or > 0 with generate_strata > 1",
             ("generate_base_candidates",)),
            (lambda v: not v or self.generate_base_candidates > 0, "False, or True with generate_base_candidates > 0",
             ("generate_strata_mass",)),
            (lambda v: not v or self.generate_strata > 1, "False, or True with generate_strata > 1",
             ("generate_typical",)),
            (lambda v: not v or self.generate_candidates > 1 and self.selector == "random" and self.pool_size is None
             and self.tuned_candidates == 1, "False, or True with generate_candidates > 1 and no pool_size, selector "
             "or tuned_candidates", ("filter_queries",)),
            (lambda v: v == 0 or v > 0 and self.filter_queries and self.generate_base_candidates > 0, "0, or > 0 with "
             "filter_queries and generate_base_candidates", ("filter_queries_bank",)),
            (lambda v: not v or self.filter_queries_bank > 0 and self.base_candidates == 1, "False, or True with "
             "filter_queries_bank and no base_candidates", ("bank_base_queries",)),
            (lambda v: v == 0 or v > 0 and self.reply_baseline and self.updates_per_interaction, ">= 0, and 0 without "
             "reply_baseline and updates_per_interaction", ("catch_up_updates",)),
            (lambda v: not v or bool(self.reply_baseline and self.base_queries), "False without reply_baseline and "
             "base_queries", ("fewer_base_queries",)),
            (lambda v: 0 <= v <= 1, "in [0, 1]", ("catch_up_below",)),
            (lambda v: v is None or 0 < v < 1, "in (0, 1) or None", ("ema_decay",)),
            (lambda v: 0 <= v < T, f"in [0, {T})", ("k",)),
            (lambda v: 1 <= v <= T, f"in [1, {T}]", ("num_sampling_steps",)),
            (lambda v: v in ("ddim", "ddpm"), "'ddim' or 'ddpm'", ("sampler",)),
        ]
        bad = [f"{f} must be {rule}, got {getattr(self, f)!r}" for holds, rule, fields in rules for f in fields
               if not holds(getattr(self, f))]
        # fmt: on
        if bad:
            raise ValueError("invalid PAPAConfig: " + "; ".join(bad))


# fmt: off
PRESETS: dict[str, PAPAConfig] = {
    # the authors' recipe as their code runs it (full sum over all T timesteps, batch 1, 1000-step DDPM); their EPAPA
    "faithful": PAPAConfig(timesteps_per_image=None, sampler="ddpm", num_sampling_steps=1000),
    "faithful-epapa": PAPAConfig(k=400, timesteps_per_image=None, sampler="ddpm", num_sampling_steps=1000),
    # the authors' settings at a laptop's speed (32 Monte-Carlo timesteps, 20-step DDIM): the untuned PAPA
    "authors-mc": PAPAConfig(),
    # PAPA: 2 Adam steps per interaction at 10x the authors' lr, each on 10 new + 22 replayed replies x 4 timesteps
    "papa": PAPAConfig(lr=1e-4, timesteps_per_image=4, updates_per_interaction=2, replay=22, dislike_margin=0.5),
    # EPAPA: k = 300, 4 Adam steps per interaction, each on 10 new + 22 replayed replies x 1 timestep (128 rows in all,
    # half of PAPA's), a reply baseline, half the queries from the frozen base, a 67x anchor, queries from a tail
    # average of the weights (decay 0.95 after 30), 4 more steps while under half of the last 50 replies are likes (a
    # rare taste, or early), fewer base-model queries once over half of the tuned model's own are liked (one at 90%)
    "epapa": PAPAConfig(lr=1e-4, k=300, model_coef=0.6, timesteps_per_image=1, updates_per_interaction=4, replay=22,
                        reply_baseline=50, catch_up_updates=4, dislike_margin=0.5, base_queries=5,
                        fewer_base_queries=True, ema_decay=0.95, ema_start=30),
}
# fmt: on


# ALGO LOGIC: the loss --------------------------------------------------------------------------------
def reply_signs(replies: np.ndarray | torch.Tensor, full_exploitation: bool) -> torch.Tensor:
    """Replies (K,) in {+1, -1, 0} -> the sign y of the reply term: +1 like, -1 (or 0) dislike, 0 skip."""
    y = torch.as_tensor(np.asarray(replies), dtype=torch.float32)
    if not bool(((y == 1) | (y == -1) | (y == 0)).all()):
        raise ValueError(f"replies must be in {{+1, -1, 0}}, got {y.tolist()}")
    return y if full_exploitation else y.clamp_min(0)


def draw_timesteps(n_images: int, cfg: PAPAConfig, generator: torch.Generator) -> torch.Tensor:
    """(n_images, m) int64 timesteps in [k, T): m uniform draws per query, or all T - k for the full sum."""
    if cfg.timesteps_per_image is None:
        return torch.arange(cfg.k, T).expand(n_images, -1)
    return torch.randint(cfg.k, T, (n_images, cfg.timesteps_per_image), generator=generator)


def papa_loss(unet: torch.nn.Module, base: torch.nn.Module, x0: torch.Tensor, y: torch.Tensor, timesteps: torch.Tensor,
              noise: torch.Tensor, cfg: PAPAConfig, reply_weight: torch.Tensor | None = None, backward: bool = False,
              chunk: int = 250) -> dict[str, Any]:  # fmt: skip
    """PAPA's loss of a batch of queries, summed over its (query, timestep) rows and averaged over queries:
    ``{"loss", "losses/pref", "losses/model"}`` as floats, and with ``backward=False`` the graph as ``"tensor"``.

    Args:
        unet: the model being tuned; base: the frozen base model.
        x0: (B, 1, 28, 28) queries in [-1, 1]; y: (B,) reply signs (:func:`reply_signs`).
        timesteps: (B, m) from :func:`draw_timesteps`; noise: (B, 1, 28, 28), one eps per query, shared across t.
        reply_weight: (B,) multiplier of each query's reply term (default ``y``; ``y - b`` with a reply baseline);
            the anchor and the dislike bound still follow the sign ``y``.
        backward: accumulate gradients chunk by chunk instead of returning a graph; chunk: rows per forward pass
            (bounds memory, not the result).
    """
    b, m = timesteps.shape
    abar, w = (v.to(x0.device) for v in noise_schedule())
    scale = (T - cfg.k) / m  # 1. m uniform draws of t in [k, T) estimate a sum of T - k terms (1 for the full sum)
    rows = shard(b * m)  # this process's rows: all of them, or its share under torchrun (papa_env.distributed)
    rows_img, rows_t = torch.arange(b).repeat_interleave(m)[rows], timesteps.reshape(-1)[rows]
    liked, r = (y > 0).float(), y if reply_weight is None else reply_weight
    total, pref_sum, model_sum = torch.zeros(()), 0.0, 0.0
    for start in range(0, len(rows_t), chunk):
        i, t = rows_img[start : start + chunk], rows_t[start : start + chunk]
        x_t = q_sample(x0[i], noise[i], t, abar)  # 2. x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps  (DDPM eq. 4)
        eps_hat = unet(x_t, t).sample  # 3. eps_theta(x_t, t)
        err = ((eps_hat - noise[i]) ** 2).mean((1, 2, 3))  # ||eps_theta - eps||^2, a mean over pixels
        need_anchor = bool(cfg.model_coef) and bool(liked[i].any())
        bounded = cfg.dislike_margin is not None and bool((y[i] < 0).any())
        if need_anchor or bounded:
            with torch.no_grad():
                eps_base = base(x_t, t).sample  # eps_base(x_t, t), the frozen model's prediction
        if bounded:  # 4. a disliked row stops pushing once its error is (1 + margin) x the base model's
            cap = (1 + cfg.dislike_margin) * ((eps_base - noise[i]) ** 2).mean((1, 2, 3))
            err = torch.where(y[i] < 0, torch.minimum(err, cap), err)
        pref = cfg.pref_coef * r[i] * scale * w[t] * err  # 5. the reply term: pref_coef * y * w_t * err
        anchor = ((eps_hat - eps_base) ** 2).mean((1, 2, 3)) if need_anchor else torch.zeros_like(pref)
        model = cfg.model_coef * liked[i] * (1.0 / m) * anchor  # 6. model_coef [y=+1] ||eps_theta - eps_base||^2 / m
        chunk_loss = (pref.sum() + model.sum()) / b  # 7. summed over rows, averaged over the B queries
        pref_sum += float(pref.detach().sum()) / b
        model_sum += float(model.detach().sum()) / b
        if backward:
            chunk_loss.backward()
        else:
            total = total + chunk_loss
    out = dict(zip(LOSSES, (pref_sum + model_sum, pref_sum, model_sum)))
    return out if backward else {**out, "tensor": total}


# ALGO LOGIC: the agent -------------------------------------------------------------------------------
class PAPA:
    """PAPA (``k = 0``) or EPAPA around a pretrained ``unet`` (copied; the original is the frozen base), a config."""

    side_by_side = True  # tuned and base queries sampled in two threads at once (False: in turn; the same images)
    distributed = True  # learn() splits its rows across torchrun's processes (papa_env.distributed)

    def __init__(self, unet: torch.nn.Module, config: PAPAConfig | str = "epapa") -> None:
        if isinstance(config, str) and config not in PRESETS:
            raise ValueError(f"unknown PAPA preset {config!r}; expected one of {sorted(PRESETS)}")
        self.cfg = config = PRESETS[config] if isinstance(config, str) else config
        self.name = "epapa" if config.k else "papa"
        self.base = unet.eval().requires_grad_(False)
        self.unet = copy.deepcopy(unet).train().requires_grad_(True)
        self.sampled, self.ema = self.unet, None  # the weights queries are drawn from: the latest, or their average
        if config.ema_decay is not None:  # diffusers' update_after_step: the latest weights until then, no warm-up
            self.ema = EMAModel(self.unet.parameters(), decay=config.ema_decay, min_decay=config.ema_decay,
                                update_after_step=config.ema_start)  # fmt: skip
            self.sampled = copy.deepcopy(self.unet).eval().requires_grad_(False)
        self.policy = SwitchedUNet(self.sampled, self.base, config.k) if config.k else self.sampled
        self.sampling = dict(sampler=config.sampler, num_steps=config.num_sampling_steps, eta=config.eta)
        self.opt = torch.optim.Adam(self.unet.parameters(), lr=config.lr)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.updates, self.device = 0, next(unet.parameters()).device
        self.selector = make_selector(config.selector, config.seed, config.liked_share)
        self.features = None if config.selector == "random" else make_features(config.selector_features, self.base)
        self.buffer_x, self.buffer_y = torch.zeros(0, device=self.device), torch.zeros(0, device=self.device)
        self.tuned_y = torch.zeros(0)  # with fewer_base_queries: the signed replies to the tuned model's own queries
        self.shown_source: np.ndarray | None = None  # where each proposed query came from (TUNED...)
        self.shown_weight: np.ndarray | None = None  # with a selector that knows its inclusion probabilities: each
        # proposed query's Horvitz-Thompson weight, K / (M pi)
        self.buffer_w = torch.zeros(0)  # the weight of each reply of the buffer (1 unless shown by such a selector)
        self.tuned_w = torch.zeros(0)  # ... and of each reply of tuned_y
        spread = config.base_candidates > 1 or config.tuned_candidates > 1
        self.base_features = UNetFeatures(self.base) if spread else None
        self.shown_base = torch.zeros(0)  # with base_candidates: the features of the base queries replied to
        self.centroids, self.shares = torch.zeros(0), torch.zeros(0)  # with base_strata: the strata of the base
        self.reward_features = UNetFeatures(self.base, pool=config.generate_feature_pool)  # the reward ensemble's
        if config.generate_candidates > 1:  # space; its pooling checked on one blank image now, not at the first sample
            c, size = self.base.config.in_channels, self.base.config.sample_size
            self.reward_features(torch.zeros(1, c, size, size))
        self.reward_fit: tuple[int, Any, torch.Tensor] = (0, None, torch.zeros(0))  # replies fitted, fit, features
        self.buffer_src = torch.zeros(0)  # where each reply of the buffer came from
        self.strata_rates = torch.zeros(0)  # generate_strata: each stratum's like-rate among the base queries
        self.bank_x, self.bank_f = torch.zeros(0), torch.zeros(0)  # filter_queries_bank: its draws, their features
        self.bank_used = torch.zeros(0, dtype=torch.long)  # ... the indices of those shown (a function of the replies)
        self.shown_bank: np.ndarray | None = None  # ... the bank index of each proposed query (-1: not the bank's)
        self.liked_strata: tuple[int, torch.Tensor, torch.Tensor] = (0, torch.zeros(0), torch.zeros(0))  # with
        # generate_strata: (replies, centroids, shares) of the liked base queries, recomputed as replies come in
        if config.base_strata:  # its own generator: the same strata when a resumed session rebuilds the agent
            g = torch.Generator().manual_seed(config.seed)
            bank = self.base_features(sample(self.base, 100, generator=g, **self.sampling))
            self.centroids = kmeans(bank, config.base_strata, g)
            self.shares = torch.bincount(self.stratum(bank), minlength=config.base_strata).float() / len(bank)

    def propose(self, generator: torch.Generator) -> np.ndarray:
        """K queries (K, 1, 28, 28): the selector's choice from a pool of tuned, then base-model samples."""
        c, m = self.cfg, self.cfg.pool_size or self.cfg.queries_per_step
        n_base = self.base_count()
        n_tuned, drawn_tuned, drawn = m - n_base, (m - n_base) * c.tuned_candidates, n_base * c.base_candidates
        if c.filter_queries and n_tuned and len(self.buffer_y):  # the tuned queries through the reward filter
            tuned, backfilled, bank_index = self._generate(n_tuned, generator, continue_quota=True)
            weight, base_index = torch.ones(n_tuned + drawn), torch.full((drawn,), -1)
            if c.bank_base_queries and drawn:  # the bank's draws, the predicted likes more often
                base, base_index, weight[n_tuned:] = self._bank_base_queries(drawn, bank_index, generator)
            else:
                base = sample(self.base, drawn, generator=generator, **self.sampling) if drawn else tuned[:0]
            source = torch.cat([torch.where(backfilled, SERVED_BASE, TUNED), torch.full((drawn,), BASE)])
            pool = Pool(torch.cat([tuned, base]), source, torch.zeros(n_tuned + drawn, 0))
            bank_index = torch.cat([bank_index, base_index])
        else:
            pool = draw_pool(self.policy, self.base, drawn_tuned, drawn, self.features, generator, self.side_by_side,
                             **self.sampling)  # fmt: skip
            bank_index = torch.full((len(pool.images),), -1)
        keep_tuned = torch.arange(drawn_tuned)
        if drawn_tuned > n_tuned:  # keep n_tuned: spread over the tuned model's candidates
            keep_tuned = k_center(self.base_features(pool.images[keep_tuned]), n_tuned)
        keep = torch.arange(drawn_tuned, drawn_tuned + drawn)
        if drawn > n_base:  # keep n_base: those farthest from the base queries shown before, or by the strata quota
            feats = self.base_features(pool.images[keep])
            if c.base_strata:
                shown = torch.bincount(self.stratum(self.shown_base), minlength=c.base_strata)
                keep = keep[quota_pick(self.stratum(feats), self.shares, shown, n_base)]
            else:
                keep = keep[spread_from(feats, self.shown_base, n_base)]
        if drawn_tuned > n_tuned or drawn > n_base:
            pool = Pool(*(v[torch.cat([keep_tuned, keep])] for v in pool))
            bank_index = bank_index[torch.cat([keep_tuned, keep])]
        chosen = self.selector.select(pool, c.queries_per_step, generator)
        self.shown_source = pool.source[chosen].numpy()
        self.shown_bank = bank_index[chosen].numpy() if c.filter_queries_bank else None
        inclusion = self.selector.inclusion(pool, c.queries_per_step)
        if inclusion is not None:  # Horvitz-Thompson: K / (M pi), 1 for K drawn at random from M
            self.shown_weight = (c.queries_per_step / (len(pool.images) * inclusion[chosen])).float().numpy()
        elif c.bank_base_queries and c.filter_queries and n_tuned and len(self.buffer_y):
            self.shown_weight = weight[chosen].float().numpy()
        return pool.images[chosen].numpy()

    def stratum(self, features: torch.Tensor) -> torch.Tensor:
        """(N,) the base stratum (nearest centroid) of each row of ``features``."""
        if not len(features):
            return torch.zeros(0, dtype=torch.long)
        return torch.cdist(features.double(), self.centroids.double()).argmin(1)

    def base_count(self) -> int:
        """How many of the queries drawn come from the frozen base: ``base_queries``, fewer once the tuned model's
        own queries are liked (``fewer_base_queries``)."""
        c = self.cfg
        if not c.fewer_base_queries or c.paired_replies or not len(self.tuned_y):
            return c.base_queries
        # the (weighted) like-rate of the last reply_baseline replies to its own queries (learn keeps no more)
        like_rate = float((self.tuned_w * (self.tuned_y > 0)).sum() / self.tuned_w.sum())
        return max(1, round(c.base_queries * min(1.0, 2 * (1 - like_rate))))

    def proposal_state(self) -> dict[str, np.ndarray]:  # persisted with the replies: which model drew each query
        needed = self.cfg.fewer_base_queries or self.cfg.base_candidates > 1 or self.cfg.filter_queries
        state = {"source": self.shown_source} if needed and self.shown_source is not None else {}
        state |= {"bank": self.shown_bank} if self.shown_bank is not None else {}
        return state | ({"weight": self.shown_weight} if self.shown_weight is not None else {})

    def restore_proposal(self, state: dict[str, np.ndarray]) -> None:
        self.shown_source = np.asarray(state["source"]) if "source" in state else None
        self.shown_weight = np.asarray(state["weight"]) if "weight" in state else None
        self.shown_bank = np.asarray(state["bank"]) if "bank" in state else None

    def generate(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` samples of the tuned model; with ``generate_candidates`` > 1, filtered by :meth:`predicted_reply`
        (image by image, or over ``generate_strata`` strata once a reply is a like, with ``generate_base_candidates``
        the base's predicted likes where the tuned model's fall short)."""
        return self._generate(n, generator)[0]

    def _generate(
        self, n: int, generator: torch.Generator, continue_quota: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`generate`'s samples (n, ...), which of them the base model drew (n,) bool and their bank indices
        (n,) (-1: not the bank's); ``continue_quota`` (the queries): the strata quota counts the queries served so far
        (not the base queries), so a few queries at a time follow it over a session, and with
        ``filter_queries_bank`` the base's candidates are the bank's unshown draws."""

        def draw(count: int) -> torch.Tensor:
            return sample(self.policy, count, generator=generator, **self.sampling)

        tuned_only, no_bank = torch.zeros(n, dtype=torch.bool), torch.full((n,), -1)
        if self.cfg.generate_candidates == 1 or not len(self.buffer_y):
            return draw(n), tuned_only, no_bank
        if not self.cfg.generate_strata or not bool((self.buffer_y > 0).any()):
            return rejection_draw(draw, self.predicted_reply, n, self.cfg.generate_candidates), tuned_only, no_bank
        # generate_candidates calls' worth of draws in one batch (the first n: the unfiltered draw)
        images = sample_calls(self.policy, [n] * self.cfg.generate_candidates, generator=generator, **self.sampling)
        tuned, banked = len(images), continue_quota and self.cfg.filter_queries_bank > 0
        if self.cfg.generate_base_candidates and not banked:
            extra = sample(self.base, self.cfg.generate_base_candidates * n, generator=generator, **self.sampling)
            images = torch.cat([images, extra])
        reward = self.reward_model()
        features = torch.cat([self.reward_features(x) for x in images.split(250)])
        bank_index = torch.full((len(images),), -1)
        if banked:  # the base's candidates: the bank's draws not yet shown
            unused = self.base_bank()
            images, features = torch.cat([images, self.bank_x[unused]]), torch.cat([features, self.bank_f[unused]])
            bank_index = torch.cat([bank_index, unused])
        members = reward.scores(features)
        score = self._filter_score(members)
        backup = torch.arange(len(images)) >= tuned  # the base's candidates, by the ensemble's mean
        score[backup] = members[:, backup].mean(0).to(score.dtype)
        centroids, shares = self.strata_of_likes()
        strata = torch.cdist(features.double(), centroids.double()).argmin(1)
        counts = torch.zeros(len(shares))
        if continue_quota and len(self.buffer_src) == len(self.buffer_y):
            counts = self._stratum_counts(self.reward_fit[2][self.buffer_src.cpu() != BASE], centroids)
        if self.cfg.generate_strata_mass:  # the base's mass in each stratum, from this call's free draws (the bank's)
            mass = torch.cdist(self.bank_f.double(), centroids.double()).argmin(1) if banked else strata[backup]
            shares = torch.bincount(mass, minlength=len(shares)).double() * self.strata_rates
            shares = shares / shares.sum().clamp_min(1e-12)
        if self.cfg.generate_typical:  # inside a stratum, the predicted likes the base model denoises best first
            error = torch.cat(
                [denoising_error(self.base, x, TYPICAL_T, TYPICAL_NOISES, generator) for x in images.split(250)]
            )
            liked = score > 0
            score[liked] = (1 / (1 + error[liked])).to(score.dtype)  # > 0, as they were: only their order changes
        picked = stratified_pick(score, strata, shares, n, counts, backup)
        return images[picked], backup[picked], bank_index[picked]

    def _bank_base_queries(
        self, n: int, taken: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``bank_base_queries``: n of the bank's unshown draws (not among ``taken``, bank indices), each with
        probability pi (systematic sampling, predicted likes more often): (images, bank indices, n / (M pi))."""
        unused = self.base_bank(taken)
        inclusion = inclusion_probabilities(like_chance(self.reward_model().scores(self.bank_f[unused])), n)
        chosen = systematic_sample(inclusion, generator)
        return self.bank_x[unused[chosen]], unused[chosen], n / (len(unused) * inclusion[chosen])

    def base_bank(self, taken: torch.Tensor | None = None) -> torch.Tensor:
        """``filter_queries_bank``: the indices of the bank's draws (``bank_x``, their reward features ``bank_f``)
        neither shown, nor proposed and waiting for replies, nor among ``taken``; at least ``filter_queries_bank`` of
        them, chunks of ``BANK_CHUNK`` more drawn from the seeded stream as needed. The bank is a function of the seed
        and of how many were shown: a resumed agent rebuilds the same."""
        excluded = self.bank_used
        for more in (self.shown_bank, taken):  # proposed, the replies not yet learned (a round looked ahead); taken
            if more is not None:
                more = torch.as_tensor(more, dtype=torch.long)
                excluded = torch.cat([excluded, more[more >= 0]])
        while len(self.bank_x) - len(excluded.unique()) < self.cfg.filter_queries_bank:
            g = torch.Generator().manual_seed((self.cfg.seed + 1) * 1_000_003 + len(self.bank_x) // BANK_CHUNK)
            x = sample(self.base, BANK_CHUNK, generator=g, **self.sampling)
            f = self.reward_features(x)
            self.bank_x = torch.cat([self.bank_x.view(-1, *x.shape[1:]).to(x), x])
            self.bank_f = torch.cat([self.bank_f.view(-1, f.shape[1]).to(f), f])
        unused = torch.ones(len(self.bank_x), dtype=torch.bool)
        unused[excluded] = False
        return unused.nonzero().flatten()

    def strata_of_likes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, D) centroids and (S,) shares: k-means (``generate_strata``) of the base UNet's features of every
        replied image, and how the likes of the base model's queries fall over them (of every like, while no base
        query is liked); with ``generate_strata_prior`` a, a stratum of n such replies, l of them likes, counts
        n (l + a r) / (n + a) likes, r the like-rate of all of them. A function of the replies (a resumed agent finds
        the same)."""
        if self.liked_strata[0] != len(self.buffer_y):
            self.reward_model()  # and with it the features of every replied image, in reward_fit
            bank, liked = self.reward_fit[2], self.buffer_y.cpu() > 0
            centroids = kmeans(bank, self.cfg.generate_strata, torch.Generator().manual_seed(self.cfg.seed))
            known = len(self.buffer_src) == len(liked)
            base = self.buffer_src == BASE if known else torch.zeros_like(liked)
            replies = base if bool((liked & base).any()) else torch.ones_like(liked)
            w = self.buffer_w.double()  # 1, or (bank_base_queries) a base query's Horvitz-Thompson weight
            counts = self._stratum_counts(bank[liked & replies], centroids, w[liked & replies])
            n = self._stratum_counts(bank[replies], centroids, w[replies])
            a = self.cfg.generate_strata_prior
            shrunk = counts + a * counts.sum() / n.sum()  # a stratum's likes, shrunk toward the overall like-rate
            self.strata_rates = (shrunk / (n + a)).nan_to_num(0.0)  # its like-rate (generate_strata_mass)
            if a:
                counts = n * shrunk / (n + a)
            self.liked_strata = (len(self.buffer_y), centroids, counts / counts.sum().clamp_min(1))
        return self.liked_strata[1], self.liked_strata[2]

    @staticmethod
    def _stratum_counts(
        features: torch.Tensor, centroids: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(S,) how many of ``features`` (N, D) fall nearest each centroid (S, D) (their ``weights`` (N,) summed)."""
        strata = torch.cdist(features.double(), centroids.double()).argmin(1)
        return torch.bincount(strata, weights, minlength=len(centroids)).double()

    def predicted_reply(self, images: torch.Tensor) -> torch.Tensor:
        """(B,) the filter's score of ``images``: the reward ensemble's mean predicted reply (about +1 like, -1
        dislike; plus ``generate_optimism`` standard deviations over its members), its members ridge regressions
        of every reply so far (``buffer_y``) on the base UNet's features, refitted when replies came in since (a
        deterministic fit: a resumed agent predicts the same)."""
        if not len(self.buffer_y):
            return torch.zeros(len(images), dtype=torch.float64)
        return self._filter_score(self.reward_model().scores(self.reward_features(images)))

    def _filter_score(self, scores: torch.Tensor) -> torch.Tensor:
        """(M,) the filter's score of each candidate from its members' predicted replies (members, M): their mean,
        plus ``generate_optimism`` standard deviations."""
        if not self.cfg.generate_optimism:
            return scores.mean(0)
        return scores.mean(0) + self.cfg.generate_optimism * scores.std(0)

    def reward_model(self) -> Any:
        """The ridge ensemble of :meth:`predicted_reply`, fitted on every reply so far (refitted when replies came in
        since); it needs at least one reply."""
        n, bank = self.reward_fit[0], self.reward_fit[2]
        if n != len(self.buffer_y):  # features of the replies new since the last fit, then the ensemble refitted
            new = torch.cat([self.reward_features(x) for x in self.buffer_x[n:].split(250)])
            bank = new if n == 0 else torch.cat([bank, new])
            ensemble = make_selector("disagreement", self.cfg.seed)
            ensemble.observe(bank, self.buffer_y.cpu())
            self.reward_fit = (len(self.buffer_y), ensemble, bank)
        return self.reward_fit[1]

    def learn(self, queries: np.ndarray, replies: np.ndarray) -> dict[str, float]:
        """One interaction's update from the replies (K,) to ``queries`` (K, 1, 28, 28)."""
        x0 = torch.as_tensor(np.asarray(queries), dtype=torch.float32).to(self.device)
        y = reply_signs(replies, self.cfg.full_exploitation).to(self.device)
        if len(x0) != len(y):
            raise ValueError(f"{len(x0)} queries but {len(y)} replies")
        known = self.shown_source is not None and len(self.shown_source) == len(y)
        src = torch.as_tensor(self.shown_source, dtype=torch.float32) if known else torch.zeros(len(y))
        src = src.to(self.device)
        weighted = self.shown_weight is not None and len(self.shown_weight) == len(y)
        w = torch.as_tensor(self.shown_weight, dtype=torch.float32) if weighted else torch.ones(len(y))
        stats = {"loss": 0.0, "losses/pref": 0.0, "losses/model": 0.0, "compute/updates": 0.0, "compute/rows": 0.0}
        # the reply baseline b: the (weighted) mean of the last `reply_baseline` signed replies, this interaction's in
        window = -(self.cfg.reply_baseline or 1)
        recent = torch.cat([self.buffer_y.cpu(), y.cpu()[y.cpu() != 0]])[window:]
        recent_w = torch.cat([self.buffer_w, w[y.cpu() != 0]])[window:]
        if self.cfg.reply_baseline and len(recent):
            baseline = float((recent_w * recent).sum() / recent_w.sum())
            stats["charts/reply_baseline"] = baseline
        else:
            baseline = None
        behind = self.cfg.paired_replies or baseline is not None and (1 + baseline) / 2 < self.cfg.catch_up_below
        self.unet.train()
        for xb, yb, wb in self._batches(x0, y, w.to(self.device), extra=self.cfg.catch_up_updates if behind else 0):
            if not bool((yb != 0).any()):
                continue  # only skips (or {+1, 0} dislikes): nothing to learn from this batch
            timesteps = draw_timesteps(len(xb), self.cfg, self.generator).to(self.device)
            noise = torch.randn(xb.shape, generator=self.generator).to(self.device)
            weight = yb if baseline is None else torch.where(yb != 0, yb - baseline, torch.zeros_like(yb))
            weight = weight * wb  # 1 for every reply unless a selector's inclusion probabilities say otherwise
            self.opt.zero_grad(set_to_none=True)
            out = papa_loss(self.unet, self.base, xb, yb, timesteps, noise, self.cfg, weight, backward=True)
            all_reduce_gradients(self.unet.parameters())  # + the other processes' rows' gradients, under torchrun
            self.opt.step()
            if self.ema is not None:
                self.ema.step(self.unet.parameters())
            self.updates += 1
            stats["compute/updates"] += 1
            stats.update({key: stats[key] + v for key, v in zip(LOSSES, all_reduce_sum([out[key] for key in LOSSES]))})
            stats["compute/rows"] += timesteps.numel()  # (query, timestep) forward + backward passes
        self.unet.eval()
        if self.ema is not None:
            self.ema.copy_to(self.sampled.parameters())
        if self.features is not None:
            self.selector.observe(self.features(x0), y.cpu())
        self.buffer_x = torch.cat([self.buffer_x.view(-1, *x0.shape[1:]), x0[y != 0]])  # skips teach nothing later
        self.buffer_y = torch.cat([self.buffer_y, y[y != 0]])
        self.buffer_src = torch.cat([self.buffer_src, src.cpu()[y.cpu() != 0]])
        self.buffer_w = torch.cat([self.buffer_w, w[y.cpu() != 0]])
        if self.base_features is not None and bool((src == BASE).any()):
            self.shown_base = torch.cat([self.shown_base, self.base_features(x0[src == BASE])])
        if self.cfg.fewer_base_queries and known:
            tuned = torch.as_tensor(self.shown_source) != BASE  # the agent's own queries (a served base draw too)
            yt, wt = y.cpu()[tuned], w[tuned]
            self.tuned_y = torch.cat([self.tuned_y, yt[yt != 0]])[-(self.cfg.reply_baseline or 1) :]
            self.tuned_w = torch.cat([self.tuned_w, wt[yt != 0]])[-(self.cfg.reply_baseline or 1) :]
        if self.shown_bank is not None and len(self.shown_bank) == len(y):  # the bank's draws shown: never again
            shown = torch.as_tensor(self.shown_bank, dtype=torch.long)
            self.bank_used = torch.cat([self.bank_used, shown[shown >= 0]])
        self.shown_source, self.shown_weight, self.shown_bank = None, None, None
        return stats

    def _batches(self, x0: torch.Tensor, y: torch.Tensor, w: torch.Tensor, extra: int = 0):
        """(queries, signs, reply weights) per optimizer step: one pass in batches, or all K new + ``replay`` earlier
        ones each."""
        if self.cfg.updates_per_interaction is None and not self.cfg.replay:
            for start in range(0, len(x0), self.cfg.batch_size):
                end = start + self.cfg.batch_size
                yield x0[start:end], y[start:end], w[start:end]
            return
        for _ in range((self.cfg.updates_per_interaction or 1) + extra):
            if self.cfg.replay and len(self.buffer_y):
                idx = torch.randint(len(self.buffer_y), (self.cfg.replay,), generator=self.generator)
                replayed = self.buffer_x[idx], self.buffer_y[idx], self.buffer_w[idx].to(w.device)
                yield tuple(torch.cat([new, old]) for new, old in zip((x0, y, w), replayed))
            else:
                yield x0, y, w

    def model(self) -> torch.nn.Module:  # the tuned weights samples are drawn from (the average, with ema_decay)
        return self.sampled

    def model_metadata(self) -> dict[str, str]:
        """How this agent samples its model, its base included (saved with the weights, read by ``papa sample``)."""
        meta = {key: str(getattr(self.cfg, key)) for key in ("k", "sampler", "num_sampling_steps", "eta")}
        if self.cfg.generate_candidates > 1:  # its samples pass the reward filter: the run's checkpoint holds it
            meta["generate_candidates"] = str(self.cfg.generate_candidates)
        return {**meta, "base_sha256": weights_sha256(self.base)}

    def state_dict(self) -> dict[str, Any]:
        ema = {"ema": copy.deepcopy(self.ema.state_dict())} if self.ema is not None else {}
        return {"unet": self.unet.state_dict(), "opt": self.opt.state_dict(), "generator": self.generator.get_state(),
                "updates": self.updates, "buffer_x": self.buffer_x.clone(), "buffer_y": self.buffer_y.clone(),
                "config": asdict(self.cfg), "selector": self.selector.state_dict(), "tuned_y": self.tuned_y.clone(),
                "shown_base": self.shown_base.clone(), "buffer_src": self.buffer_src.clone(),
                "buffer_w": self.buffer_w.clone(), "tuned_w": self.tuned_w.clone(), "bank_used": self.bank_used.clone(),
                **ema}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.unet.load_state_dict(state["unet"])
        self.opt.load_state_dict(state["opt"])
        self.generator.set_state(state["generator"])
        self.updates, self.buffer_x, self.buffer_y = state["updates"], state["buffer_x"], state["buffer_y"]
        self.selector.load_state_dict(state["selector"])
        self.tuned_y = state.get("tuned_y", torch.zeros(0))  # absent from checkpoints of before fewer_base_queries
        self.shown_base = state.get("shown_base", torch.zeros(0))  # absent before base_candidates
        self.buffer_src = state.get("buffer_src", torch.zeros(0))  # absent before generate_strata: all likes count
        self.buffer_w = state.get("buffer_w", torch.ones(len(self.buffer_y)))  # absent before "proportional": all 1
        self.tuned_w = state.get("tuned_w", torch.ones(len(self.tuned_y)))
        self.bank_used = state.get("bank_used", torch.zeros(0, dtype=torch.long))  # absent before filter_queries_bank
        self.reward_fit = (0, None, torch.zeros(0))  # refitted from the restored replies when next asked
        self.liked_strata = (0, torch.zeros(0), torch.zeros(0))
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
            self.ema.copy_to(self.sampled.parameters())
