"""Calibrate the style user (PAPA-MNIST-Style-v0) against the shipped base model.

    python -m benchmarks.calibrate_style            # writes papa_env/weights/mnist-style-calibration.json

Samples 2,000 images from ``mnist-ddpm`` with the default sampler (seed 0), measures the three handwriting
attributes (thickness, slant, size) and stores their mean / std and the z-score quantiles at which the base
model's like-rate is 0.3, 0.4 and 0.5 for each preference. Deterministic: rerunning gives the same file.
"""

from __future__ import annotations

import argparse
import json

import torch

from papa_env.diffusion import sample
from papa_env.models import load_pretrained
from papa_env.oracles.style import calibrate, calibration_path, style_attributes


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(calibration_path("mnist")))
    a = p.parse_args(argv)
    images = sample(load_pretrained("mnist-ddpm"), a.n, generator=torch.Generator().manual_seed(a.seed), progress=True)
    cal = calibrate(images)
    cal["command"] = "python -m benchmarks.calibrate_style" + ("" if argv is None else " " + " ".join(argv))
    with open(a.out, "w") as f:
        json.dump(cal, f, indent=2)
    attrs = style_attributes(images)
    for name, v in attrs.items():
        q = torch.quantile(v, torch.tensor([0.1, 0.5, 0.9]))
        print(f"{name:9s} mean {v.mean():.4f} std {v.std():.4f}  p10/p50/p90 {q[0]:.4f} {q[1]:.4f} {q[2]:.4f}")
    print(f"wrote {a.out}")
    return cal


if __name__ == "__main__":
    main()
