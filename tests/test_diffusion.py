from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDPMPipeline

from papa_env.diffusion import make_sampling_scheduler, sample, sample_many
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


@pytest.fixture
def two_unets(tiny_unet):
    other = copy.deepcopy(tiny_unet)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(0.05)
    return tiny_unet, other


@pytest.fixture
def threads():
    """Restores torch's intra-op thread count after the test."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _sequential(unets, counts, seed: int, **kw) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [sample(u, n, generator=g, **kw) for u, n in zip(unets, counts)], g.get_state()


def test_sample_many_at_one_thread_is_the_sequential_calls_bit_for_bit(two_unets, threads) -> None:
    torch.set_num_threads(1)
    ref, ref_state = _sequential(two_unets, [3, 2], 7, num_steps=6)
    g = torch.Generator().manual_seed(7)
    ours = sample_many(two_unets, [3, 2], num_steps=6, generator=g)
    assert all(torch.equal(a, b) for a, b in zip(ours, ref)) and torch.equal(g.get_state(), ref_state)


def test_sample_many_runs_the_models_side_by_side_with_the_same_images(two_unets, threads, monkeypatch) -> None:
    import threading

    import papa_env.diffusion as diffusion

    torch.set_num_threads(2)
    seen: set[str] = set()
    denoise = diffusion._denoise

    def spy(*args, **kwargs):
        seen.add(threading.current_thread().name)
        return denoise(*args, **kwargs)

    monkeypatch.setattr(diffusion, "_denoise", spy)
    monkeypatch.setattr(diffusion, "_BATCH", 2)  # several batches per stream: drawn in sample()'s order
    two_unets[1].train()
    ref, ref_state = _sequential(two_unets, [3, 5], 1, num_steps=5, batch_size=2)
    seen.clear()
    g = torch.Generator().manual_seed(1)
    ours = sample_many(two_unets, [3, 5], num_steps=5, generator=g)
    assert len(seen) == 2 and all(name.startswith("papa-sample") for name in seen)  # two worker threads
    assert [tuple(x.shape) for x in ours] == [(3, 1, 28, 28), (5, 1, 28, 28)]
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(ours, ref))  # rounding of 1 thread vs 2
    assert torch.equal(g.get_state(), ref_state)  # the generator is where the sequential calls leave it
    assert torch.get_num_threads() == 2 and two_unets[1].training and not two_unets[0].training


def test_sample_many_retires_a_pool_too_small_for_more_models(two_unets, threads) -> None:
    import papa_env.diffusion as diffusion

    torch.set_num_threads(3)
    sample_many(two_unets, [1, 1], num_steps=2, generator=torch.Generator().manual_seed(0))
    old = diffusion._POOL
    three = [*two_unets, copy.deepcopy(two_unets[0])]
    ref, _ = _sequential(three, [1, 1, 1], 0, num_steps=2)
    ours = sample_many(three, [1, 1, 1], num_steps=2, generator=torch.Generator().manual_seed(0))
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(ours, ref))
    assert diffusion._POOL is not old and diffusion._POOL_WORKERS == 3 and old._shutdown


def test_sample_many_falls_back_to_the_sequential_calls(two_unets, threads) -> None:
    torch.set_num_threads(2)
    for kw in (dict(sampler="ddpm", num_steps=4), dict(sampler="ddim", num_steps=4, eta=0.0)):
        ref, _ = _sequential(two_unets, [2, 2], 3, **kw)  # DDPM draws its own noise; DDIM eta 0 draws none
        ours = sample_many(two_unets, [2, 2], generator=torch.Generator().manual_seed(3), **kw)
        assert all(torch.equal(a, b) for a, b in zip(ours, ref))
    with pytest.raises(ValueError, match="2 models but 1 counts"):
        sample_many(two_unets, [2])
    with pytest.raises(ValueError, match="every count must be >= 1"):
        sample_many(two_unets, [2, 0])


def test_sample_calls_are_the_separate_calls_drawn_as_one_batch(two_unets, threads, monkeypatch) -> None:
    import papa_env.diffusion as diffusion

    torch.set_num_threads(1)
    unet = two_unets[0]
    unet.train()
    calls: list[int] = []
    denoise = diffusion._denoise

    def spy(unet, sched, x, *args):
        calls.append(len(x))
        return denoise(unet, sched, x, *args)

    monkeypatch.setattr(diffusion, "_denoise", spy)
    for kw in (dict(num_steps=5), dict(num_steps=3, eta=0.0)):  # step noise drawn, or none
        g = torch.Generator().manual_seed(4)
        ref = torch.cat([sample(unet, n, generator=g, **kw) for n in (2, 3, 2)])
        calls.clear()
        g2 = torch.Generator().manual_seed(4)
        ours = diffusion.sample_calls(unet, [2, 3, 2], generator=g2, **kw)
        assert calls == [7]  # one batch
        assert torch.allclose(ours, ref, atol=1e-4) and not torch.equal(ours[:2], ours[2:4])  # rounding only
        assert torch.equal(g2.get_state(), g.get_state()) and unet.training
    monkeypatch.setattr(diffusion, "_BATCH", 4)  # more images than a batch: split as sample() splits, same images
    g = torch.Generator().manual_seed(5)
    ref = torch.cat([sample(unet, n, generator=g, num_steps=4, batch_size=4) for n in (5, 3)])
    calls.clear()
    ours = diffusion.sample_calls(unet, [5, 3], generator=torch.Generator().manual_seed(5), num_steps=4)
    assert calls == [4, 4] and torch.allclose(ours, ref, atol=1e-4)


def test_sample_calls_falls_back_to_the_calls_for_ddpm_and_checks_its_counts(two_unets) -> None:
    from papa_env.diffusion import sample_calls

    g = torch.Generator().manual_seed(2)
    ref = torch.cat([sample(two_unets[0], n, generator=g, sampler="ddpm", num_steps=3) for n in (1, 2)])
    ours = sample_calls(two_unets[0], [1, 2], generator=torch.Generator().manual_seed(2), sampler="ddpm", num_steps=3)
    assert torch.equal(ours, ref)
    for bad in ([], [2, 0]):
        with pytest.raises(ValueError, match="counts must be one or more counts, each >= 1"):
            sample_calls(two_unets[0], bad)


# ------------------------------------------------------------------------------------------------
# the agents' shared math


def test_denoising_error_is_the_diffusion_loss_of_each_image_against_diffusers(tiny_unet) -> None:
    from papa_env.diffusion import denoising_error
    from papa_env.models import make_scheduler

    x0 = torch.rand((3, 1, 28, 28), generator=torch.Generator().manual_seed(0)) * 2 - 1
    g = torch.Generator().manual_seed(1)
    expected = torch.zeros(3)
    for _ in range(2):
        eps = torch.randn(x0.shape, generator=g)
        xt = make_scheduler().add_noise(x0, eps, torch.full((3,), 300))
        expected += ((tiny_unet(xt, torch.full((3,), 300)).sample - eps) ** 2).mean((1, 2, 3)).detach() / 2
    assert torch.allclose(denoising_error(tiny_unet, x0, 300, 2, torch.Generator().manual_seed(1)), expected, atol=1e-6)
    assert not tiny_unet.training
    for bad in ({"t": 1000}, {"t": -1}, {"t": 300, "noises": 0}):
        with pytest.raises(ValueError, match="t must be in"):
            denoising_error(tiny_unet, x0, **bad)


def test_elbo_weights_against_diffusers_posterior_variance() -> None:
    from papa_env.diffusion import elbo_weights

    s = make_scheduler()
    w = elbo_weights(s)
    assert w.shape == (1000,) and torch.isfinite(w).all()
    # for t >= 1: beta_t^2 / (beta_tilde_t alpha_t (1 - abar_t)), beta_tilde from DDPMScheduler._get_variance
    t = torch.arange(1, 1000)
    beta_tilde = torch.stack([s._get_variance(int(i)) for i in t]).double()
    expected = s.betas[t].double() ** 2 / (beta_tilde * s.alphas[t].double() * (1 - s.alphas_cumprod[t].double()))
    assert torch.allclose(w[1:].double(), expected, rtol=1e-3)  # diffusers keeps its schedule in float32
    assert w[0] == pytest.approx(1 / s.alphas[0].item(), rel=1e-6)  # no wrap-around to abar_{T-1}
    assert w[1] == pytest.approx(1.2, abs=0.01) and 0.005 < w[100:].min() and w[100:].max() < 0.03


@pytest.mark.parametrize("steps", [4, 20])
def test_ddim_step_with_logprob_matches_diffusers(tiny_unet, steps: int) -> None:
    from papa_env.diffusion import ddim_step_with_logprob

    sched = make_sampling_scheduler("ddim", steps)
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for t in sched.timesteps:
        with torch.no_grad():
            eps = tiny_unet(x, t.expand(3)).sample
        ref = sched.step(eps, t, x, eta=1.0, generator=torch.Generator().manual_seed(int(t))).prev_sample
        ours, logp, std = ddim_step_with_logprob(sched, eps, t, x, 1.0, generator=torch.Generator().manual_seed(int(t)))
        assert torch.allclose(ours, ref, atol=1e-5)
        if std > 0:  # log-prob equals torch's Normal density, averaged over pixels
            mean = ours - std * torch.randn(x.shape, generator=torch.Generator().manual_seed(int(t)))
            expected = torch.distributions.Normal(mean, std).log_prob(ours).mean((1, 2, 3))
            assert torch.allclose(logp, expected, atol=1e-4)
        else:
            assert t == sched.timesteps[-1] and (logp == 0).all()
        x = ours


def test_logprob_is_differentiable_and_peaks_at_the_mean(tiny_unet) -> None:
    from papa_env.diffusion import ddim_step_with_logprob

    sched = make_sampling_scheduler("ddim", 10)
    x = torch.randn(2, 1, 28, 28)
    eps = torch.zeros(2, 1, 28, 28, requires_grad=True)
    prev, _, _ = ddim_step_with_logprob(sched, eps.detach(), 499, x, 1.0, generator=torch.Generator().manual_seed(0))
    _, logp, _ = ddim_step_with_logprob(sched, eps, 499, x, 1.0, prev_sample=prev)
    logp.sum().backward()
    assert eps.grad is not None and eps.grad.abs().sum() > 0
    mean, _, _ = ddim_step_with_logprob(sched, eps.detach(), 499, x, 0.0)
    _, logp_mean, _ = ddim_step_with_logprob(sched, eps.detach(), 499, x, 1.0, prev_sample=mean)
    assert (logp_mean > logp.detach()).all()


def test_sample_trajectory_matches_sample_and_keeps_latents(tiny_unet) -> None:
    from papa_env.diffusion import sample_trajectory

    traj = sample_trajectory(tiny_unet, 2, num_steps=5, eta=1.0, generator=torch.Generator().manual_seed(9))
    ref = sample(tiny_unet, 2, num_steps=5, eta=1.0, generator=torch.Generator().manual_seed(9))
    assert torch.allclose(traj.images, ref, atol=1e-5)
    assert traj.latents.shape == (6, 2, 1, 28, 28) and traj.log_probs.shape == (5, 2)
    assert traj.stochastic.tolist() == [True] * 4 + [False]
    assert torch.isfinite(traj.log_probs).all()
    # starting two trajectories from the same x_T (D3PO's pairs): same start, different ends
    x_t = traj.latents[0, :1].expand(2, -1, -1, -1)
    pair = sample_trajectory(tiny_unet, 2, num_steps=5, initial_noise=x_t, generator=torch.Generator().manual_seed(1))
    assert torch.equal(pair.latents[0, 0], pair.latents[0, 1]) and not torch.allclose(pair.images[0], pair.images[1])


def test_trajectory_log_probs_recompute_the_sampled_ones(tiny_unet) -> None:
    from papa_env.diffusion import sample_trajectory, trajectory_log_probs

    traj = sample_trajectory(tiny_unet, 3, num_steps=6, generator=torch.Generator().manual_seed(2))
    for j in range(6):
        assert torch.allclose(trajectory_log_probs(tiny_unet, traj, j), traj.log_probs[j], atol=1e-5)
    other = make_unet_like(tiny_unet)
    assert not torch.allclose(trajectory_log_probs(other, traj, 0), traj.log_probs[0])


def test_trajectory_log_probs_of_many_steps_in_one_call_equal_one_call_per_step(tiny_unet) -> None:
    from papa_env.diffusion import sample_trajectory, trajectory_log_probs

    traj = sample_trajectory(tiny_unet, 3, num_steps=6, generator=torch.Generator().manual_seed(2))
    other = make_unet_like(tiny_unet)  # not the sampling model: the log-probs are not the stored ones
    steps = [4, 0, 2]  # any order, a subset
    log_probs, means, stds = trajectory_log_probs(other, traj, steps, with_mean=True)
    assert log_probs.shape == (3, 3) and means.shape == (3, 3, 1, 28, 28) and stds.shape == (3,)
    for i, j in enumerate(steps):
        log_prob, mean, std = trajectory_log_probs(other, traj, j, with_mean=True)
        assert torch.allclose(log_probs[i], log_prob, atol=1e-5) and torch.allclose(means[i], mean, atol=1e-5)
        assert float(stds[i]) == pytest.approx(float(std))
    assert torch.allclose(trajectory_log_probs(tiny_unet, traj, range(6)), traj.log_probs, atol=1e-5)
    with pytest.raises(ValueError, match="at least one step"):
        trajectory_log_probs(other, traj, [])


def make_unet_like(unet):
    from papa_env.models import make_unet

    torch.manual_seed(99)
    return make_unet(**{k: v for k, v in unet.config.items() if not k.startswith("_")}).eval()
