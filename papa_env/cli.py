"""The ``papa`` command.

    papa pretrain ddpm --dataset mnist --steps 6000 ...     train / resume a base diffusion model
    papa pretrain classifier --dataset mnist --arch UserCNN train a user's classifier or the judge
    papa sample --model mnist-ddpm --n 64 --out grid.png    draw a grid from a shipped model
    papa demo                                               the main job (what `make demo` runs):
                                                            EPAPA aligns mnist-ddpm to PAPA-MNIST-v0's user

Flags of ``pretrain`` come from the config dataclasses in :mod:`papa_env.pretrain`; each field's
docstring is its ``--help`` line (CleanRL style).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any


def field_docs(cls: type) -> dict[str, str]:
    """The one-line docstrings written under each field of a dataclass."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for prev, node in zip(body, body[1:]):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docs[prev.target.id] = node.value.value.strip()
    return docs


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--flag`` per dataclass field (bools as ``--x/--no-x``, Literals as choices)."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        help_ = f"{docs.get(f.name, '')} (default: {f.default!r})"
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
            continue
        if origin is typing.Literal:
            parser.add_argument(flag, choices=args, default=f.default, help=help_)
            continue
        if args and type(None) in args:  # Optional[X]
            hint = next(a for a in args if a is not type(None))
        parser.add_argument(flag, type=hint, default=f.default, help=help_, metavar=hint.__name__.upper())


def parse_into(cls: type, ns: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})


def build_parser() -> argparse.ArgumentParser:
    from papa_env.pretrain import ClassifierTrainConfig, DDPMTrainConfig

    p = argparse.ArgumentParser(prog="papa", description="papa-env: online preference alignment of diffusion models")
    sub = p.add_subparsers(dest="command", required=True)

    pre = sub.add_parser("pretrain", help="train the shipped base models and classifiers")
    pre_sub = pre.add_subparsers(dest="what", required=True)
    ddpm = pre_sub.add_parser("ddpm", help="train or resume a base DDPM", description=DDPMTrainConfig.__doc__)
    add_dataclass_args(ddpm, DDPMTrainConfig)
    clf = pre_sub.add_parser("classifier", help="train a classifier", description=ClassifierTrainConfig.__doc__)
    add_dataclass_args(clf, ClassifierTrainConfig)

    s = sub.add_parser("sample", help="draw a PNG grid of samples from a base model")
    s.add_argument("--model", default="mnist-ddpm", help="a shipped model name or a .safetensors path")
    s.add_argument("--n", type=int, default=64, help="number of samples")
    s.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    s.add_argument("--steps", type=int, default=None, help="denoising steps (default: 20 ddim, 1000 ddpm)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="runs/samples.png", help="where to write the PNG grid")

    d = sub.add_parser("demo", help="the main job: what `make demo` runs (EPAPA aligns the MNIST model)")
    d.add_argument("--out", default="runs/demo", help="run folder (an existing run there is resumed)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--preset", default="epapa-mixed-avg", help="a papa_env.agents.papa.PRESETS name")
    d.add_argument("--budget", type=int, default=300, help="replies (a multiple of 10)")
    return p


def load_unet(model: str):
    from papa_env.models import PRETRAINED, load_model, load_pretrained

    if model in PRETRAINED:
        return load_pretrained(model)
    if Path(model).suffix == ".safetensors":
        return load_model(model)
    raise SystemExit(f"--model must be one of {sorted(PRETRAINED)} or a .safetensors file, got {model!r}")


def cmd_sample(ns: argparse.Namespace) -> Path:
    import torch

    from papa_env.diffusion import sample
    from papa_env.viz import save_grid

    if ns.n < 1:
        raise SystemExit(f"--n must be >= 1, got {ns.n}")
    steps = ns.steps or (20 if ns.sampler == "ddim" else 1000)
    unet = load_unet(ns.model)
    images = sample(
        unet, ns.n, sampler=ns.sampler, num_steps=steps, generator=torch.Generator().manual_seed(ns.seed), progress=True
    )
    out = save_grid(images, ns.out)
    print(f"wrote {ns.n} samples ({ns.sampler}, {steps} steps) to {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.command == "pretrain":
        from papa_env import pretrain

        if ns.what == "ddpm":
            pretrain.train_ddpm(parse_into(pretrain.DDPMTrainConfig, ns))
        else:
            pretrain.train_classifier(parse_into(pretrain.ClassifierTrainConfig, ns))
    elif ns.command == "sample":
        cmd_sample(ns)
    elif ns.command == "demo":
        from papa_env.demo import run_demo

        run_demo(out=ns.out, seed=ns.seed, preset=ns.preset, budget=ns.budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
