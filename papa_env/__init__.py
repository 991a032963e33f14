"""papa-env: online personalized preference alignment of diffusion models.

``gym.make("PAPA-MNIST-v0")`` works after ``import papa_env`` (see :mod:`papa_env.registration`).
Start with :func:`load_pretrained` (the shipped base DDPMs and classifiers, offline) and
:func:`papa_env.diffusion.sample`; datasets come from :func:`papa_env.data.load_dataset`.
"""

from papa_env.data import load_dataset
from papa_env.diffusion import sample
from papa_env.models import PRETRAINED, load_pretrained, make_scheduler, make_unet
from papa_env.registration import ENV_IDS, register_envs

register_envs()

__version__ = "0.1.0"

__all__ = [
    "ENV_IDS",
    "PRETRAINED",
    "load_dataset",
    "load_pretrained",
    "make_scheduler",
    "make_unet",
    "sample",
    "__version__",
]
