"""The session loop: any :class:`Agent` against any PreferenceEnv, persisted in a run folder, resumable.

Per interaction: ``queries = agent.propose(generator)`` -> ``env.step(queries)`` -> the replies (and the queries)
are persisted in the run folder's journal (:mod:`papa_env.runfolder`) -> only then ``agent.learn(queries,
replies)`` -> checkpoint. A run killed at any point resumes from its folder: a reply that was persisted but not yet
learned from is learned from on resume, never asked for again; nothing is lost or spent twice. Every
``eval_every`` replies (and before the first) an evaluator (:class:`papa_env.evaluation.Evaluator`) scores fresh
samples with privileged access that spends no budget. With ``lookahead`` the next step's queries are proposed while
the user answers this step's and announced to the user (``env.announce``) as soon as the replies are persisted, before
the agent learns from them: a person judges the next round while the agent learns and draws the one after.

This module knows agents only through the :class:`Agent` protocol; it never imports ``papa_env.agents``.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import MISSING, asdict, fields, is_dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from papa_env.checkpoint import write_atomic
from papa_env.errors import RunCorruptedError
from papa_env.evaluation import Evaluator
from papa_env.runfolder import RunFolder


@runtime_checkable
class Agent(Protocol):
    """What the session loop asks of an agent (structural: agents need not inherit from it).

    Optional, looked up with ``getattr``: ``cfg`` (a config dataclass, recorded in the run folder and compared on
    resume), ``proposal_state()`` / ``restore_proposal(state)`` (what ``learn`` needs besides the queries, e.g. the
    sampled trajectories, as numpy arrays persisted with the replies), ``model()`` (the module whose weights the
    run saves at the end) and ``model_metadata()`` (strings saved with them, e.g. how to sample it).
    """

    name: str

    def propose(self, generator: torch.Generator) -> np.ndarray:
        """The next query: the env's action, e.g. (K, 1, 28, 28) float32 in [-1, 1]."""

    def learn(self, queries: np.ndarray, replies: np.ndarray) -> dict[str, float]:
        """Update from the replies (K,) int8 to ``queries``; returns scalar stats (``losses/...``)."""

    def generate(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 1, 28, 28) float32 in [-1, 1] from the current model (for evaluation)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: tensors, numbers, strings, lists and dicts (stored without pickle)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""


def session_config(agent: Agent, env, seed: int, eval_every: int, evaluator: Any) -> dict[str, Any]:
    """What a run folder records about a session, and what a resume must match."""
    base_env = env.unwrapped
    config = {
        "agent": agent.name,
        "env": getattr(env.spec, "id", None),
        "dataset": base_env.dataset,
        "mode": base_env.mode,
        "seed": seed,
        "feedback_budget": base_env.feedback_budget,
        "queries_per_step": base_env.queries_per_step,
        "preference": repr(base_env.oracle.preference),
        "oracle": repr(base_env.oracle),
        "eval_every": eval_every,
        "evaluation": (
            evaluator.settings()
            if hasattr(evaluator, "settings")
            else {"samples": getattr(evaluator, "n", None), "seed": getattr(evaluator, "seed", None)}
        ),
    }
    cfg = getattr(agent, "cfg", None)
    if is_dataclass(cfg):
        config["agent_config"] = asdict(cfg)
    return config


def check_run_folder(agent: Agent, env, run_dir: str | os.PathLike, *, eval_every: int = 50, evaluator: Any = None,
                     seed: int = 0, lookahead: bool = False) -> dict[str, Any]:  # fmt: skip
    """Refuse, before anything runs, what :func:`run_session` with these arguments would refuse on resume: a folder
    started with other settings (:class:`~papa_env.errors.RunMismatchError`) or a config.json that is not JSON
    (:class:`~papa_env.errors.RunCorruptedError`). Returns the config the session records; touches nothing."""
    if eval_every and evaluator is None:
        evaluator = Evaluator(env)
    config = session_config(agent, env, seed, eval_every, evaluator if eval_every else None)
    if lookahead:
        config["lookahead"] = True
    RunFolder(run_dir).check_config(config, _config_defaults(agent))
    return config


def warn_if_other_data(agent: Agent, env) -> None:
    """Warn (a ``UserWarning``; nothing stops) when the agent's model was trained on another data set than the one
    the env's users judge, e.g. the MNIST model against ``PAPA-FashionMNIST-v0``: its likes would be rare and the
    judge's scores meaningless. Silent for a model that does not say (:func:`papa_env.models.trained_on`)."""
    from papa_env.models import trained_on

    model = getattr(agent, "model", None)
    data = trained_on(model()) if callable(model) else None
    if data is not None and data != env.unwrapped.dataset:
        warnings.warn(
            f"{agent.name}'s model was trained on {data!r} but this env's users judge {env.unwrapped.dataset!r} "
            f"images; for this env load_pretrained({env.unwrapped.base_model!r})",
            UserWarning,
            stacklevel=3,
        )


def _config_defaults(agent: Agent) -> dict[str, Any]:
    cfg = getattr(agent, "cfg", None)
    if not is_dataclass(cfg):
        return {}
    return {
        f.name: f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default
        for f in fields(cfg)
    }


def run_session(
    agent: Agent,
    env,
    run_dir: str | os.PathLike | None = None,
    *,
    eval_every: int = 50,
    evaluator: Any = None,
    seed: int = 0,
    progress: bool = True,
    stop_after_steps: int | None = None,
    lookahead: bool = False,
) -> list[dict[str, Any]]:
    """Run ``agent`` for one session (the env's whole feedback budget); returns the evaluation records.

    Args:
        agent: any :class:`Agent`.
        env: a PreferenceEnv (``gym.make(...)``); its budget bounds the session.
        run_dir: folder for the run's files; an existing run there is resumed (with the same settings only, once it
            holds a reply: :class:`~papa_env.errors.RunMismatchError`; one without a reply is started again; a
            damaged folder: :class:`~papa_env.errors.RunCorruptedError`). None: nothing is written.
        eval_every: replies between evaluations (0: no evaluation).
        evaluator: privileged metrics (default :class:`~papa_env.evaluation.Evaluator` when ``eval_every``).
        seed: seeds the env's reset and the agent's query noise.
        progress: tqdm bar over interactions.
        stop_after_steps: stop (as if killed) after this many interactions of this call: for tests.
        lookahead: propose the next step's queries while the user answers this step's (from the model before this
            step's update) and announce them to the user (``env.announce``) once this step's replies are persisted,
            before learning from them: a person judges the next round while the agent learns and draws the one
            after (``papa serve``). The queries are then one update stale. Checkpointed; resumes exactly.
    """
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 0:
        raise ValueError(f"eval_every must be an int >= 0 (0: no evaluation), got {eval_every!r}")
    from papa_env.distributed import Leader, follow, world

    rank, size = world()
    if size > 1:  # one session across torchrun's processes: rank 0 runs it, the others replay its updates
        if not getattr(agent, "distributed", False):
            raise ValueError(f"{agent.name} cannot split its update across processes: run it in one process")
        if rank > 0:
            follow(agent)
            return []
        agent = Leader(agent)
    if eval_every and evaluator is None:
        evaluator = Evaluator(env)
    warn_if_other_data(agent, env)
    try:
        run = _Run(agent, env, RunFolder(run_dir) if run_dir is not None else None, evaluator if eval_every else None)
        run.lookahead = lookahead
        run.start(seed, eval_every)
        run.loop(progress, stop_after_steps)
    finally:
        if size > 1:
            agent.close()
    return run.records


def _window() -> dict[str, Any]:
    """What an evaluation window collects: each interaction's seconds, the last update's stats, the summed compute
    counts and how many updates were learned."""
    return {"samples": [], "learns": [], "stats": {}, "compute": {}, "learned": 0}


class _Run:
    """One session's state and its steps (what :func:`run_session` runs)."""

    def __init__(self, agent: Agent, env, folder: RunFolder | None, evaluator: Any) -> None:
        self.agent, self.env, self.base_env, self.folder, self.evaluator = agent, env, env.unwrapped, folder, evaluator
        self.k = self.base_env.queries_per_step
        self.steps_total = self.base_env.feedback_budget // self.k
        self.eval_every = 0
        self.step, self.records, self.shown = 0, [], _Shown()
        self.lookahead = False
        self.next: dict[str, Any] | None = None  # lookahead: the next step's queries, proposal state and seconds
        self.gen = torch.Generator()
        # what the next evaluation record carries besides its metrics: the last update's stats and reply reward,
        # and the seconds and compute counts of each interaction since the last evaluation (checkpointed: a late
        # evaluation has them)
        self.since_eval: dict[str, Any] = _window()

    def start(self, seed: int, eval_every: int) -> None:
        """Reset, then resume the folder's session or start one (its evaluation before any reply, a checkpoint)."""
        self.eval_every = eval_every
        self.gen.manual_seed(seed)
        self.env.reset(seed=seed)
        if self.folder is not None:
            config = check_run_folder(self.agent, self.env, self.folder.path, eval_every=eval_every,
                                      evaluator=self.evaluator, seed=seed, lookahead=self.lookahead)  # fmt: skip
            diffs = self.folder.differences(config, _config_defaults(self.agent))
            if diffs:  # and no reply yet (check_run_folder refuses it otherwise): nothing to lose, started again
                warnings.warn(f"{self.folder.path} holds no reply yet: started again with these settings "
                              f"({'; '.join(diffs)})", UserWarning, stacklevel=3)  # fmt: skip
            elif self.folder.started():
                self.resume()
            self.folder.write_config(config)
        if self.step == 0 and not self.records:
            if self.folder is not None:
                self.folder.write_metrics([])  # a fresh start: nothing from an attempt killed before its checkpoint
            if self.evaluator is not None:
                metrics, images = self.evaluator(self.agent)
                if hasattr(self.evaluator, "set_base"):
                    self.evaluator.set_base(images)
                    metrics["eval/fd_to_base"] = 0.0
                self.record(metrics, images, {})
            self.checkpoint()  # the state before any reply: a folder with a journal and no checkpoint is damaged
        elif self.step > 0 and self.evaluation_due() and self.records[-1]["replies"] != self.step * self.k:
            self.evaluate()  # killed between the update and its evaluation

    def loop(self, progress: bool, stop_after_steps: int | None) -> None:
        from tqdm.auto import tqdm

        bar = tqdm(total=self.steps_total, initial=self.step, desc=f"{self.agent.name} session", disable=not progress)
        done_here = 0
        while self.step < self.steps_total and (stop_after_steps is None or done_here < stop_after_steps):
            if self.next is not None:  # proposed (and announced) during the previous interaction
                queries, t_sample = self.next["queries"], self.next["seconds"]
                self._restore(self.next["proposal"])
                self.next = None
            else:
                t0 = time.perf_counter()
                queries = self.agent.propose(self.gen)
                t_sample = time.perf_counter() - t0
                if self.lookahead:  # the first round (or the first after a resume): shown before the next is drawn
                    self.env.unwrapped.announce(queries)
            asked_at = self.gen.get_state()  # what the journal line records, as if nothing was proposed since
            self.look_ahead(self.step + 1, announce=False)  # the round after this one, while the user answers it
            _, reward, _, _, info = self.env.step(queries)
            replies = np.asarray(info["replies"], dtype=np.int8)
            self.step += 1
            self.persist(queries, replies, asked_at)  # before the agent sees the replies
            self.shown.add(replies, self.base_env.mode)
            if self.next is not None:
                self.env.unwrapped.announce(self.next["queries"])
            t1 = time.perf_counter()
            stats = self.agent.learn(queries, replies)
            t_learn = time.perf_counter() - t1
            self.since_eval["samples"].append(t_sample)
            self.since_eval["learns"].append(t_learn)
            self.note(float(reward), stats)
            self.checkpoint()
            bar.update(1)
            bar.set_postfix(like=f"{(replies == 1).mean():.2f}", s=f"{t_sample + t_learn:.1f}")
            if self.evaluation_due():
                self.evaluate()
            done_here += 1
        bar.close()
        if self.folder is not None and self.step == self.steps_total:
            _finish(self.folder.path, self.agent, self.records, self.base_env.base_model)

    def look_ahead(self, step: int, announce: bool = True) -> None:
        """With ``lookahead``: propose the queries of the step after ``step`` now, from the model before ``step``'s
        update (the loop does it while the user answers ``step``; a resume after its replies were persisted), and
        announce them, or leave that to the loop once ``step``'s replies are persisted. The proposal state of
        ``step`` is put back for its ``learn``."""
        if not self.lookahead or step >= self.steps_total:
            return
        current = getattr(self.agent, "proposal_state", dict)()
        t0 = time.perf_counter()
        queries = self.agent.propose(self.gen)
        self.next = {
            "queries": np.asarray(queries),
            "proposal": getattr(self.agent, "proposal_state", dict)(),
            "seconds": time.perf_counter() - t0,
        }
        if announce:
            self.env.unwrapped.announce(self.next["queries"])
        self._restore(current)

    def _restore(self, proposal: dict[str, np.ndarray]) -> None:
        restore = getattr(self.agent, "restore_proposal", None)
        if restore is not None and proposal:
            restore(proposal)

    def evaluate(self) -> None:
        """The evaluation after the current interaction's update, with its stats and timing; then a checkpoint."""
        samples, learns = self.since_eval["samples"], self.since_eval["learns"]
        timing = {
            "charts/seconds_sample": float(np.mean(samples)),
            "charts/seconds_learn": float(np.mean(learns)),
            "charts/seconds_per_interaction": float(np.mean(samples) + np.mean(learns)),
        } if samples else {}  # fmt: skip
        learned = self.since_eval.get("learned", 0)  # 0 in a checkpoint from before compute was summed
        compute = {key: v / learned for key, v in self.since_eval.get("compute", {}).items()} if learned else {}
        self.record(*self.evaluator(self.agent), {**self.since_eval["stats"], **compute, **timing})
        self.since_eval = _window()
        self.checkpoint()

    def note(self, reward: float, stats: dict[str, float]) -> None:
        """An interaction's update stats, for the next evaluation's record: the last interaction's losses and charts,
        and its ``compute/*`` counts (optimizer steps, update rows) summed, so the record holds their mean over the
        interactions since the last evaluation."""
        self.since_eval["stats"] = {"charts/reward": reward, **stats}
        compute = self.since_eval.setdefault("compute", {})
        for key, value in stats.items():
            if key.startswith("compute/"):
                compute[key] = compute.get(key, 0.0) + float(value)
        self.since_eval["learned"] = self.since_eval.get("learned", 0) + 1

    def evaluation_due(self) -> bool:
        """Whether an evaluation follows the current interaction's update."""
        return self.evaluator is not None and (
            self.step * self.k % self.eval_every == 0 or self.step == self.steps_total
        )

    def persist(self, queries: np.ndarray, replies: np.ndarray, generator: torch.Tensor) -> None:
        if self.folder is None:
            return
        arrays = {
            "generator": generator.numpy(),
            "env_state": np.array(json.dumps(self.base_env.get_state())),
        }
        proposal = getattr(self.agent, "proposal_state", dict)()
        arrays |= {f"proposal/{key}": v for key, v in proposal.items()}
        self.folder.append(self.step, np.asarray(queries), replies, self.base_env.replies_left, arrays)

    def checkpoint(self) -> None:
        if self.folder is None:
            return
        state = {
            "agent": self.agent.state_dict(),
            "generator": self.gen.get_state(),
            "env": self.base_env.get_state(),
            "records": self.records,
            "since_eval": self.since_eval,
            "evaluator": self.evaluator.state_dict() if hasattr(self.evaluator, "state_dict") else {},
        }
        if self.next is not None:
            state["next"] = {
                "queries": torch.from_numpy(self.next["queries"]),
                "proposal": {key: torch.from_numpy(np.asarray(v)) for key, v in self.next["proposal"].items()},
                "seconds": self.next["seconds"],
            }
        self.folder.save_checkpoint(state, learned=self.step)

    def record(self, metrics: dict[str, Any], images: torch.Tensor, extra: dict[str, Any]) -> None:
        record = {"replies": self.step * self.k, **metrics, **self.shown.metrics(), **extra}
        self.records.append(record)
        if self.folder is not None:
            self.folder.append_metrics(record)
            grid = "before" if self.step == 0 else "after" if self.step == self.steps_total else None
            if grid is not None:
                _save_grid(images[:100], self.folder.path / f"samples_{grid}.png")

    def resume(self) -> None:
        """Restore the folder's state; learn persisted-but-unlearned replies, without asking the user again."""
        folder, mode = self.folder, self.base_env.mode
        lines = folder.journal()
        state = folder.load_checkpoint(lines)
        if state is None:
            return
        try:
            self.agent.load_state_dict(state["agent"])
            self.gen.set_state(state["generator"])
            self.base_env.set_state(state["env"])
            if hasattr(self.evaluator, "load_state_dict"):
                self.evaluator.load_state_dict(state.get("evaluator", {}))
            self.step, self.records = state["learned"], list(state["records"])
            self.since_eval = state["since_eval"]
            if "next" in state:
                nxt = state["next"]
                self.next = {
                    "queries": nxt["queries"].numpy(),
                    "proposal": {key: v.numpy() for key, v in nxt["proposal"].items()},
                    "seconds": float(nxt["seconds"]),
                }
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise RunCorruptedError(f"{folder.checkpoint} does not fit this session's agent or env: {err!r}") from None
        for line in lines[: self.step]:
            self.shown.add(np.asarray(line["replies"]), mode)
        pending = lines[self.step :]
        pending_data = [folder.load_step(line) for line in pending]  # every one checked before any is learned
        folder.repair_journal(lines)
        for line, data in zip(pending, pending_data):
            # the state as it was when the line was persisted; then (lookahead) the next proposal, then the update
            self.gen.set_state(torch.from_numpy(data["generator"]))
            self.base_env.set_state(json.loads(str(data["env_state"])))
            self.step, self.next = line["step"], None
            self._restore({key.removeprefix("proposal/"): v for key, v in data.items() if key.startswith("proposal/")})
            self.look_ahead(self.step)
            stats = self.agent.learn(data["queries"], data["replies"])
            self.note(float(np.mean(data["replies"])), stats)
            self.shown.add(data["replies"], mode)
            self.checkpoint()
        folder.write_metrics(self.records)
        print(
            f"resumed {folder.path} at interaction {self.step} ({self.base_env.replies_spent} replies spent"
            + (f", {len(pending)} persisted reply batch(es) learned on resume)" if pending else ")")
        )


class _Shown:
    """What the user has been shown so far: the in-session like-rate (liked share of every image shown)."""

    def __init__(self) -> None:
        self.likes, self.shown = 0, 0

    def add(self, replies: np.ndarray, mode: str) -> None:
        if mode == "binary":
            self.likes += int((np.asarray(replies) == 1).sum())
            self.shown += len(replies)

    def metrics(self) -> dict[str, float]:
        return {"session/shown_like_rate": self.likes / self.shown} if self.shown else {}


def _save_grid(images: torch.Tensor, path: Path) -> None:
    import io

    from PIL import Image

    from papa_env.viz import grid_array

    buf = io.BytesIO()
    Image.fromarray(grid_array(images, nrow=10, upscale=2)).save(buf, format="PNG")
    write_atomic(path, buf.getvalue())


def _finish(run: Path, agent: Agent, records: list, base_model: str) -> None:
    model = getattr(agent, "model", lambda: None)()
    if model is not None:
        from papa_env.models import save_model

        meta = getattr(agent, "model_metadata", dict)()
        save_model(model, run / "model.safetensors", agent=agent.name, base_model=base_model, **meta)
    if records:
        write_atomic(run / "like_rate.png", like_rate_plot(records, agent.name))


def like_rate_plot(records: list[dict], title: str) -> bytes:
    """PNG bytes of the like-rate (user's and judge's) over a session's evaluations."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    x = [r["replies"] for r in records]
    ax.plot(x, [r["eval/like_rate_oracle"] for r in records], marker="o", label="user (oracle)")
    if "eval/like_rate_judge" in records[0]:
        ax.plot(x, [r["eval/like_rate_judge"] for r in records], marker="s", label="judge")
    ax.set(xlabel="replies", ylabel="like-rate", ylim=(0, 1), title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()
