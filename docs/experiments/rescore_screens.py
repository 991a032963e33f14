"""The lab log's raw screens (docs/experiments/results/suite_tuning_*.jsonl) at a glance: like-rate at 100 and 300
replies, and the balance scored again against the base's class shares on 2,000 samples, next to the default's
sessions on the same (taste, seed) pairs (the balance under both rulers).

    python docs/experiments/rescore_screens.py      # from the repository root; prints a markdown table
    python docs/experiments/rescore_screens.py --plot docs/experiments/screens_tradeoff.png   # and draws each
        # screen's change of like@300 against its change of mean balance, both paired with the default
    python docs/experiments/rescore_screens.py --dips   # instead: how often each screen's like-rate dips, by how
        # high it had been (an evaluation more than 0.05 under the best before: the suite's dip flag)

The default's sessions are today's (`benchmarks/results/suite-tuning/results.jsonl`): for screens run against an
earlier default the left column is not the default they were compared with.
"""

import argparse
import copy
import json
from pathlib import Path

import numpy as np

from papa_env.harness import rescore
from papa_env.suite import liked_by_taste

# the screens run against today's default (the lab log's table at a glance); the others were paired with earlier ones
AGAINST_TODAY = (
    "k200", "k200_base_like_replay6", "extrapolate15", "extrapolate15_only_behind", "extrapolate15_diversity",
    "no_fewer_base_queries_balance", "dislike_margin01_balance", "dislike_redirect05_balance",
    "dislike_floor600_balance", "no_ema", "anchor03", "ema_start90", "base_like_anchor0", "base_candidates3",
    "tuned_candidates3", "tuned_candidates3_medoids", "ema_warmup", "reward_filter4", "reward_filter_strata10",
    "reward_filter_strata_prior2", "proportional", "filter_queries", "reward_filter_strata_prior2_optimism1",
    "reward_filter_gate_filter_queries", "base_backfill_mass",
)  # fmt: skip
LIKED = liked_by_taste()


def mean_balance(results: list[dict]) -> float:
    return float(
        np.mean([r["metrics"]["relative_balance"] for r in results if r["metrics"]["relative_balance"] is not None])
    )


def summary(results: list[dict]) -> str:
    """Mean relative balance and the number of flagged sessions."""
    return f"{mean_balance(results):.2f}, {sum(bool(r['collapse']) for r in results)}"


def mean_like(results: list[dict], at: str) -> float:
    return float(np.mean([v for r in results if (v := r["metrics"]["like_rate"].get(at)) is not None]))


def like(results: list[dict], at: str) -> str:
    return f"{mean_like(results, at):.3f}"


def dip_rates(results: list[dict]) -> tuple[int, dict[str, tuple[int, int]]]:
    """Sessions with a dip, and per band of the best like-rate before an evaluation: (dips, evaluations)."""
    sessions, bands = 0, {}
    for r in results:
        best, dipped = None, False
        for x in (e["eval/like_rate_judge"] for e in r["records"] if "eval/like_rate_judge" in e):
            if best is not None:
                band = "< 0.7" if best < 0.7 else "0.7-0.85" if best < 0.85 else ">= 0.85"
                n, d = bands.get(band, (0, 0))
                bands[band] = (n + 1, d + (x < best - 0.05))
                dipped |= x < best - 0.05
            best = x if best is None else max(best, x)
        sessions += dipped
    return sessions, bands


def print_dips(default: dict, paths: list[Path]) -> None:
    """Each screen against today's default: a dip per evaluation, by the best like-rate reached before it."""
    print("| screen | sessions | with a dip: default / arm | dips per evaluation after best < 0.7, 0.7-0.85, "
          ">= 0.85: default / arm |")  # fmt: skip
    print("|---|---|---|---|")
    for path in paths:
        arm = [json.loads(line) for line in path.read_text().splitlines()]
        base = [default[(r["taste"], r["seed"])] for r in arm]
        (n_base, bands_base), (n_arm, bands_arm) = dip_rates(base), dip_rates(arm)
        cells = [
            f"{bands_base.get(b, (0, 0))[1]}/{bands_base.get(b, (0, 0))[0]} / "
            f"{bands_arm.get(b, (0, 0))[1]}/{bands_arm.get(b, (0, 0))[0]}"
            for b in ("< 0.7", "0.7-0.85", ">= 0.85")
        ]
        name = path.stem.removeprefix("suite_tuning_").removesuffix("_screen")
        print(f"| {name} | {len(arm)} | {n_base} / {n_arm} | {'; '.join(cells)} |")


def plot(points: dict[str, tuple[float, float]], path: str) -> None:
    """Each screen at (its mean balance minus the default's, its like@300 minus the default's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    legend = []
    for i, (name, (db, dl)) in enumerate(sorted(points.items()), 1):  # numbered points, named beside the axes
        ax.plot(db, dl, "o", color="tab:blue")
        ax.annotate(str(i), (db, dl), fontsize=8, xytext=(4, 2), textcoords="offset points")
        legend.append(f"{i}  {name}  ({db:+.2f}, {dl:+.3f})")
    ax.text(1.02, 1.0, "\n".join(legend), transform=ax.transAxes, fontsize=7, va="top", family="monospace")
    ax.set_xlabel("mean relative balance, arm - default (2,000 base samples)")
    ax.set_ylabel("judge like-rate @300, arm - default")
    ax.set_title("screens on the tuning half, paired seed by seed with the default")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"saved {path}")


def scored(results: list[dict], refs: dict | None) -> list[dict]:
    out = copy.deepcopy(results)
    rescore(out, LIKED, refs, "2000 base samples")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--plot",
        metavar="PNG",
        help="also draw the changes of like@300 and balance of the screens run "
        "against today's default (AGAINST_TODAY) here",
    )
    ap.add_argument("--dips", action="store_true", help="print the like-rate dips of the screens run against today's "
                    "default instead")  # fmt: skip
    args = ap.parse_args()
    points = {}
    cache = json.loads(Path("benchmarks/results/suite-held-out/base_reference.json").read_text())
    refs = {(key.split("|")[0], ""): {"shares": {int(c): v for c, v in sh.items()}} for key, sh in cache.items()}
    lines = Path("benchmarks/results/suite-tuning/results.jsonl").read_text().splitlines()
    default = {(r["taste"], r["seed"]): r for r in map(json.loads, lines)}
    if args.dips:
        today = [Path(f"docs/experiments/results/suite_tuning_{name}_screen.jsonl") for name in AGAINST_TODAY]
        return print_dips(default, [p for p in today if p.exists()])
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
        name = path.stem.removeprefix("suite_tuning_").removesuffix("_screen")
        print(f"| {name} | {len(arm)} | {' | '.join(likes + cells)} |")
        if name not in AGAINST_TODAY:
            continue
        new_base, new_arm = scored(base, refs), scored(arm, refs)
        points[name] = (mean_balance(new_arm) - mean_balance(new_base), mean_like(arm, "300") - mean_like(base, "300"))
    if args.plot:
        plot(points, args.plot)


if __name__ == "__main__":
    main()
