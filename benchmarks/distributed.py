"""The ``faithful`` update with 1 process and with 2 (torchrun, gloo), on this machine; and the quick comparison on
Ray vs the local pool.

    python -m benchmarks.distributed                 # both
    python -m benchmarks.distributed --what update   # the update only

Update: one interaction's ``learn`` of the ``faithful`` preset (the full sum over 1000 timesteps, batch 1) on
``--queries`` fresh queries of the shipped MNIST model, timed in one process with 2 threads and with 1, and under
``torchrun --nproc_per_node=2`` with 1 thread each (every rank computes half of each query's rows; gradients are
summed). Ray: ``papa bench --quick`` (base and epapa, 2 seeds) with the local pool and with ``--backend ray``, both
with 2 workers; the difference per session is Ray's overhead. Prints and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = """
import sys, time, torch, numpy as np
from papa_env import distributed
from papa_env.agents.papa import PAPA, PRESETS
from papa_env.models import load_pretrained
from dataclasses import replace
threads, n = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
distributed.init("cpu")
agent = PAPA(load_pretrained("mnist-ddpm"), replace(PRESETS["faithful"], queries_per_step=n))
queries = np.random.default_rng(0).uniform(-1, 1, (n, 1, 28, 28)).astype(np.float32)
replies = np.array([1, -1] * n)[:n]
t0 = time.perf_counter()
agent.learn(queries, replies)
if distributed.world()[0] == 0:
    print("SECONDS", time.perf_counter() - t0)
"""


def _time(cmd: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": cmd[-2]}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return float(next(line.split()[1] for line in out.splitlines() if line.startswith("SECONDS")))


def update(queries: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        script = Path(d) / "worker.py"
        script.write_text(WORKER)
        one_two = _time([sys.executable, str(script), "2", str(queries)])
        one_one = _time([sys.executable, str(script), "1", str(queries)])
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        two = _time([*torchrun, str(script), "1", str(queries)])
    return {
        "queries": queries,
        "one_process_2_threads": one_two,
        "one_process_1_thread": one_one,
        "two_processes_1_thread": two,
        "speedup_vs_2_threads": one_two / two,
        "speedup_vs_1_thread": one_one / two,
    }


def ray_overhead() -> dict:
    from papa_env import harness

    args = [
        "--quick",
        "--agents",
        "base,epapa",
        "--seeds",
        "2",
        "--budget",
        "20",
        "--eval-samples",
        "20",
        "--no-grid",
        "--workers",
        "2",
    ]
    out = {}
    for backend in ("local", "ray"):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            harness.main([*args, "--backend", backend, "--out", d])
            out[backend] = time.perf_counter() - t0
    out["sessions"] = 4
    out["overhead_per_session"] = (out["ray"] - out["local"]) / 4
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", choices=("update", "ray", "both"), default="both", help="which measurement")
    p.add_argument("--queries", type=int, default=2, help="queries of the faithful update (1000 rows each)")
    p.add_argument("--out", default="runs/benchmarks/distributed.json", help="where to write the JSON")
    a = p.parse_args(argv)
    result = {
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    if a.what in ("update", "both"):
        result["update"] = update(a.queries)
        u = result["update"]
        print(
            f"faithful update, {a.queries} queries: 1 process {u['one_process_2_threads']:.1f} s (2 threads), "
            f"{u['one_process_1_thread']:.1f} s (1 thread); 2 processes {u['two_processes_1_thread']:.1f} s: "
            f"{u['speedup_vs_2_threads']:.2f}x / {u['speedup_vs_1_thread']:.2f}x"
        )
    if a.what in ("ray", "both"):
        result["ray"] = ray_overhead()
        r = result["ray"]
        print(
            f"quick comparison (4 sessions, 2 workers): local pool {r['local']:.0f} s, Ray {r['ray']:.0f} s: "
            f"{r['overhead_per_session']:+.1f} s per session"
        )
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
