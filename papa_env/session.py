"""The session loop: any agent against any PreferenceEnv, with persistence, evaluation and resume.

Per interaction: ``queries = agent.propose()`` -> ``env.step(queries)`` -> the replies (and the queries)
are appended to ``runs/<name>/replies.jsonl`` + ``queries/`` and fsync'd -> only then ``agent.learn``
-> checkpoint. A run killed at any point resumes from its folder: a reply that was persisted but not yet
learned from is learned from on resume, never asked for again; nothing is lost or spent twice.

Every ``eval_every`` replies (and before the first), :class:`Evaluator` scores fresh samples with
privileged access that spends no budget (see :class:`papa_env.env.Privileged`).

Files of a run folder: ``config.json``, ``replies.jsonl``, ``queries/step_NNNN.npz``, ``metrics.jsonl``,
``checkpoint.pt``, ``samples_before.png``, ``samples_after.png``, ``like_rate.png``, ``model.safetensors``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import MISSING, asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from papa_env.agents.base import Agent
from papa_env.errors import RunMismatchError
from papa_env.metrics import embed, frechet_distance, judge


class Evaluator:
    """Privileged metrics of an agent's current samples (no budget spent).

    * ``eval/like_rate_oracle``: share of samples the (rational) user likes;
    * ``eval/like_rate_judge``: share the independent judge classifies into a liked class (classifier users);
    * ``eval/class_share/<c>`` and ``eval/max_class_share``: the judge's class shares (collapse check);
    * ``eval/judge_confidence``: mean max-softmax of the judge (sample quality);
    * ``eval/fd_to_base``: Frechet distance, in the judge's features, to the base model's samples.

    Args:
        env: the (possibly wrapped) PreferenceEnv.
        n: samples per evaluation.
        seed: the samples of every evaluation start from the same noise (comparable across time).
    """

    def __init__(self, env, n: int = 200, seed: int = 12345) -> None:
        from papa_env.models import load_pretrained

        self.env = env.unwrapped
        self.n, self.seed = n, seed
        self.judge = load_pretrained(f"{self.env.dataset}-judge")
        self.base_features: np.ndarray | None = None  # judge features of the base model's samples

    def set_base(self, base_samples: torch.Tensor) -> None:
        """The base model's samples (B, 1, 28, 28) in [-1, 1]: the reference of ``eval/fd_to_base``."""
        self.base_features = embed(self.judge, base_samples)

    def __call__(self, agent: Agent) -> tuple[dict[str, float], torch.Tensor]:
        images = agent.generate(self.n, torch.Generator().manual_seed(self.seed))
        rep = judge(self.judge, images)
        out = {
            "eval/like_rate_oracle": self.env.privileged.like_rate(images),
            "eval/judge_confidence": float(rep.confidence.mean()),
            "eval/max_class_share": float(rep.class_shares.max()),
        }
        from papa_env.oracles import ClassifierOracle

        user = self.env.oracle.unwrapped
        if isinstance(user, ClassifierOracle):  # the judge can say "liked" only for a taste made of classes
            liked = torch.tensor(user.preference)
            out["eval/like_rate_judge"] = float(torch.isin(rep.labels, liked).float().mean())
        for c, s in enumerate(rep.class_shares):
            out[f"eval/class_share/{c}"] = float(s)
        if self.base_features is not None:
            out["eval/fd_to_base"] = frechet_distance(embed(self.judge, images), self.base_features)
        return out, images


def collapse_report(records: list[dict], max_share: float = 0.6, tolerance: float = 0.05) -> list[str]:
    """Signs of collapse in a session's evaluations (empty list: none).

    A session collapses when, at any evaluation, one class holds more than ``max_share`` of the samples, or
    the judge's like-rate (the user's, for users without a judge) falls more than ``tolerance`` below the best
    it reached before.
    """
    problems = []
    key = "eval/like_rate_judge" if records and "eval/like_rate_judge" in records[0] else "eval/like_rate_oracle"
    best = -1.0
    for r in records:
        if r.get("eval/max_class_share", 0.0) > max_share:
            problems.append(f"{r['replies']} replies: one class holds {r['eval/max_class_share']:.0%} of samples")
        if r[key] < best - tolerance:
            problems.append(f"{r['replies']} replies: {key} fell to {r[key]:.3f} from {best:.3f}")
        best = max(best, r[key])
    return problems


def _append_line(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill mid-write: its step is redone
            break
    return out


def run_session(
    agent: Agent,
    env,
    run_dir: str | os.PathLike | None = None,
    *,
    eval_every: int = 50,
    evaluator: Evaluator | None = None,
    seed: int = 0,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> list[dict[str, Any]]:
    """Run ``agent`` for one session (the env's whole feedback budget); returns the evaluation records.

    Args:
        agent: any :class:`papa_env.agents.base.Agent`.
        env: a PreferenceEnv (``gym.make(...)``); its budget bounds the session.
        run_dir: folder for the run's files; an existing run there is resumed. None: nothing is written.
        eval_every: replies between evaluations (0: no evaluation).
        evaluator: privileged metrics (default :class:`Evaluator` when ``eval_every``).
        seed: seeds the env's reset and the agent's query noise.
        progress: tqdm bar over interactions.
        stop_after_steps: stop (as if killed) after this many interactions of this call: for tests.
    """
    from tqdm.auto import tqdm

    base_env = env.unwrapped
    k = base_env.queries_per_step
    steps_total = base_env.feedback_budget // k
    run = Path(run_dir) if run_dir is not None else None
    if eval_every and evaluator is None:
        evaluator = Evaluator(env)
    gen = torch.Generator().manual_seed(seed)
    env.reset(seed=seed)
    step, records = 0, []
    if run is not None:
        (run / "queries").mkdir(parents=True, exist_ok=True)
        config = {
            "agent": agent.name,
            "env": getattr(env.spec, "id", None),
            "seed": seed,
            "feedback_budget": base_env.feedback_budget,
            "queries_per_step": k,
            "eval_every": eval_every,
            "preference": repr(base_env.oracle.preference),
            "oracle": repr(base_env.oracle),
        }
        cfg = getattr(agent, "cfg", None)
        if is_dataclass(cfg):
            config["agent_config"] = asdict(cfg)
        config = json.loads(json.dumps(config, default=str))  # as it reads back from config.json
        if (run / "checkpoint.pt").exists() and (run / "config.json").exists():
            _check_same_run(run, json.loads((run / "config.json").read_text()), config, cfg)
        (run / "config.json").write_text(json.dumps(config, indent=2))
        step, records = _resume(run, agent, base_env, gen)

    def evaluation_due(step: int) -> bool:  # after this interaction's update
        return bool(evaluator is not None and eval_every and (step * k % eval_every == 0 or step == steps_total))

    base_features = run / "eval_base_features.npy" if run is not None else None
    if step == 0 and evaluator is not None:
        metrics, images = evaluator(agent)
        evaluator.set_base(images)
        if base_features is not None and getattr(evaluator, "base_features", None) is not None:
            np.save(base_features, evaluator.base_features)
        metrics["eval/fd_to_base"] = 0.0
        records.append(_log_eval(run, 0, metrics, images, "before"))
    elif evaluator is not None and base_features is not None and base_features.exists():
        evaluator.base_features = np.load(base_features)  # resumed: the same reference as before the kill
    if step > 0 and evaluation_due(step):
        if not records or records[-1]["replies"] != step * k:  # killed between the update and its evaluation
            metrics, images = evaluator(agent)
            records.append(_log_eval(run, step * k, metrics, images, "after" if step == steps_total else None))
            if run is not None:
                _checkpoint(run, agent, base_env, gen, step, records)
    bar = tqdm(total=steps_total, initial=step, desc=f"{agent.name} session", disable=not progress)
    done_here = 0
    t_samples, t_learns = [], []  # seconds of each interaction since the last evaluation
    while step < steps_total:
        if stop_after_steps is not None and done_here >= stop_after_steps:
            break
        t0 = time.perf_counter()
        queries = agent.propose(gen)
        t_sample = time.perf_counter() - t0
        _, reward, _, _, info = env.step(queries)
        replies = np.asarray(info["replies"], dtype=np.int8)
        step += 1
        if run is not None:  # persist before use
            np.savez(
                run / "queries" / f"step_{step:04d}.npz",
                queries=queries,
                replies=replies,
                gen_state=gen.get_state().numpy(),
                env_rng=json.dumps(base_env.np_random.bit_generator.state),
                # what learn() needs besides the queries (DDPO / D3PO: the sampled trajectories), for a resume
                **{f"proposal/{key}": v for key, v in agent.proposal_state().items()},
            )
            _append_line(
                run / "replies.jsonl",
                {
                    "step": step,
                    "replies": replies.tolist(),
                    "replies_left": base_env.replies_left,
                    "queries": f"queries/step_{step:04d}.npz",
                },
            )
        t1 = time.perf_counter()
        stats = agent.learn(queries, replies)
        t_learn = time.perf_counter() - t1
        t_samples.append(t_sample)
        t_learns.append(t_learn)
        if run is not None:
            _checkpoint(run, agent, base_env, gen, step, records)
        bar.update(1)
        bar.set_postfix(like=f"{(replies == 1).mean():.2f}", s=f"{t_sample + t_learn:.1f}")
        replies_done = step * k
        if evaluation_due(step):
            metrics, images = evaluator(agent)
            metrics |= {
                "charts/reward": reward,
                "charts/seconds_sample": float(np.mean(t_samples)),
                "charts/seconds_learn": float(np.mean(t_learns)),
                "charts/seconds_per_interaction": float(np.mean(t_samples) + np.mean(t_learns)),
                **{f"{key}": v for key, v in stats.items()},
            }
            t_samples, t_learns = [], []
            records.append(_log_eval(run, replies_done, metrics, images, "after" if step == steps_total else None))
            if run is not None:
                _checkpoint(run, agent, base_env, gen, step, records)
        done_here += 1
    bar.close()
    if run is not None and step == steps_total:
        _finish(run, agent, records)
    return records


def _log_eval(run: Path | None, replies: int, metrics: dict, images: torch.Tensor, grid: str | None) -> dict:
    record = {"replies": replies, **metrics}
    if run is not None:
        _append_line(run / "metrics.jsonl", record)
        if grid is not None:
            from papa_env.viz import save_grid

            save_grid(images[:100], run / f"samples_{grid}.png", nrow=10)
    return record


def _checkpoint(run: Path, agent: Agent, env, gen: torch.Generator, step: int, records: list) -> None:
    tmp = run / "checkpoint.pt.tmp"
    torch.save(
        {
            "step": step,
            "agent": agent.state_dict(),
            "gen_state": gen.get_state(),
            "env_rng": env.np_random.bit_generator.state,
            "replies_spent": env.replies_spent,
            "records": records,
        },
        tmp,
    )
    os.replace(tmp, run / "checkpoint.pt")


def _check_same_run(run: Path, saved: dict, current: dict, cfg: Any) -> None:
    """Raise :class:`RunMismatchError` if ``run`` was started with other settings than it is resumed with.

    A config field the folder does not name (added to the agent after the run started) must hold its default.
    """
    defaults = {
        f.name: f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default
        for f in (fields(cfg) if is_dataclass(cfg) else ())
    }
    diffs = [
        f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
        for key in ("agent", "env", "seed", "feedback_budget", "queries_per_step", "preference")
        if saved.get(key) != current.get(key)
    ]
    old, new = saved.get("agent_config", {}), current.get("agent_config", {})
    for key, value in new.items():
        was = old[key] if key in old else json.loads(json.dumps(defaults.get(key), default=str))
        if was != value:
            diffs.append(f"agent_config.{key}: {was!r} -> {value!r}")
    if diffs:
        raise RunMismatchError(
            f"{run} was started with other settings than this resume ({'; '.join(diffs)}); resume it with the "
            "settings in its config.json, or use a new run folder"
        )


def _resume(run: Path, agent: Agent, env, gen: torch.Generator) -> tuple[int, list]:
    """Restore a run folder's state; learn from a persisted-but-unlearned reply. Returns (step, records)."""
    ckpt_path = run / "checkpoint.pt"
    replies = _read_lines(run / "replies.jsonl")
    if not ckpt_path.exists():
        if replies:
            raise RuntimeError(f"{run} has replies but no checkpoint: cannot resume safely; use a new run folder")
        return 0, []
    ck = torch.load(ckpt_path, weights_only=False)
    agent.load_state_dict(ck["agent"])
    gen.set_state(ck["gen_state"])
    env.np_random.bit_generator.state = ck["env_rng"]
    env.replies_spent = ck["replies_spent"]
    step, records = ck["step"], ck["records"]
    pending = [r for r in replies if r["step"] > step]
    for r in pending:  # persisted, not yet learned: learn now, without asking the user again
        data = np.load(run / r["queries"])
        agent.restore_proposal(
            {key.removeprefix("proposal/"): data[key] for key in data.files if key.startswith("proposal/")}
        )
        agent.learn(data["queries"], data["replies"])
        gen.set_state(torch.from_numpy(data["gen_state"]))
        env.np_random.bit_generator.state = json.loads(str(data["env_rng"]))
        env.replies_spent += len(data["replies"])
        step = r["step"]
        _checkpoint(run, agent, env, gen, step, records)
    print(
        f"resumed {run} at interaction {step} ({env.replies_spent} replies spent"
        + (f", {len(pending)} persisted reply batch learned on resume)" if pending else ")")
    )
    return step, records


def _finish(run: Path, agent: Agent, records: list) -> None:
    model = agent.model()
    if model is not None:
        from papa_env.models import save_model

        save_model(model, run / "model.safetensors", agent=agent.name)
    if records:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        x = [r["replies"] for r in records]
        ax.plot(x, [r["eval/like_rate_oracle"] for r in records], marker="o", label="user (oracle)")
        if "eval/like_rate_judge" in records[0]:
            ax.plot(x, [r["eval/like_rate_judge"] for r in records], marker="s", label="judge")
        ax.set(xlabel="replies", ylabel="like-rate", ylim=(0, 1), title=f"{agent.name}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(run / "like_rate.png", dpi=120)
        plt.close(fig)
