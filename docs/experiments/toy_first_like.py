"""Issue 24's toy, before any learning: how soon does each rule *show* a rare like? (lab log ``selection.md``)

In the selection toy (``python -m benchmarks.selection_toy``) a session's like-rate is nearly a switch: ~0.06 until
the first like is learnt from, 0.8-0.9 after. So what a rule can buy there is an earlier first like, and that can be
measured without training: draw pools of the tiny UNet's samples (frozen: no update between rounds), let each rule
choose K of M, and count the rounds until a shown image is liked (brighter than the ``--quantile`` of 2,000 samples).

    python docs/experiments/toy_first_like.py               # brightest 5%, K = 2 of M = 20, 10 rounds, 2,000 trials
    python docs/experiments/toy_first_like.py --taste pc1   # the top 5% along the features' first principal component

Rules: ``random`` (the first K drawn), ``k-center`` (``diversity``: greedy k-center of the pool) and ``k-center over
the session`` (continued from every image shown before: ``selection.spread_from``), all in the fixed random network's
features the toy uses. Also prints how far the taste's direction (mean brightness) lies along the features' leading
principal components: a spread can only surface the bright extreme as often as brightness is what the features spread.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "tests"))
from conftest import TINY_UNET  # noqa: E402

from papa_env.agents.papa import PAPA, PAPAConfig  # noqa: E402
from papa_env.agents.selection import RandomFeatures, k_center, spread_from  # noqa: E402
from papa_env.models import make_unet  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quantile", type=float, default=0.95)
    ap.add_argument("--queries", type=int, default=2, help="K, images shown per round")
    ap.add_argument("--pool", type=int, default=20, help="M, candidates per round")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--taste", choices=("brightness", "pc1"), default="brightness",
                    help="what the user likes the top --quantile of: mean brightness, or the projection on the random "
                    "features' first principal component (a taste the features spread most)")  # fmt: skip
    a = ap.parse_args(argv)
    if not 0 < a.quantile < 1 or a.queries < 1 or a.pool < a.queries or a.rounds < 1 or a.trials < 1:
        ap.error("expected 0 < --quantile < 1, 1 <= --queries <= --pool, --rounds >= 1 and --trials >= 1")
    torch.manual_seed(0)  # the tests' tiny_unet fixture
    agent = PAPA(make_unet(**TINY_UNET).eval(), PAPAConfig(num_sampling_steps=8))
    images = agent.generate(2000, torch.Generator().manual_seed(1))
    brightness = images.mean((1, 2, 3))
    features = RandomFeatures(0)(images)
    centred = features.double() - features.double().mean(0)
    _, s, v = torch.pca_lowrank(centred, q=10)
    taste = brightness if a.taste == "brightness" else (centred @ v[:, 0]).float()
    liked = taste > taste.quantile(a.quantile)
    print("| principal component | share of the features' variance | correlation with the taste (brightness) |")
    print("|---|---|---|")
    for i in range(5):
        corr = torch.corrcoef(torch.stack([centred @ v[:, i], brightness.double()]))[0, 1]
        print(f"| {i + 1} | {float(s[i] ** 2 / (centred**2).sum()):.3f} | {float(corr):+.2f} |")
    rules = {"random": None, "k-center": None, "k-center over the session": None}
    out = {}
    print(f"\n| rule (K = {a.queries} of M = {a.pool}) | a like shown within 3 rounds | within {a.rounds} rounds |")
    print("|---|---|---|")
    for rule in rules:
        g = torch.Generator().manual_seed(0)  # the same pools for every rule
        first = []
        for _ in range(a.trials):
            shown, found = torch.zeros(0, features.shape[1]), None
            for r in range(a.rounds):
                idx = torch.randint(len(images), (a.pool,), generator=g)
                if rule == "random":
                    pick = torch.arange(a.queries)
                elif rule == "k-center":
                    pick = k_center(features[idx], a.queries)
                else:
                    pick = spread_from(features[idx], shown, a.queries)
                shown = torch.cat([shown, features[idx][pick]])
                if bool(liked[idx][pick].any()):
                    found = r
                    break
            first.append(found)
        within = [sum(f is not None and f < n for f in first) / a.trials for n in (3, a.rounds)]
        out[rule] = within
        print(f"| {rule} | {within[0]:.2f} | {within[1]:.2f} |")
    return out


if __name__ == "__main__":
    main()
