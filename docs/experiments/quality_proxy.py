"""Does an agent-owned score predict the judge's confidence of a base sample? (offline probe)

    python docs/experiments/quality_proxy.py [--n 400] [--datasets mnist,fashion]

For n base samples (20-step DDIM, eta 1, seed 0) of each dataset's base model: the judge's confidence (max softmax),
and the base UNet's own denoising error ||eps_theta(x_t, t) - eps||^2 at t in {150, 300} (4 noises each): a
sample the base model reconstructs well is a typical one. Prints the Spearman correlation of each score with the
confidence (over all samples, and within each class the judge gives, averaged), the judged classes of the best of 4
(by the score), and their mean confidence against a random one of 4.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from papa_env.diffusion import denoising_error, sample
from papa_env.metrics import judge
from papa_env.models import load_pretrained


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = a.argsort().argsort(), b.argsort().argsort()
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--datasets", default="mnist,fashion-mnist")
    a = p.parse_args()
    torch.set_num_threads(1)
    for ds in a.datasets.split(","):
        unet = load_pretrained(f"{ds}-ddpm").eval()
        classifier = load_pretrained(f"{ds}-judge")
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            x = sample(unet, a.n, generator=g, sampler="ddim", num_steps=20, eta=1.0)
            rep = judge(classifier, x)
            conf, labels = rep.confidence.numpy(), rep.labels.numpy()
            scores = {}
            for t in (150, 300):
                scores[f"-err t={t}"] = -denoising_error(unet, x, t, 4, g).numpy()
        print(f"{ds}: n={a.n}, mean confidence {conf.mean():.3f}, share >= 0.9: {(conf >= 0.9).mean():.3f}")
        groups = conf[: a.n // 4 * 4].reshape(-1, 4)
        for name, s in scores.items():
            sg = s[: a.n // 4 * 4].reshape(-1, 4)
            best = groups[np.arange(len(groups)), sg.argmax(1)]
            within = [spearman(s[labels == c], conf[labels == c]) for c in range(10) if (labels == c).sum() >= 10]
            chosen = labels[: a.n // 4 * 4].reshape(-1, 4)[np.arange(len(groups)), sg.argmax(1)]
            print(
                f"  {name}: Spearman {spearman(s, conf):+.3f} (within a judged class, mean {np.mean(within):+.3f}); "
                f"the judged classes of the best of 4: {np.bincount(chosen, minlength=10).tolist()}"
            )
            print(
                f"    confidence of the best of 4 {best.mean():.3f} "
                f"(a random one {groups.mean():.3f}; the judge's own best {groups.max(1).mean():.3f})"
            )


if __name__ == "__main__":
    main()
