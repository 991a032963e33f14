"""``papa demo``: the main job.

Until the PAPA agent lands, the demo samples from the shipped MNIST base model, shows what the judge
sees in those samples (class shares, confidence) and writes a PNG grid.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from papa_env.data import class_names
from papa_env.diffusion import DEFAULT_NUM_STEPS, DEFAULT_SAMPLER, sample
from papa_env.metrics import judge
from papa_env.models import load_pretrained
from papa_env.viz import save_grid


def run_demo(out: str | Path = "runs/demo", seed: int = 0, n: int = 100, dataset: str = "mnist") -> Path:
    """Sample ``n`` images from the shipped ``<dataset>-ddpm``, print the judge's view, write a grid PNG."""
    out = Path(out)
    unet = load_pretrained(f"{dataset}-ddpm")
    t0 = time.perf_counter()
    images = sample(unet, n, generator=torch.Generator().manual_seed(seed), progress=True)
    secs = time.perf_counter() - t0
    report = judge(load_pretrained(f"{dataset}-judge"), images)
    path = save_grid(images, out / "samples.png", nrow=10)
    names = class_names(dataset)
    print(f"\n{n} samples from {dataset}-ddpm ({DEFAULT_SAMPLER}, {DEFAULT_NUM_STEPS} steps) in {secs:.1f} s")
    print(f"judge confidence >= 0.9 on {report.confident_fraction():.0%} of them; class shares:")
    print("  " + "  ".join(f"{names[c]}: {s:.0%}" for c, s in enumerate(report.class_shares)))
    print(f"grid written to {path}")
    return path
