"""PreferenceEnv: one user session with a feedback budget, as a Gymnasium environment."""

from __future__ import annotations

import inspect
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from papa_env.errors import BudgetExhaustedError, InvalidQueryError, OracleError, ResetNeededError
from papa_env.oracles.base import Oracle, check_replies, make_oracle, oracle_factory
from papa_env.oracles.noise import BradleyTerry, Mistakes, Skips, Ties

IMAGE_SHAPE = (1, 28, 28)
DUPLICATE_RMS = 0.1
"""Two images are near-duplicates when their 7x7 average-pooled pixels differ by less than this RMS (on [-1, 1]);
distinct samples of the MNIST base model differ by >= 0.2, the same noise moved by 0.05 sigma by <= 0.08."""
FRAME_COLORS = {1: (40, 170, 60), -1: (210, 40, 40), 0: (150, 150, 150)}
"""render() frame colour per reply: liked green, disliked red, skipped / tie grey."""


class Privileged:
    """Evaluation-only access to the hidden user. Spends no budget. **Agents must not use it.**

    Benchmarks read the user's true taste here (no noise, no skips): e.g. the like-rate of fresh samples.
    Images are (B, 1, 28, 28) float32 in [-1, 1], as numpy arrays or torch tensors.
    """

    def __init__(self, env: PreferenceEnv) -> None:
        self._env = env

    @property
    def oracle(self) -> Oracle:
        """The user, noise wrappers included."""
        return self._env.oracle

    @property
    def preference(self) -> Any:
        return self._env.oracle.preference

    def utility(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """(B,) float32 continuous taste of the user (higher = liked more)."""
        x = _as_tensor(images)
        return self._env.oracle.checked_utility(x).astype(np.float32)

    def likes(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """(B,) bool: would a rational version of this user like each image?"""
        x = _as_tensor(images)
        likes = np.asarray(self._env.oracle.likes(x))
        if likes.shape != (len(x),):
            raise OracleError(
                f"{type(self._env.oracle).__name__}.likes returned shape {likes.shape} for {len(x)} images"
            )
        return likes.astype(bool)

    def like_rate(self, images: np.ndarray | torch.Tensor) -> float:
        """Share of ``images`` the (rational) user likes."""
        return float(self.likes(images).mean())


def _as_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    return x.detach().to(torch.float32).cpu()


class PreferenceEnv(gym.Env):
    """A user with a hidden taste looks at the agent's query images and says what they like.

    ## Description

    One episode is one user session. Each step the agent shows ``queries_per_step`` images (or pairs of
    images) it generated, and the simulated user (an *oracle*, see :mod:`papa_env.oracles`) replies to
    each: like (+1) / dislike (-1) / skip (0), or in pairwise mode first (+1) / second (-1) / tie (0).
    Every reply costs one unit of the session's ``feedback_budget``. The environment knows nothing about
    diffusion: any agent that produces images can use it. The base model the ids are meant for is named
    by ``env.unwrapped.base_model`` (e.g. ``"mnist-ddpm"``, for ``papa_env.load_pretrained``).

    ## Action Space

    ``Box(-1, 1, (K, 1, 28, 28), float32)`` with K = ``queries_per_step``: K query images in [-1, 1].
    Pairwise mode: ``Box(-1, 1, (K, 2, 1, 28, 28), float32)``: K pairs. Any floating dtype is accepted
    (converted to float32); torch tensors too.

    ## Observation Space

    ``Dict(replies=Box(-1, 1, (K,), float32), replies_left=Box(0, budget, (1,), float32))``: this step's
    replies and the budget left (all zeros and the full budget after ``reset``).

    ## Rewards

    ``reward="distinct"`` (default): each image's reply counts once per session, near-duplicates not at all — a
    person does not like the same picture twice. An image whose 7x7 average-pooled pixels are within RMS
    :data:`DUPLICATE_RMS` of an image shown earlier in the session (or earlier in the same step) contributes 0; the
    reward is the sum of the other images' replies over K, in [-1, 1]. So ten copies of one liked image earn 0.1, and
    a policy that shows the same images every step earns nothing after the first. ``reward="mean"``: the mean reply
    of the step. Pairwise mode: the mean reply (+1 first, -1 second). The replies themselves (``info["replies"]``,
    the observation) are never changed; agents that learn from replies (PAPA, DDPO, ...) do not read the reward.

    ## Episode End

    Never terminates; truncated once the feedback budget is spent. Stepping after that raises
    :class:`~papa_env.errors.BudgetExhaustedError`.

    ## Arguments

    * ``oracle``: a registered name (``"classifier"``, ``"style"``, ``"clip"``, or your own), an
      :class:`~papa_env.oracles.Oracle` subclass, or an instance. Extra keyword arguments go to it
      (e.g. ``preference=(0, 2)``, ``clip_model=...``).
    * ``dataset``: ``"mnist"`` or ``"fashion-mnist"``: names the base model and is passed to oracles that
      take a ``dataset`` argument.
    * ``feedback_budget`` (300): replies per session (the authors' 30 interactions x 10 queries);
      a multiple of ``queries_per_step``.
    * ``queries_per_step`` (10): K, images (or pairs) per step.
    * ``mode``: ``"binary"`` (like / dislike) or ``"pairwise"`` (which of two, for D3PO-style agents).
    * ``reward``: ``"distinct"`` or ``"mean"`` (see Rewards).
    * ``render_mode``: ``None`` or ``"rgb_array"``.
    * ``mistake_rate``, ``skip_margin``, ``tie_margin``, ``rationality``: an irrational user, wrapping the
      oracle in :class:`Skips`, :class:`Ties`, :class:`BradleyTerry` and :class:`Mistakes` (B-Pref's order).

    ``reset(options={"preference": ...})`` gives this session's user another taste; a reset without it
    restores the configured one. Evaluation-only access to the user: ``env.unwrapped.privileged``.

    ## Version History

    * v0: initial release. 0.2: the reward counts distinct images (``reward="distinct"``); ``reward="mean"`` is
      the reward of 0.1.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 1}

    def __init__(
        self,
        oracle: str | type[Oracle] | Oracle = "classifier",
        *,
        dataset: Literal["mnist", "fashion-mnist"] = "mnist",
        feedback_budget: int = 300,
        queries_per_step: int = 10,
        mode: Literal["binary", "pairwise"] = "binary",
        reward: Literal["distinct", "mean"] = "distinct",
        render_mode: str | None = None,
        mistake_rate: float = 0.0,
        skip_margin: float | None = None,
        tie_margin: float | None = None,
        rationality: float | None = None,
        **oracle_kwargs: Any,
    ) -> None:
        if dataset not in ("mnist", "fashion-mnist"):
            raise ValueError(f"unknown dataset {dataset!r}; expected 'mnist' or 'fashion-mnist'")
        if (
            isinstance(queries_per_step, bool)
            or not isinstance(queries_per_step, int | np.integer)
            or queries_per_step < 1
        ):
            raise ValueError(f"queries_per_step must be an int >= 1, got {queries_per_step!r}")
        if (
            isinstance(feedback_budget, bool)
            or not isinstance(feedback_budget, int | np.integer)
            or feedback_budget < queries_per_step
        ):
            raise ValueError(
                f"feedback_budget must be an int >= queries_per_step ({queries_per_step}), got {feedback_budget!r}"
            )
        if feedback_budget % queries_per_step:
            raise ValueError(
                f"feedback_budget ({feedback_budget}) must be a multiple of queries_per_step "
                f"({queries_per_step}) so that every step gets all its replies"
            )
        if mode not in ("binary", "pairwise"):
            raise ValueError(f"unknown mode {mode!r}; expected 'binary' or 'pairwise'")
        if reward not in ("distinct", "mean"):
            raise ValueError(f"unknown reward {reward!r}; expected 'distinct' or 'mean'")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")

        self.dataset = dataset
        self.base_model = f"{dataset}-ddpm"
        self.feedback_budget = int(feedback_budget)
        self.queries_per_step = int(queries_per_step)
        self.mode = mode
        self.reward = reward
        self.render_mode = render_mode

        preference = _MISSING
        if not isinstance(oracle, Oracle):
            factory = oracle_factory(oracle)
            if "dataset" not in oracle_kwargs and _accepts(factory, "dataset"):
                oracle_kwargs["dataset"] = dataset
            if "preference" in oracle_kwargs and not _accepts(factory, "preference"):
                preference = oracle_kwargs.pop("preference")  # given to set_preference below
            oracle = factory
        user = make_oracle(oracle, **oracle_kwargs)
        if preference is not _MISSING:
            user.set_preference(preference)
        if skip_margin is not None:
            user = Skips(user, skip_margin)
        if tie_margin is not None:
            user = Ties(user, tie_margin)
        if rationality is not None:
            user = BradleyTerry(user, rationality)
        if mistake_rate:
            user = Mistakes(user, mistake_rate)
        self.oracle = user
        self.default_preference = user.preference
        self.privileged = Privileged(self)

        k = self.queries_per_step
        shape = (k, *IMAGE_SHAPE) if mode == "binary" else (k, 2, *IMAGE_SHAPE)
        self.action_space = spaces.Box(-1.0, 1.0, shape, np.float32)
        self.observation_space = spaces.Dict(
            replies=spaces.Box(-1.0, 1.0, (k,), np.float32),
            replies_left=spaces.Box(0.0, float(self.feedback_budget), (1,), np.float32),
        )
        self.replies_spent = 0
        self._needs_reset = True
        self._shown = np.zeros((0, 49), np.float32)  # 7x7 pooled images shown this session (the distinct reward)
        self._last_queries: np.ndarray | None = None
        self._last_replies: np.ndarray | None = None

    # ----------------------------------------------------------------------------------------------
    @property
    def replies_left(self) -> int:
        return self.feedback_budget - self.replies_spent

    def _obs(self, replies: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "replies": replies.astype(np.float32),
            "replies_left": np.array([self.replies_left], dtype=np.float32),
        }

    def _info(self) -> dict[str, Any]:
        return {
            "preference": self.oracle.preference,
            "replies_left": self.replies_left,
            "replies_spent": self.replies_spent,
        }

    def get_state(self) -> dict[str, Any]:
        """What a resumed session restores (with :meth:`set_state`): replies spent and the random state of the
        user's noise. JSON-able."""
        return {
            "replies_spent": self.replies_spent,
            "np_random": self.np_random.bit_generator.state,
            "needs_reset": self._needs_reset,
            "shown": self._shown.tolist(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`. ValueError if ``state`` does not fit this env (nothing is changed)."""
        try:
            spent, rng, needs_reset = int(state["replies_spent"]), state["np_random"], bool(state["needs_reset"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a PreferenceEnv state (expected the keys of get_state()): {err!r}") from None
        if not 0 <= spent <= self.feedback_budget or spent % self.queries_per_step:
            raise ValueError(f"replies_spent {spent} does not fit a budget of {self.feedback_budget}")
        generator = np.random.Generator(type(self.np_random.bit_generator)())
        try:
            generator.bit_generator.state = rng
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"not a PreferenceEnv state: its np_random state does not fit ({err!r})") from None
        shown = np.asarray(state.get("shown", []), np.float32).reshape(-1, 49)
        self._np_random = generator
        self.replies_spent, self._needs_reset, self._shown = spent, needs_reset, shown

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        preference = options.pop("preference", self.default_preference)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; expected only 'preference'")
        self.oracle.set_preference(preference)  # ValueError for an invalid taste: nothing changes
        self.replies_spent = 0
        self._needs_reset = False
        self._shown = np.zeros((0, 49), np.float32)
        self._last_queries, self._last_replies = None, None
        return self._obs(np.zeros(self.queries_per_step, np.float32)), self._info()

    def validate_action(self, action: Any) -> torch.Tensor:
        """Check an action and return it as a float32 tensor; raises InvalidQueryError (nothing is spent)."""
        expected = f"{self.action_space.shape} floats in [-1, 1]"
        if isinstance(action, torch.Tensor):
            if not action.is_floating_point():
                raise InvalidQueryError(
                    f"action dtype must be floating (float32), got {action.dtype}; expected {expected}"
                )
            action = action.detach().cpu().float().numpy()  # bfloat16 and half have no numpy dtype of their own
        if not isinstance(action, np.ndarray):
            raise InvalidQueryError(
                f"action must be a numpy array or torch tensor, got {type(action).__name__}; expected {expected}"
            )
        if not np.issubdtype(action.dtype, np.floating):
            raise InvalidQueryError(f"action dtype must be floating (float32), got {action.dtype}; expected {expected}")
        if action.shape != self.action_space.shape:
            raise InvalidQueryError(
                f"action shape {action.shape} is wrong; expected {expected}"
                + (" (pairwise mode: K pairs)" if self.mode == "pairwise" else "")
            )
        if not np.isfinite(action).all():
            raise InvalidQueryError(f"action contains NaN or inf; expected {expected}")
        lo, hi = float(action.min()), float(action.max())
        if lo < -1.0 - 1e-5 or hi > 1.0 + 1e-5:
            raise InvalidQueryError(f"action values span [{lo:.4g}, {hi:.4g}], outside [-1, 1]; expected {expected}")
        return torch.from_numpy(np.clip(action, -1.0, 1.0).astype(np.float32, copy=True))

    def step(self, action: Any):
        if self._needs_reset:
            raise ResetNeededError("call reset() before step()")
        if self.replies_left <= 0:
            raise BudgetExhaustedError(f"the feedback budget ({self.feedback_budget} replies) is spent; call reset()")
        images = self.validate_action(action)
        rng_state = self.np_random.bit_generator.state
        try:
            if self.mode == "binary":
                raw = self.oracle.reply(images, self.np_random)
            else:
                raw = self.oracle.compare(images[:, 0], images[:, 1], self.np_random)
            replies = check_replies(raw, self.queries_per_step, self.oracle)
        except OracleError:
            self.np_random.bit_generator.state = rng_state  # nothing spent, nothing drawn
            raise
        self.replies_spent += self.queries_per_step
        self._last_queries, self._last_replies = images.numpy(), replies
        truncated = self.replies_left <= 0
        info = self._info() | {"replies": replies.copy()}
        reward = float(replies.mean())
        if self.mode == "binary" and self.reward == "distinct":
            novel = self._novel(images)
            info["distinct"] = novel
            reward = float((replies * novel).sum() / len(replies))
        return self._obs(replies), reward, False, bool(truncated), info

    def announce(self, action: Any) -> None:
        """Show the user the next step's queries ahead of time, so that a person can start judging them while the
        agent still learns (``run_session(..., lookahead=True)``). Nothing is spent or drawn: the replies come, and
        cost, in :meth:`step` with the same action. A no-op for users without an ``announce`` method."""
        announce = getattr(self.oracle, "announce", None)
        if announce is not None and not self._needs_reset and self.replies_left > 0:
            announce(self.validate_action(action))

    def _novel(self, images: torch.Tensor) -> np.ndarray:
        """(K,) bool: which images are not near-duplicates of one shown before (this session or this step)."""
        pooled = torch.nn.functional.avg_pool2d(images, 4).flatten(1).numpy()
        novel = np.ones(len(pooled), bool)
        for i, p in enumerate(pooled):
            if len(self._shown) and np.sqrt(((self._shown - p) ** 2).mean(1)).min() < DUPLICATE_RMS:
                novel[i] = False
            self._shown = np.concatenate([self._shown, p[None]])
        return novel

    # ----------------------------------------------------------------------------------------------
    def render(self) -> np.ndarray | None:
        """rgb_array: the last queries as a grid, framed green (liked / preferred), red, grey (skip / tie)."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array' to the env")
            return None
        if self._needs_reset:
            raise ResetNeededError("call reset() before render()")
        k = self.queries_per_step
        if self._last_queries is None:
            queries = np.zeros(self.action_space.shape, np.float32) - 1
            replies = np.zeros(k, np.int8)
        else:
            queries, replies = self._last_queries, self._last_replies
        if self.mode == "binary":
            tiles = [_framed(q, FRAME_COLORS[int(r)]) for q, r in zip(queries, replies)]
            per_row = min(k, 5)
        else:
            tiles = []
            for pair, r in zip(queries, replies):
                first, second = (1, -1) if r > 0 else (-1, 1) if r < 0 else (0, 0)
                tiles += [_framed(pair[0], FRAME_COLORS[first]), _framed(pair[1], FRAME_COLORS[second])]
            per_row = 2 * min(k, 4)
        return _tile(tiles, per_row)


def _framed(image: np.ndarray, color: tuple[int, int, int], width: int = 2, zoom: int = 2) -> np.ndarray:
    """(1, H, W) in [-1, 1] -> (zoom H + 2 width, zoom W + 2 width, 3) uint8 with a coloured frame."""
    grey = ((np.clip(image[0], -1, 1) + 1) * 127.5).round().astype(np.uint8)
    grey = grey.repeat(zoom, 0).repeat(zoom, 1)
    h, w = grey.shape
    out = np.empty((h + 2 * width, w + 2 * width, 3), np.uint8)
    out[:] = color
    out[width : width + h, width : width + w] = grey[..., None]
    return out


def _tile(tiles: list[np.ndarray], per_row: int, gap: int = 2) -> np.ndarray:
    th, tw, _ = tiles[0].shape
    rows = -(-len(tiles) // per_row)
    out = np.full((rows * th + (rows + 1) * gap, per_row * tw + (per_row + 1) * gap, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, per_row)
        y, x = gap + r * (th + gap), gap + c * (tw + gap)
        out[y : y + th, x : x + tw] = t
    return out


_MISSING = object()


def _accepts(factory: Any, name: str) -> bool:
    """Whether ``factory`` (an oracle class or function) takes a keyword argument ``name``."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
