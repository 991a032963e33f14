"""Quality of a base diffusion model, as the judge classifier sees it.

    python -m benchmarks.base_quality --dataset mnist                 # the shipped model, default sampler
    python -m benchmarks.base_quality --dataset mnist --sampler ddpm --steps 1000
    python -m benchmarks.base_quality --dataset mnist --model /path/to/ema.safetensors
    python -m benchmarks.base_quality --dataset fashion-mnist --judge /path/to/candidate-judge.safetensors

Prints and writes (runs/benchmarks/base_quality_<dataset>_<sampler><steps>.json):
* share of samples the judge classifies with confidence >= 0.9 (the bar: MNIST >= 0.90, Fashion >= 0.75);
* each class's share of the samples (the bar: every class in [0.05, 0.15]);
* Frechet distance in the judge's feature space between the samples and held-out test images, next to the
  same distance between training and test images (what a perfect model would score at this sample size);
* each class's mean judge confidence, and with ``--suite-results`` (a suite's results.jsonl) per taste the base's
  confidence at the class mix each session ended with: a taste of classes the judge is less sure of (Fashion's coat,
  shirt, pullover) ends below the base's overall confidence without any loss of quality;
* agreement of the user's classifier with the judge on the samples, and per classifier taste of the user suite how
  far the judge's like-rate can follow the user on such samples (``papa_env.metrics.judge_ceiling``): among the
  samples the user likes, and among those it is sure of, the share the judge also calls liked.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from papa_env.data import class_names, load_dataset
from papa_env.diffusion import DEFAULT_ETA, DEFAULT_NUM_STEPS, DEFAULT_SAMPLER, sample
from papa_env.metrics import embed, frechet_distance, judge, judge_ceiling
from papa_env.models import load_model, load_pretrained
from papa_env.viz import save_grid

BARS = {"mnist": 0.90, "fashion-mnist": 0.75}
ENVS = {"mnist": "PAPA-MNIST-v0", "fashion-mnist": "PAPA-FashionMNIST-v0"}  # the suite's classifier users' envs


def suite_ceilings(dataset: str, user, judged) -> dict:
    """:func:`judge_ceiling` for each classifier taste of both halves of the user suite on ``dataset``."""
    from papa_env.suite import make_suite

    out = {}
    for half in ("tuning", "held-out"):
        for t in make_suite(half):
            if t.env == ENVS[dataset] and t.liked:
                out[f"{t.name} ({half})"] = judge_ceiling(user, judged, t.liked)
    return out


def measure(
    dataset: str,
    unet: torch.nn.Module,
    n: int = 1000,
    sampler: str = DEFAULT_SAMPLER,
    steps: int = DEFAULT_NUM_STEPS,
    eta: float = DEFAULT_ETA,
    seed: int = 0,
    data_root: str | None = None,
    judge_net: torch.nn.Module | None = None,
) -> dict:
    """Sample ``n`` images and score them; returns a flat dict of figures (and the samples under 'images').

    ``judge_net`` replaces the shipped ``<dataset>-judge`` (to weigh a candidate judge).
    """
    judge_net = judge_net if judge_net is not None else load_pretrained(f"{dataset}-judge")
    user_net = load_pretrained(f"{dataset}-classifier")
    t0 = time.perf_counter()
    images = sample(
        unet, n, sampler=sampler, num_steps=steps, eta=eta, generator=torch.Generator().manual_seed(seed), progress=True
    )
    secs = time.perf_counter() - t0
    rep = judge(judge_net, images)
    user = judge(user_net, images)
    test = load_dataset(dataset, "test", root=data_root)
    train = load_dataset(dataset, "train", root=data_root)
    g = torch.Generator().manual_seed(seed + 1)
    test_x = test.images[torch.randperm(len(test.images), generator=g)[:n]]
    train_x = train.images[torch.randperm(len(train.images), generator=g)[:n]]
    f_samples, f_test, f_train = (embed(judge_net, x) for x in (images, test_x, train_x))
    return dict(
        dataset=dataset,
        n=n,
        sampler=sampler,
        steps=steps,
        eta=eta,
        seed=seed,
        confident_fraction=rep.confident_fraction(0.9),
        mean_confidence=float(rep.confidence.mean()),
        class_shares=[round(float(s), 4) for s in rep.class_shares],
        class_confidence=[
            float(rep.confidence[rep.labels == c].mean()) if (rep.labels == c).any() else None
            for c in range(len(rep.class_shares))
        ],  # fmt: skip
        min_class_share=float(rep.class_shares.min()),
        max_class_share=float(rep.class_shares.max()),
        frechet_judge=frechet_distance(f_samples, f_test),
        frechet_judge_train_vs_test=frechet_distance(f_train, f_test),
        test_confident_fraction=judge(judge_net, test_x).confident_fraction(0.9),
        user_judge_agreement=float((rep.labels == user.labels).float().mean()),
        judge_ceiling=suite_ceilings(dataset, user, rep),
        sampling_seconds=secs,
        images=images,
    )


def confidence_at_class_mix(results: list[dict], dataset: str, class_confidence: list, overall: float) -> dict:
    """Per suite taste on ``dataset``: the sessions' judge confidence at the start and end, and the base's confidence
    at each session's end class mix (its per-class confidences weighted by the end's class shares), also scaled by
    the first evaluation's confidence over ``overall`` (the suite's 100 evaluation samples are one draw)."""
    conf = np.array([np.nan if c is None else c for c in class_confidence])
    out: dict = {}
    for r in results:
        if r["spec"]["env"].replace("-Style", "") != ENVS[dataset]:  # the Style users draw from the MNIST model
            continue
        first, end = r["records"][0], r["records"][-1]
        mix = np.array([end[f"eval/class_share/{c}"] for c in range(len(conf))])
        known = ~np.isnan(conf)
        matched = float((mix[known] * conf[known]).sum() / mix[known].sum())
        row = (first["eval/judge_confidence"], end["eval/judge_confidence"], matched,
               matched * first["eval/judge_confidence"] / overall)  # fmt: skip
        out.setdefault(r["taste"], []).append(row)
    return {t: [float(v) for v in np.mean(rows, 0)] for t, rows in out.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(BARS), default="mnist")
    p.add_argument("--model", default=None, help="a .safetensors UNet (default: the shipped <dataset>-ddpm)")
    p.add_argument("--judge", default=None, help="a .safetensors classifier (default: the shipped <dataset>-judge)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default=DEFAULT_SAMPLER)
    p.add_argument("--steps", type=int, default=DEFAULT_NUM_STEPS)
    p.add_argument("--eta", type=float, default=DEFAULT_ETA)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default="runs/benchmarks")
    p.add_argument(
        "--suite-results", default=None, help="a suite's results.jsonl: confidence at each taste's class mix"
    )
    a = p.parse_args(argv)
    if a.suite_results and not Path(a.suite_results).is_file():
        p.error(f"--suite-results {a.suite_results} is not a file")
    unet = load_model(a.model) if a.model else load_pretrained(f"{a.dataset}-ddpm")
    judge_net = load_model(a.judge) if a.judge else None
    r = measure(a.dataset, unet, a.n, a.sampler, a.steps, a.eta, a.seed, a.data_root, judge_net)
    images = r.pop("images")
    tag = f"base_quality_{a.dataset}_{a.sampler}{a.steps}" + ("" if a.sampler == "ddpm" else f"_eta{a.eta:g}")
    tag += f"_judge-{Path(a.judge).stem}" if a.judge else ""
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    named = {"model": a.model or f"{a.dataset}-ddpm", "judge": a.judge or f"{a.dataset}-judge"}
    (out / f"{tag}.json").write_text(json.dumps({**r, **named}, indent=2))
    save_grid(images[:100], out / f"{tag}.png", nrow=10)
    bar = BARS[a.dataset]
    names = class_names(a.dataset)
    ok_conf = r["confident_fraction"] >= bar
    ok_share = 0.05 <= r["min_class_share"] and r["max_class_share"] <= 0.15
    print(f"\n{a.dataset}: {a.n} samples, {a.sampler} {a.steps} steps (eta {a.eta:g}), {r['sampling_seconds']:.1f} s")
    print(
        f"  judge confidence >= 0.9 : {r['confident_fraction']:.3f}  (bar {bar:.2f}: {'ok' if ok_conf else 'NOT MET'};"
        f" real test images: {r['test_confident_fraction']:.3f})"
    )
    print(
        f"  class shares            : {r['min_class_share']:.3f} .. {r['max_class_share']:.3f}"
        f"  (bar 0.05..0.15: {'ok' if ok_share else 'NOT MET'})"
    )
    print("    " + "  ".join(f"{names[c]}={s:.3f}" for c, s in enumerate(r["class_shares"])))
    print(
        f"  Frechet (judge features): {r['frechet_judge']:.2f}  (train vs test images: "
        f"{r['frechet_judge_train_vs_test']:.2f})"
    )
    print(f"  user classifier agrees with judge on {r['user_judge_agreement']:.3f} of samples")
    print("  judge like-rate where the user likes / is sure (>= 0.9), per suite taste:")
    for name, c in r["judge_ceiling"].items():
        print(f"    {name:36s} {c['given_liked']:.3f} of {c['n_liked']:4d}   {c['given_sure']:.3f} of {c['n_sure']:4d}")
    print("    mean confidence per class: " + "  ".join(
        f"{names[c]}={v:.3f}" for c, v in enumerate(r["class_confidence"]) if v is not None))  # fmt: skip
    if a.suite_results:
        results = [json.loads(line) for line in Path(a.suite_results).read_text().splitlines()]
        r["confidence_at_class_mix"] = mix = confidence_at_class_mix(
            results, a.dataset, r["class_confidence"], r["mean_confidence"]
        )
        print(
            "  | taste | judge conf. start (the base) | end | the base at the end's class mix | scaled to the start |"
        )
        print("  |---|---|---|---|---|")
        for taste, (start, end, matched, scaled) in mix.items():
            print(f"  | {taste} | {start:.3f} | {end:.3f} | {matched:.3f} | {scaled:.3f} |")
        (out / f"{tag}.json").write_text(json.dumps({**r, **named}, indent=2))
    print(f"  wrote {out / (tag + '.json')} and {out / (tag + '.png')}")
    return r


if __name__ == "__main__":
    main()
