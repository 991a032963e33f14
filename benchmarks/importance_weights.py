"""Can EPAPA re-weight its liked queries by p_base / p_theta? Two estimates of the ratio, measured.

    python -m benchmarks.importance_weights runs/benchmarks/compare/PAPA-MNIST-v0/epapa-s2 --samples 100

The idea (against the over-represented digit, issue 4): liked queries are drawn from the current model, so a
digit it already favours collects more likes and is pushed further. Weighting each liked query's term by
p_base(x) / p_theta(x) would make the target the base model restricted to liked images, whose digits are
balanced. This script measures, on a finished EPAPA session's final model and ``--samples`` of its samples
(classes by the judge), whether the ratio can be estimated well enough:

1. ELBO difference: log p_theta(x) - log p_base(x) ~ 0.5 sum_{t >= k} w_t ||eps_base - eps||^2 - ||eps_theta - eps||^2
   (summed over pixels), Monte-Carlo over t as in the loss: with ``--timesteps`` per image (the update's budget)
   and with ``--reference-timesteps`` (the "true" value), per class, and the noise of the cheap estimate.
2. Trajectory ratio: the exact log p_theta(trajectory) - log p_base(trajectory) of the DDIM eta = 1 steps the
   tuned model took (t >= k), its per-class mean, and the effective sample size of the weights exp(-ratio).

A usable estimate needs per-class differences larger than its noise, and an effective sample size that is a
sizeable fraction of the samples.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from papa_env.diffusion import SwitchedUNet, sample_trajectory, trajectory_log_probs
from papa_env.metrics import judge
from papa_env.models import load_model, load_pretrained


@torch.no_grad()
def elbo_log_ratio(
    tuned: torch.nn.Module, base: torch.nn.Module, x0: torch.Tensor, k: int, m: int, gen: torch.Generator
) -> torch.Tensor:
    """Monte-Carlo estimate (m timesteps in [k, T) per image) of ELBO_theta - ELBO_base, in nats, (B,)."""
    from papa_env.agents.papa import T, _schedule

    w, abar = _schedule()
    t = torch.randint(k, T, (len(x0), m), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    out = torch.zeros(len(x0))
    for j in range(m):
        tt = t[:, j]
        a = abar[tt].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        err_tuned = ((tuned(x_t, tt).sample - eps) ** 2).sum((1, 2, 3))
        err_base = ((base(x_t, tt).sample - eps) ** 2).sum((1, 2, 3))
        out += 0.5 * w[tt] * (err_base - err_tuned) * (T - k) / m
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a finished EPAPA / PAPA session folder")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--timesteps", type=int, default=2, help="timesteps per image of the cheap estimate")
    p.add_argument("--reference-timesteps", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not (a.run / "config.json").is_file() or not (a.run / "model.safetensors").is_file():
        p.error(f"{a.run} is not a finished session: expected config.json and model.safetensors in it")
    config = json.loads((a.run / "config.json").read_text())
    if config["agent"] not in ("papa", "epapa"):
        p.error(f"{a.run} is a {config['agent']} session; expected papa or epapa")
    k = config["agent_config"]["k"]
    base = load_pretrained("mnist-ddpm").eval()
    tuned = load_model(a.run / "model.safetensors").eval()
    policy = SwitchedUNet(tuned, base, k) if k else tuned
    gen = torch.Generator().manual_seed(a.seed)
    traj = sample_trajectory(policy, a.samples, num_steps=config["agent_config"]["num_sampling_steps"], generator=gen)
    labels = judge(load_pretrained("mnist-judge"), traj.images).labels.numpy()

    ref = elbo_log_ratio(tuned, base, traj.images, k, a.reference_timesteps, gen)
    cheap = torch.stack([elbo_log_ratio(tuned, base, traj.images, k, a.timesteps, gen) for _ in range(4)])
    path = torch.zeros(a.samples)
    with torch.no_grad():
        for s, t in enumerate(traj.timesteps.tolist()):
            if t >= k and bool(traj.stochastic[s]):  # below k both models are the base: the ratio is 1
                pixels = traj.images[0].numel()  # log-probs are per-pixel means (DDPO's convention)
                path += (traj.log_probs[s] - trajectory_log_probs(base, traj, s)) * pixels
    weights = torch.exp(-(path - path.max()))
    ess = float(weights.sum() ** 2 / (weights**2).sum() / a.samples)

    rows = {}
    print(f"{a.run}: {a.samples} samples")
    print(f"class: count, ELBO log-ratio ({a.reference_timesteps} timesteps), trajectory log-ratio (nats)")
    for c in range(10):
        sel = labels == c
        if sel.any():
            rows[c] = {"count": int(sel.sum()), "elbo": float(ref[sel].mean()), "path": float(path[sel].mean())}
            print(f"  {c}: {rows[c]['count']:3d}  {rows[c]['elbo']:+7.2f}  {rows[c]['path']:+7.2f}")
    out = {
        "classes": rows,
        "cheap_noise_std": float(cheap.std(0).mean()),
        "reference_spread_std": float(ref.std()),
        "trajectory_ess_fraction": ess,
    }
    print(
        f"noise of the {a.timesteps}-timestep ELBO estimate (std per image): {out['cheap_noise_std']:.2f} nats; "
        f"spread of the reference across images: {out['reference_spread_std']:.2f}; "
        f"trajectory weights' effective sample size: {ess:.1%} of the samples"
    )
    return out


if __name__ == "__main__":
    main()
