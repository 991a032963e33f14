"""papa-env: online personalized preference alignment of diffusion models.

``gym.make("PAPA-MNIST-v0")`` works after ``import papa_env``, which registers the env ids (Gymnasium's way: see
:mod:`papa_env.registration`) and imports nothing heavier than gymnasium. Start with :func:`load_pretrained`
(the shipped base DDPMs and classifiers, offline) and :func:`sample`; datasets come from :func:`load_dataset`.
These load on first use.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from papa_env.registration import ENV_IDS, NOISE_ENV_IDS, register_envs

register_envs()


def _one_thread_after_fork() -> None:
    """A forked child (gymnasium's async vector envs, multiprocessing's default on Linux) cannot use the OpenMP
    thread pool torch started in its parent: it would wait forever for threads that were not forked. One intra-op
    thread per child avoids the pool (and several children on few cores run faster so)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_one_thread_after_fork)

__version__ = "0.2.0"

_LAZY = {
    "load_dataset": "papa_env.data",
    "sample": "papa_env.diffusion",
    "PRETRAINED": "papa_env.models",
    "load_pretrained": "papa_env.models",
    "make_scheduler": "papa_env.models",
    "make_unet": "papa_env.models",
    "PreferenceEnv": "papa_env.env",
    "run_session": "papa_env.session",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'papa_env' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["ENV_IDS", "NOISE_ENV_IDS", "__version__", *_LAZY]
