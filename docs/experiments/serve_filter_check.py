"""`papa serve`'s reward filter end to end: a bot answers 100 replies through the page's API, then the judge reads 100
samples of the served run drawn as the page's "now" grid and `papa sample` draw them (through the agent's filter) and
from the weights alone, and the "now" grid (25 samples) is timed both ways. (Lab log: ``suite-defaults.md``.)

    python docs/experiments/serve_filter_check.py --tastes mnist-9,mnist-2-5-7,mnist-6-9 --out /tmp/serve-check

Tastes by name from the suite's held-out half (MNIST ones: the served model is mnist-ddpm); each run folder is
``<out>/<taste>`` (an existing one is resumed, as `papa serve` does).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from papa_env.cli import _run_agent, sample_images
from papa_env.metrics import judge
from papa_env.models import load_pretrained
from papa_env.suite import make_suite

UNFILTERED = {"generate_candidates": 1, "generate_strata": 0, "generate_strata_prior": 0.0, "generate_optimism": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tastes", default="mnist-9,mnist-2-5-7,mnist-6-9")
    parser.add_argument("--out", default="runs/serve-check")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tastes = {t.name: t for t in make_suite("held-out")}
    judge_net = load_pretrained("mnist-judge")
    for name in args.tastes.split(","):
        taste, out = tastes[name], Path(args.out) / name
        preference = json.dumps(list(taste.liked))
        cmd = [sys.executable, "-m", "papa_env.cli", "serve", "--port", "0", "--budget", "100", "--out", str(out),
               "--bot", "classifier", "--preference", preference, "--threads", str(args.threads)]  # fmt: skip
        start = time.perf_counter()
        lines = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()
        print(f"{lines[0]}\n{lines[-1][:100]}... ({time.perf_counter() - start:.0f} s)")
        for filtered in (True, False):
            images, _ = sample_images(str(out / "model.safetensors"), 100, seed=12345, filtered=filtered)
            like = float(torch.isin(judge(judge_net, images).labels, torch.tensor(taste.liked)).float().mean())
            how = "through the filter" if filtered else "unfiltered"
            print(f"  {name}: judge like-rate {like:.2f} of 100 samples {how}")
        agent = _run_agent(out, "mnist-ddpm", None)
        own = agent.cfg  # the filter the session was served with
        for filtered in (True, False, True, False):
            agent.cfg = own if filtered else replace(own, **UNFILTERED)
            start = time.perf_counter()
            agent.generate(25, torch.Generator().manual_seed(12345))  # the page's "now" grid
            print(f"  'now' grid {'filtered' if filtered else 'plain'}: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
