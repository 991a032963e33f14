"""papa-env's errors: each is also the built-in a caller would expect (ValueError, RuntimeError, ...)."""

from __future__ import annotations

from gymnasium.error import InvalidAction, ResetNeeded


class PapaEnvError(Exception):
    """Base class of papa-env's own errors."""


class InvalidQueryError(PapaEnvError, InvalidAction, ValueError):
    """An action (the query images) is malformed: wrong shape, dtype, NaN/inf, or values outside [-1, 1].

    Raised before anything is shown to the user: no reply is spent.
    """


class BudgetExhaustedError(PapaEnvError, RuntimeError):
    """``step`` was called after the session's feedback budget was spent; call ``reset()``."""


class ResetNeededError(PapaEnvError, ResetNeeded, RuntimeError):
    """``step`` or ``render`` before the first ``reset()``."""
