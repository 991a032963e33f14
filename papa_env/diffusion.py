"""Sampling from the base diffusion models with diffusers' own schedulers.

``sample(unet, n, sampler="ddim", num_steps=20)`` is the one entry point; ``sampler="ddpm"`` with
``num_steps=1000`` is the authors' ancestral sampler. Everything here runs in ``torch.no_grad``.
"""

from __future__ import annotations

from typing import Literal

import torch

from papa_env.models import SCHEDULER_CONFIG

SAMPLERS = ("ddpm", "ddim")

DEFAULT_SAMPLER: Literal["ddpm", "ddim"] = "ddim"
"""The sampler the agents use by default (the base models' quality figures are measured with it)."""
DEFAULT_NUM_STEPS = 20
"""Denoising steps of the default sampler."""
DEFAULT_ETA = 1.0
"""DDIM eta of the default sampler (1.0: stochastic, a Gaussian policy per step, as DDPO/D3PO need)."""


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


@torch.no_grad()
def sample(
    unet: torch.nn.Module,
    n: int,
    *,
    sampler: Literal["ddpm", "ddim"] = DEFAULT_SAMPLER,
    num_steps: int = DEFAULT_NUM_STEPS,
    eta: float = DEFAULT_ETA,
    generator: torch.Generator | None = None,
    batch_size: int = 250,
    progress: bool = False,
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

    Returns:
        (n, C, H, W) float32 in [-1, 1] ((n, 1, 28, 28) for the shipped models).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    sched = make_sampling_scheduler(sampler, num_steps)
    was_training = unet.training
    unet.eval()
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    shape = (unet.config.in_channels, *size)
    out = []
    batches = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"sampling {sampler}-{num_steps}")
    for start in batches:
        b = min(batch_size, n - start)
        x = torch.randn((b, *shape), generator=generator)
        for t in sched.timesteps:
            eps = unet(x, t.expand(b)).sample
            kwargs = {"eta": eta} if sampler == "ddim" else {}
            x = sched.step(eps, t, x, generator=generator, **kwargs).prev_sample
        out.append(x.clamp(-1, 1))
    unet.train(was_training)
    return torch.cat(out)
