"""Re-measure finished sessions' final models on more (and fresh) samples than their evaluations used.

    python -m benchmarks.remeasure runs/benchmarks/compare/PAPA-MNIST-v0/epapa-s* --samples 1000

A session's evaluations use 200 samples, so a class share near 0.15 carries a 95% margin of about +- 0.05:
a per-seed goal like "every liked class >= 15%" needs a closer look. For each run folder (``config.json`` +
``model.safetensors``, written by :func:`papa_env.session.run_session`) this rebuilds the agent with the
config it ran with, loads its final weights and evaluates ``--samples`` samples drawn from noises the session
never saw (``--noise-seed``), with the same privileged metrics as the session. Prints one line per run (and
the smallest liked-class share, for class-based users) and appends them as JSON lines to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gymnasium as gym
import numpy as np

import papa_env  # noqa: F401  (registers the environments)
from papa_env.models import load_model, load_pretrained
from papa_env.session import Evaluator


def _agent_class(name: str):
    from papa_env.agents.d3po import D3PO, D3POConfig
    from papa_env.agents.ddpo import DDPO, DDPOConfig
    from papa_env.agents.papa import PAPA, PAPAConfig
    from papa_env.agents.reward_model import RewardModelConfig, RewardModelDDPO

    classes = {
        "papa": (PAPA, PAPAConfig),
        "epapa": (PAPA, PAPAConfig),
        "ddpo": (DDPO, DDPOConfig),
        "d3po": (D3PO, D3POConfig),
        "reward-model": (RewardModelDDPO, RewardModelConfig),
    }
    if name not in classes:
        raise ValueError(f"cannot rebuild agent {name!r}: expected one of {sorted(classes)} (agents that tune a UNet)")
    return classes[name]


def remeasure(run: Path, samples: int, noise_seed: int) -> dict:
    """The privileged metrics of ``run``'s final model on ``samples`` fresh samples."""
    run = Path(run)
    config_file, weights = run / "config.json", run / "model.safetensors"
    if not config_file.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{run} is not a finished session: expected config.json and model.safetensors in it")
    config = json.loads(config_file.read_text())
    cls, cfg_cls = _agent_class(config["agent"])
    env = gym.make(config["env"])
    agent = cls(load_pretrained(env.unwrapped.base_model), cfg_cls(**config["agent_config"]))
    agent.model().load_state_dict(load_model(weights).state_dict())  # EPAPA keeps the frozen base for t < k
    metrics, _ = Evaluator(env, n=samples, seed=noise_seed)(agent)
    out = {"run": str(run), "agent": config["agent"], "seed": config["seed"], "samples": samples, **metrics}
    liked = [int(c) for c in getattr(env.unwrapped.oracle.unwrapped, "preference", [])]
    if "eval/like_rate_judge" in metrics and liked:
        out["liked_classes"] = liked
        out["min_liked_share"] = min(metrics[f"eval/class_share/{c}"] for c in liked)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="session folders (runs/.../<agent>-s<seed>)")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--noise-seed", type=int, default=2024, help="seed of the samples' noises (sessions use 12345)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="append the results as JSON lines here")
    a = p.parse_args(argv)
    if a.samples < 1:
        p.error(f"--samples must be >= 1, got {a.samples}")
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    for run in a.runs:  # every folder checked before any is measured: a typo costs no measuring time
        if not (run / "config.json").is_file() or not (run / "model.safetensors").is_file():
            p.error(f"{run} is not a finished session: expected config.json and model.safetensors in it")
    results = []
    for run in a.runs:
        r = remeasure(run, a.samples, a.noise_seed)
        key = "eval/like_rate_judge" if "eval/like_rate_judge" in r else "eval/like_rate_oracle"
        line = f"{run}: {key.removeprefix('eval/')} {r[key]:.3f}, judge conf. {r['eval/judge_confidence']:.3f}"
        if "liked_classes" in r:
            shares = " / ".join(f"{r[f'eval/class_share/{c}']:.3f}" for c in r["liked_classes"])
            liked = " / ".join(map(str, r["liked_classes"]))
            line += f", liked {liked}: {shares} (smallest {r['min_liked_share']:.3f})"
        print(line, flush=True)
        results.append(r)
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            with a.out.open("a") as f:
                f.write(json.dumps(r) + "\n")
    for agent in dict.fromkeys(r["agent"] for r in results):
        mins = np.array([r["min_liked_share"] for r in results if r["agent"] == agent and "min_liked_share" in r])
        if len(mins) > 1:
            print(f"{agent}: smallest liked share over {len(mins)} runs: mean {mins.mean():.3f}, min {mins.min():.3f}")
    return results


if __name__ == "__main__":
    main()
