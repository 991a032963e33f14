"""Write the model cards (papa_env/weights/<name>.md) from the weights' metadata and measured figures.

    python -m benchmarks.model_cards

Classifier cards re-measure test accuracy on the 10k held-out images (PAPA_DATA_DIR). DDPM cards read the
quality figures from runs/benchmarks/base_quality_<dataset>_<sampler>.json (``python -m benchmarks.base_quality``).
"""

from __future__ import annotations

import json
from pathlib import Path

from papa_env.data import load_dataset
from papa_env.diffusion import DEFAULT_ETA, DEFAULT_NUM_STEPS, DEFAULT_SAMPLER
from papa_env.models import PRETRAINED, load_pretrained, model_metadata, pretrained_path
from papa_env.pretrain import accuracy

CLASSIFIER_COMMANDS = {
    "mnist-classifier": "papa pretrain classifier --dataset mnist --arch UserCNN --epochs 3 --seed 0 --threads 1 "
    "--out papa_env/weights/mnist-classifier.safetensors",
    "mnist-judge": "papa pretrain classifier --dataset mnist --arch JudgeCNN --epochs 3 --seed 1 --threads 1 "
    "--out papa_env/weights/mnist-judge.safetensors",
    "fashion-mnist-classifier": "papa pretrain classifier --dataset fashion-mnist --arch UserCNN --epochs 5 --seed 0 "
    "--threads 1 --out papa_env/weights/fashion-mnist-classifier.safetensors",
    "fashion-mnist-judge": "papa pretrain classifier --dataset fashion-mnist --arch JudgeCNN --epochs 4 --seed 1 "
    "--threads 1 --out papa_env/weights/fashion-mnist-judge.safetensors",
}
DDPM_COMMAND = (
    "papa pretrain ddpm --dataset {ds} --steps {steps} --batch-size 64 --lr 6e-4 --threads {threads} "
    "--out checkpoints/{ds}-ddpm --export papa_env/weights/{ds}-ddpm.safetensors"
)
# How each shipped DDPM was trained: (--steps, --threads, trained up to step), resumed in this order. The
# cosine learning rate runs over --steps, so a resume with a larger --steps raises it again from there.
DDPM_HISTORY = {
    "mnist": [(6000, 1, 1250), (4500, 1, 4500), (10500, 2, 10500)],
    "fashion-mnist": [(6000, 1, 1250), (4500, 1, 4500)],
}
MACHINE = "2 CPU cores (AMD EPYC, AVX2), no GPU"


def _params(model) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M"


def classifier_card(name: str) -> str:
    ds = "fashion-mnist" if name.startswith("fashion") else "mnist"
    model = load_pretrained(name)
    meta = model_metadata(pretrained_path(name))
    test = load_dataset(ds, "test")
    acc = accuracy(model, test.images, test.labels)
    role = (
        "the simulated user's eyes (ClassifierOracle)"
        if name.endswith("classifier")
        else "the independent judge: evaluation only, never shown to agents or users"
    )
    bar = 0.985 if ds == "mnist" else 0.90
    return f"""# {name}

{type(model).__name__} ({_params(model)} parameters), {role}. Trained on the 60,000 {ds} training images
(random 2-pixel shifts{", horizontal flips" if ds == "fashion-mnist" else ""}), AdamW with a one-cycle schedule.

| figure | value |
|---|---|
| test accuracy (10,000 held-out images) | **{acc:.4f}** (bar: {bar}) |
| epochs / seed | {meta.get("epochs")} / {meta.get("seed")} |
| wall time | {meta.get("wall_minutes")} min on {MACHINE}, sharing the cores with the DDPM trainings |

Reproduce (with `PAPA_DATA_DIR` pointing at torchvision-layout data, or add `--data-root`):

    {CLASSIFIER_COMMANDS[name]}

Re-measured by `tests/test_classifiers.py` and `python -m benchmarks.model_cards`.
"""


def _sampler_label(q: dict) -> str:
    return f"{q['sampler']} {q['steps']} steps" + ("" if q["sampler"] == "ddpm" else f", eta {q['eta']:g}")


def ddpm_card(name: str, quality: dict, others: list[dict]) -> str:
    ds = name.removesuffix("-ddpm")
    model = load_pretrained(name)
    meta = model_metadata(pretrained_path(name))
    bar = 0.90 if ds == "mnist" else 0.75
    rows = "\n".join(
        f"| {_sampler_label(q)} | {q['confident_fraction']:.3f} | {q['min_class_share']:.3f} .. "
        f"{q['max_class_share']:.3f} | {q['frechet_judge']:.2f} | {q['sampling_seconds']:.0f} s |"
        for q in [quality, *others]
    )
    shares = ", ".join(f"{c}: {s:.3f}" for c, s in enumerate(quality["class_shares"]))
    history = "\n".join(
        f"    {DDPM_COMMAND.format(ds=ds, steps=steps, threads=threads)}   # until step {until}"
        for steps, threads, until in DDPM_HISTORY[ds]
    )
    met = (
        quality["confident_fraction"] >= bar
        and 0.05 <= quality["min_class_share"] <= quality["max_class_share"] <= 0.15
    )
    status = (
        "meets the quality bar"
        if met
        else f"**below the quality bar** ({quality['confident_fraction']:.3f} confident, bar {bar}; class shares "
        f"{quality['min_class_share']:.3f}..{quality['max_class_share']:.3f}, bar 0.05..0.15): training continues "
        "by resuming with a larger `--steps`"
    )
    return f"""# {name}

Status: {status}.

Unconditional diffusers `UNet2DModel` ({_params(model)} parameters; block_out_channels
{tuple(model.config.block_out_channels)}, one ResNet layer per block, attention at 7x7), epsilon prediction,
`DDPMScheduler` with T = 1000 linear betas 1e-4..0.02 (the PAPA authors' schedule). Trained on the 60,000 {ds}
training images; these are the EMA weights.

| training | |
|---|---|
| steps x batch | {meta.get("steps")} x 64 (AdamW, lr 6e-4, 200 warm-up steps, cosine to lr/10; EMA up to 0.999) |
| wall time | {meta.get("wall_minutes")} min of training on {MACHINE}; the first 4,500 steps with both base models |
| | side by side (a core each) and the classifier trainings part of the time |

Quality as the judge (`{ds}-judge`) sees 1,000 samples (`python -m benchmarks.base_quality --dataset {ds}`;
bar: >= {bar} confident, every class 5-15%); Frechet distance in the judge's features to 1,000 test images
(train-vs-test images score {quality["frechet_judge_train_vs_test"]:.2f}; real test images are >= 0.9 confident
{quality["test_confident_fraction"]:.3f} of the time):

| sampler | judge confidence >= 0.9 | class shares (min .. max) | Frechet (judge) | time for 1,000 |
|---|---|---|---|---|
{rows}

Default sampler (first row) class shares: {shares}. The user's classifier agrees with the judge on
{quality["user_judge_agreement"]:.3f} of these samples.

Reproduce (with `PAPA_DATA_DIR` pointing at torchvision-layout data): the shipped run is these commands in
order, each resuming the checkpoint in `checkpoints/{ds}-ddpm` and stopped at the step given (Ctrl-C / SIGTERM
checkpoints; the last one runs to its end). The cosine learning rate runs over `--steps`, so each resume with a
different `--steps` changed the schedule from that step on; `--threads` changes speed, not results beyond
floating-point summation order.

{history}

A larger `--steps` continues training from the last checkpoint.
"""


def main() -> None:
    out_dir = pretrained_path("mnist-ddpm").parent
    for name in PRETRAINED:
        if name.endswith("-ddpm"):
            ds = name.removesuffix("-ddpm")
            results = sorted(Path("runs/benchmarks").glob(f"base_quality_{ds}_*.json"))
            qs = [json.loads(p.read_text()) for p in results]
            default = [
                q
                for q in qs
                if q["sampler"] == DEFAULT_SAMPLER and q["steps"] == DEFAULT_NUM_STEPS and q["eta"] == DEFAULT_ETA
            ]
            if not default:
                print(f"skip {name}: run python -m benchmarks.base_quality --dataset {ds} first")
                continue
            others = [q for q in qs if q is not default[0]]
            text = ddpm_card(name, default[0], others)
        else:
            text = classifier_card(name)
        (out_dir / f"{name}.md").write_text(text)
        print(f"wrote {out_dir / (name + '.md')}")


if __name__ == "__main__":
    main()
