"""Fault injection: kills at every phase of a session, damaged run folders, misbehaving users.

    python -m benchmarks.faults              # the shipped MNIST model, EPAPA, 60 replies per session (~20 min)
    python -m benchmarks.faults --quick      # a tiny UNet and fewer kill points (what `make test` runs)

1. **Kills.** A session runs in a child process that SIGKILLs itself at one point (a phase of one interaction:
   sampling, the reply, each write of the queries file and of the journal line, the update, each write of the
   checkpoint, the evaluation and its metrics line, the final files), then the same command resumes it to the end.
   Checked against an uninterrupted run of the same session (1 thread, so bit for bit): every step in the journal
   exactly once with the same replies (0 lost, 0 doubled), the user asked each step once unless the kill came before
   that step's reply reached the disk (then the same question is asked again: the answer never existed on disk),
   ``model.safetensors`` and the final checkpoint's weights byte-identical, the same evaluations.
2. **Damage.** Each of :data:`CORRUPTIONS` applied to a copy of a half-finished run folder: the resume must raise
   ``RunCorruptedError`` and leave every file as it was.
3. **Misbehaving users.** Each of :data:`BROKEN_USERS` as the env's user: ``OracleError`` before any budget is
   spent and before anything is persisted.

Prints a table per group and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

# ------------------------------------------------------------------------------------------------
# damage done to a run folder


def _lines(run: Path) -> list[str]:
    return (run / "replies.jsonl").read_text().splitlines(keepends=True)


def _rewrite(pick: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    """Damage that rewrites the journal as ``pick(its lines)``."""
    return lambda run: (run / "replies.jsonl").write_text("".join(pick(_lines(run))))


def _edit_reply(run: Path) -> None:
    lines = _lines(run)
    line = json.loads(lines[0])
    line["replies"][0] = -line["replies"][0] or 1
    (run / "replies.jsonl").write_text(json.dumps(line) + "\n" + "".join(lines[1:]))


def _checkpoint(data: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """Damage that replaces the checkpoint's bytes by ``data(its bytes)``."""

    def damage(run: Path) -> None:
        path = run / "checkpoint.safetensors"
        path.write_bytes(data(path.read_bytes()))

    return damage


def _zeroed(data: bytes) -> bytes:
    out = bytearray(data)
    out[-8192:-4096] = bytes(4096)
    return bytes(out)


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "journal truncated mid-file": _rewrite(lambda lines: [*lines[:2], lines[2][:30]]),
    "journal emptied": _rewrite(lambda lines: []),
    "journal deleted": lambda run: (run / "replies.jsonl").unlink(),
    "a line removed": _rewrite(lambda lines: [lines[0], *lines[2:]]),
    "two lines swapped": _rewrite(lambda lines: [lines[1], lines[0], *lines[2:]]),
    "a line duplicated": _rewrite(lambda lines: [*lines[:2], *lines[1:]]),
    "a reply edited": _edit_reply,
    "a line not JSON": _rewrite(lambda lines: [lines[0], "{not json\n", *lines[2:]]),
    "a queries file deleted": lambda run: (run / "queries" / "step_0002.npz").unlink(),
    "a queries file replaced": lambda run: shutil.copy(run / "queries/step_0001.npz", run / "queries/step_0002.npz"),
    "checkpoint deleted": lambda run: (run / "checkpoint.safetensors").unlink(),
    "checkpoint truncated": _checkpoint(lambda data: data[:1000]),
    "checkpoint emptied": _checkpoint(lambda data: b""),
    "checkpoint is text": _checkpoint(lambda data: b"a checkpoint, honest\n"),
    "checkpoint zeroed inside": _checkpoint(_zeroed),
    "checkpoint replaced by a pickle": _checkpoint(lambda data: pickle.dumps({"agent": {}})),
    "an old pickle checkpoint.pt": lambda run: (run / "checkpoint.safetensors").rename(run / "checkpoint.pt"),
    "config.json garbled": lambda run: (run / "config.json").write_text("{garbled"),
}
"""Damage to a run folder that has >= 3 interactions, each of which a resume must refuse."""


# ------------------------------------------------------------------------------------------------
# users that answer what the env cannot use


def _bad(kind: str, fn: Callable) -> dict[str, Callable]:
    return {kind: fn}


BROKEN_USERS: dict[str, dict[str, Callable]] = {
    "utility NaN": _bad("utility", lambda x: torch.full((len(x),), float("nan"))),
    "utility +inf": _bad("utility", lambda x: torch.full((len(x),), float("inf"))),
    "utility -inf": _bad("utility", lambda x: torch.full((len(x),), float("-inf"))),
    "utility one NaN": _bad("utility", lambda x: torch.cat([torch.zeros(len(x) - 1), torch.tensor([float("nan")])])),
    "utility (B, 2)": _bad("utility", lambda x: torch.zeros(len(x), 2)),
    "utility (B - 1,)": _bad("utility", lambda x: torch.zeros(len(x) - 1)),
    "utility a scalar": _bad("utility", lambda x: torch.tensor(0.5)),
    "utility strings": _bad("utility", lambda x: ["a"] * len(x)),
    "utility None": _bad("utility", lambda x: None),
    "reply 2": _bad("reply", lambda x: np.full(len(x), 2)),
    "reply 300": _bad("reply", lambda x: np.full(len(x), 300)),
    "reply 0.5": _bad("reply", lambda x: np.full(len(x), 0.5)),
    "reply -2": _bad("reply", lambda x: np.full(len(x), -2)),
    "reply bool": _bad("reply", lambda x: np.ones(len(x), bool)),
    "reply (B, 1)": _bad("reply", lambda x: np.ones((len(x), 1))),
    "reply (B + 1,)": _bad("reply", lambda x: np.ones(len(x) + 1)),
    "reply None": _bad("reply", lambda x: None),
    "reply text": _bad("reply", lambda x: "like"),
    "reply NaN": _bad("reply", lambda x: np.full(len(x), np.nan)),
    "compare (B - 1,)": _bad("compare", lambda x: np.ones(len(x) - 1)),
}
"""Misbehaving plug-in users: which method misbehaves, and what it returns for images x."""


def broken_user(case: str):
    """A plug-in user (likes bright images) whose method ``BROKEN_USERS[case]`` names returns garbage."""
    from papa_env.oracles import Oracle

    (kind, fn), *_ = BROKEN_USERS[case].items()

    class Broken(Oracle):
        threshold, preference = 0.0, "bright"

        def set_preference(self, preference) -> None:
            pass

        def utility(self, images):
            return fn(images) if kind == "utility" else images.mean((1, 2, 3))

        def reply(self, images, rng):
            return fn(images) if kind == "reply" else super().reply(images, rng)

        def compare(self, first, second, rng):
            return fn(first) if kind == "compare" else super().compare(first, second, rng)

    return Broken(), ("pairwise" if kind == "compare" else "binary")


# ------------------------------------------------------------------------------------------------
# the child: one session that kills itself at a point


WINDOW = {"reply", "npz-partial", "npz-before-rename"}
"""Kill points before the step's reply is on disk: the resume asks that step again (the same question)."""

KILLS_FULL: list[list[tuple[str, int]]] = [
    [("initial-eval", 0)], [("initial-ckpt-partial", 0)], [("sample", 1)], [("reply", 1)], [("npz-partial", 1)],
    [("npz-before-rename", 2)], [("npz-written", 2)], [("line-partial", 2)], [("line-written", 3)],
    [("learn-mid", 3)], [("learn-done", 3)], [("ckpt-partial", 4)], [("ckpt-before-rename", 4)],
    [("ckpt-written", 4)], [("eval-mid", 2)], [("metrics-partial", 2)], [("eval-before-ckpt", 4)],
    [("eval-ckpt-partial", 4)], [("grid-partial", 6)], [("eval-ckpt-before-rename", 6)], [("model-partial", 6)],
    [("plot-partial", 6)], [("sample", 6)], [("learn-mid", 5)],
    [("line-partial", 2), ("line-partial", 3)],  # killed twice mid-line: the resume of a resume
    [("learn-mid", 1), ("ckpt-partial", 3), ("eval-mid", 4)],  # three kills in one session
]  # fmt: skip
"""Kill sequences: (point, interaction) each, interaction 0 being the start, before any reply. 29 kills."""

KILLS_QUICK: list[list[tuple[str, int]]] = [
    [("reply", 1)], [("line-partial", 2)], [("learn-mid", 2)], [("ckpt-before-rename", 3)], [("eval-mid", 2)],
    [("model-partial", 4)], [("line-partial", 1), ("npz-written", 3)],
]  # fmt: skip


def _session(quick: bool, model_path: str):
    """The benchmark's session: (env, agent, evaluator). The user errs 10% of the time, so the env's random state
    matters; the EPAPA default (or, quick, a small EPAPA) with its weight average starting early."""
    from dataclasses import replace

    import gymnasium as gym

    import papa_env  # noqa: F401
    from papa_env.agents.papa import PAPA, PRESETS, PAPAConfig
    from papa_env.evaluation import Evaluator
    from papa_env.models import load_model

    env = gym.make("PAPA-MNIST-v0", feedback_budget=40 if quick else 60, mistake_rate=0.1)
    if quick:
        config = PAPAConfig(lr=3e-3, timesteps_per_image=4, updates_per_interaction=2, replay=4, num_sampling_steps=3,
                            k=300, base_queries=3, ema_decay=0.9, ema_start=2)  # fmt: skip
    else:
        config = replace(PRESETS["epapa"], ema_start=4)
    return env, PAPA(load_model(model_path), config), Evaluator(env, n=20 if quick else 50)


class _Killing:
    """An evaluator that dies at a kill point, and otherwise is ``inner``."""

    def __init__(self, inner: Any, die: Callable[[str], None], state: dict) -> None:
        self.inner, self.die, self.state = inner, die, state

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, agent):
        self.die("eval-mid" if self.state["step"] else "initial-eval")
        return self.inner(agent)


def child(run: Path, kill: str | None, at: int, quick: bool, model_path: str) -> None:
    """Run (or resume) the benchmark's session in ``run``, SIGKILLing this process at ``kill`` of interaction
    ``at``. Appends each step the user was asked to ``run/../asks-<run name>.jsonl``."""
    import papa_env.checkpoint as checkpoint
    import papa_env.runfolder as runfolder
    import papa_env.session as session

    torch.set_num_threads(1)
    env, agent, evaluator = _session(quick, model_path)
    state = {"step": 0, "ckpts": 0}

    def die(point: str) -> None:
        if point == kill and state["step"] == at:
            os.kill(os.getpid(), signal.SIGKILL)

    real_step = env.unwrapped.step

    def step(action):
        out = real_step(action)
        state["step"] = env.unwrapped.replies_spent // env.unwrapped.queries_per_step  # this interaction's number
        state["ckpts"] = 0
        with (run.parent / f"asks-{run.name}.jsonl").open("a") as f:
            f.write(json.dumps({"step": state["step"], "replies": out[4]["replies"].tolist()}) + "\n")
        die("reply")
        return out

    env.unwrapped.step = step
    real_write = checkpoint.write_atomic
    kinds = {"model.safetensors": "model", "like_rate.png": "plot", "samples_after.png": "grid"}

    def write_atomic(path, data: bytes) -> None:
        name = Path(path).name
        kind = kinds.get(name, "npz" if name.startswith("step_") else None)
        if name == "checkpoint.safetensors":
            state["ckpts"] += 1
            kind = "initial-ckpt" if state["step"] == 0 else "ckpt" if state["ckpts"] == 1 else "eval-ckpt"
        if kind is not None and state["step"] == at and kill in (f"{kind}-partial", f"{kind}-before-rename"):
            tmp = Path(path).with_name(name + ".tmp")
            tmp.write_bytes(data[: len(data) // 2] if kill.endswith("partial") else data)
            die(kill)
        real_write(path, data)
        if kind is not None:
            die(f"{kind}-written")

    for module in (checkpoint, runfolder, session):
        module.write_atomic = write_atomic
    real_line = runfolder.RunFolder._append_line

    def append_line(self, name: str, text: str) -> None:
        kind = "line" if name == runfolder.JOURNAL else "metrics"
        if kill == f"{kind}-partial" and state["step"] == at:
            with (self.path / name).open("ab") as f:
                f.write(text[: len(text) // 2].encode())
            die(kill)
        real_line(self, name, text)
        die("line-written" if kind == "line" else "eval-before-ckpt")

    runfolder.RunFolder._append_line = append_line
    real_propose, real_learn, real_opt_step = agent.propose, agent.learn, agent.opt.step

    def propose(generator):
        out = real_propose(generator)
        state["step"] = env.unwrapped.replies_spent // env.unwrapped.queries_per_step + 1  # the one being proposed
        die("sample")
        state["step"] -= 1
        return out

    def learn(queries, replies):
        out = real_learn(queries, replies)
        die("learn-done")
        return out

    def opt_step(*args, **kwargs):
        out = real_opt_step(*args, **kwargs)
        die("learn-mid")
        return out

    agent.propose, agent.learn, agent.opt.step = propose, learn, opt_step
    killing = _Killing(evaluator, die, state)
    session.run_session(agent, env, run, eval_every=20, evaluator=killing, seed=0, progress=False)


def _run_child(run: Path, kill: str | None, at: int, quick: bool, model: str) -> int:
    cmd = [sys.executable, "-m", "benchmarks.faults", "--child", str(run), "--kill", kill or "", "--at", str(at),
           "--model", model] + (["--quick"] if quick else [])  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, cwd=Path(__file__).parents[1], capture_output=True, text=True)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.returncode


def _asks(run: Path) -> dict[int, int]:
    path = run.parent / f"asks-{run.name}.jsonl"
    counts: dict[int, int] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        step = json.loads(line)["step"]
        counts[step] = counts.get(step, 0) + 1
    return counts


def _untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("charts/seconds")} for r in records]


def _final(run: Path) -> dict[str, Any]:
    from papa_env.checkpoint import load_state

    lines = [json.loads(x) for x in (run / "replies.jsonl").read_text().splitlines()]
    ck = load_state(run / "checkpoint.safetensors")
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {
        "steps": [line["step"] for line in lines],
        "replies": [line["replies"] for line in lines],
        "model": (run / "model.safetensors").read_bytes(),
        "weights": ck["agent"]["unet"],
        "records": _untimed(ck["records"]),
        "metrics": _untimed(metrics),
    }


def kills(
    root: Path, quick: bool, model: str, sequences: list[list[tuple[str, int]]] | None = None
) -> list[dict[str, Any]]:
    """Every kill sequence of :data:`KILLS_FULL` (or the quick list, or ``sequences``): killed, resumed, compared
    with the reference run."""
    reference = root / "reference"
    _run_child(reference, None, 0, quick, model)
    ref = _final(reference)
    rows = []
    for i, sequence in enumerate(sequences or (KILLS_QUICK if quick else KILLS_FULL)):
        run = root / f"kill{i:02d}"
        t0 = time.perf_counter()
        killed = [_run_child(run, point, at, quick, model) == -signal.SIGKILL for point, at in sequence]
        _run_child(run, None, 0, quick, model)  # the same command again resumes to the end
        got = _final(run)
        twice = sorted(s for s, n in _asks(run).items() if n > 1)
        row = {
            "kills": [f"{point}@{at}" for point, at in sequence],
            "killed": all(killed),
            "lost": sorted(set(ref["steps"]) - set(got["steps"])),
            "doubled": sorted({s for s in got["steps"] if got["steps"].count(s) > 1}),
            "same_replies": got["replies"] == ref["replies"],
            "asked_again": twice,
            "asked_again_expected": twice == sorted(at for point, at in sequence if point in WINDOW),
            "model_identical": got["model"] == ref["model"],
            "weights_identical": all(torch.equal(got["weights"][k], v) for k, v in ref["weights"].items()),
            "same_evaluations": got["records"] == ref["records"] and got["metrics"] == ref["metrics"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        checks = ("killed", "same_replies", "asked_again_expected", "model_identical", "weights_identical",
                  "same_evaluations")  # fmt: skip
        row["ok"] = all(row[c] for c in checks) and not row["lost"] and not row["doubled"]
        rows.append(row)
        print(f"kill {' + '.join(row['kills']):>44}: {'ok' if row['ok'] else 'FAILED ' + json.dumps(row)}", flush=True)
    return rows


def corruptions(root: Path, model: str) -> list[dict[str, Any]]:
    """Each damage on a copy of a quick session killed while sampling its 4th interaction: refused, untouched."""
    from papa_env.errors import RunCorruptedError
    from papa_env.session import run_session

    part = root / "part"
    _run_child(part, "sample", 4, True, model)  # 3 interactions learned and checkpointed
    rows = []
    for case, damage in CORRUPTIONS.items():
        run = root / f"damaged-{len(rows):02d}"
        shutil.copytree(part, run)
        damage(run)
        before = {f.relative_to(run): f.read_bytes() for f in run.rglob("*") if f.is_file()}
        env, agent, evaluator = _session(True, model)
        try:
            run_session(agent, env, run, eval_every=20, evaluator=evaluator, seed=0, progress=False)
            outcome, message = "resumed silently", ""
        except RunCorruptedError as err:
            outcome, message = "refused", str(err)
        after = {f.relative_to(run): f.read_bytes() for f in run.rglob("*") if f.is_file()}
        rows.append({"case": case, "outcome": outcome, "untouched": before == after, "message": message,
                     "ok": outcome == "refused" and before == after})  # fmt: skip
        print(f"damage {case:>32}: {outcome}{'' if before == after else ' (files changed!)'}: {message[:100]}")
    return rows


def users(root: Path) -> list[dict[str, Any]]:
    """Each misbehaving user: refused before any budget is spent or anything persisted."""
    from papa_env.env import PreferenceEnv
    from papa_env.errors import OracleError
    from papa_env.wrappers import ReplyLog

    rows = []
    for case in BROKEN_USERS:
        user, mode = broken_user(case)
        run = root / f"user-{len(rows):02d}"
        env = ReplyLog(PreferenceEnv(user, queries_per_step=4, feedback_budget=8, mode=mode), run)
        env.reset(seed=0)
        try:
            env.step(np.zeros(env.action_space.shape, np.float32))
            outcome, message = "accepted", ""
        except OracleError as err:
            outcome, message = "refused", str(err)
        spent, persisted = env.unwrapped.replies_spent, (run / "replies.jsonl").exists()
        rows.append({"case": case, "outcome": outcome, "spent": spent, "persisted": persisted, "message": message,
                     "ok": outcome == "refused" and spent == 0 and not persisted})  # fmt: skip
        print(f"user {case:>18}: {outcome}, {spent} replies spent: {message[:100]}")
    return rows


def tiny_model(path: Path) -> str:
    """A ~10k-parameter UNet (the tests' fixture), saved: the quick mode's base model."""
    from papa_env.models import make_unet, save_model

    torch.manual_seed(0)
    save_model(make_unet(block_out_channels=(4, 8, 8), norm_num_groups=2, attention_head_dim=4).eval(), path)
    return str(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a tiny UNet, 40-reply sessions and 6 kill points")
    p.add_argument("--out", default="runs/benchmarks/faults.json", help="where to write the results (JSON)")
    p.add_argument("--keep", default=None, help="keep the run folders in this folder (default: a temporary one)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--kill", default="", help=argparse.SUPPRESS)
    p.add_argument("--at", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(Path(a.child), a.kill or None, a.at, a.quick, a.model)
        return {}
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="papa-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tiny = tiny_model(root / "tiny.safetensors")
    if a.quick:
        model = tiny
    else:
        from papa_env.models import pretrained_path

        model = str(pretrained_path("mnist-ddpm"))
    result = {
        "kills": kills(root / "kills", a.quick, model),
        "corruptions": corruptions(root / "damage", tiny),
        "users": users(root / "users"),
    }
    result["summary"] = {
        group: {"cases": len(rows), "ok": sum(r["ok"] for r in rows)} for group, rows in result.items()
    }
    result["seconds"] = round(time.perf_counter() - t0)
    result["machine"] = {"cpus": os.cpu_count(), "torch": torch.__version__, "quick": a.quick}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    k = result["kills"]
    print(f"\nkills: {len(k)} points, {sum(r['ok'] for r in k)} ok; replies lost {sum(len(r['lost']) for r in k)}, "
          f"doubled {sum(len(r['doubled']) for r in k)}; asked again {sum(len(r['asked_again']) for r in k)} "
          f"(all at kills before the reply reached the disk: {all(r['asked_again_expected'] for r in k)}); "
          f"final weights bit-identical {sum(r['weights_identical'] for r in k)}/{len(k)}")  # fmt: skip
    for group in ("corruptions", "users"):
        s = result["summary"][group]
        print(f"{group}: {s['ok']}/{s['cases']} refused cleanly")
    print(f"{result['seconds']} s; written to {out}")
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
