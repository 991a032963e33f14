from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDPMPipeline

from papa_env.diffusion import make_sampling_scheduler, sample
from papa_env.models import SCHEDULER_CONFIG, make_scheduler


def test_scheduler_is_the_authors_schedule() -> None:
    s = make_scheduler()
    assert s.config.num_train_timesteps == 1000
    assert torch.allclose(s.betas, torch.linspace(1e-4, 0.02, 1000))


@pytest.mark.parametrize("steps", [1, 5, 20])
def test_ddim_timesteps_start_from_pure_noise(steps: int) -> None:
    ts = make_sampling_scheduler("ddim", steps).timesteps
    assert len(ts) == steps and ts[0] == 999 and (ts[:-1] > ts[1:]).all()


def test_ddpm_matches_diffusers_pipeline(tiny_unet) -> None:
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(**SCHEDULER_CONFIG, timestep_spacing="trailing")
    pipe = DDPMPipeline(unet=tiny_unet, scheduler=sched)
    ref = pipe(
        batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=10, output_type="np"
    ).images
    ours = sample(tiny_unet, 2, sampler="ddpm", num_steps=10, generator=torch.Generator().manual_seed(3))
    ours_np = ((ours + 1) / 2).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours_np, ref, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers_pipeline(tiny_unet, eta: float) -> None:
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(**SCHEDULER_CONFIG, timestep_spacing="trailing", set_alpha_to_one=True)
    pipe = DDIMPipeline(unet=tiny_unet, scheduler=sched)
    ref = pipe(
        batch_size=2, generator=torch.Generator().manual_seed(5), num_inference_steps=8, eta=eta, output_type="np"
    ).images
    ours = sample(tiny_unet, 2, sampler="ddim", num_steps=8, eta=eta, generator=torch.Generator().manual_seed(5))
    np.testing.assert_allclose(((ours + 1) / 2).permute(0, 2, 3, 1).numpy(), ref, atol=1e-5)


def test_batching_does_not_change_count_or_range(tiny_unet) -> None:
    x = sample(tiny_unet, 5, num_steps=3, batch_size=2, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 1, 28, 28) and x.abs().max() <= 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(sampler="euler"), "unknown sampler"),
        (dict(num_steps=0), "num_steps"),
        (dict(num_steps=1001), "num_steps"),
    ],
)
def test_bad_sampler_arguments(tiny_unet, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        sample(tiny_unet, 1, **kwargs)
    with pytest.raises(ValueError, match="n must be"):
        sample(tiny_unet, 0)
