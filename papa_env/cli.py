"""The ``papa`` command.

    papa demo                                               the main job (what `make demo` runs): EPAPA aligns
                                                            mnist-ddpm to PAPA-MNIST-v0's user, 300 replies
    papa run --preset epapa --lr 2e-4 --env PAPA-MNIST-v0   one PAPA / EPAPA session, any PAPAConfig field as a flag
    papa serve                                              a local web page: a person is the user (papa_env.serve)
    papa sample --model mnist-ddpm --n 64 --out grid.png    draw a grid from a shipped model or a run's weights
    papa bench --suite held-out --agents epapa --seeds 3    agents compared under one budget (papa_env.harness)
    papa pretrain ddpm --dataset mnist --steps 6000 ...     train / resume a base diffusion model
    papa pretrain classifier --dataset mnist --arch UserCNN train a user's classifier or the judge

Config flags come from the config dataclasses (:class:`papa_env.agents.papa.PAPAConfig`, :mod:`papa_env.pretrain`):
each field's docstring is its ``--help`` line (CleanRL style), one path for every command and benchmark script.
A user error (a bad flag value, a damaged run folder, a missing file) prints one line on stderr and exits with 2,
argparse's convention; set ``PAPA_TRACEBACK=1`` to see the traceback.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import os
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


def _optional(kind: type):
    """An argparse type for ``kind | None``: the word ``None`` gives None."""

    def parse(text: str):
        return None if text == "None" else kind(text)

    parse.__name__ = kind.__name__
    return parse


def add_dataclass_args(
    parser: argparse.ArgumentParser, cls: type, only_given: bool = False, exclude: tuple[str, ...] = ()
) -> None:
    """One ``--flag`` per dataclass field: bools as ``--x/--no-x``, Literals as choices, ``X | None`` accepting None.

    With ``only_given``, a flag not on the command line leaves no attribute (to override a preset's fields only);
    fields in ``exclude`` get no flag.
    """
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        hint = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = argparse.SUPPRESS if only_given else f.default
        help_ = docs.get(f.name, "") + ("" if only_given else f" (default: {f.default!r})")
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_)
        elif origin is typing.Literal:
            parser.add_argument(flag, choices=args, default=default, help=help_)
        elif args and type(None) in args:  # X | None
            kind = next(a for a in args if a is not type(None))
            parser.add_argument(flag, type=_optional(kind), default=default, help=help_ + " (None: off)",
                                metavar=kind.__name__.upper())  # fmt: skip
        else:
            parser.add_argument(flag, type=hint, default=default, help=help_, metavar=hint.__name__.upper())


def parse_into(cls: type, ns: argparse.Namespace, base: Any = None) -> Any:
    """The dataclass from parsed flags; with ``base`` (an instance), only the flags given override it."""
    given = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if f.name in vars(ns)}
    return dataclasses.replace(base, **given) if base is not None else cls(**given)


def parse_preference(text: str) -> Any:
    """``--preference``'s JSON (``papa run``, ``papa serve --bot``), with a message that shows the expected form."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--preference must be JSON, e.g. '[1, 4]' or '\"thin\"'; got {text!r}") from err


def _positive_multiple(name: str, value: int, of: int = 10) -> None:
    if value < of or value % of:
        raise ValueError(
            f"--{name} must be a positive multiple of {of} (the replies of whole interactions), got {value}"
        )


def _out_folder(path: str) -> str:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"--out {path} is a file; give a run folder (it is created if missing)")
    parent = next((q for q in [p, *p.parents] if q.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--out {path}: cannot write in {parent}")
    return path


def build_parser() -> argparse.ArgumentParser:
    from papa_env.agents.papa import PRESETS, PAPAConfig
    from papa_env.pretrain import ClassifierTrainConfig, DDPMTrainConfig

    p = argparse.ArgumentParser(prog="papa", description="papa-env: online preference alignment of diffusion models")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("bench", help="compare agents under one feedback budget: `papa bench --help`", add_help=False)

    def threads(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")

    def device(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--device", default="auto", help="auto (cuda if there is one, else cpu), cpu, cuda, cuda:1")

    d = sub.add_parser("demo", help="the main job: what `make demo` runs (EPAPA aligns the MNIST model)")
    d.add_argument("--out", default="runs/demo", help="run folder (an existing run there is resumed)")
    d.add_argument("--seed", type=int, default=0, help="seed of the session (user noise, queries, updates)")
    d.add_argument("--preset", default="epapa", choices=sorted(PRESETS), help="the PAPA preset")
    d.add_argument("--budget", type=int, default=300, help="replies (a multiple of 10)")
    threads(d)
    device(d)

    r = sub.add_parser(
        "run",
        help="one PAPA / EPAPA session against any env and user, with any config field set",
        description="One session: --preset's config, each flag below overriding one field of it.",
    )
    r.add_argument("--preset", default="epapa", choices=sorted(PRESETS), help="the config the flags start from")
    r.add_argument("--env", default="PAPA-MNIST-v0", help="a registered env id")
    r.add_argument("--preference", default=None, help='the user\'s taste as JSON, e.g. "[0, 3]" or \'"thin"\'')
    r.add_argument("--mistake-rate", type=float, default=0.0, help="share of replies the user flips")
    r.add_argument("--seed", type=int, default=0, help="seed of the session; also the agent config's seed")
    r.add_argument("--budget", type=int, default=300, help="replies (a multiple of 10)")
    r.add_argument("--eval-every", type=int, default=50, help="replies between evaluations")
    r.add_argument("--eval-samples", type=int, default=200, help="fresh samples per evaluation")
    r.add_argument("--out", default=None, help="run folder (default: runs/<preset>-<env>-s<seed>); resumed if there")
    r.add_argument("--log", default=None, help="append the session's summary (one JSON line) to this file")
    r.add_argument("--model", default=None, help="the base model: a shipped name or a .safetensors file (default: "
                   "the env's)")  # fmt: skip
    threads(r)
    device(r)
    cfg = r.add_argument_group("PAPAConfig fields (override the preset's)")
    add_dataclass_args(cfg, PAPAConfig, only_given=True, exclude=("seed",))

    v = sub.add_parser("serve", help="a local web page where a person is the user of a live session")
    v.add_argument("--model", default="mnist-ddpm", help="a shipped base model name or a .safetensors path")
    v.add_argument("--preset", default="epapa", choices=sorted(PRESETS), help="the PAPA preset")
    v.add_argument("--budget", type=int, default=300, help="replies (a multiple of 10)")
    v.add_argument("--out", default="runs/serve", help="run folder (an existing session there is resumed)")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    v.add_argument("--port", type=int, default=8765, help="port (0: any free one)")
    v.add_argument("--seed", type=int, default=0, help="seed of the session; also the agent config's seed")
    v.add_argument("--bot", default=None, help="a simulated user (registered name) answers through the page's API")
    v.add_argument("--preference", default=None, help="the bot's taste as JSON, e.g. '[1, 4]'")
    v.add_argument("--lookahead", action=argparse.BooleanOptionalAction, default=True,
                   help="show the next round while the agent learns (its images one update behind)")  # fmt: skip
    v.add_argument("--filter", action=argparse.BooleanOptionalAction, default=True,
                   help="the agent's samples (the page's 'now' grid; `papa sample` of the run) pass its reward filter: "
                   "generate_candidates=4, generate_strata=10, generate_strata_prior=2, generate_optimism=1 unless "
                   "either of the first two is given (the others given: over it; what is asked is the preset's "
                   "either way)")  # fmt: skip
    threads(v)
    device(v)
    cfg = v.add_argument_group("PAPAConfig fields (override the preset's)")
    add_dataclass_args(cfg, PAPAConfig, only_given=True, exclude=("seed",))

    s = sub.add_parser("sample", help="draw a PNG grid of samples from a base model or a run's weights")
    s.add_argument("--model", default="mnist-ddpm", help="a shipped model name or a .safetensors path")
    s.add_argument("--n", type=int, default=64, help="number of samples")
    s.add_argument("--sampler", choices=("ddim", "ddpm"), default=None,
                   help="default: how the run's agent sampled (its model.safetensors says), else ddim")  # fmt: skip
    s.add_argument("--steps", type=int, default=None, help="denoising steps (default: the run's; 20 ddim, 1000 ddpm)")
    s.add_argument("--base", default=None, help="an EPAPA run's base model, if not the one its file names")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--filter", action=argparse.BooleanOptionalAction, default=True,
                   help="a run whose agent filtered its samples by its reward model (generate_candidates > 1): "
                   "drawn through it, from the run's checkpoint (--no-filter: the weights alone)")  # fmt: skip
    s.add_argument("--out", default="runs/samples.png", help="where to write the PNG grid")
    threads(s)

    pre = sub.add_parser("pretrain", help="train the shipped base models and classifiers")
    pre_sub = pre.add_subparsers(dest="what", required=True)
    ddpm = pre_sub.add_parser("ddpm", help="train or resume a base DDPM", description=DDPMTrainConfig.__doc__)
    add_dataclass_args(ddpm, DDPMTrainConfig)
    clf = pre_sub.add_parser("classifier", help="train a classifier", description=ClassifierTrainConfig.__doc__)
    add_dataclass_args(clf, ClassifierTrainConfig)
    return p


def load_unet(model: str):
    from papa_env.models import PRETRAINED, load_model, load_pretrained

    if model in PRETRAINED:
        return load_pretrained(model)
    if Path(model).suffix == ".safetensors":
        return load_model(model)
    raise ValueError(f"--model must be one of {sorted(PRETRAINED)} or a .safetensors file, got {model!r}")


def sampler_of(model: str, base: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The denoiser ``model`` names and how it is sampled: a shipped model or weights file as it is; a run's
    ``model.safetensors`` the way its agent sampled it (EPAPA: the tuned weights for t >= k over the frozen base,
    which the file names and fingerprints; ``base`` overrides the base's name or file). Returns (denoiser, kwargs of
    :func:`papa_env.diffusion.sample`)."""
    from papa_env.diffusion import SwitchedUNet
    from papa_env.models import PRETRAINED, model_metadata, weights_sha256

    unet = load_unet(model)
    meta = model_metadata(model) if model not in PRETRAINED else {}
    if "k" not in meta:
        return unet, {}
    kwargs = {"sampler": meta["sampler"], "num_steps": int(meta["num_sampling_steps"]), "eta": float(meta["eta"])}
    k = int(meta["k"])
    if k == 0:
        return unet, kwargs
    name = base or meta.get("base_model")
    if not name or "base_sha256" not in meta:
        raise ValueError(f"{model} was tuned with k = {k} (EPAPA) but does not name its base model; pass --base")
    base_unet = load_unet(name)
    if weights_sha256(base_unet) != meta["base_sha256"]:
        raise ValueError(f"{name} is not the base model {model} was tuned from (its weights differ); pass --base")
    return SwitchedUNet(unet, base_unet, k), kwargs


def sample_images(model: str, n: int, seed: int = 0, sampler: str | None = None, steps: int | None = None,
                  base: str | None = None, progress: bool = False, filtered: bool = True):  # fmt: skip
    """``n`` images (n, 1, 28, 28) in [-1, 1] as ``papa sample`` draws them (see :func:`sampler_of`). A run whose
    agent passed its samples through its reward filter (``generate_candidates`` > 1) is drawn through it too, by the
    agent its ``checkpoint.safetensors`` restores (``filtered=False``: the weights alone)."""
    import torch

    from papa_env.diffusion import sample
    from papa_env.models import PRETRAINED, model_metadata

    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    unet, kwargs = sampler_of(model, base)  # the file (and its base) checked first
    meta = model_metadata(model) if model not in PRETRAINED else {}
    if filtered and int(meta.get("generate_candidates", 1)) > 1:
        if sampler is not None or steps is not None:
            raise ValueError("--sampler and --steps draw the weights alone: add --no-filter (the filter samples as the "
                             "agent did)")  # fmt: skip
        agent = _run_agent(Path(model).parent, base or meta.get("base_model"), meta.get("base_sha256"))
        return agent.generate(n, torch.Generator().manual_seed(seed)), dict(agent.sampling)
    if sampler is not None:
        kwargs["sampler"] = sampler
    kwargs.setdefault("sampler", "ddim")
    if steps is not None or "num_steps" not in kwargs:
        kwargs["num_steps"] = steps or (20 if kwargs["sampler"] == "ddim" else 1000)
    images = sample(unet, n, generator=torch.Generator().manual_seed(seed), progress=progress, **kwargs)
    return images, kwargs


def _run_agent(folder: Path, base: str | None, base_sha256: str | None) -> Any:
    """The agent of the run in ``folder`` as its checkpoint left it (its replies included), on the base ``base``."""
    from papa_env.agents.papa import PAPA, PAPAConfig
    from papa_env.checkpoint import load_state
    from papa_env.models import weights_sha256
    from papa_env.runfolder import CHECKPOINT, CONFIG

    if not (folder / CHECKPOINT).exists() or not (folder / CONFIG).exists():
        raise ValueError(f"{folder}: its agent passed its samples through its reward filter, which needs the run's "
                         f"{CONFIG} and {CHECKPOINT} beside the model; --no-filter: the weights alone")  # fmt: skip
    if not base:
        raise ValueError(f"{folder}/model.safetensors does not name its base model; pass --base")
    base_unet = load_unet(base)
    if base_sha256 and weights_sha256(base_unet) != base_sha256:
        raise ValueError(f"{base} is not the base model {folder} was tuned from (its weights differ); pass --base")
    config = json.loads((folder / CONFIG).read_text())
    agent = PAPA(base_unet, PAPAConfig(**config["agent_config"]))
    agent.load_state_dict(load_state(folder / CHECKPOINT)["agent"])
    return agent


def cmd_sample(ns: argparse.Namespace) -> Path:
    from papa_env.viz import save_grid

    images, kwargs = sample_images(ns.model, ns.n, ns.seed, ns.sampler, ns.steps, ns.base, True, ns.filter)
    out = save_grid(images, ns.out)
    print(f"wrote {ns.n} samples ({kwargs['sampler']}, {kwargs['num_steps']} steps) to {out}")
    return out


def resolve_device(name: str) -> str:
    """``auto`` -> cuda if torch sees one, else cpu; anything else checked (ValueError for what torch cannot use)."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: torch sees no CUDA device; use --device cpu")
    return name


def cmd_run(ns: argparse.Namespace) -> dict:
    from papa_env import distributed
    from papa_env.agents.papa import PRESETS, PAPAConfig
    from papa_env.demo import run_papa

    _positive_multiple("budget", ns.budget)
    config = parse_into(PAPAConfig, ns, dataclasses.replace(PRESETS[ns.preset], seed=ns.seed))
    env_kwargs: dict[str, Any] = {"mistake_rate": ns.mistake_rate} if ns.mistake_rate else {}
    if ns.preference is not None:
        env_kwargs["preference"] = parse_preference(ns.preference)
    out = _out_folder(ns.out or f"runs/{ns.preset}-{ns.env}-s{ns.seed}")
    device = resolve_device(ns.device)
    rank, _ = distributed.init(device)  # under torchrun: this process's rank (papa_env.distributed)
    unet = load_unet(ns.model) if ns.model else None
    _, summary = run_papa(ns.env, config, out, seed=ns.seed, budget=ns.budget, eval_every=ns.eval_every,
                       eval_samples=ns.eval_samples, env_kwargs=env_kwargs, label=ns.preset, unet=unet,
                       device=device)  # fmt: skip
    if ns.log and rank == 0:
        with open(ns.log, "a") as f:
            f.write(json.dumps(summary) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``papa``: 0 on success, 2 for a user error (one line on stderr)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the harness has its own parser (papa_env.harness)
        from papa_env.harness import main as bench

        bench(argv[1:])
        return 0
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return _dispatch(ns)
    except Exception as err:
        from papa_env.errors import PapaEnvError

        user_error = isinstance(
            err, PapaEnvError | ValueError | FileNotFoundError | NotADirectoryError | PermissionError
        )
        if not user_error or os.environ.get("PAPA_TRACEBACK"):
            raise
        print(f"papa {ns.command}: error: {err}", file=sys.stderr)
        return 2


def _dispatch(ns: argparse.Namespace) -> int:
    if getattr(ns, "threads", None) is not None:
        import torch

        if ns.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {ns.threads}")
        torch.set_num_threads(ns.threads)
    if ns.command == "pretrain":
        from papa_env import pretrain

        if ns.what == "ddpm":
            pretrain.train_ddpm(parse_into(pretrain.DDPMTrainConfig, ns))
        else:
            pretrain.train_classifier(parse_into(pretrain.ClassifierTrainConfig, ns))
    elif ns.command == "sample":
        cmd_sample(ns)
    elif ns.command == "run":
        cmd_run(ns)
    elif ns.command == "serve":
        from papa_env.serve import main as serve

        _positive_multiple("budget", ns.budget)
        serve(ns)
    elif ns.command == "demo":
        from papa_env.demo import run_demo

        _positive_multiple("budget", ns.budget)
        run_demo(out=_out_folder(ns.out), seed=ns.seed, preset=ns.preset, budget=ns.budget,
                 device=resolve_device(ns.device))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
