"""Sampling from the base diffusion models with diffusers' own schedulers, and the agents' shared diffusion math.

``sample(unet, n, sampler="ddim", num_steps=20)`` draws images; ``sampler="ddpm"`` with ``num_steps=1000``
is the authors' ancestral sampler; ``sample_many`` runs several models side by side and ``sample_calls`` several
small calls of one model as one batch, each the images of the plain calls. The second half is the math every agent
shares, written once here and tested against diffusers: the forward process (``q_sample``, ``noise_schedule``),
PAPA's ELBO weights (``elbo_weights``), the denoising MDP (``sample_trajectory``, ``ddim_step_with_logprob``:
per-step Gaussian log-probs, for DDPO / D3PO), an image's diffusion loss at one timestep (``denoising_error``) and
EPAPA's denoiser (``SwitchedUNet``).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, NamedTuple

import numpy as np
import torch

from papa_env.models import SCHEDULER_CONFIG

SAMPLERS = ("ddpm", "ddim")

DEFAULT_SAMPLER: Literal["ddpm", "ddim"] = "ddim"
"""The sampler the agents use by default (the base models' quality figures are measured with it)."""
DEFAULT_NUM_STEPS = 20
"""Denoising steps of the default sampler."""
DEFAULT_ETA = 1.0
"""DDIM eta of the default sampler (1.0: stochastic, a Gaussian policy per step, as DDPO/D3PO need)."""
_BATCH = 250
"""Images per UNet call of :func:`sample` (its ``batch_size`` default) and of :func:`sample_many`."""


def make_sampling_scheduler(sampler: str = DEFAULT_SAMPLER, num_steps: int = DEFAULT_NUM_STEPS):
    """A diffusers scheduler for ``sampler`` ("ddpm" or "ddim") with ``num_steps`` set.

    Both share :data:`papa_env.models.SCHEDULER_CONFIG` (T = 1000 linear betas). DDIM uses ``"trailing"``
    timestep spacing so that its first step starts from t = T - 1 (pure noise) at any step count.
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    if not isinstance(num_steps, int) or not 1 <= num_steps <= SCHEDULER_CONFIG["num_train_timesteps"]:
        raise ValueError(
            f"num_steps must be an int in [1, {SCHEDULER_CONFIG['num_train_timesteps']}], got {num_steps!r}"
        )
    if sampler == "ddpm":
        sched = DDPMScheduler(**SCHEDULER_CONFIG, timestep_spacing="trailing")
    else:
        sched = DDIMScheduler(**SCHEDULER_CONFIG, timestep_spacing="trailing", set_alpha_to_one=True)
    sched.set_timesteps(num_steps)
    return sched


def _image_shape(unet: torch.nn.Module) -> tuple[int, ...]:
    """(C, H, W) of the images ``unet`` denoises, from its config."""
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return (unet.config.in_channels, *size)


def _draws_step_noise(sampler: str, eta: float) -> bool:
    """Whether our code draws each step's noise itself and hands it to diffusers (``variance_noise``).

    DDIM with eta > 0: ``DDIMScheduler.step`` would draw ``randn(model_output.shape, generator)`` at every step;
    drawing the same numbers in the same order ourselves gives the same images (tested against diffusers'
    pipeline) and lets :func:`sample_many` draw every stream's noise before any model runs.
    """
    return sampler == "ddim" and eta > 0


def _draw_noise(
    shape: tuple[int, ...], sampler: str, eta: float, num_steps: int, generator: torch.Generator | None
) -> list[torch.Tensor]:
    """The per-step noise of one batch of shape ``shape``, drawn as ``DDIMScheduler.step`` would draw it."""
    if not _draws_step_noise(sampler, eta):
        return []
    return [torch.randn(shape, generator=generator) for _ in range(num_steps)]


def _denoise(
    unet: torch.nn.Module,
    sched,
    x: torch.Tensor,
    sampler: str,
    eta: float,
    generator: torch.Generator | None,
    step_noise: list[torch.Tensor],
) -> torch.Tensor:
    """Run the reverse process of ``sched`` from x_T = ``x``; ``step_noise`` from :func:`_draw_noise`."""
    for i, t in enumerate(sched.timesteps):
        eps = unet(x, t.expand(len(x))).sample
        if sampler == "ddim" and step_noise:  # diffusers refuses a generator together with the noise
            x = sched.step(eps, t, x, eta=eta, variance_noise=step_noise[i]).prev_sample
        elif sampler == "ddim":
            x = sched.step(eps, t, x, eta=eta, generator=generator).prev_sample
        else:
            x = sched.step(eps, t, x, generator=generator).prev_sample
    return x.clamp(-1, 1)


@torch.no_grad()
def sample(
    unet: torch.nn.Module,
    n: int,
    *,
    sampler: Literal["ddpm", "ddim"] = DEFAULT_SAMPLER,
    num_steps: int = DEFAULT_NUM_STEPS,
    eta: float = DEFAULT_ETA,
    generator: torch.Generator | None = None,
    batch_size: int = _BATCH,
    progress: bool = False,
    initial_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw ``n`` images from an epsilon-prediction UNet.

    Args:
        unet: a ``UNet2DModel`` taking (B, C, H, W) (from its config; (B, 1, 28, 28) for the shipped models)
            and timesteps (B,).
        n: number of images.
        sampler: ``"ddim"`` (few steps) or ``"ddpm"`` (ancestral; 1000 steps is the authors' sampler).
        num_steps: denoising steps.
        eta: DDIM noise scale (ignored by DDPM); 0 = deterministic.
        generator: CPU generator for the initial noise and every step's noise (same seed -> same images).
        batch_size: images per UNet call.
        progress: show a tqdm bar over batches.
        initial_noise: (n, C, H, W) x_T to start from instead of drawing it (e.g. an SB3 policy's action).

    Returns:
        (n, C, H, W) float32 in [-1, 1] ((n, 1, 28, 28) for the shipped models).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    sched = make_sampling_scheduler(sampler, num_steps)
    shape = _image_shape(unet)
    if initial_noise is not None and tuple(initial_noise.shape) != (n, *shape):
        raise ValueError(f"initial_noise must have shape {(n, *shape)}, got {tuple(initial_noise.shape)}")
    was_training = unet.training
    unet.eval()
    device = next(unet.parameters()).device  # noise is drawn on the CPU (same images anywhere), then moved
    out = []
    batches = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"sampling {sampler}-{num_steps}")
    for start in batches:
        b = min(batch_size, n - start)
        if initial_noise is not None:
            x = initial_noise[start : start + b].to(device=device, dtype=torch.float32)
        else:
            x = torch.randn((b, *shape), generator=generator).to(device)
        step_noise = [z.to(device) for z in _draw_noise((b, *shape), sampler, eta, num_steps, generator)]
        out.append(_denoise(unet, sched, x, sampler, eta, generator, step_noise).cpu())
    unet.train(was_training)
    return torch.cat(out)


def _draw_call(
    shape: tuple[int, ...], n: int, sampler: str, eta: float, num_steps: int, generator: torch.Generator | None
) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    """The randomness ``sample(unet, n, ...)`` draws for images of ``shape``, in its order: (x_T, step noise) of each
    of its batches (DDIM with eta > 0 only: other samplers draw inside the scheduler)."""
    batches = []
    for start in range(0, n, _BATCH):  # as sample() splits n
        size = (min(_BATCH, n - start), *shape)
        batches.append((torch.randn(size, generator=generator), _draw_noise(size, sampler, eta, num_steps, generator)))
    return batches


@torch.no_grad()
def sample_calls(
    unet: torch.nn.Module,
    counts: Sequence[int],
    *,
    sampler: Literal["ddpm", "ddim"] = DEFAULT_SAMPLER,
    num_steps: int = DEFAULT_NUM_STEPS,
    eta: float = DEFAULT_ETA,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The images of ``torch.cat([sample(unet, n, generator=generator, ...) for n in counts])``, denoised as one batch.

    On a CPU a call's cost grows far slower than its images (one call of 20 costs ~3x one of 5), so an agent that
    draws several small sets of candidates from one model (``PAPAConfig.generate_candidates``) draws them at once.
    Every call's x_T and step noise is drawn from ``generator`` first, in the order those calls draw them, so the
    images are theirs up to float rounding (the UNet's kernels may round a larger batch differently, ~1e-6). Falls
    back to the calls themselves for DDPM, whose scheduler draws each step's noise itself.

    Args:
        unet: an epsilon-prediction model, as for :func:`sample`.
        counts: images of each call, each >= 1.
        sampler, num_steps, eta, generator: as for :func:`sample`.

    Returns:
        (sum(counts), C, H, W) float32 in [-1, 1].
    """
    if not len(counts) or any(n < 1 for n in counts):
        raise ValueError(f"counts must be one or more counts, each >= 1, got {list(counts)}")
    kw = dict(sampler=sampler, num_steps=num_steps, eta=eta, generator=generator)
    if len(counts) == 1 or sampler != "ddim":
        return torch.cat([sample(unet, n, **kw) for n in counts])
    batches = [b for n in counts for b in _draw_call(_image_shape(unet), n, sampler, eta, num_steps, generator)]
    x = torch.cat([b[0] for b in batches])
    noise = [torch.cat([b[1][i] for b in batches]) for i in range(len(batches[0][1]))]  # none with eta 0
    sched = make_sampling_scheduler(sampler, num_steps)
    was_training, device = unet.training, next(unet.parameters()).device
    unet.eval()
    try:
        out = [
            _denoise(unet, sched, x[s : s + _BATCH].to(device), sampler, eta, None,
                     [z[s : s + _BATCH].to(device) for z in noise]).cpu()
            for s in range(0, len(x), _BATCH)
        ]  # fmt: skip
    finally:
        unet.train(was_training)
    return torch.cat(out)


_POOL: ThreadPoolExecutor | None = None
"""Worker threads of :func:`sample_many`, kept across calls (each keeps its OpenMP team)."""
_POOL_WORKERS = 0


@torch.no_grad()
def sample_many(
    unets: Sequence[torch.nn.Module],
    counts: Sequence[int],
    *,
    sampler: Literal["ddpm", "ddim"] = DEFAULT_SAMPLER,
    num_steps: int = DEFAULT_NUM_STEPS,
    eta: float = DEFAULT_ETA,
    generator: torch.Generator | None = None,
    side_by_side: bool = True,
) -> list[torch.Tensor]:
    """Draw ``counts[i]`` images from each of several models, the models running side by side.

    The same images as ``[sample(u, n, generator=generator, ...) for u, n in zip(unets, counts)]`` in that
    order: every stream's x_T and step noise is drawn from ``generator`` first, in the order those calls draw
    them, then each model denoises its batch in a thread of its own with ``torch.get_num_threads() //
    len(unets)`` intra-op threads. A batch of 5 images keeps 2 cores only ~55% busy, so two such streams
    (EPAPA's tuned queries and its base-model queries, ``PAPAConfig.base_queries``) take ~0.65x the time of
    one after the other. Equal bit for bit to the sequential calls at one thread; with more, each stream's
    float rounding is that of fewer threads (differences ~1e-6). Falls back to the sequential calls when
    there are fewer intra-op threads than models, or for samplers that draw their own noise (DDPM, where
    diffusers' step takes no noise argument).

    Args:
        unets: epsilon-prediction models, as for :func:`sample`.
        counts: images per model, each >= 1.
        sampler, num_steps, eta, generator: as for :func:`sample`.
        side_by_side: False runs the sequential calls (what ``benchmarks.speed --sequential-too`` times).

    Returns:
        One (counts[i], C, H, W) float32 tensor in [-1, 1] per model.
    """
    if len(unets) != len(counts):
        raise ValueError(f"{len(unets)} models but {len(counts)} counts")
    if any(n < 1 for n in counts):
        raise ValueError(f"every count must be >= 1, got {list(counts)}")
    threads = torch.get_num_threads()
    if not side_by_side or len(unets) < 2 or threads < len(unets) or not _draws_step_noise(sampler, eta):
        kw = dict(sampler=sampler, num_steps=num_steps, eta=eta, generator=generator)
        return [sample(u, n, **kw) for u, n in zip(unets, counts)]
    sched = make_sampling_scheduler(sampler, num_steps)
    # all the randomness first, in the order of the sequential calls
    streams = [_draw_call(_image_shape(u), n, sampler, eta, num_steps, generator) for u, n in zip(unets, counts)]
    modes = [u.training for u in unets]
    for u in unets:  # in this thread: models may share submodules (EPAPA's tuned queries also run the base)
        u.eval()
    per_thread = max(1, threads // len(unets))

    def run(i: int) -> torch.Tensor:
        torch.set_num_threads(per_thread)  # this worker's own OpenMP setting
        # each stream its own scheduler copy: diffusers' DDIM step keeps no state between steps, but one
        # object shared across threads is a trap for whoever changes the sampler
        own = copy.deepcopy(sched)
        device = next(unets[i].parameters()).device
        with torch.no_grad():
            return torch.cat(
                [_denoise(unets[i], own, x.to(device), sampler, eta, None, [n.to(device) for n in z]).cpu()
                 for x, z in streams[i]]
            )  # fmt: skip

    global _POOL, _POOL_WORKERS
    if _POOL is None or _POOL_WORKERS < len(unets):
        if _POOL is not None:  # too few workers for this many models: retire the old pool's threads
            _POOL.shutdown(wait=False)
        _POOL = ThreadPoolExecutor(max_workers=len(unets), thread_name_prefix="papa-sample")
        _POOL_WORKERS = len(unets)
    try:
        return [f.result() for f in [_POOL.submit(run, i) for i in range(len(unets))]]
    finally:
        torch.set_num_threads(threads)  # MKL's thread count is process-wide: restore it for this thread
        for u, mode in zip(unets, modes):
            u.train(mode)


# --------------------------------------------------------------------------------------------------
# Denoising as the agent's MDP: per-step Gaussian log-probs (for DDPO / D3PO) and the ELBO weights (PAPA)
# --------------------------------------------------------------------------------------------------


@functools.cache
def noise_schedule() -> tuple[torch.Tensor, torch.Tensor]:
    """(abar_t, w_t) of the shipped models' schedule (:data:`papa_env.models.SCHEDULER_CONFIG`), each (T,) float32:
    the cumulative alphas and PAPA's ELBO weights (:func:`elbo_weights`). Computed once; do not modify in place."""
    from papa_env.models import make_scheduler

    sched = make_scheduler()
    return sched.alphas_cumprod.float(), elbo_weights(sched)


def q_sample(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps: the forward process q(x_t | x_0) (DDPM eq. 4).

    The same as ``DDPMScheduler.add_noise`` (tested allclose), without its per-call device and dtype moves.

    Args:
        x0: (B, C, H, W) clean images; noise: (B, C, H, W) eps ~ N(0, I); t: (B,) int64 timesteps.
        alphas_cumprod: (T,) abar on ``x0``'s device (e.g. ``noise_schedule()[0]``).
    """
    a = alphas_cumprod[t].view(-1, *([1] * (x0.ndim - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


@torch.no_grad()
def denoising_error(
    unet: torch.nn.Module, x0: torch.Tensor, t: int, noises: int = 2, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B,) how badly ``unet`` denoises each image of ``x0`` (B, C, H, W) at timestep ``t``: the mean over ``noises``
    draws of eps of ||eps_theta(x_t, t) - eps||^2 / (C H W), x_t by :func:`q_sample`. Low for an image typical of
    the model (the diffusion loss of that one image at one t); noise drawn on the CPU from ``generator``."""
    if not 0 <= t < len(noise_schedule()[0]) or noises < 1:
        raise ValueError(f"t must be in [0, {len(noise_schedule()[0])}) and noises >= 1, got t={t}, noises={noises}")
    device = next(unet.parameters()).device
    abar, tt = noise_schedule()[0].to(device), torch.full((len(x0),), t, device=device)
    was_training = unet.training
    unet.eval()
    error = torch.zeros(len(x0), device=device)
    for _ in range(noises):
        eps = torch.randn(x0.shape, generator=generator).to(device)
        pred = unet(q_sample(x0.to(device), eps, tt, abar), tt).sample
        error += ((pred - eps) ** 2).flatten(1).mean(1) / noises
    unet.train(was_training)
    return error.cpu()


def elbo_weights(scheduler) -> torch.Tensor:
    """PAPA's per-timestep weights w_t of ||eps_theta(x_t, t) - eps||^2, shape (T,).

    1. For t >= 1 (0-indexed): w_t = beta_t / (alpha_t (1 - abar_{t-1})), the authors' weight: twice the
       eps-form KL weight of the DDPM bound with posterior variance beta_tilde_t (about 1.2 at t = 1 and
       0.01-0.02 for t >= 100 under the linear schedule).
    2. For t = 0 the posterior variance beta_tilde_0 is 0 and that formula divides by zero (the authors'
       code indexes abar_{-1}, which wraps to abar_{T-1}: a bug we do not copy). We use the DDPM decoder's
       variance beta_0 instead: w_0 = beta_0 / (alpha_0 (1 - abar_0)) = 1 / alpha_0.
    """
    betas = scheduler.betas.double()
    alphas = 1 - betas
    abar = torch.cumprod(alphas, 0)
    abar_prev = torch.cat([abar.new_zeros(1), abar[:-1]])  # placeholder at t = 0, replaced below
    w = betas / (alphas * (1 - abar_prev))
    w[0] = betas[0] / (alphas[0] * (1 - abar[0]))
    return w.float()


def ddim_mean_std(
    scheduler, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1.-3. of :func:`ddim_step_with_logprob`: the Gaussian mean (B, C, H, W) and std (a scalar) of the DDIM
    step from x_t = ``sample`` with predicted noise ``model_output``."""
    t = int(timestep)
    step_size = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    t_prev = t - step_size
    abar_t = scheduler.alphas_cumprod[t]
    abar_prev = scheduler.alphas_cumprod[t_prev] if t_prev >= 0 else scheduler.final_alpha_cumprod
    x0 = (sample - (1 - abar_t).sqrt() * model_output) / abar_t.sqrt()  # 1.
    if scheduler.config.clip_sample:
        r = scheduler.config.clip_sample_range
        x0 = x0.clamp(-r, r)
    variance = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)  # 2.
    std = eta * variance.sqrt()
    return abar_prev.sqrt() * x0 + (1 - abar_prev - std**2).sqrt() * model_output, std  # 3.


def ddim_step_with_logprob(
    scheduler,
    model_output: torch.Tensor,
    timestep: int | torch.Tensor,
    sample: torch.Tensor,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    prev_sample: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One DDIM step that also returns the Gaussian log-prob of ``prev_sample``.

    Follows ``DDIMScheduler.step`` of diffusers 0.42 (epsilon prediction, ``clip_sample``, no thresholding)
    and is tested ``allclose`` against it; differentiable in ``model_output``.

    1. x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), clipped to [-1, 1]   (DDIM eq. 12)
    2. sigma_t = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)   (DDIM eq. 16)
    3. mu = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma_t^2) eps
    4. x_prev = mu + sigma_t z (drawn with ``generator`` unless ``prev_sample`` is given)
    5. log p(x_prev | x_t) = mean over pixels of log N(x_prev; mu, sigma_t^2)   (DDPO's convention)

    Args:
        scheduler: a ``DDIMScheduler`` with ``set_timesteps`` called.
        model_output: (B, C, H, W) predicted noise eps_theta(x_t, t).
        timestep: the current t.
        sample: (B, C, H, W) x_t.
        eta: DDIM noise scale; > 0 for a log-prob.
        generator: draws z when ``prev_sample`` is None.
        prev_sample: (B, C, H, W) a given x_{t-1} whose log-prob to compute (e.g. a stored trajectory).

    Returns:
        (prev_sample, log_prob (B,), sigma_t). When sigma_t is 0 (the last step, abar_prev = 1) the step is
        deterministic and log_prob is 0 (a point mass: no gradient flows through it).
    """
    mean, std = ddim_mean_std(scheduler, model_output, timestep, sample, eta)  # 1.-3.
    if prev_sample is None:  # 4.
        if eta > 0:
            noise = torch.randn(model_output.shape, generator=generator, dtype=model_output.dtype)
            prev_sample = mean + std * noise
        else:
            prev_sample = mean
    if std > 0:  # 5.
        logp = -((prev_sample.detach() - mean) ** 2) / (2 * std**2) - std.log() - 0.5 * math.log(2 * math.pi)
        log_prob = logp.mean(dim=tuple(range(1, logp.ndim)))
    else:
        log_prob = torch.zeros(sample.shape[0], dtype=sample.dtype)
    return prev_sample, log_prob, std


class Trajectory(NamedTuple):
    """A batch of denoising trajectories.

    Attributes:
        images: (B, C, H, W) the final samples, clamped to [-1, 1].
        latents: (S + 1, B, C, H, W) x_T, ..., x_0 as sampled (unclamped).
        timesteps: (S,) int64 the t of each step.
        log_probs: (S, B) log p(x_{t-1} | x_t) under the sampling model (0 at deterministic steps).
        stochastic: (S,) bool, which steps drew noise (their log-probs are meaningful).
    """

    images: torch.Tensor
    latents: torch.Tensor
    timesteps: torch.Tensor
    log_probs: torch.Tensor
    stochastic: torch.Tensor

    def to_numpy(self) -> dict[str, np.ndarray]:
        """As numpy arrays (to persist with the queries)."""
        return {k: v.numpy() for k, v in self._asdict().items()}

    @classmethod
    def from_numpy(cls, arrays: dict[str, np.ndarray]) -> Trajectory:
        return cls(**{k: torch.from_numpy(np.asarray(arrays[k])) for k in cls._fields})

    def select(self, index: torch.Tensor | list[int]) -> Trajectory:
        """The trajectories ``index`` of the batch (a minibatch of them)."""
        index = torch.as_tensor(index, dtype=torch.long)
        return self._replace(images=self.images[index], latents=self.latents[:, index],
                             log_probs=self.log_probs[:, index])  # fmt: skip


@torch.no_grad()
def sample_trajectory(
    unet: torch.nn.Module,
    n: int,
    *,
    num_steps: int = DEFAULT_NUM_STEPS,
    eta: float = DEFAULT_ETA,
    generator: torch.Generator | None = None,
    initial_noise: torch.Tensor | None = None,
) -> Trajectory:
    """DDIM-sample ``n`` trajectories, keeping every latent and per-step log-prob (the agent's MDP).

    Args:
        unet: an epsilon-prediction model ``unet(x, t).sample``.
        n: batch size (ignored when ``initial_noise`` is given).
        num_steps: DDIM steps S.
        eta: DDIM noise scale (1.0: DDPO's choice).
        generator: for x_T and every step's noise.
        initial_noise: (B, C, H, W) x_T to start from (e.g. D3PO's shared start of a pair).
    """
    sched = make_sampling_scheduler("ddim", num_steps)
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    x = (
        initial_noise.clone()
        if initial_noise is not None
        else torch.randn((n, unet.config.in_channels, *size), generator=generator)
    )
    latents, log_probs, stochastic = [x], [], []
    for t in sched.timesteps:
        eps = unet(x, t.expand(len(x))).sample
        x, logp, std = ddim_step_with_logprob(sched, eps, t, x, eta, generator=generator)
        latents.append(x)
        log_probs.append(logp)
        stochastic.append(bool(std > 0))
    return Trajectory(
        images=x.clamp(-1, 1),
        latents=torch.stack(latents),
        timesteps=sched.timesteps.clone(),
        log_probs=torch.stack(log_probs),
        stochastic=torch.tensor(stochastic),
    )


class SwitchedUNet(torch.nn.Module):
    """EPAPA's denoiser: ``tuned`` for timesteps t >= k, the frozen ``base`` below k.

    Quacks like a ``UNet2DModel`` (``.config``, ``forward(x, t).sample``), so :func:`sample` and
    :func:`sample_trajectory` use it unchanged. Timesteps may differ across the batch.
    """

    def __init__(self, tuned: torch.nn.Module, base: torch.nn.Module, k: int) -> None:
        super().__init__()
        if not 0 <= k < SCHEDULER_CONFIG["num_train_timesteps"]:
            raise ValueError(f"k must be in [0, {SCHEDULER_CONFIG['num_train_timesteps']}), got {k!r}")
        self.tuned, self.base, self.k = tuned, base, int(k)
        self.config = tuned.config
        self.train(tuned.training)

    def train(self, mode: bool = True) -> SwitchedUNet:
        """Set the tuned model's mode; the frozen base stays in eval mode whatever :func:`sample` restores."""
        self.training = mode
        self.tuned.train(mode)
        return self

    def forward(self, x: torch.Tensor, t: torch.Tensor | int):
        from diffusers.models.unets.unet_2d import UNet2DOutput

        t = torch.as_tensor(t).expand(len(x)) if torch.as_tensor(t).ndim == 0 else torch.as_tensor(t)
        high = t >= self.k
        if bool(high.all()):
            return self.tuned(x, t)
        if not bool(high.any()):
            return self.base(x, t)
        out = torch.empty_like(x)
        out[high] = self.tuned(x[high], t[high]).sample
        out[~high] = self.base(x[~high], t[~high]).sample
        return UNet2DOutput(sample=out)


def trajectory_log_probs(
    unet: torch.nn.Module,
    traj: Trajectory,
    step: int | Sequence[int],
    eta: float = DEFAULT_ETA,
    with_mean: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p_theta(x_{t-1} | x_t) of a stored trajectory's step ``step`` under ``unet``, (B,), differentiable.

    The policy-gradient baselines (DDPO, D3PO) re-evaluate the sampled actions under the current (or the
    reference) model with this; at the sampling model's own weights it equals ``traj.log_probs[step]``. With
    ``with_mean``: (log_prob, the step's Gaussian mean (B, C, H, W), its std), for a KL between two models' steps.

    ``step`` a sequence of S steps: all of them in one UNet call of S x B rows (the same values as one call per
    step, up to float rounding; DDPO's and D3PO's updates ran ~3.5x faster on a CPU than with S calls of B rows),
    returned stacked: log-probs (S, B), means (S, B, C, H, W), stds (S,).
    """
    many = isinstance(step, Sequence)
    steps = [int(j) for j in step] if many else [int(step)]
    if not steps:
        raise ValueError("trajectory_log_probs needs at least one step")
    sched = make_sampling_scheduler("ddim", len(traj.timesteps))
    t, x_t = traj.timesteps[steps], traj.latents[steps]  # (S,), (S, B, C, H, W)
    eps = unet(x_t.flatten(0, 1), t.repeat_interleave(x_t.shape[1])).sample.view_as(x_t)
    log_probs, means, stds = [], [], []
    for i, j in enumerate(steps):
        _, log_prob, _ = ddim_step_with_logprob(sched, eps[i], t[i], x_t[i], eta, prev_sample=traj.latents[j + 1])
        log_probs.append(log_prob)
        if with_mean:
            mean, std = ddim_mean_std(sched, eps[i], t[i], x_t[i], eta)
            means.append(mean)
            stds.append(torch.as_tensor(std, dtype=x_t.dtype))
    if not many:
        return (log_probs[0], means[0], stds[0]) if with_mean else log_probs[0]
    if not with_mean:
        return torch.stack(log_probs)
    return torch.stack(log_probs), torch.stack(means), torch.stack(stds)
