"""Do a screen's like-rate dips survive a finer ruler? The same suite sessions, evaluated on more samples.

A suite session's training does not depend on its evaluations (they draw from their own generator; the reward
filter's caches are functions of the replies), so running a (taste, seed) again with ``--eval-samples 400`` gives
the same queries, replies and weights, measured with a quarter of the variance. This runs the named sessions of the
tuning half that way and prints, per session, the judge like-rate at each evaluation and the collapse flags under the
100-sample ruler (the screen's stored sessions) and the finer one, both scored by today's ``session_metrics`` against
the 2,000-sample base reference::

    python docs/experiments/finer_ruler.py --pairs mnist-7-9:2,fashion-1-9:2 --override '{"generate_candidates": 4,
        "generate_strata": 10}' --screen docs/experiments/results/suite_tuning_reward_filter_strata10_screen.jsonl \
        --out /work/runs/ruler400

Without ``--override`` the sessions are ``epapa``'s default, compared with ``benchmarks/results/suite-tuning``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from papa_env.harness import SessionSpec, rescore, run_many
from papa_env.suite import make_suite

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "benchmarks/results/suite-held-out/base_reference.json"


def scored(results: list[dict]) -> list[dict]:
    liked = {t.name: t.liked for t in make_suite("tuning")}
    cache = json.loads(REFERENCE.read_text())
    refs = {(key.split("|")[0], ""): {"shares": {int(c): v for c, v in sh.items()}} for key, sh in cache.items()}
    rescore(results, liked, refs, "2000 base samples")
    return results


def dips(result: dict) -> list[str]:
    return [f for f in result["collapse"] if "fell to" in f]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", required=True, help="taste:seed,... of the tuning half")
    ap.add_argument("--override", default="{}", help="the screen's agent config overrides (JSON)")
    ap.add_argument("--screen", default=str(ROOT / "benchmarks/results/suite-tuning/results.jsonl"),
                    help="the stored 100-sample sessions (results.jsonl lines)")  # fmt: skip
    ap.add_argument("--eval-samples", type=int, default=400)
    ap.add_argument("--out", required=True, help="root folder of the sessions run again")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    tastes = {t.name: t for t in make_suite("tuning")}
    pairs = [tuple(p.rsplit(":", 1)) for p in a.pairs.split(",")]
    bad = [":".join(p) for p in pairs if len(p) != 2 or p[0] not in tastes or not p[1].isdigit()]
    if bad:
        ap.error(f"--pairs: expected taste:seed of the tuning half ({', '.join(tastes)}), got {bad}")
    pairs = [(t, int(s)) for t, s in pairs]
    overrides = json.loads(a.override)
    specs = [
        SessionSpec(
            "epapa",
            tastes[t].env,
            s,
            eval_samples=a.eval_samples,
            env_kwargs=dict(tastes[t].env_kwargs),
            overrides=overrides,
            taste=t,
            group=tastes[t].group,
        )
        for t, s in pairs
    ]
    root = Path(a.out)
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REFERENCE, root / "base_reference.json")
    fine = scored(run_many(specs, root, workers=a.workers, threads=1))
    stored = {(r["taste"], r["seed"]): r for r in map(json.loads, Path(a.screen).read_text().splitlines())}
    coarse = scored([stored[p] for p in pairs])
    print(f"| session | like-rate, 100 samples | like-rate, {a.eval_samples} samples | same replies | dips 100 / "
          f"{a.eval_samples} | class-share flags 100 / {a.eval_samples} |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for c, f in zip(coarse, fine):
        curve = [" ".join(f"{x['eval/like_rate_judge']:.2f}" for x in r["records"]) for r in (c, f)]
        same = np.isclose(c["metrics"]["shown_like_rate"] or 0, f["metrics"]["shown_like_rate"] or 0)
        cls = [sum("base share" in x for x in r["collapse"]) for r in (c, f)]
        print(f"| {c['taste']} s{c['seed']} | {curve[0]} | {curve[1]} | {same} | {len(dips(c))} / {len(dips(f))} | "
              f"{cls[0]} / {cls[1]} |")  # fmt: skip
    for name, rs in (("100", coarse), (str(a.eval_samples), fine)):
        shares = sum(any("base share" in x for x in r["collapse"]) for r in rs)
        print(f"{name} samples: sessions with a dip {sum(bool(dips(r)) for r in rs)}, with a class-share flag "
              f"{shares}, flagged {sum(bool(r['collapse']) for r in rs)} of {len(rs)}")  # fmt: skip
    with open(root / "results.jsonl", "w") as out:
        out.writelines(json.dumps(r) + "\n" for r in fine)


if __name__ == "__main__":
    main()
