"""Seconds per interaction of a fast preset against the authors' recipe, interleaved in one process.

    python -m benchmarks.speed                                   # epapa vs faithful, 30 vs 3 interactions
    python -m benchmarks.speed --preset papa --reference faithful --reference-interactions 2
    python -m benchmarks.speed --preset epapa,papa --sequential-too   # several, interleaved
    python -m benchmarks.speed --variant 'filtered={"generate_candidates": 4}'  # + epapa with these fields changed
    python -m benchmarks.speed --preset epapa,ddpo,ddpo+inner_epochs=2+lr=1e-4,d3po,reward-model   # the baselines too

The issue's speed goal: the fast default and `faithful` timed in the same run on the same model, their ratio
>= 50x. On a shared 2-core VM the machine's speed drifts by tens of percent within minutes (here `faithful`
took 55 s per interaction at one hour and 95 s the next), so timing one after the other measures the drift
as much as the code. This script alternates them: one `faithful` interaction, then a block of the fast
preset's interactions, and so on — each block's ratio is taken against the `faithful` interaction next to it,
and the script reports the ratio of the mean seconds per interaction with the spread of the per-block ratios.

An interaction is what ``run_session`` times: the agent's ``propose`` (sampling the 10 queries) + its
``learn`` (the update), not the env step or persistence. Both sessions are real: the simulated user replies,
the agents learn, and each agent's judge like-rate is measured at the end on fresh samples (no budget spent).
Writes ``<out>`` (JSON) and prints a table, with each agent's optimizer steps and update rows per interaction (the
compute budget its update spends: issue 23).

``--preset`` also takes the baselines (``ddpo``, ``d3po``, ``reward-model``: built as ``papa bench`` builds them,
D3PO asking the pairwise version of the user), and any entry may carry config fields in the harness's label form,
``agent+field=value+...`` (values read as JSON where they parse: ``ddpo+inner_epochs=2+lr=1e-4``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import papa_env  # noqa: F401  (registers the ids)
from papa_env.agents.papa import PAPA, PRESETS, PAPAConfig
from papa_env.evaluation import Evaluator
from papa_env.harness import LEARNERS, PAPA_AGENTS, SessionSpec, make_agent, make_env
from papa_env.models import load_pretrained

BASELINES = tuple(name for name in LEARNERS if name not in PAPA_AGENTS)  # ddpo, d3po, reward-model


class _Session:
    """One agent against one env, stepped an interaction at a time, each interaction timed.

    ``sequential_sampling``: the agent's base-model and tuned queries are drawn one model after the other
    instead of side by side (:func:`papa_env.diffusion.sample_many`): the same session, the old sampler.
    ``variant``: (label, config fields changed from the preset's).
    """

    def __init__(
        self,
        env_id: str,
        preset: str,
        seed: int,
        sequential_sampling: bool = False,
        variant: tuple[str, dict] = ("", {}),
    ) -> None:
        name, fields = _entry(preset)
        fields = {**fields, **variant[1]}
        if name in PRESETS:
            self.env = gym.make(env_id)
            config = replace(PRESETS[name], seed=seed, **fields)
            self.agent = PAPA(load_pretrained(self.env.unwrapped.base_model), config)
            self.agent.side_by_side = not sequential_sampling
        else:  # a baseline, as `papa bench` builds it (its own user's mode; a budget no timing run spends)
            spec = SessionSpec(agent=name, env=env_id, seed=seed, budget=10**6, overrides=fields)
            self.env = make_env(spec)
            self.agent = make_agent(spec, self.env)
        self.env.reset(seed=seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.preset = preset
        self.sequential_sampling = sequential_sampling
        self.label = preset + (f"+{variant[0]}" if variant[0] else "")
        self.label += " (models one after the other)" if sequential_sampling else ""
        self.sample_s: list[float] = []
        self.learn_s: list[float] = []
        self.compute: dict[str, list[float]] = {"compute/updates": [], "compute/rows": []}

    def interact(self) -> float:
        t0 = time.perf_counter()
        queries = self.agent.propose(self.gen)
        t1 = time.perf_counter()
        _, _, _, _, info = self.env.step(queries)
        t2 = time.perf_counter()
        stats = self.agent.learn(queries, np.asarray(info["replies"], dtype=np.int8))
        t3 = time.perf_counter()
        self.sample_s.append(t1 - t0)
        self.learn_s.append(t3 - t2)
        for key, values in self.compute.items():
            values.append(float(stats.get(key, np.nan)))
        return (t1 - t0) + (t3 - t2)

    def per_interaction(self, key: str) -> float | None:
        """The mean of an update count over this session's interactions (None where the agent does not log it)."""
        values = np.array(self.compute[key])
        return None if np.isnan(values).all() else float(np.nanmean(values))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="PAPA-MNIST-v0")
    p.add_argument(
        "--preset",
        default="epapa",
        help=f"the fast preset, or several comma-separated (each interleaved with the others), from {sorted(PRESETS)}",
    )
    p.add_argument("--reference", default="faithful", help="the slow preset it is compared with")
    p.add_argument("--interactions", type=int, default=30, help="interactions of the fast preset (300 replies)")
    p.add_argument("--reference-interactions", type=int, default=3, help="interactions of the reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-samples", type=int, default=100, help="fresh samples for each agent's like-rate")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument(
        "--sequential-too",
        action="store_true",
        help="also time the fast preset with its two models sampled one after the other (the sampler before "
        "sample_many), interleaved with the others",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=JSON",
        help="also time the first preset with these config fields changed (a JSON object), labelled preset+LABEL; "
        "repeatable, each interleaved with the others",
    )
    p.add_argument("--out", default="runs/benchmarks/speed.json")
    a = p.parse_args(argv)
    presets = a.preset.split(",")
    for text in (*presets, a.reference):
        name, fields = _entry(text)
        if name not in (*PRESETS, *BASELINES):
            raise SystemExit(f"unknown preset {name!r}; expected one of {sorted(PRESETS)} or a baseline {BASELINES}")
        if name in PRESETS:
            _check_fields(text, PRESETS[name], fields)
    first, first_fields = _entry(presets[0])
    if a.variant and first not in PRESETS:
        raise SystemExit(f"--variant changes the first preset's PAPAConfig; {first!r} is a baseline: write its "
                         "fields in --preset instead (ddpo+inner_epochs=2)")  # fmt: skip
    variants = [_variant(text, replace(PRESETS[first], **first_fields)) for text in a.variant] if a.variant else []
    if a.interactions < a.reference_interactions or a.reference_interactions < 1:
        raise SystemExit("need --interactions >= --reference-interactions >= 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    try:  # a baseline's bad field or value stops the run here, before any timing
        slow = _Session(a.env, a.reference, a.seed)
        fasts = [_Session(a.env, name, a.seed) for name in presets]
    except (TypeError, ValueError) as err:
        raise SystemExit(f"--preset: {err}") from None
    fast = fasts[0]  # the ratio of the summary line and of each block
    fasts += [_Session(a.env, presets[0], a.seed, variant=v) for v in variants]
    sessions = [slow, *fasts] + (
        [_Session(a.env, presets[0], a.seed, sequential_sampling=True)] if a.sequential_too else []
    )
    blocks = np.array_split(np.arange(a.interactions), a.reference_interactions)
    rows = []
    for i, block in enumerate(blocks):
        row = {"block": i, "interactions": len(block), slow.label: slow.interact()}
        for s in sessions[1:]:
            row[s.label] = float(np.mean([s.interact() for _ in block]))
        rows.append(row)
        print(
            f"block {i}: "
            + " | ".join(f"{s.label} {row[s.label]:.2f} s" for s in sessions)
            + f" | ratio {row[slow.label] / row[fast.label]:.1f}x",
            flush=True,
        )
    evaluator = Evaluator(fast.env, n=a.eval_samples)
    like, per = {}, {}
    for s in sessions:
        metrics, _ = evaluator(s.agent)
        like[s.label] = {
            "replies": len(s.learn_s) * s.env.unwrapped.queries_per_step,
            "judge_like_rate": metrics.get("eval/like_rate_judge"),
            "user_like_rate": metrics["eval/like_rate_oracle"],
        }
        per[s.label] = float(np.mean(s.sample_s) + np.mean(s.learn_s))
    block_ratios = [r[slow.label] / r[fast.label] for r in rows]
    result = {
        "args": vars(a),
        "machine": {
            "platform": platform.platform(),
            "processor": _cpu_name(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "seconds_per_interaction": per,
        "seconds_sample": {s.label: float(np.mean(s.sample_s)) for s in sessions},
        "seconds_learn": {s.label: float(np.mean(s.learn_s)) for s in sessions},
        "optimizer_steps_per_interaction": {s.label: s.per_interaction("compute/updates") for s in sessions},
        "update_rows_per_interaction": {s.label: s.per_interaction("compute/rows") for s in sessions},
        "ratio": per[slow.label] / per[fast.label],
        "ratios": {s.label: per[slow.label] / per[s.label] for s in sessions[1:]},
        "block_ratios": block_ratios,
        "blocks": rows,
        "like_rate": like,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\n{a.env}, {result['machine']['processor']}, {result['machine']['threads']} threads")
    print(
        f"| preset | interactions | s / interaction (sample + update) | speed-up over `{a.reference}` |"
        " optimizer steps / interaction | update rows / interaction | judge like-rate |"
    )
    print("|---|---|---|---|---|---|---|")
    for s in sessions:
        lr = like[s.label]
        steps, rows = (
            result[key][s.label] for key in ("optimizer_steps_per_interaction", "update_rows_per_interaction")
        )
        print(
            f"| `{s.preset}`{s.label[len(s.preset) :]} | {len(s.learn_s)} | {per[s.label]:.2f}"
            f" ({np.mean(s.sample_s):.2f} + {np.mean(s.learn_s):.2f}) | {per[slow.label] / per[s.label]:.1f}x |"
            f" {'-' if steps is None else f'{steps:.1f}'} | {'-' if rows is None else f'{rows:.0f}'} |"
            f" {lr['judge_like_rate']:.3f} after {lr['replies']} replies |"
        )
    print(f"ratio {result['ratio']:.1f}x (per block: {', '.join(f'{r:.1f}' for r in block_ratios)}); written to {out}")
    return result


def _variant(text: str, preset: PAPAConfig) -> tuple[str, dict]:
    """``LABEL=JSON`` -> (label, fields), checked now (a bad one stops the run before any session is built)."""
    label, sep, fields = text.partition("=")
    try:
        changes = json.loads(fields) if sep and label else None
    except json.JSONDecodeError as err:
        raise SystemExit(f"--variant {text!r}: the part after '=' is not JSON ({err})") from None
    if not isinstance(changes, dict):
        raise SystemExit(f"--variant {text!r}: expected LABEL={{JSON object of PAPAConfig fields}}")
    _check_fields(f"--variant {text!r}", preset, changes)
    return label, changes


def _check_fields(what: str, config: PAPAConfig, fields: dict) -> None:
    try:
        replace(config, **fields)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"{what}: {err}") from None


def _entry(text: str) -> tuple[str, dict]:
    """``agent+field=value+...`` (the harness's label form) -> (agent, fields); values read as JSON where they
    parse (``2``, ``1e-4``, ``true``), else kept as text."""
    name, *parts = text.split("+")
    fields = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not (sep and key):
            raise SystemExit(f"--preset {text!r}: expected agent+field=value+..., got the part {part!r}")
        try:
            fields[key] = json.loads(value)
        except json.JSONDecodeError:
            fields[key] = value
    return name, fields


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
