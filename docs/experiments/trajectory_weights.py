"""Can exact importance weights put a tuned model's likes back in the base's proportions? (issue 22, lab log
`suite-defaults.md`, "Exact importance weights ...")

    python docs/experiments/trajectory_weights.py SESSION_DIR [--n 400]

SESSION_DIR: one session folder of a ``benchmarks.suite`` run (its ``model.safetensors``, an `epapa` model: k = 300)
of a taste of two or more classes. Its policy (the tuned UNet for t >= 300, the frozen base below) draws ``--n``
20-step DDIM trajectories (eta 1, so each step is a Gaussian with a density); each gets the log-ratio of its
density under the base and under the policy, summed over the stochastic steps the tuned UNet took. Weighting a
sample by p_base(tau) / p_tuned(tau) makes expectations under the policy into expectations under the base, so the
weighted class shares of the liked samples should match the base's (on 2,000 samples, the suite's reference) if the
weights are usable at a session's scale. Printed: the log-ratios' spread, the effective sample size, and per liked
class its base share, its share in the policy's samples and its weighted share (weights tempered by 1 and by 0.5).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from papa_env.diffusion import SwitchedUNet, sample_trajectory, trajectory_log_probs
from papa_env.metrics import judge
from papa_env.models import load_model, load_pretrained

REFERENCE = Path(__file__).parents[2] / "benchmarks/results/suite-held-out/base_reference.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("session", type=Path)
    ap.add_argument("--n", type=int, default=400, help="trajectories drawn")
    args = ap.parse_args()
    taste = args.session.parent.name
    liked = [int(c) for c in taste.split("+")[0].split("-")[1:]]
    if not taste.startswith(("mnist", "fashion")) or len(liked) < 2:
        raise SystemExit(f"expected the session folder of a taste of two or more classes, got {args.session}")
    family = "fashion-mnist" if taste.startswith("fashion") else "mnist"
    base = load_pretrained(f"{family}-ddpm").eval()
    policy = SwitchedUNet(load_model(args.session / "model.safetensors").eval(), base, 300)
    with torch.no_grad():
        traj = sample_trajectory(policy, args.n, num_steps=20, eta=1.0, generator=torch.Generator().manual_seed(1))
        labels = judge(load_pretrained(f"{family}-judge"), traj.images).labels.numpy()
        log_ratio = torch.zeros(args.n)
        pixels = traj.images[0].numel()  # the step log-probs are means over pixels (DDPO's convention)
        for step, t in enumerate(traj.timesteps):
            if t >= 300 and traj.stochastic[step]:  # below 300 both models are the base: the ratio is 1
                log_ratio += pixels * (trajectory_log_probs(base, traj, step) - traj.log_probs[step])
    log_ratio = log_ratio.numpy()
    refs = json.loads(REFERENCE.read_text())
    shares = next(v for k, v in refs.items() if ("Fashion" in k) == (family == "fashion-mnist"))
    base_share = np.array([shares[str(c)] for c in liked])
    base_share /= base_share.sum()
    print(f"{args.session}: log p_base / p_tuned, quantiles 5/25/50/75/95:",
          np.round(np.quantile(log_ratio, [0.05, 0.25, 0.5, 0.75, 0.95]), 2))  # fmt: skip
    in_liked = np.isin(labels, liked)
    for temper in (1.0, 0.5):
        w = np.exp(temper * (log_ratio - log_ratio.max()))
        w /= w.mean()
        print(f"weights^{temper}: effective sample size {w.sum() ** 2 / (w**2).sum():.0f} of {args.n}")
        for j, c in enumerate(liked):
            m = labels == c
            print(f"  class {c}: base {base_share[j]:.2f}  tuned {m.sum() / in_liked.sum():.2f}  "
                  f"weighted {w[m].sum() / w[in_liked].sum():.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
