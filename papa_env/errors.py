"""papa-env's errors: each is also the built-in a caller would expect (ValueError, RuntimeError, ...).

Everything here is raised *before* a reply is spent or anything is written, unless its docstring says otherwise.
"""

from __future__ import annotations

from gymnasium.error import InvalidAction, ResetNeeded


class PapaEnvError(Exception):
    """Base class of papa-env's own errors."""


class InvalidQueryError(PapaEnvError, InvalidAction, ValueError):
    """An action (the query images) is malformed: wrong shape, dtype, NaN/inf, or values outside [-1, 1].

    Raised before anything is shown to the user: no reply is spent.
    """


class OracleError(PapaEnvError, ValueError):
    """A user (oracle) answered something the env cannot use: wrong shape, NaN / inf utilities, replies outside
    {-1, 0, +1}. Raised before the step spends any budget or anything is persisted; the oracle is at fault."""


class BudgetExhaustedError(PapaEnvError, RuntimeError):
    """``step`` was called after the session's feedback budget was spent; call ``reset()``."""


class ResetNeededError(PapaEnvError, ResetNeeded, RuntimeError):
    """``step`` or ``render`` before the first ``reset()``."""


class RunMismatchError(PapaEnvError, ValueError):
    """A run folder that holds a reply is resumed with a different agent, agent config, user, env, seed, budget or
    evaluation than it was started with (a folder without a reply is started again with the settings given).

    Raised before anything in the folder is touched: start a new folder, or resume with the settings it names.
    """


class RunCorruptedError(PapaEnvError, ValueError):
    """A run folder (or a checkpoint file) is damaged or not papa-env's: a truncated, reordered or edited reply
    journal, a checkpoint that fails its checksum, a pickle. Raised before anything is learned or written."""
