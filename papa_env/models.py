"""The networks papa-env ships: base diffusion UNets and the classifiers behind simulated users.

* Base diffusion models are diffusers ``UNet2DModel``s (unconditional, 28x28x1, epsilon prediction) with a
  ``DDPMScheduler`` (T = 1000, linear betas 1e-4..0.02, as the PAPA authors use).
* Each dataset has two classifiers trained independently: ``UserCNN`` is what a simulated user looks
  through (a small CNN like the PAPA authors'); ``JudgeCNN`` (other architecture, other seed) is used only to
  *evaluate* alignment, so an agent that learns to fool the user's classifier is caught.

Weights are safetensors files in ``papa_env/weights`` whose metadata holds the architecture config, so
:func:`load_pretrained` needs no network and no separate config file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

WEIGHTS_DIR = Path(__file__).parent / "weights"

# --------------------------------------------------------------------------------------------------
# diffusion
# --------------------------------------------------------------------------------------------------

UNET_CONFIG: dict[str, Any] = dict(
    sample_size=28,
    in_channels=1,
    out_channels=1,
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=32,
)
"""Architecture of the shipped base UNets (0.69M parameters; sized for 2 CPU cores)."""

SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_schedule="linear",
    beta_start=1e-4,
    beta_end=0.02,
    prediction_type="epsilon",
    clip_sample=True,
)
"""The PAPA authors' noise schedule: T = 1000 linear betas 1e-4..0.02."""


def make_unet(**overrides: Any):
    """A fresh ``diffusers.UNet2DModel`` with :data:`UNET_CONFIG`, any key overridden."""
    from diffusers import UNet2DModel

    return UNet2DModel(**{**UNET_CONFIG, **overrides})


def make_scheduler(**overrides: Any):
    """A ``diffusers.DDPMScheduler`` with :data:`SCHEDULER_CONFIG`, any key overridden."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**{**SCHEDULER_CONFIG, **overrides})


# --------------------------------------------------------------------------------------------------
# classifiers
# --------------------------------------------------------------------------------------------------


class UserCNN(nn.Module):
    """The simulated user's eyes: a small LeNet-style CNN (two conv layers, two linear layers).

    Input (B, 1, 28, 28) float32 in [-1, 1]; output (B, num_classes) logits.
    """

    def __init__(self, num_classes: int = 10, width: int = 32, dropout: float = 0.25) -> None:
        super().__init__()
        self.config = dict(arch="UserCNN", num_classes=num_classes, width=width, dropout=dropout)
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 7x7
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(2 * w * 7 * 7, 128),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(128, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 128) penultimate features."""
        return self.head[:-2](self.features(images))


class JudgeCNN(nn.Module):
    """The independent judge: a VGG-style CNN with batch norm and global average pooling.

    Deliberately a different architecture from :class:`UserCNN`. Input (B, 1, 28, 28) float32 in
    [-1, 1]; output (B, num_classes) logits; :meth:`embed` gives the (B, 4 * width) features used for the
    Frechet distance.
    """

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.config = dict(arch="JudgeCNN", num_classes=num_classes, width=width)
        w = width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU()]

        self.features = nn.Sequential(
            *block(1, w),
            *block(w, w),
            nn.MaxPool2d(2),  # 14
            *block(w, 2 * w),
            *block(2 * w, 2 * w),
            nn.MaxPool2d(2),  # 7
            *block(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 4 * width) pooled features."""
        return self.features(images)


CLASSIFIERS: dict[str, type[nn.Module]] = {"UserCNN": UserCNN, "JudgeCNN": JudgeCNN}

# --------------------------------------------------------------------------------------------------
# saving and loading
# --------------------------------------------------------------------------------------------------

PRETRAINED: dict[str, str] = {
    "mnist-ddpm": "mnist-ddpm.safetensors",
    "fashion-mnist-ddpm": "fashion-mnist-ddpm.safetensors",
    "mnist-classifier": "mnist-classifier.safetensors",
    "mnist-judge": "mnist-judge.safetensors",
    "fashion-mnist-classifier": "fashion-mnist-classifier.safetensors",
    "fashion-mnist-judge": "fashion-mnist-judge.safetensors",
}
"""Shipped models: name -> file in ``papa_env/weights``."""


def save_model(model: nn.Module, path: str | Path, **extra_metadata: str) -> None:
    """Save ``model``'s weights as safetensors with its architecture config (and ``extra_metadata``) in the metadata.

    Works for ``UNet2DModel`` (diffusers config) and the classifiers here (their ``config`` dict). The metadata is
    one key holding sorted JSON, so the same weights always give the same bytes. Written atomically.
    """
    from safetensors.torch import save

    from papa_env.checkpoint import write_atomic

    if hasattr(model, "register_to_config"):  # a diffusers ModelMixin; its config is a FrozenDict
        config = {"arch": type(model).__name__, **{k: v for k, v in model.config.items() if not k.startswith("_")}}
    else:
        config = dict(model.config)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(config), **{k: str(v) for k, v in extra_metadata.items()}}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(Path(path), save(state, metadata={_META_KEY: json.dumps(meta, sort_keys=True)}))


_META_KEY = "papa_env"


def load_model(path: str | Path) -> nn.Module:
    """Load a file written by :func:`save_model` (eval mode, float32, CPU). The file's other metadata (e.g. the
    data set a base model was trained on) is kept as the model's ``papa_metadata`` (see :func:`trained_on`)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    meta = model_metadata(path)
    if "config" not in meta:
        raise ValueError(f"{path} has no 'config' metadata; was it written by papa_env.models.save_model?")
    config = json.loads(meta["config"])
    arch = config.pop("arch")
    if arch == "UNet2DModel":
        from diffusers import UNet2DModel

        model = UNet2DModel.from_config(config)
    elif arch in CLASSIFIERS:
        model = CLASSIFIERS[arch](**config)
    else:
        raise ValueError(f"{path}: unknown architecture {arch!r}")
    model.load_state_dict(load_file(str(path)))
    model.papa_metadata = {k: v for k, v in meta.items() if k != "config"}
    return model.eval()


def trained_on(model: nn.Module) -> str | None:
    """The data set a diffusion model loaded by :func:`load_model` draws from: its ``dataset`` metadata (a base model
    from ``papa pretrain``), or that of the base model it was tuned from (a session's ``model.safetensors``); None
    when nothing says (a model built in code)."""
    meta = getattr(model, "papa_metadata", None) or {}
    if "dataset" in meta:
        return meta["dataset"]
    base = meta.get("base_model", "")
    return base.removesuffix("-ddpm") if base.endswith("-ddpm") else None


def model_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a weights file written by :func:`save_model` (either of its layouts: one JSON key, or the
    separate keys of the files shipped before 0.2). ValueError if the file is not a safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as err:  # noqa: BLE001 (safetensors raises its own error types)
        raise ValueError(f"{path} is not a readable safetensors weights file ({err})") from None
    if _META_KEY in meta:
        return json.loads(meta[_META_KEY])
    return meta


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's weights (names, dtypes, shapes, bytes, in name order): identifies a base model."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def pretrained_path(name: str) -> Path:
    """Path of a shipped weights file; ValueError for an unknown name, FileNotFoundError if absent."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; expected one of {sorted(PRETRAINED)}")
    path = WEIGHTS_DIR / PRETRAINED[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"{name}: {path} is missing from this install. Reproduce it with the command in "
            f"{path.with_suffix('.md').name} (see papa_env/weights/)."
        )
    return path


def load_pretrained(name: str) -> nn.Module:
    """Load a shipped model by name, offline.

    Args:
        name: one of :data:`PRETRAINED`, e.g. ``"mnist-ddpm"`` (a ``UNet2DModel``) or ``"mnist-judge"``.

    Returns:
        The model in eval mode on the CPU. Pair a ``*-ddpm`` UNet with :func:`make_scheduler`.
    """
    return load_model(pretrained_path(name))
