"""Does the model's balance copy the balance of the likes it was given? (issue 22, lab log `suite-defaults.md`)

    python docs/experiments/likes_imprint.py RUN_DIR [RUN_DIR ...]

RUN_DIR: the ``--out`` folder of a ``benchmarks.suite`` run on the tuning half (its session folders keep every
interaction's queries, replies and which model drew each query). For each session of a taste of two or more classes,
the judge names the class of every query replied to in the first 50 / 100 replies; the relative balance (the smallest
ratio of a liked class's share to its share among the base's liked samples, 2,000 of them) is computed for the likes
on base-model queries, on tuned-model queries and on all, and set against the model's own relative balance at 50,
100 and 300 replies. Base-model queries are independent draws of the frozen base: the balance of their likes is
sampling noise alone, so a correlation with the model's balance within a taste is the model copying that noise.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np
import torch

from papa_env.metrics import judge
from papa_env.models import load_pretrained

REFERENCE = Path("benchmarks/results/suite-held-out/base_reference.json")


def balance(counts: np.ndarray, base: np.ndarray) -> float:
    """The smallest ratio of a class's share of ``counts`` to its share ``base`` (nan without any count)."""
    return float(min(counts / counts.sum() / base)) if counts.sum() else float("nan")


def session(folder: str, judges: dict, refs: dict) -> dict | None:
    taste = Path(folder).parent.name
    if taste.startswith("style") or len(liked := tuple(int(c) for c in taste.split("+")[0].split("-")[1:])) < 2:
        return None
    family = "fashion" if taste.startswith("fashion") else "mnist"
    shares = next(v for k, v in refs.items() if ("Fashion" in k) == (family == "fashion"))
    base = np.array([shares[str(c)] for c in liked])
    base = base / base.sum()
    evals = {}
    for line in Path(folder, "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "eval/like_rate_judge" in r:
            evals[r["replies"]] = np.array([r[f"eval/class_share/{c}"] for c in liked])
    if 300 not in evals:  # a session still running
        return None
    steps = [np.load(f) for f in sorted(glob.glob(f"{folder}/queries/step_*.npz"))[:10]]
    queries = torch.as_tensor(np.concatenate([z["queries"] for z in steps]))
    replies = np.concatenate([z["replies"] for z in steps])
    source = np.concatenate([z["proposal/source"] for z in steps])
    labels = judge(judges[family], queries).labels.numpy()
    row = {"taste": taste}
    for upto in (50, 100):
        liked_reply = (replies[:upto] > 0) & np.isin(labels[:upto], liked)
        for name, mask in (("base", source[:upto] == 1), ("tuned", source[:upto] == 0), ("all", True)):
            counts = np.array([((labels[:upto] == c) & liked_reply & mask).sum() for c in liked], float)
            row[f"likes_{name}_{upto}"] = balance(counts, base)
        row[f"n_base_likes_{upto}"] = int((liked_reply & (source[:upto] == 1)).sum())
        row[f"model_{upto}"] = balance(evals[upto], base)
    row["model_300"] = balance(evals[300], base)
    return row


def within_taste(rows: list[dict], x: str, y: str, control: str | None = None) -> tuple[float, int]:
    """Pearson correlation of x and y after removing each taste's mean (and a linear fit on ``control``)."""
    keep = [r for r in rows if np.isfinite(r[x]) and np.isfinite(r[y])]
    cols = [x, y] + ([control] if control else [])
    data = np.array([[r[c] for c in cols] for r in keep], float)
    tastes = np.array([r["taste"] for r in keep])
    for t in set(tastes):
        data[tastes == t] -= data[tastes == t].mean(0)
    if control:
        design = np.c_[np.ones(len(data)), data[:, 2]]
        for j in (0, 1):
            data[:, j] -= design @ np.linalg.lstsq(design, data[:, j], rcond=None)[0]
    return float(np.corrcoef(data[:, 0], data[:, 1])[0, 1]), len(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="benchmarks.suite --out folders")
    args = ap.parse_args()
    judges = {"mnist": load_pretrained("mnist-judge"), "fashion": load_pretrained("fashion-mnist-judge")}
    refs = json.loads(REFERENCE.read_text())
    rows = []
    for run in args.runs:
        for folder in sorted(glob.glob(f"{run}/suite-tuning/*/*/")):
            if (row := session(folder.rstrip("/"), judges, refs)) is not None:
                rows.append(row)
    if not rows:
        sys.exit(f"no finished multi-class session under {args.runs} (expected benchmarks.suite --out folders)")
    mean = {k: np.nanmean([r[k] for r in rows]) for k in rows[0] if k != "taste"}
    print(f"{len(rows)} sessions; means: " + ", ".join(f"{k} {v:.2f}" for k, v in mean.items()))
    print("| likes on | replies | within-taste corr. with the model's balance then | ... at 300 | controlling for "
          "the number of base-model likes |")  # fmt: skip
    print("|---|---|---|---|---|")
    for upto in (50, 100):
        for name in ("base", "tuned", "all"):
            x = f"likes_{name}_{upto}"
            now, n = within_taste(rows, x, f"model_{upto}")
            end, _ = within_taste(rows, x, "model_300")
            ctrl = within_taste(rows, x, f"model_{upto}", f"n_base_likes_{upto}")[0] if name == "base" else float("nan")
            print(f"| {name} | 1-{upto} | {now:.2f} (n = {n}) | {end:.2f} | {ctrl:.2f} |")


if __name__ == "__main__":
    main()
