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


class RunMismatchError(PapaEnvError, ValueError):
    """A run folder is resumed with a different agent, agent config, env, seed or budget than it was started with.

    Raised before anything in the folder is touched: start a new folder, or resume with the settings it names.
    """
