"""A person as the user: replies come from outside the env (``papa serve``'s page, or any caller of ``submit``).

:class:`HumanOracle` makes a person go through the same :class:`~papa_env.env.PreferenceEnv` and
:func:`~papa_env.session.run_session` as a simulated user: ``env.step(queries)`` calls :meth:`HumanOracle.reply`,
which publishes the round (its number and images) and waits until :meth:`HumanOracle.submit` delivers the person's
answer for exactly that round. A person has no utility function, so privileged evaluation is not available:
run such a session with ``eval_every=0``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from papa_env.oracles.base import Oracle, check_replies


class SessionClosed(RuntimeError):
    """The session was closed while a round was waiting for its answer."""


class HumanOracle(Oracle):
    """A person answering each round: like (+1), dislike (-1) or unsure (0) per image, or which of two per pair.

    Args:
        round_of: the number of the round being asked (default: a counter of this oracle's rounds; ``papa serve``
            passes the env's, so that a resumed session keeps its numbering).
    """

    threshold = 0.0

    def __init__(self, round_of: Callable[[], int] | None = None) -> None:
        self._cond = threading.Condition()
        self._counter = 0
        self._round_of = round_of
        self._pending: tuple[int, torch.Tensor] | None = None
        self._answer: np.ndarray | None = None
        self._closed = False

    @property
    def preference(self) -> str:
        return "a person's own taste"

    def set_preference(self, preference: Any) -> None:
        """A person's taste is theirs: nothing to set."""

    def utility(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("a person's taste cannot be measured without asking: run with eval_every=0")

    def pending(self) -> tuple[int, torch.Tensor] | None:
        """The round waiting for an answer (its number and images), or None (none asked, or answered already)."""
        with self._cond:
            return self._pending if self._answer is None else None

    def _open(self, images: torch.Tensor) -> None:
        self._counter += 1
        number = self._round_of() if self._round_of is not None else self._counter
        self._pending, self._answer = (number, images), None
        self._cond.notify_all()

    def announce(self, images: torch.Tensor) -> None:
        """Open the next round for answers before the env asks it (the env's ``announce``): the person judges it
        while the agent learns; :meth:`reply` then returns the answer at once if it has come."""
        with self._cond:
            self._open(images)

    def _ask(self, images: torch.Tensor) -> np.ndarray:
        with self._cond:
            announced = self._pending is not None and torch.equal(self._pending[1], images)
            if not announced:
                self._open(images)
            while self._answer is None and not self._closed:
                self._cond.wait()
            if self._closed:
                self._pending = None
                raise SessionClosed("the session was closed while waiting for an answer")
            answer, self._pending, self._answer = self._answer, None, None
            return answer

    def reply(self, images: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
        return self._ask(images)

    def compare(self, first: torch.Tensor, second: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
        return self._ask(torch.stack([first, second], 1))

    def submit(self, number: int, replies: Any) -> np.ndarray:
        """The person's answer to round ``number``: ValueError (nothing changes) for another round than the one
        waiting, or replies that are not one of -1 / 0 / +1 per query."""
        with self._cond:
            if self._pending is None or self._answer is not None:
                raise ValueError(
                    f"no round is waiting for an answer (round {number} was answered, or is not asked yet)"
                )
            waiting, images = self._pending
            if number != waiting:
                raise ValueError(f"round {number} is not the one waiting for an answer: round {waiting} is")
            if isinstance(replies, list) and any(isinstance(r, bool) or not isinstance(r, int) for r in replies):
                raise ValueError(f"replies must be integers -1, 0 or +1, got {replies!r}")
            answer = check_replies(replies, len(images), self)
            self._answer = answer
            self._cond.notify_all()
            return answer

    def wait_for_round(self, timeout: float | None = None) -> tuple[int, torch.Tensor] | None:
        """Block until a round is waiting (or ``timeout`` seconds pass); returns :meth:`pending`."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending is not None or self._closed, timeout)
            return self._pending

    def close(self) -> None:
        """Stop waiting: a round being asked raises :class:`SessionClosed` in the session's thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __repr__(self) -> str:
        return "HumanOracle()"
