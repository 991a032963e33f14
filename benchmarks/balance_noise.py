"""How much of the user suite's relative balance and collapse flags is noise: a perfectly balanced model, scored.

    python -m benchmarks.balance_noise                          # both datasets, every multi-class suite taste
    python -m benchmarks.balance_noise --like-rate 0.85 --eval-samples 100 --simulated 400
    python -m benchmarks.balance_noise --sessions-dir runs/benchmarks/compare/suite-tuning   # real tuned models

The suite scores a session's balance as the smallest ratio, over the liked classes, of a class's share of the liked
samples (an evaluation of ``--eval-samples`` fresh samples) to its share of the base model's liked samples, and flags
a session where that ratio is under 0.5 at two evaluations in a row (``papa_env.evaluation``). A model that draws
exactly the base's liked samples in the base's proportions should score 1 and never be flagged; this benchmark says
what it does score, with the base's shares measured on ``--base-samples`` of its samples (the judge's labels):

* *first evaluation*: the reference is the session's first evaluation (the base, ``--eval-samples`` samples), as
  sessions were scored before ``--balance-reference``;
* *base samples*: the reference is the base's shares on ``--base-samples`` samples (``--balance-reference``).

Each simulated session is a parametric bootstrap: the first evaluation draws ``--eval-samples`` labels from the base's
class shares, each of the six later ones draws ``like-rate x eval-samples`` liked labels in the base's liked
proportions. The evaluations are independent here, but the suite's share their noise (a fixed seed): most of the
base's liked samples keep their class after learning, so the first evaluation is a *paired* reference whose noise
partly cancels, and the simulation overstates its noise. ``--sessions-dir`` measures both references on real tuned
models instead: for each finished suite session there (its ``model.safetensors``), the balance of 1,000 fresh samples
of the tuned model against the base's ``--base-samples`` shares stands for the truth, and each reference's estimate
from the suite's own evaluation (100 samples on the evaluator's noise) is scored against it. Prints a table and writes
runs/benchmarks/balance_noise.json (or balance_noise_sessions.json).
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path

import numpy as np

ENVS = {"mnist": "PAPA-MNIST-v0", "fashion-mnist": "PAPA-FashionMNIST-v0"}


def _record(replies: int, counts: np.ndarray, n: int) -> dict:
    return {
        "replies": replies,
        "eval/like_rate_judge": 0.0,
        **{f"eval/class_share/{c}": counts[c] / n for c in range(10)},
    }


def score(shares: np.ndarray, liked: tuple[int, ...], like_rate: float, eval_samples: int, sessions: int,
          base_samples: int, rng: np.random.Generator) -> dict:  # fmt: skip
    """Mean relative balance and the share of flagged sessions of a perfectly balanced model, by reference."""
    from papa_env.evaluation import collapse_report, relative_balance

    liked_p = shares[list(liked)] / shares[list(liked)].sum()
    out = {}
    for name in ("first evaluation", "base samples"):
        balances, flagged = [], 0
        for _ in range(sessions):
            first = _record(0, rng.multinomial(eval_samples, shares), eval_samples)
            records = [first]
            for e in range(1, 7):
                counts = np.zeros(10)
                counts[list(liked)] = rng.multinomial(round(like_rate * eval_samples), liked_p)
                records.append(_record(50 * e, counts, eval_samples))
            ref = None
            if name == "base samples":  # the reference itself is an estimate on base_samples samples
                ref = dict(enumerate(rng.multinomial(base_samples, shares) / base_samples))
            balances.append(relative_balance(records, liked, reference=ref))
            flagged += any("base share" in p for p in collapse_report(records, liked=liked, reference=ref))
        out[name] = {"balance": float(np.mean(balances)), "flagged": flagged / sessions}
    return out


def _balance(now: np.ndarray, base: np.ndarray, liked: tuple[int, ...]) -> float:
    """relative_balance of two class-share vectors."""
    from papa_env.evaluation import relative_balance

    records = [_record(0, base, 1), _record(1, now, 1)]
    return relative_balance(records, liked)


def check_sessions(folder: str, base_samples: int, truth_samples: int = 1000) -> dict:
    """Both references scored on the finished suite sessions under ``folder`` (see the module's docstring)."""
    import torch

    from papa_env.cli import load_unet, sampler_of
    from papa_env.evaluation import Evaluator, base_class_shares
    from papa_env.metrics import judge
    from papa_env.models import load_pretrained
    from papa_env.suite import liked_by_taste

    liked = liked_by_taste()
    shares_of = lambda labels: np.bincount(labels, minlength=10)[:10] / len(labels)  # noqa: E731
    refs, rows = {}, []
    for model in sorted(Path(folder).glob("*/*/model.safetensors")):
        result = json.loads((model.parent / "result.json").read_text())
        taste, spec = result.get("taste"), result["spec"]
        if len(liked.get(taste) or ()) < 2:
            continue  # no balance to score
        dataset = "fashion-mnist" if "Fashion" in spec["env"] else "mnist"
        base_name = spec.get("model") or f"{dataset}-ddpm"  # the session's base: a file, or the shipped model
        if base_name not in refs:  # the base, its judge and its shares: once per base model
            base, judge_net = load_unet(base_name), load_pretrained(f"{dataset}-judge")
            refs[base_name] = (
                base,
                judge_net,
                np.array(list(base_class_shares(base, judge_net, base_samples).values())),
            )
        base, judge_net, base_shares = refs[base_name]
        tuned, kwargs = sampler_of(str(model), base_name)
        n, seed = result["spec"]["eval_samples"], inspect.signature(Evaluator).parameters["seed"].default
        with torch.no_grad():
            first = judge(judge_net, sample_with(base, n, seed, kwargs)).labels.numpy()
            now = judge(judge_net, sample_with(tuned, n, seed, kwargs)).labels.numpy()
        truth = np.array(list(base_class_shares(tuned, judge_net, truth_samples, seed=777, **kwargs).values()))
        kept = np.isin(first, liked[taste])  # the base's liked samples: do they keep their class after learning?
        row = {"session": f"{taste}/{model.parent.name}",
               "kept": float((now[kept] == first[kept]).mean()) if kept.any() else None,
               "truth": _balance(truth, base_shares, liked[taste]),
               "first evaluation": _balance(shares_of(now), shares_of(first), liked[taste]),
               "base samples": _balance(shares_of(now), base_shares, liked[taste])}  # fmt: skip
        rows.append(row)
        cells = ["-" if v is None else f"{v:.2f}" for v in list(row.values())[1:]]
        print(f"| {row['session']} | " + " | ".join(cells) + " |", flush=True)
    scored = [r for r in rows if None not in r.values()]  # the base drew a liked sample: a balance to compare
    if not rows:
        raise SystemExit(f"no finished suite session with two or more liked classes under {folder}")
    summary = {}
    for name in ("first evaluation", "base samples"):
        err = np.array([r[name] - r["truth"] for r in scored]) if scored else np.full(1, np.nan)
        calls = sum((r[name] < 0.5) == (r["truth"] < 0.5) for r in scored)
        summary[name] = {"bias": float(err.mean()), "rmse": float(np.sqrt((err**2).mean())), "agree_under_half": calls}
        print(f"{name}: bias {err.mean():+.3f}, RMSE {np.sqrt((err**2).mean()):.3f}, says 'under half' as the "
              f"truth does on {calls} of {len(scored)} sessions")  # fmt: skip
    return {"sessions": rows, "summary": summary}


def sample_with(unet, n: int, seed: int, kwargs: dict):
    import torch

    from papa_env.diffusion import sample

    return sample(unet, n, generator=torch.Generator().manual_seed(seed), **kwargs)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--like-rate", type=float, default=0.85, help="the balanced model's like-rate")
    p.add_argument("--eval-samples", type=int, default=100, help="samples per evaluation (the suite's --eval-samples)")
    p.add_argument("--base-samples", type=int, default=2000, help="samples of the base behind its class shares")
    p.add_argument("--simulated", type=int, default=400, help="simulated sessions per taste")
    p.add_argument("--sessions-dir", default=None, help="a suite run's folder: score both references on its sessions")
    p.add_argument("--truth-samples", type=int, default=1000, help="with --sessions-dir: samples behind the truth")
    p.add_argument("--seeds", type=int, default=3, help="sessions per taste in the suite (for the expected count)")
    p.add_argument("--out", default=None, help="default: runs/benchmarks/balance_noise[_sessions].json")
    a = p.parse_args(argv)
    if a.sessions_dir:
        if not Path(a.sessions_dir).is_dir():
            p.error(f"--sessions-dir {a.sessions_dir} is not a folder")
        print("| session | base's liked samples keeping their class | truth (1000 samples) | first evaluation | "
              "base samples |\n|---|---|---|---|---|")  # fmt: skip
        report = check_sessions(a.sessions_dir, a.base_samples, a.truth_samples)
        out = Path(a.out or "runs/benchmarks/balance_noise_sessions.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
        print(f"wrote {out}")
        return report
    if not 0 < a.like_rate <= 1 or min(a.eval_samples, a.base_samples, a.simulated) < 1:
        p.error("--like-rate must be in (0, 1]; --eval-samples, --base-samples and --sessions >= 1")

    import gymnasium as gym

    import papa_env  # noqa: F401  (registers the ids)
    from papa_env.evaluation import base_class_shares
    from papa_env.models import load_pretrained
    from papa_env.suite import make_suite

    rng = np.random.default_rng(0)
    report: dict = {"settings": vars(a), "tastes": {}}
    expected = {"first evaluation": 0.0, "base samples": 0.0}
    print("| taste | half | base's liked shares | balance, flagged: first evaluation | base samples |")
    print("|---|---|---|---|---|")
    for dataset, env_id in ENVS.items():
        t0 = time.perf_counter()
        unet = load_pretrained(gym.make(env_id).unwrapped.base_model)
        shares = base_class_shares(unet, load_pretrained(f"{dataset}-judge"), n=a.base_samples)
        print(f"({dataset}: {a.base_samples} base samples judged in {time.perf_counter() - t0:.0f} s)", flush=True)
        shares = np.array([shares[c] for c in range(10)])
        report[dataset] = shares.tolist()
        for half in ("tuning", "held-out"):
            for t in make_suite(half):
                if t.env != env_id or not t.liked or len(t.liked) < 2:
                    continue
                s = score(shares, t.liked, a.like_rate, a.eval_samples, a.simulated, a.base_samples, rng)
                report["tastes"][t.name] = {"half": half, **s}
                if half == "held-out":
                    for name in expected:
                        expected[name] += a.seeds * s[name]["flagged"]
                liked_p = shares[list(t.liked)] / shares[list(t.liked)].sum()
                cells = [f"{s[n]['balance']:.2f}, {s[n]['flagged']:.0%}" for n in ("first evaluation", "base samples")]
                print(f"| {t.name} | {half} | {' '.join(f'{c}: {v:.2f}' for c, v in zip(t.liked, liked_p))} | "
                      + " | ".join(cells) + " |", flush=True)  # fmt: skip
    report["held_out_flagged_expected"] = expected
    print(f"held-out half, {a.seeds} seeds per taste: flagged sessions expected of a perfectly balanced model: "
          + ", ".join(f"{k} {v:.1f}" for k, v in expected.items()))  # fmt: skip
    out = Path(a.out or "runs/benchmarks/balance_noise.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
