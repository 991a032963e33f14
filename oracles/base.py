"""The simulated-user protocol and the oracle registry.

An oracle hides a preference and answers three questions about images (B, 1, 28, 28) float32 in [-1, 1]:

* ``utility(images)``: (B,) float32 torch tensor, its continuous taste (higher = liked more). Deterministic.
  This is *privileged*: benchmarks may read it through ``PreferenceEnv.privileged``; agents must not.
* ``reply(images, rng)``: (B,) int8, like = +1, dislike = -1, skip = 0. What the env sends back.
* ``compare(first, second, rng)``: (B,) int8, +1 = first preferred, -1 = second, 0 = tie / no answer.

A rational user likes an image when ``likes(images)`` holds (by default ``utility >= threshold``) and
prefers the image of higher utility. Irrational users are wrappers around any oracle (see
:mod:`papa_env.oracles.noise`). Randomness comes only from the ``rng`` passed in (the env's ``np_random``).

Plug in your own user by subclassing :class:`Oracle` and passing the class (or an instance) to
``gym.make(..., oracle=MyOracle)``, or register a name with :func:`register_oracle`, or expose it to every
program through the entry-point group ``papa_env.oracles`` of your own package. What the env checks of a user's
answers (shape, finite utilities, replies in {-1, 0, +1}) is in :class:`Oracle`'s docstring.
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

    What a subclass must provide (the whole protocol):

    * ``preference`` (abstract property): the current taste, e.g. a tuple of liked classes, a style name, a text.
      It is recorded in run folders (its ``repr``), so it should print the same in every process.
    * ``set_preference(preference)`` (abstract): change the taste; raise ``ValueError`` naming what is allowed
      for an invalid one. The env calls it on **every** ``reset()``: with ``reset(options={"preference": ...})``,
      else with the taste the user had when the env was built. ``gym.make(..., preference=...)`` passes the taste
      to the user's ``__init__`` (for the built-in users: its ``preference`` argument).
    * ``utility(images)`` (abstract): (B, 1, 28, 28) float32 in [-1, 1] -> (B,) **torch** float tensor (a numpy
      array is accepted and converted). Deterministic; finite.

    What it may override: ``threshold`` (a rational user likes ``utility >= threshold``), ``likes``, ``reply``,
    ``compare``. A user class whose ``__init__`` takes ``dataset`` receives the env's dataset name.

    The env checks every answer before it spends budget or anything is persisted, and raises
    :class:`papa_env.errors.OracleError` when a user returns utilities that are not (B,) finite numbers, or replies
    that are not (B,) values in {-1, 0, +1} (int or float; not bool: a ``likes`` array is not a reply).

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

    def checked_utility(self, images: torch.Tensor) -> np.ndarray:
        """:meth:`utility` as a (B,) float64 numpy array, checked: :class:`~papa_env.errors.OracleError` if it is
        not one finite number per image."""
        return check_utility(self.utility(images), len(images), self)

    def likes(self, images: torch.Tensor) -> np.ndarray:
        """(B,) bool: the rational user's verdict. Default: ``utility >= threshold``."""
        return self.checked_utility(images) >= self.threshold

    def reply(self, images: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
        """(B,) int8 replies to single images: +1 like, -1 dislike, 0 skip."""
        return np.where(self.likes(images), 1, -1).astype(np.int8)

    def compare(self, first: torch.Tensor, second: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
        """(B,) int8 replies to pairs: +1 first preferred, -1 second preferred, 0 tie."""
        return np.sign(self.checked_utility(first) - self.checked_utility(second)).astype(np.int8)

    @property
    def unwrapped(self) -> Oracle:
        """The innermost oracle (noise wrappers return their wrapped user's)."""
        return self

    def __repr__(self) -> str:
        """The user's class, taste, threshold and public settings: what a run folder records and compares."""
        params = {"preference": self.preference, "threshold": self.threshold}
        simple = (int, float, str, bool, tuple)
        params |= {k: v for k, v in vars(self).items() if not k.startswith("_") and isinstance(v, simple)}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in params.items())})"


def check_utility(values: Any, n: int, oracle: Any = None) -> np.ndarray:
    """Utilities as a (n,) float64 array; :class:`~papa_env.errors.OracleError` naming ``oracle`` otherwise."""
    from papa_env.errors import OracleError

    who = type(oracle).__name__ if oracle is not None else "the user"
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise OracleError(f"{who}.utility returned {type(values).__name__}, not (B,) numbers: {err}") from None
    if arr.shape != (n,):
        raise OracleError(f"{who}.utility returned shape {arr.shape} for {n} images; expected ({n},)")
    if not np.isfinite(arr).all():
        raise OracleError(f"{who}.utility returned NaN or inf for {int((~np.isfinite(arr)).sum())} of {n} images")
    return arr


def check_replies(values: Any, n: int, oracle: Any = None) -> np.ndarray:
    """Replies as a (n,) int8 array of -1 / 0 / +1; :class:`~papa_env.errors.OracleError` otherwise."""
    from papa_env.errors import OracleError

    who = type(oracle).__name__ if oracle is not None else "the user"
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.dtype == bool:
        raise OracleError(f"{who} replied with booleans; expected +1 (like) / -1 (dislike) / 0 (skip) per image")
    if arr.shape != (n,):
        raise OracleError(f"{who} replied with shape {arr.shape} for {n} queries; expected ({n},)")
    if not np.issubdtype(arr.dtype, np.number) or not np.isin(arr, (-1, 0, 1)).all():
        bad = arr.tolist() if arr.size <= 20 else f"{arr.size} values"
        raise OracleError(f"{who} replied {bad}; every reply must be +1, -1 or 0")
    return arr.astype(np.int8)


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


def oracle_factory(spec: str | type[Oracle] | Callable[..., Oracle]) -> Callable[..., Oracle]:
    """The class (or factory) a name stands for: the registry first, then the ``papa_env.oracles`` entry points."""
    if isinstance(spec, str):
        factory = _REGISTRY.get(spec)
        if factory is None:
            eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
            if not eps:
                raise ValueError(f"unknown oracle {spec!r}; registered: {registered_oracles()}")
            factory = eps[0].load()
        return factory
    if callable(spec) and not isinstance(spec, Oracle):
        return spec
    raise TypeError(f"oracle must be a name, an Oracle subclass or an Oracle instance, got {type(spec).__name__}")


def make_oracle(spec: str | type[Oracle] | Oracle | Callable[..., Oracle], **kwargs: Any) -> Oracle:
    """Build an oracle from a registered name, a class / factory, or return an instance as it is.

    Names are looked up in the registry first, then in the ``papa_env.oracles`` entry-point group.
    """
    if isinstance(spec, Oracle):
        if kwargs:
            raise ValueError(f"oracle kwargs {sorted(kwargs)} given with an oracle instance; pass the class instead")
        return spec
    factory = oracle_factory(spec)
    oracle = factory(**kwargs)
    if not isinstance(oracle, Oracle):
        raise TypeError(f"{spec!r} built a {type(oracle).__name__}, not a papa_env.oracles.Oracle")
    return oracle
