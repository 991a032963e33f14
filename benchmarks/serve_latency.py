"""How long a person waits for the next round of ``papa serve``: a simulated user drives the page's API.

    python -m benchmarks.serve_latency                      # EPAPA default, 300 replies, 3 s to judge a round
    python -m benchmarks.serve_latency --think 0 --no-lookahead   # the page without lookahead, an instant user

The bot (a classifier user, digits {1, 4, 7, 9} by default) answers each round through HTTP as the page does, after
``--think`` seconds (a person needs several to judge ten images); the server measures, per round, the seconds from
accepting a submission to the next round being shown. With lookahead (``papa serve``'s default) that is the sampling
of the next round only: the update runs while the person judges it. Prints and writes (``--out``, JSON) the p50 /
p95 / max, with the machine it ran on."""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    import torch

    from papa_env.agents.papa import PAPA, PRESETS
    from papa_env.env import PreferenceEnv
    from papa_env.models import load_pretrained
    from papa_env.serve import App, run_bot, serve

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="epapa", choices=sorted(PRESETS), help="the agent behind the page")
    p.add_argument("--budget", type=int, default=300, help="replies (a multiple of 10)")
    p.add_argument("--preference", default="[1, 4, 7, 9]", help="the bot's taste (JSON)")
    p.add_argument("--think", type=float, default=3.0, help="seconds the bot takes to judge a round, as a person")
    p.add_argument("--lookahead", action=argparse.BooleanOptionalAction, default=True, help="papa serve's default")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default="runs/benchmarks/serve_latency.json", help="where to write the JSON")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as folder:
        agent = PAPA(load_pretrained("mnist-ddpm"), PRESETS[a.preset])
        app = App(agent, Path(folder) / "run", budget=a.budget, lookahead=a.lookahead)
        server = serve(app, "127.0.0.1", 0)
        t0 = time.perf_counter()
        try:
            user = PreferenceEnv("classifier", preference=json.loads(a.preference)).oracle
            state = run_bot(f"http://127.0.0.1:{server.server_address[1]}", user, think=a.think)
        finally:
            app.close()
            server.shutdown()
        wall = time.perf_counter() - t0
    lat = np.array(app.latencies)
    result = {
        "preset": a.preset,
        "budget": a.budget,
        "think": a.think,
        "lookahead": a.lookahead,
        "rounds_timed": len(lat),
        "p50": float(np.percentile(lat, 50)),
        "p95": float(np.percentile(lat, 95)),
        "max": float(lat.max()),
        "wall": wall,
        "latencies": [round(float(x), 3) for x in lat],
        "status": state["status"],
        "machine": {"processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(
        f"{a.preset} (lookahead {a.lookahead}, {a.think:g} s to judge): next round after p50 {result['p50']:.2f} s, "
        f"p95 {result['p95']:.2f} s, max {result['max']:.2f} s "
        f"over {len(lat)} rounds ({wall:.0f} s in all); written to {out}"
    )
    return result


if __name__ == "__main__":
    main()
