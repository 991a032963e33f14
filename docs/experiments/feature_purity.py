"""How well do the feature spaces the agent owns separate the classes a user tells apart? (issue 22, lab log
`suite-defaults.md`, "The tuned model's own queries spread ...")

    python docs/experiments/feature_purity.py

Offline, no user: 300 samples of each shipped base model (20-step DDIM, seed 0), classed by the judge. For each
feature space, the purity of a k-means of the samples (k = 10 and 20: the share of samples in their cluster's most
common class) and the 1-nearest-neighbour class agreement (how often a sample's nearest other sample has its class).
Spaces: the base UNet's mid-block at t = 20 ... 600 (`agents.selection.UNetFeatures`; the agent's is t = 200), the
fixed random network (`RandomFeatures`) and the raw pixels.
"""

from __future__ import annotations

import numpy as np
import torch

from papa_env.agents.selection import RandomFeatures, UNetFeatures, kmeans
from papa_env.diffusion import sample
from papa_env.metrics import judge
from papa_env.models import load_pretrained


def scores(features: torch.Tensor, labels: np.ndarray) -> tuple[float, float, float]:
    """k-means purity at k = 10 and 20, and the 1-NN class agreement."""
    f = features.double()
    purity = []
    for k in (10, 20):
        nearest = torch.cdist(f, kmeans(features.float(), k, torch.Generator().manual_seed(1)).double()).argmin(1)
        nearest = nearest.numpy()
        purity.append(sum(np.bincount(labels[nearest == j]).max() for j in set(nearest)) / len(labels))
    dist = torch.cdist(f, f).fill_diagonal_(float("inf"))
    return purity[0], purity[1], float((labels[dist.argmin(1).numpy()] == labels).mean())


def main() -> None:
    print("| data set | features | purity, k = 10 | k = 20 | 1-NN class agreement |")
    print("|---|---|---|---|---|")
    for dataset in ("mnist", "fashion-mnist"):
        unet = load_pretrained(f"{dataset}-ddpm").eval()
        images = sample(unet, 300, generator=torch.Generator().manual_seed(0), sampler="ddim", num_steps=20, eta=1.0)
        labels = judge(load_pretrained(f"{dataset}-judge"), images).labels.numpy()
        spaces = {f"base UNet, t = {t}": UNetFeatures(unet, t) for t in (20, 100, 200, 400, 600)}
        spaces |= {"random network": RandomFeatures(0), "pixels": lambda x: x.flatten(1).float()}
        for name, feats in spaces.items():
            p10, p20, nn = scores(feats(images), labels)
            print(f"| {dataset} | {name} | {p10:.2f} | {p20:.2f} | {nn:.2f} |")


if __name__ == "__main__":
    main()
