"""PAPA and EPAPA: personalized alignment of a diffusion model directly from a user's replies, no reward model.

Read top to bottom: the config, the presets, the loss (numbered steps, each with its formula), the agent.

The method (arXiv 2607.00486; the authors' tools/train_papa.py). Per interaction, sample K queries x0 from the
current model, read the replies y (+1 like, -1 dislike; 0 skip), and for each query minimise

    pref_coef * y * sum_{t >= k} w_t ||eps_theta(x_t, t) - eps||^2                    the reply term
  + model_coef * [y = +1] * mean_{t >= k} ||eps_theta(x_t, t) - eps_base(x_t, t)||^2   the anchor to the base

with x_t ~ q(x_t | x0) (one eps per query, shared across t) and w_t the ELBO weights: a liked image becomes more
likely, a disliked one less. EPAPA (``k > 0``) tunes and samples the tuned model only for t >= k; the frozen base
denoises t < k. Every field's default is the authors' setting; the presets say where ours depart from it, and
``docs/experiments/`` holds the measurements behind each departure.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from diffusers.training_utils import EMAModel

from papa_env.diffusion import SwitchedUNet, noise_schedule, q_sample, sample, sample_many
from papa_env.models import SCHEDULER_CONFIG

T = SCHEDULER_CONFIG["num_train_timesteps"]


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
    dislike_margin: float | None = None
    """a disliked query stops pushing once its error is (1 + margin) x the base model's (None: unbounded)"""
    base_queries: int = 0
    """of the K queries, this many are drawn from the frozen base model (shown last)"""
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
    chunk: int = 250
    """(query, timestep) rows per forward pass: bounds memory, not the result"""
    seed: int = 0
    """seed of the loss's noise, timestep and replay draws"""

    def __post_init__(self) -> None:
        rules = {  # field: (holds?, what is expected)
            "lr": (self.lr > 0, "> 0"),
            "pref_coef": (self.pref_coef >= 0, ">= 0"),
            "model_coef": (self.model_coef >= 0, ">= 0"),
            "k": (0 <= self.k < T, f"in [0, {T})"),
            "timesteps_per_image": (self.timesteps_per_image is None or self.timesteps_per_image >= 1, ">= 1 or None"),
            "batch_size": (self.batch_size >= 1, ">= 1"),
            "updates_per_interaction": (
                self.updates_per_interaction is None or self.updates_per_interaction >= 1,
                ">= 1 or None",
            ),
            "replay": (self.replay >= 0, ">= 0"),
            "reply_baseline": (
                self.reply_baseline is None or (self.reply_baseline >= 1 and self.full_exploitation),
                ">= 1 or None (and None with full_exploitation=False, where every signed reply is a like)",
            ),
            "dislike_margin": (self.dislike_margin is None or self.dislike_margin >= 0, ">= 0 or None"),
            "base_queries": (0 <= self.base_queries <= self.queries_per_step, "in [0, queries_per_step]"),
            "ema_decay": (self.ema_decay is None or 0 < self.ema_decay < 1, "in (0, 1) or None"),
            "ema_start": (self.ema_start >= 0, ">= 0"),
            "queries_per_step": (self.queries_per_step >= 1, ">= 1"),
            "sampler": (self.sampler in ("ddim", "ddpm"), "'ddim' or 'ddpm'"),
            "num_sampling_steps": (1 <= self.num_sampling_steps <= T, f"in [1, {T}]"),
            "chunk": (self.chunk >= 1, ">= 1"),
        }
        bad = [f"{name} must be {expected}, got {getattr(self, name)!r}" for name, (ok, expected) in rules.items()
               if not ok]  # fmt: skip
        if bad:
            raise ValueError("invalid PAPAConfig: " + "; ".join(bad))


PRESETS: dict[str, PAPAConfig] = {
    # The authors' recipe as their code runs it: the full sum over all T timesteps, batch 1, 1000-step DDPM.
    "faithful": PAPAConfig(timesteps_per_image=None, sampler="ddpm", num_sampling_steps=1000),
    # The authors' EPAPA: the same with k = 400.
    "faithful-epapa": PAPAConfig(k=400, timesteps_per_image=None, sampler="ddpm", num_sampling_steps=1000),
    # The authors' settings at a laptop's speed (32 Monte-Carlo timesteps, 20-step DDIM): the untuned PAPA that
    # comparisons against untuned baselines use (`faithful` costs ~80 s per interaction on 2 CPU cores).
    "authors-mc": PAPAConfig(),
    # The PAPA default: two Adam steps per interaction at 10x the authors' lr on the 10 new replies + 22 replayed
    # ones, 4 timesteps each (256 rows), and the dislike term bounded (unbounded, lr 1e-4 collapses onto one digit).
    "papa": PAPAConfig(lr=1e-4, timesteps_per_image=4, updates_per_interaction=2, replay=22, dislike_margin=0.5),
    # The EPAPA default: k = 300; 10 new + 54 replayed replies x 1 timestep per step (128 rows, half of PAPA's); a
    # reply baseline; half the queries from the frozen base model; a 67x stronger anchor; queries and samples from a
    # tail average of the weights (decay 0.95 after the first 30 updates).
    "epapa": PAPAConfig(
        lr=1e-4,
        k=300,
        model_coef=0.6,
        timesteps_per_image=1,
        updates_per_interaction=2,
        replay=54,
        reply_baseline=50,
        dislike_margin=0.5,
        base_queries=5,
        ema_decay=0.95,
        ema_start=30,
    ),
}


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


def papa_loss(
    unet: torch.nn.Module,
    base: torch.nn.Module,
    x0: torch.Tensor,
    y: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
    cfg: PAPAConfig,
    reply_weight: torch.Tensor | None = None,
    backward: bool = False,
) -> dict[str, Any]:
    """PAPA's loss of a batch of queries, summed over its (query, timestep) rows and averaged over queries.

    Args:
        unet: the model being tuned; base: the frozen base model.
        x0: (B, 1, 28, 28) queries in [-1, 1]; y: (B,) reply signs (:func:`reply_signs`).
        timesteps: (B, m) from :func:`draw_timesteps`; noise: (B, 1, 28, 28), one eps per query, shared across t.
        reply_weight: (B,) multiplier of each query's reply term (default ``y``; ``y - b`` with a reply baseline);
            the anchor and the dislike bound still follow the sign ``y``.
        backward: accumulate gradients chunk by chunk (bounded memory) instead of returning a graph.

    Returns:
        ``{"loss", "losses/pref", "losses/model"}`` as floats; with ``backward=False`` also ``"tensor"``.
    """
    b, m = timesteps.shape
    abar, w = noise_schedule()
    scale = (T - cfg.k) / m  # 1. m uniform draws of t in [k, T) estimate a sum of T - k terms (1 for the full sum)
    rows_img, rows_t = torch.arange(b).repeat_interleave(m), timesteps.reshape(-1)
    liked, r = (y > 0).float(), y if reply_weight is None else reply_weight
    total, pref_sum, model_sum = torch.zeros(()), 0.0, 0.0
    for start in range(0, len(rows_t), cfg.chunk):
        i, t = rows_img[start : start + cfg.chunk], rows_t[start : start + cfg.chunk]
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
        if need_anchor:  # 6. the anchor: model_coef * [y = +1] * ||eps_theta - eps_base||^2, a mean over the m draws
            model = cfg.model_coef * liked[i] * (1.0 / m) * ((eps_hat - eps_base) ** 2).mean((1, 2, 3))
        else:
            model = torch.zeros_like(pref)
        chunk_loss = (pref.sum() + model.sum()) / b  # 7. summed over rows, averaged over the B queries
        pref_sum += float(pref.detach().sum()) / b
        model_sum += float(model.detach().sum()) / b
        if backward:
            chunk_loss.backward()
        else:
            total = total + chunk_loss
    out: dict[str, Any] = {"loss": pref_sum + model_sum, "losses/pref": pref_sum, "losses/model": model_sum}
    if not backward:
        out["tensor"] = total
    return out


# ALGO LOGIC: the agent -------------------------------------------------------------------------------


class PAPA:
    """PAPA (``k = 0``) or EPAPA (``k > 0``) around a pretrained UNet; an agent of :func:`papa_env.session.
    run_session`.

    Args:
        unet: the pretrained base model (copied: the original stays untouched and serves as the frozen base).
        config: a :class:`PAPAConfig` or a :data:`PRESETS` name.
    """

    side_by_side: bool = True
    """the tuned and the base model's queries sampled in two threads at once (the same images; False: one after the
    other, bit for bit the same at one thread: :func:`papa_env.diffusion.sample_many`)"""

    def __init__(self, unet: torch.nn.Module, config: PAPAConfig | str = "epapa") -> None:
        if isinstance(config, str):
            if config not in PRESETS:
                raise ValueError(f"unknown PAPA preset {config!r}; expected one of {sorted(PRESETS)}")
            config = PRESETS[config]
        self.cfg = config
        self.name = "epapa" if config.k else "papa"
        self.base = unet.eval().requires_grad_(False)
        self.unet = copy.deepcopy(unet).train().requires_grad_(True)
        self.sampled, self.ema = self.unet, None  # the weights queries are drawn from: the latest, or their average
        if config.ema_decay is not None:  # diffusers' update_after_step: the latest weights until then, no warm-up
            self.ema = EMAModel(self.unet.parameters(), decay=config.ema_decay, min_decay=config.ema_decay,
                                update_after_step=config.ema_start)  # fmt: skip
            self.sampled = copy.deepcopy(self.unet).eval().requires_grad_(False)
        self.policy = SwitchedUNet(self.sampled, self.base, config.k) if config.k else self.sampled
        self.opt = torch.optim.Adam(self.unet.parameters(), lr=config.lr)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.updates = 0
        self.buffer_x, self.buffer_y = torch.zeros(0), torch.zeros(0)  # every signed reply so far (no skips)

    def propose(self, generator: torch.Generator) -> np.ndarray:
        """K queries: the tuned model's, then ``base_queries`` of the base model's, from one generator stream."""
        k, n_base = self.cfg.queries_per_step, self.cfg.base_queries
        if not 0 < n_base < k:
            return self._sample(self.base if n_base else self.policy, k, generator).numpy()
        kw = dict(sampler=self.cfg.sampler, num_steps=self.cfg.num_sampling_steps, eta=self.cfg.eta)
        parts = sample_many([self.policy, self.base], [k - n_base, n_base], generator=generator,
                            side_by_side=self.side_by_side, **kw)  # fmt: skip
        return torch.cat(parts).numpy()

    def generate(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self._sample(self.policy, n, generator)

    def _sample(self, unet: torch.nn.Module, n: int, generator: torch.Generator) -> torch.Tensor:
        cfg = self.cfg
        return sample(unet, n, sampler=cfg.sampler, num_steps=cfg.num_sampling_steps, eta=cfg.eta, generator=generator)

    def learn(self, queries: np.ndarray, replies: np.ndarray) -> dict[str, float]:
        """One interaction's update from the replies (K,) to ``queries`` (K, 1, 28, 28)."""
        x0 = torch.as_tensor(np.asarray(queries), dtype=torch.float32)
        y = reply_signs(replies, self.cfg.full_exploitation)
        if len(x0) != len(y):
            raise ValueError(f"{len(x0)} queries but {len(y)} replies")
        stats = {"loss": 0.0, "losses/pref": 0.0, "losses/model": 0.0, "compute/rows": 0.0}
        baseline = self._baseline(y)
        if baseline is not None:
            stats["charts/reply_baseline"] = baseline
        self.unet.train()
        for xb, yb in self._batches(x0, y):
            if not bool((yb != 0).any()):
                continue  # only skips (or {+1, 0} dislikes): nothing to learn from this batch
            timesteps = draw_timesteps(len(xb), self.cfg, self.generator)
            noise = torch.randn(xb.shape, generator=self.generator)
            weight = None if baseline is None else torch.where(yb != 0, yb - baseline, torch.zeros_like(yb))
            self.opt.zero_grad(set_to_none=True)
            out = papa_loss(self.unet, self.base, xb, yb, timesteps, noise, self.cfg, weight, backward=True)
            self.opt.step()
            if self.ema is not None:
                self.ema.step(self.unet.parameters())
            self.updates += 1
            for key in ("loss", "losses/pref", "losses/model"):
                stats[key] += out[key]
            stats["compute/rows"] += timesteps.numel()  # (query, timestep) forward + backward passes
        self.unet.eval()
        if self.ema is not None:
            self.ema.copy_to(self.sampled.parameters())
        keep = y != 0
        self.buffer_x = torch.cat([self.buffer_x.view(-1, *x0.shape[1:]), x0[keep]])
        self.buffer_y = torch.cat([self.buffer_y, y[keep]])
        return stats

    def _baseline(self, y: torch.Tensor) -> float | None:
        """The mean of the last ``reply_baseline`` signed replies, this interaction's included (None: no baseline)."""
        if self.cfg.reply_baseline is None:
            return None
        recent = torch.cat([self.buffer_y, y[y != 0]])[-self.cfg.reply_baseline :]
        return float(recent.mean()) if len(recent) else None

    def _batches(self, x0: torch.Tensor, y: torch.Tensor):
        """The (queries, signs) of each optimizer step: the authors' one pass in batches of ``batch_size``, or
        ``updates_per_interaction`` steps on all K new queries plus ``replay`` earlier replies each."""
        if self.cfg.updates_per_interaction is None and not self.cfg.replay:
            for start in range(0, len(x0), self.cfg.batch_size):
                yield x0[start : start + self.cfg.batch_size], y[start : start + self.cfg.batch_size]
            return
        for _ in range(self.cfg.updates_per_interaction or 1):
            if self.cfg.replay and len(self.buffer_y):
                idx = torch.randint(len(self.buffer_y), (self.cfg.replay,), generator=self.generator)
                yield torch.cat([x0, self.buffer_x[idx]]), torch.cat([y, self.buffer_y[idx]])
            else:
                yield x0, y

    def model(self) -> torch.nn.Module:
        """The tuned weights samples are drawn from (the moving average, with ``ema_decay``)."""
        return self.sampled

    def model_metadata(self) -> dict[str, str]:
        """How this agent samples its model (saved with the weights, read by ``papa sample``)."""
        cfg = self.cfg
        return {"k": str(cfg.k), "sampler": cfg.sampler, "num_sampling_steps": str(cfg.num_sampling_steps),
                "eta": str(cfg.eta)}  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {
            "unet": self.unet.state_dict(),
            "opt": self.opt.state_dict(),
            "generator": self.generator.get_state(),
            "updates": self.updates,
            "buffer_x": self.buffer_x.clone(),
            "buffer_y": self.buffer_y.clone(),
            "config": asdict(self.cfg),
            **({"ema": copy.deepcopy(self.ema.state_dict())} if self.ema is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.unet.load_state_dict(state["unet"])
        self.opt.load_state_dict(state["opt"])
        self.generator.set_state(state["generator"])
        self.updates = state["updates"]
        self.buffer_x, self.buffer_y = state["buffer_x"], state["buffer_y"]
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
            self.ema.copy_to(self.sampled.parameters())
