"""The simulated-user protocol and the oracle registry.

An oracle hides a preference and answers three questions about images (B, 1, 28, 28) float32 in [-1, 1]:

* ``utility(images)``: (B,) float32, its continuous taste (higher = liked more). Deterministic. This is
  *privileged*: benchmarks may read it through ``PreferenceEnv.privileged``; agents must not.
* ``reply(images, rng)``: (B,) int8, like = +1, dislike = -1, skip = 0. What the env sends back.
* ``compare(first, second, rng)``: (B,) int8, +1 = first preferred, -1 = second, 0 = tie / no answer.

A rational user likes an image when ``likes(images)`` holds (by default ``utility >= threshold``) and
prefers the image of higher utility. Irrational users are wrappers around any oracle (see
:mod:`papa_env.oracles.noise`). Randomness comes only from the ``rng`` passed in (the env's ``np_random``).

Plug in your own user by subclassing :class:`Oracle` and passing the class (or an instance) to
``gym.make(..., oracle=MyOracle)``, or register a name with :func:`register_oracle`, or expose it to every
program through the entry-point group ``papa_env.oracles`` of your own package.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

import numpy as np
import torch

ENTRY_POINT_GROUP = "papa_env.oracles"


class Oracle(abc.ABC):
    """A simulated user with a hidden preference.

    Subclasses implement :meth:`utility` and :meth:`set_preference`; they may override :meth:`likes`.

    Attributes:
        threshold: utility at and above which a rational user likes an image.
    """

    threshold: float = 0.5

    @property
    @abc.abstractmethod
    def preference(self) -> Any:
        """The current taste (e.g. a tuple of liked classes, an attribute name, a text)."""

    @abc.abstractmethod
    def set_preference(self, preference: Any) -> None:
        """Change the taste. Raises ValueError (naming what is allowed) for an invalid one."""

    @abc.abstractmethod
    def utility(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) float32 in [-1, 1] -> (B,) float32 continuous taste (higher = liked more)."""

    def likes(self, images: torch.Tensor) -> np.ndarray:
        """(B,) bool: the rational user's verdict. Default: ``utility >= threshold``."""
        return self.utility(images).numpy() >= self.threshold

    def reply(self, images: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
        """(B,) int8 replies to single images: +1 like, -1 dislike, 0 skip."""
        return np.where(self.likes(images), 1, -1).astype(np.int8)

    def compare(self, first: torch.Tensor, second: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
        """(B,) int8 replies to pairs: +1 first preferred, -1 second preferred, 0 tie."""
        return np.sign(self.utility(first).numpy() - self.utility(second).numpy()).astype(np.int8)

    @property
    def unwrapped(self) -> Oracle:
        """The innermost oracle (noise wrappers return their wrapped user's)."""
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}(preference={self.preference!r})"


# --------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., Oracle]] = {}


def register_oracle(name: str, factory: Callable[..., Oracle] | None = None):
    """Register an oracle class (or factory) under ``name``; usable as a decorator.

    >>> @register_oracle("my-user")
    ... class MyUser(Oracle): ...
    """

    def deco(f: Callable[..., Oracle]) -> Callable[..., Oracle]:
        if name in _REGISTRY and _REGISTRY[name] is not f:
            raise ValueError(f"an oracle named {name!r} is already registered ({_REGISTRY[name]!r})")
        _REGISTRY[name] = f
        return f

    return deco(factory) if factory is not None else deco


def registered_oracles() -> list[str]:
    """Names usable in ``make_oracle`` / ``gym.make(..., oracle=name)`` (entry points included)."""
    return sorted(set(_REGISTRY) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def make_oracle(spec: str | type[Oracle] | Oracle | Callable[..., Oracle], **kwargs: Any) -> Oracle:
    """Build an oracle from a registered name, a class / factory, or return an instance as it is.

    Names are looked up in the registry first, then in the ``papa_env.oracles`` entry-point group.
    """
    if isinstance(spec, Oracle):
        if kwargs:
            raise ValueError(f"oracle kwargs {sorted(kwargs)} given with an oracle instance; pass the class instead")
        return spec
    if isinstance(spec, str):
        factory = _REGISTRY.get(spec)
        if factory is None:
            eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
            if not eps:
                raise ValueError(f"unknown oracle {spec!r}; registered: {registered_oracles()}")
            factory = eps[0].load()
    elif callable(spec):
        factory = spec
    else:
        raise TypeError(f"oracle must be a name, an Oracle subclass or an Oracle instance, got {type(spec).__name__}")
    oracle = factory(**kwargs)
    if not isinstance(oracle, Oracle):
        raise TypeError(f"{spec!r} built a {type(oracle).__name__}, not a papa_env.oracles.Oracle")
    return oracle
