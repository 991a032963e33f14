"""The lab log's raw screens (docs/experiments/results/suite_tuning_*.jsonl) at a glance: like-rate at 100 and 300
replies, and the balance scored again against the base's class shares on 2,000 samples, next to the default's
sessions on the same (taste, seed) pairs (the balance under both rulers).

    python docs/experiments/rescore_screens.py      # from the repository root; prints a markdown table

The default's sessions are today's (`benchmarks/results/suite-tuning/results.jsonl`): for screens run against an
earlier default the left column is not the default they were compared with.
"""

import copy
import json
from pathlib import Path

import numpy as np

from papa_env.harness import rescore
from papa_env.suite import make_suite, quick_suite

LIKED = {t.name: t.liked for t in [*quick_suite(), *make_suite("tuning"), *make_suite("held-out")]}


def summary(results: list[dict]) -> str:
    """Mean relative balance and the number of flagged sessions."""
    balances = [r["metrics"]["relative_balance"] for r in results if r["metrics"]["relative_balance"] is not None]
    return f"{np.mean(balances):.2f}, {sum(bool(r['collapse']) for r in results)}"


def like(results: list[dict], at: str) -> str:
    vals = [r["metrics"]["like_rate"].get(at) for r in results]
    return f"{np.mean([v for v in vals if v is not None]):.3f}"


def scored(results: list[dict], refs: dict | None) -> list[dict]:
    out = copy.deepcopy(results)
    rescore(out, LIKED, refs, "2000 base samples")
    return out


def main() -> None:
    cache = json.loads(Path("benchmarks/results/suite-held-out/base_reference.json").read_text())
    refs = {(key.split("|")[0], ""): {int(c): v for c, v in shares.items()} for key, shares in cache.items()}
    lines = Path("benchmarks/results/suite-tuning/results.jsonl").read_text().splitlines()
    default = {(r["taste"], r["seed"]): r for r in map(json.loads, lines)}
    print("| screen | sessions | like@100 default / arm | like@300 | balance, flags: default (first evaluation "
          "-> 2,000 base samples) | the arm |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for path in sorted(Path("docs/experiments/results").glob("suite_tuning_*.jsonl")):
        arm = [json.loads(line) for line in path.read_text().splitlines()]
        keys = [(r.get("taste"), r.get("seed")) for r in arm]
        if not arm or "records" not in arm[0] or not all(k in default for k in keys):
            continue
        base = [default[k] for k in keys]
        likes = [f"{like(base, at)} / {like(arm, at)}" for at in ("100", "300")]
        cells = [f"{summary(scored(rs, None))} -> {summary(scored(rs, refs))}" for rs in (base, arm)]
        print(f"| {path.stem.removeprefix('suite_tuning_')} | {len(arm)} | {' | '.join(likes + cells)} |")


if __name__ == "__main__":
    main()
