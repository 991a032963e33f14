"""Shared fixtures: a tiny UNet (diffusers style), the offline dataset root, and a network guard."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from papa_env.models import make_unet

TINY_UNET = dict(
    block_out_channels=(4, 8, 8),
    norm_num_groups=2,
    attention_head_dim=4,
)
"""A ~10k-parameter UNet2DModel at 28x28 with the shipped layout: trains in seconds on a CPU."""


@pytest.fixture
def tiny_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return make_unet(**TINY_UNET).eval()


def _data_root() -> Path | None:
    root = os.environ.get("PAPA_DATA_DIR")
    if root and (Path(root) / "MNIST" / "raw").is_dir() and (Path(root) / "FashionMNIST" / "raw").is_dir():
        return Path(root)
    return None


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The full MNIST / Fashion-MNIST root (PAPA_DATA_DIR); tests that need it skip without it."""
    root = _data_root()
    if root is None:
        pytest.skip("full datasets not available: set PAPA_DATA_DIR to a torchvision-layout root")
    return root


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="session")
def tiny_clip() -> torch.nn.Module:
    """A randomly initialised CLIP (clip.model.CLIP) small enough for CPU tests: no weights needed."""
    pytest.importorskip("clip", reason="the CLIP user needs the clip extra")
    from clip.model import CLIP

    torch.manual_seed(0)
    return CLIP(
        embed_dim=16,
        image_resolution=32,
        vision_layers=1,
        vision_width=64,
        vision_patch_size=8,
        context_length=77,
        vocab_size=49408,
        transformer_width=32,
        transformer_heads=2,
        transformer_layers=1,
    ).eval()


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs ``-n 2``) each worker gets its share of the cores: torch's default of one
    thread per core in every worker would oversubscribe the machine (several times slower on 2 cores)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny UNet saved as a base-model file (``papa run / papa bench --model``): the harness's plumbing at a
    fraction of the shipped model's cost."""
    from papa_env.models import save_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny-ddpm.safetensors"
    save_model(make_unet(**TINY_UNET), path)
    return str(path)
