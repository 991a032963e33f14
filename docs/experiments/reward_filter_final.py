"""The reward filter (``PAPAConfig.generate_candidates``) on a finished suite run's final agents, without rerunning.

    python docs/experiments/reward_filter_final.py RUN_DIR [--candidates 4] [--strata 10] [--prior 2] [--optimism 1]
        [--base-candidates 4] [--mass] [--feature-pool 2] [--typical] [--tag suite-held-out] [--tastes A,B]
        [--out FILE]

The filter changes only what ``generate`` returns, never what is asked or learned, so a session run without it ends
with the same agent as one run with it. For each session folder under ``RUN_DIR/<tag>/<taste>/<agent>-s<seed>``
this loads the checkpoint after the last reply into an agent with ``generate_candidates`` set, evaluates it as the
session's last evaluation did (the same ``Evaluator``: 100 samples from seed 12345, so the first draw is that
evaluation's own samples) and prints, per session and on average, the judge like-rate, the relative balance (the
base's shares from ``RUN_DIR/<tag>/base_reference.json``, as the suite scores it) and the judge confidence, against
the session's own last evaluation (the agent without the filter). Like-rates before 300 replies need the session
run with the option (``python -m benchmarks.suite ... --override '{"generate_candidates": 4}'``), or a run with a
smaller ``--budget`` (its final agent is the one after that many replies: at one thread the same). With ``--strata``
(``generate_strata``) a checkpoint written before the agent recorded which model drew each reply gets that record
from the run folder's journal (``queries/step_*.npz``: ``proposal/source``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> list[dict]:
    from papa_env.agents.papa import PAPA, PAPAConfig
    from papa_env.checkpoint import load_state
    from papa_env.evaluation import Evaluator, liked_classes, relative_balance
    from papa_env.models import load_pretrained

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--candidates", type=int, default=4, help="generate_candidates of the filtered agent")
    p.add_argument("--strata", type=int, default=0, help="generate_strata of the filtered agent (0: off)")
    p.add_argument("--prior", type=float, default=0.0, help="generate_strata_prior of the filtered agent")
    p.add_argument("--optimism", type=float, default=0.0, help="generate_optimism of the filtered agent")
    p.add_argument("--base-candidates", type=int, default=0, help="generate_base_candidates of the filtered agent")
    p.add_argument("--mass", action="store_true", help="generate_strata_mass of the filtered agent")
    p.add_argument("--feature-pool", type=int, default=2, help="generate_feature_pool of the filtered agent")
    p.add_argument("--typical", action="store_true", help="generate_typical of the filtered agent")
    p.add_argument("--tag", default="suite-held-out", help="the suite's folder under RUN_DIR")
    p.add_argument("--tastes", help="only these tastes (comma-separated)")
    p.add_argument("--out", help="write one JSON line per session here")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(a.run_dir) / a.tag
    cache = json.loads((root / "base_reference.json").read_text())
    rows = []
    for folder, config, records, result in finished_sessions(root, a.tastes):
        env = _env(result["spec"])
        known = {f.name for f in fields(PAPAConfig)}  # a removed option's field (an old screen's) is dropped
        cfg = PAPAConfig(**{k: v for k, v in config["agent_config"].items() if k in known})
        cfg = replace(cfg, generate_candidates=a.candidates, generate_strata=a.strata, generate_strata_prior=a.prior,
                      generate_optimism=a.optimism, generate_base_candidates=a.base_candidates,
                      generate_strata_mass=a.mass, generate_feature_pool=a.feature_pool,
                      generate_typical=a.typical)  # fmt: skip
        agent = PAPA(load_pretrained(env.unwrapped.base_model), cfg)
        state = load_state(folder / "checkpoint.safetensors")["agent"]
        agent.load_state_dict(state)
        if "buffer_src" not in state:
            agent.buffer_src = _sources(folder, cfg.full_exploitation)
        metrics, _ = Evaluator(env, n=config["evaluation"]["samples"], seed=config["evaluation"]["seed"])(agent)
        liked = liked_classes(env)
        key = next((k for k in cache if k.startswith(f"{result['spec']['env']}|")), None)
        reference = {int(c): s for c, s in cache[key].items()} if key else None
        row = {"taste": folder.parent.name, "seed": result["spec"]["seed"]}
        for name, rec in (("plain", records[-1]), ("filtered", metrics)):
            like = rec.get("eval/like_rate_judge", rec["eval/like_rate_oracle"])
            balance = relative_balance([records[0], rec], liked, -1, reference) if liked else None
            row.update({f"{name}_like": like, f"{name}_balance": balance, f"{name}_conf": rec["eval/judge_confidence"]})
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    for name in ("plain", "filtered"):
        bal = [r[f"{name}_balance"] for r in rows if r[f"{name}_balance"] is not None]
        print(f"{name}: {len(rows)} sessions, judge like-rate {np.mean([r[f'{name}_like'] for r in rows]):.3f}, "
              f"worst taste {min(_per_taste(rows, name).values()):.3f}, mean balance {np.mean(bal):.3f} "
              f"({len(bal)} sessions), confidence {np.mean([r[f'{name}_conf'] for r in rows]):.3f}")  # fmt: skip
    if a.out:
        Path(a.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def finished_sessions(root: Path, tastes: str | None = None):
    """(folder, config, metric records, result) of each session under ``root`` that spent its whole budget, of the
    comma-separated ``tastes`` only when given."""
    for folder in sorted(root.glob("*/*-s*")):
        config = json.loads((folder / "config.json").read_text())
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        if not records or records[-1]["replies"] != config["feedback_budget"]:
            continue  # unfinished
        if tastes and folder.parent.name not in tastes.split(","):
            continue
        yield folder, config, records, json.loads((folder / "result.json").read_text())


def _sources(folder: Path, full_exploitation: bool) -> torch.Tensor:
    """Which model drew each reply of the agent's buffer (1: the base), from the session's journal."""
    from papa_env.agents.papa import reply_signs

    out = []
    for line in (folder / "replies.jsonl").read_text().splitlines():
        rec = json.loads(line)
        step = np.load(folder / rec["queries"])
        y = reply_signs(np.asarray(rec["replies"]), full_exploitation)
        src = step["proposal/source"] if "proposal/source" in step else np.zeros(len(y))
        if len(src) == 2 * len(y):  # which-of-two: +r on a pair's first image, -r on its second
            y = torch.stack([y, -y], 1).reshape(-1)
        out.append(torch.as_tensor(src, dtype=torch.float32)[y != 0])
    return torch.cat(out)


def _env(spec: dict):
    import gymnasium as gym

    import papa_env  # noqa: F401  (registers the ids)

    return gym.make(spec["env"], **spec["env_kwargs"])


def _per_taste(rows: list[dict], name: str) -> dict[str, float]:
    tastes = sorted({r["taste"] for r in rows})
    return {t: float(np.mean([r[f"{name}_like"] for r in rows if r["taste"] == t])) for t in tastes}


if __name__ == "__main__":
    main()
