"""Simulated users (installed as ``papa_env.oracles``).

See :mod:`papa_env.oracles.base` for the protocol and the registry. Built in: ``"classifier"``
(:class:`ClassifierOracle`), ``"style"`` (:class:`StyleOracle`), ``"clip"`` (:class:`ClipOracle`), and the
irrational-user wrappers :class:`Mistakes`, :class:`Skips`, :class:`Ties`, :class:`BradleyTerry`.
"""

from papa_env.oracles.base import Oracle, make_oracle, register_oracle, registered_oracles
from papa_env.oracles.classifier import DEFAULT_PREFERENCES, ClassifierOracle
from papa_env.oracles.clip_user import ClipOracle
from papa_env.oracles.noise import BradleyTerry, Mistakes, OracleWrapper, Skips, Ties
from papa_env.oracles.style import StyleOracle, style_attributes

__all__ = [
    "DEFAULT_PREFERENCES",
    "BradleyTerry",
    "ClassifierOracle",
    "ClipOracle",
    "Mistakes",
    "Oracle",
    "OracleWrapper",
    "Skips",
    "StyleOracle",
    "Ties",
    "make_oracle",
    "register_oracle",
    "registered_oracles",
    "style_attributes",
]
