"""When does a screen lose the balance? Each stored screen's relative balance at every evaluation, paired with the
default's sessions on the same (taste, seed) (lab log ``suite-defaults.md``, "The reward filter's early crowding").

    python docs/experiments/early_balance.py reward_filter_strata10 reward_filter_strata_prior2   # from the root
    python docs/experiments/early_balance.py optimism --screen-file RUN_DIR/suite-tuning/results.jsonl

For a filter that never changes what is asked or learned (``generate_candidates``, queries as drawn) both arms'
weights are the same at every evaluation, so the difference is the filter's alone. The balance is scored as the suite
scores it (the base's class shares on 2,000 samples, ``benchmarks/results/suite-held-out/base_reference.json``), on
the tastes of two or more liked classes. Prints, per number of replies, the mean balance of the default and of the
screen and on how many sessions the screen's is lower; then ``unseen``: the chance that some liked class has not
been drawn once in that many draws of the base model (a bound on what the replies can have shown by then).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from papa_env.evaluation import relative_balance
from papa_env.suite import make_suite

ROOT = Path(__file__).parents[2]


def _load(path: Path) -> dict[tuple[str, int], dict]:
    return {(r["taste"], r["seed"]): r for r in map(json.loads, path.read_text().splitlines())}


def main(argv: list[str] | None = None) -> dict[str, dict[int, tuple[float, float, int, int]]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("screens", nargs="+", help="names of docs/experiments/results/suite_tuning_<name>_screen.jsonl")
    ap.add_argument("--screen-file", help="read the (single) screen from this results.jsonl instead")
    a = ap.parse_args(argv)
    refs = json.loads((ROOT / "benchmarks/results/suite-held-out/base_reference.json").read_text())
    shares = {("fashion" if "Fashion" in k else "mnist"): {int(c): s for c, s in v.items()} for k, v in refs.items()}
    liked = {t.name: t.liked for t in make_suite("tuning")}
    default = _load(ROOT / "benchmarks/results/suite-tuning/results.jsonl")
    out = {}
    for name in a.screens:
        stored = ROOT / f"docs/experiments/results/suite_tuning_{name}_screen.jsonl"
        path = Path(a.screen_file) if a.screen_file else stored
        per: dict[int, list[tuple[float, float]]] = defaultdict(list)
        for key, arm in _load(path).items():
            classes = liked.get(key[0])
            if key not in default or classes is None or len(classes) < 2:
                continue
            ref = shares["fashion" if key[0].startswith("fashion") else "mnist"]
            evals = [[r for r in s["records"] if f"eval/class_share/{classes[0]}" in r] for s in (default[key], arm)]
            for i in range(1, min(map(len, evals))):
                b = [relative_balance(e, classes, i, ref) for e in evals]
                if None not in b:
                    per[evals[0][i]["replies"]].append((b[0], b[1]))
        out[name] = {}
        print(f"\n{name}\n\n| replies | sessions | balance: default | {name} | lower than the default on |")
        print("|---|---|---|---|---|")
        for replies, pairs in sorted(per.items()):
            d, s = np.array(pairs).T
            row = (float(d.mean()), float(s.mean()), int((s < d).sum()), len(pairs))
            out[name][replies] = row
            print(f"| {replies} | {len(pairs)} | {row[0]:.3f} | {row[1]:.3f} | {row[2]} |")
    print("\n| taste | P(a liked class not drawn once in 50 / 100 base draws) |\n|---|---|")
    for t in make_suite("tuning"):
        if t.liked is not None and len(t.liked) > 1:
            s = np.array([shares["fashion" if "Fashion" in t.env else "mnist"][c] for c in t.liked])
            unseen = [1 - float(np.prod(1 - (1 - s) ** n)) for n in (50, 100)]
            print(f"| {t.name} | {unseen[0]:.3f} / {unseen[1]:.4f} |")
    return out


if __name__ == "__main__":
    main()
