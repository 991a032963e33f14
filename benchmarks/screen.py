"""The fair comparison's screen (issue 23): settings side by side on the (taste, seed) pairs they all ran, scored as
the suite scores, and one choosing rule applied to every learner alike.

    python -m benchmarks.screen benchmarks/results/suite-tuning/results.jsonl \\
        docs/experiments/results/suite_tuning_ddpo_screen_stage1.jsonl --against epapa
    python -m benchmarks.screen runs/a/suite-tuning/results.jsonl runs/b/suite-tuning/results.jsonl --base-reference 0

Each file is a ``results.jsonl`` of ``python -m benchmarks.suite`` (or a concatenation of several); its sessions are
grouped into arms by their agent label (``ddpo+inner_epochs=2+lr=0.0001``), the learner being the label's agent
(``ddpo``). Only the (taste, seed) pairs that every arm ran are compared, so the arms are paired session by session.
Every session is scored again by today's :func:`papa_env.evaluation.session_metrics`, its balance and confidence
against the base's judge reading on ``--base-reference`` samples (2,000; cached in ``--cache``; 0: the stored
metrics as they are).

The rule (``docs/baselines.md``): for each learner, the setting with the best mean judge like-rate after 300 replies
among those whose mean relative balance is >= ``--balance-floor`` (0.5, the suite's goal) and whose mean final judge
confidence is at most ``--confidence-margin`` (0.02) under the base's; where none qualifies, its best by like-rate is
named with what it misses. Both picks are printed. Like-rate alone would crown collapse: the settings that draw one
liked class are the ones that reach the highest like-rate.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from papa_env.evaluation import confidence_start

Key = tuple[str, int]


def load_arms(paths: list[str]) -> dict[str, dict[Key, dict]]:
    """Sessions by arm (agent label) and (taste, seed), in the order first met; a session met twice is refused."""
    arms: dict[str, dict[Key, dict]] = defaultdict(dict)
    for path in paths:
        for n, line in enumerate(Path(path).read_text().splitlines(), 1):
            if not line.strip():
                continue
            r = json.loads(line)
            if not r.get("taste") or "metrics" not in r:
                raise SystemExit(
                    f"{path}:{n}: not a suite session (expected the taste and metrics of benchmarks.suite)"
                )
            key = (r["taste"], int(r["seed"]))
            if key in arms[r["agent"]]:
                raise SystemExit(f"{path}:{n}: {r['agent']} on {key[0]} seed {key[1]} appears twice")
            arms[r["agent"]][key] = r
    return dict(arms)


def summary(sessions: list[dict]) -> dict:
    """What the screen compares of one arm's sessions: means of the suite's per-session metrics."""
    m = [r["metrics"] for r in sessions]

    def mean(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    per_taste = defaultdict(list)
    for r in sessions:
        per_taste[r["taste"]].append(r["metrics"]["like_rate"].get("300"))
    at300 = {t: mean(v) for t, v in per_taste.items() if mean(v) is not None}
    balances = [x["relative_balance"] for x in m if x.get("relative_balance") is not None]
    reached = sorted(np.inf if x.get("replies_to_target") is None else x["replies_to_target"] for x in m)
    return {
        "sessions": len(sessions),
        **{f"like@{c}": mean(x["like_rate"].get(str(c)) for x in m) for c in (100, 200, 300)},
        "tastes >= 0.90": sum(v >= 0.9 for v in at300.values()),
        "tastes": len(at300),
        "worst taste": min(at300, key=at300.get) if at300 else None,
        "worst @300": min(at300.values()) if at300 else None,
        "replies to 0.9 (median)": float(np.median(reached)) if reached else None,
        "shown liked": mean(x.get("shown_like_rate") for x in m),
        "balance": mean(balances),
        "balance < 0.5": sum(b < 0.5 for b in balances),
        "balanced tastes": len(balances),
        "confidence base": mean(confidence_start(x) for x in m),
        "confidence end": mean(x["judge_confidence"][1] for x in m),
        "flagged": sum(bool(x.get("collapse")) for x in m),
        "steps / interaction": mean(x.get("optimizer_steps_per_interaction") for x in m),
    }


def misses(s: dict, balance_floor: float = 0.5, confidence_margin: float = 0.02) -> list[str]:
    """The rule's constraints an arm's summary misses (empty: it qualifies)."""
    out = []
    if s["balance"] is not None and s["balance"] < balance_floor:
        out.append(f"balance {s['balance']:.3f} < {balance_floor}")
    if s["confidence end"] < s["confidence base"] - confidence_margin:
        out.append(f"confidence {s['confidence end']:.3f} < base {s['confidence base']:.3f} - {confidence_margin}")
    return out


def choose(summaries: dict[str, dict], balance_floor: float = 0.5, confidence_margin: float = 0.02) -> dict:
    """Per learner: ``pick``, the best like@300 among its qualifying arms (None if none qualifies), and
    ``unconstrained``, its best like@300 of all."""
    learners: dict[str, list[str]] = defaultdict(list)
    for arm in summaries:
        learners[arm.split("+")[0]].append(arm)
    out = {}
    for learner, arms in learners.items():
        ok = [a for a in arms if not misses(summaries[a], balance_floor, confidence_margin)]
        out[learner] = {
            "pick": max(ok, key=lambda a: summaries[a]["like@300"]) if ok else None,
            "unconstrained": max(arms, key=lambda a: summaries[a]["like@300"]),
        }
    return out


def paired(a: dict[Key, dict], b: dict[Key, dict], keys: list[Key]) -> dict[str, dict]:
    """Arm b against arm a session by session: how often b is higher / lower, and the mean difference."""
    fields = {
        "like@100": lambda m: m["like_rate"].get("100"),
        "like@300": lambda m: m["like_rate"].get("300"),
        "balance": lambda m: m.get("relative_balance"),
        "confidence end": lambda m: m["judge_confidence"][1],
    }
    out = {}
    for name, get in fields.items():
        pairs = [(get(b[k]["metrics"]), get(a[k]["metrics"])) for k in keys]
        pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
        out[name] = {
            "higher": sum(x > y for x, y in pairs),
            "lower": sum(x < y for x, y in pairs),
            "of": len(pairs),
            "mean diff": float(np.mean([x - y for x, y in pairs])) if pairs else None,
        }
    return out


def _f(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def report(
    arms: dict[str, dict[Key, dict]], against: str | None, balance_floor: float, confidence_margin: float
) -> str:
    keys = sorted(set.intersection(*(set(s) for s in arms.values())))
    if not keys:
        raise SystemExit("the arms share no (taste, seed) pair: nothing to compare")
    summaries = {arm: summary([sessions[k] for k in keys]) for arm, sessions in arms.items()}
    lines = [
        f"{len(keys)} sessions every arm ran ({len({k[0] for k in keys})} tastes, seeds "
        f"{sorted({k[1] for k in keys})}); means over them.\n",
        "| arm | like@100 | like@200 | like@300 | worst taste @300 | tastes >= 0.90 | replies to 0.9 (median) "
        "| liked among shown | balance (< 0.5) | judge conf. base -> end | flagged | optimizer steps / interaction "
        "| the rule |",
        "|" + "---|" * 13,
    ]
    for arm, s in summaries.items():
        miss = misses(s, balance_floor, confidence_margin)
        reach = s["replies to 0.9 (median)"]
        lines.append(
            f"| `{arm}` | {_f(s['like@100'])} | {_f(s['like@200'])} | {_f(s['like@300'])} | "
            f"{_f(s['worst @300'])} (`{s['worst taste']}`) | {s['tastes >= 0.90']} of {s['tastes']} | "
            f"{'never' if reach is None or np.isinf(reach) else f'{reach:.0f}'} | {_f(s['shown liked'])} | "
            f"{_f(s['balance'])} ({s['balance < 0.5']} of {s['balanced tastes']}) | "
            f"{_f(s['confidence base'])} -> {_f(s['confidence end'])} | {s['flagged']} | "
            f"{_f(s['steps / interaction'], 1)} | {'qualifies' if not miss else 'misses: ' + '; '.join(miss)} |"
        )
    lines.append(
        f"\nThe rule (balance >= {balance_floor}, final confidence at most {confidence_margin} under the base's; "
        "then the best like@300):\n"
    )
    for learner, c in choose(summaries, balance_floor, confidence_margin).items():
        pick = f"`{c['pick']}` (like@300 {summaries[c['pick']]['like@300']:.3f})" if c["pick"] else "none qualifies"
        best = c["unconstrained"]
        lines.append(f"- {learner}: {pick}; by like@300 alone `{best}` ({summaries[best]['like@300']:.3f})")
    if against:
        if against not in arms:
            raise SystemExit(f"--against {against!r} is not an arm; the arms: {sorted(arms)}")
        lines.append(f"\nPaired with `{against}` on the same sessions (higher / lower of n, mean difference):\n")
        for arm in (a for a in arms if a != against):
            cells = [
                f"{name} {p['higher']} / {p['lower']} of {p['of']} ({_f(p['mean diff'])})"
                for name, p in paired(arms[against], arms[arm], keys).items()
            ]
            lines.append(f"- `{arm}`: " + ", ".join(cells))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="results.jsonl files of benchmarks.suite (several arms each allowed)")
    p.add_argument("--against", help="an arm every other one is paired with session by session (e.g. epapa)")
    p.add_argument("--base-reference", type=int, default=2000, help="base samples of the judge reading (0: none)")
    p.add_argument("--cache", default="runs/benchmarks/base-reference", help="where the base reading is cached")
    p.add_argument("--balance-floor", type=float, default=0.5)
    p.add_argument("--confidence-margin", type=float, default=0.02)
    p.add_argument("--out", help="also write the report here (markdown)")
    a = p.parse_args(argv)
    if a.base_reference < 0 or not 0 <= a.balance_floor <= 1 or a.confidence_margin < 0:
        p.error("expected --base-reference >= 0, --balance-floor in [0, 1] and --confidence-margin >= 0")
    missing = [path for path in a.results if not Path(path).is_file()]
    if missing:
        p.error(f"no such results file: {', '.join(missing)}")
    arms = load_arms(a.results)
    if a.base_reference:
        from papa_env.harness import base_references, rescore
        from papa_env.suite import liked_by_taste

        liked = liked_by_taste()
        results = [r for sessions in arms.values() for r in sessions.values()]
        refs = base_references(results, a.base_reference, Path(a.cache))
        rescore(results, liked, refs, f"{a.base_reference} base samples")
    text = report(arms, a.against, a.balance_floor, a.confidence_margin)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    return text


if __name__ == "__main__":
    main()
