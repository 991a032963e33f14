"""Could the agent own a feature space that separates the kinds a user tells apart? (issue 22, lab log
`suite-defaults.md`, "An upper bound for a class-aware spread ...")

    python docs/experiments/contrastive_features.py --steps 1500

Trains a small convolutional encoder without labels, SimCLR's way (two random affine views of each image, NT-Xent
loss), on the training images of each data set (the base model's own training data; labels never read), then scores
it as `feature_purity.py` scores the spaces the agent has today: 300 samples of the shipped base model, classed by
the judge only to score. Prints a row per data set in that script's table format.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from feature_purity import scores
from torch import nn

from papa_env.data import load_dataset
from papa_env.diffusion import sample
from papa_env.metrics import judge
from papa_env.models import load_pretrained


class Encoder(nn.Module):
    """28 x 28 -> 128 features (the space scored); ``head`` -> 64 (the space the loss sees)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def views(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random affine view of each image: rotation +-15 degrees, scale 0.85-1.1, shift +-3 pixels, pixel noise."""
    n = len(x)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g)  # noqa: E731
    a, s = u(-math.pi / 12, math.pi / 12), u(0.85, 1.1)
    theta = torch.stack([torch.cos(a) / s, -torch.sin(a) / s, u(-0.2, 0.2),
                         torch.sin(a) / s, torch.cos(a) / s, u(-0.2, 0.2)], 1).view(n, 2, 3)  # fmt: skip
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1  # pad with background (-1)
    return (out + 0.1 * torch.randn(out.shape, generator=g)).clamp(-1, 1)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    n = len(z1)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, target)


def train(images: torch.Tensor, steps: int, batch: int, seed: int) -> Encoder:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    enc = Encoder()
    opt = torch.optim.Adam(enc.parameters(), lr=1e-3)
    start = time.time()
    for step in range(steps):
        x = images[torch.randint(len(images), (batch,), generator=g)]
        loss = nt_xent(enc.head(enc(views(x, g))), enc.head(enc(views(x, g))))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == steps - 1:
            print(f"  step {step}: loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
    return enc.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    if args.steps < 1 or args.batch < 2:
        parser.error("expected --steps >= 1 and --batch >= 2 (a batch holds the negatives of NT-Xent)")
    rows = []
    for dataset in ("mnist", "fashion-mnist"):
        enc = train(load_dataset(dataset, "train").images, args.steps, args.batch, seed=0)
        unet = load_pretrained(f"{dataset}-ddpm").eval()
        images = sample(unet, 300, generator=torch.Generator().manual_seed(0), sampler="ddim", num_steps=20, eta=1.0)
        labels = judge(load_pretrained(f"{dataset}-judge"), images).labels.numpy()
        with torch.no_grad():
            p10, p20, nn1 = scores(F.normalize(enc(images), dim=1), labels)
        rows.append(f"| {dataset} | contrastive encoder, {args.steps} steps | {p10:.2f} | {p20:.2f} | {nn1:.2f} |")
    print("| data set | features | purity, k = 10 | k = 20 | 1-NN class agreement |\n|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
