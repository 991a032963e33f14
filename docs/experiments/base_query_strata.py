"""Do the agent's own ways of choosing base-model queries show the base's liked classes in its proportions? (issue 22,
lab log `suite-defaults.md`)

    python docs/experiments/base_query_strata.py [--dataset mnist] [--repeats 5]

Offline, no user: 450 samples of the shipped base model, classed by the judge. A session's base-model queries are
played as 30 interactions of 5 chosen from 15 candidates drawn at random from those samples, by three rules:
``random`` (the first 5: today's independent draws), ``spread`` (`epapa`'s ``base_candidates``: greedy k-center in
the base UNet's features away from everything shown before) and ``strata`` (``base_strata`` 10: the quota over
k-means strata of those features, fitted on 100 other base samples). Printed: the relative balance of the queries
shown after 20 / 50 / 150 (the smallest ratio of a liked class's share to its share among all 450 samples), mean
over seven multi-class tastes of the tuning half and ``--repeats`` draws of the candidates.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from papa_env.agents.selection import UNetFeatures, kmeans, quota_pick, spread_from
from papa_env.diffusion import sample
from papa_env.metrics import judge
from papa_env.models import load_pretrained

TASTES = {
    "mnist": [(0, 1, 5, 7), (0, 2, 4, 7, 9), (7, 9), (0, 1, 6), (0, 2, 5, 6, 8), (0, 1, 2, 8), (2, 3)],
    "fashion-mnist": [(3, 6, 7), (2, 5), (1, 9), (3, 4, 8)],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(TASTES), default="mnist")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    unet = load_pretrained(f"{args.dataset}-ddpm").eval()
    features = UNetFeatures(unet)
    g = torch.Generator().manual_seed(0)
    bank = features(sample(unet, 100, generator=g))
    centroids = kmeans(bank, 10, g)

    def stratum(f: torch.Tensor) -> torch.Tensor:
        return torch.cdist(f.double(), centroids.double()).argmin(1)

    shares = torch.bincount(stratum(bank), minlength=10).float() / len(bank)
    images = sample(unet, 450, generator=torch.Generator().manual_seed(5))
    feats, labels = features(images), judge(load_pretrained(f"{args.dataset}-judge"), images).labels.numpy()
    base = np.bincount(labels, minlength=10) / len(labels)

    def balance(shown: list[int]) -> float:
        out = []
        for taste in TASTES[args.dataset]:
            counts = np.array([(labels[shown] == c).sum() for c in taste], float)
            want = base[list(taste)] / base[list(taste)].sum()
            out.append(min(counts / counts.sum() / want) if counts.sum() else np.nan)
        return float(np.nanmean(out))

    results: dict[str, list] = {"random": [], "spread": [], "strata": []}
    for rep in range(args.repeats):
        for rule, rows in results.items():
            shown, order, at = torch.zeros(0, feats.shape[1]), [], []
            for step in range(30):
                cand = torch.randperm(450, generator=torch.Generator().manual_seed(100 * rep + step))[:15]
                if rule == "random":
                    pick = cand[:5]
                elif rule == "spread":
                    pick = cand[spread_from(feats[cand], shown, 5)]
                else:
                    counts = torch.bincount(stratum(shown), minlength=10) if len(shown) else torch.zeros(10)
                    pick = cand[quota_pick(stratum(feats[cand]), shares, counts, 5)]
                shown, order = torch.cat([shown, feats[pick]]), order + pick.tolist()
                if len(order) in (20, 50, 150):
                    at.append(balance(order))
            rows.append(at)
    print(f"{args.dataset}: relative balance of the base-model queries shown after 20 / 50 / 150, mean (min-max over "
          f"{args.repeats} repeats)")  # fmt: skip
    for rule, rows in results.items():
        a = np.array(rows)
        cells = [f"{m:.2f} ({lo:.2f}-{hi:.2f})" for m, lo, hi in zip(a.mean(0), a.min(0), a.max(0))]
        print(f"| {rule} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
