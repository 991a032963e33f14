"""A run folder: what a session writes, and the only code that reads it back.

    config.json              what the session is: agent and its config, user (with every noise wrapper), env,
                             seed, budget, evaluation settings; a resume with anything else is refused
    replies.jsonl            the reply journal: one line per interaction, appended and fsync'd before the agent
                             learns from it: {"step", "replies", "replies_left", "queries", "sha256"}
    queries/step_NNNN.npz    that interaction's queries, replies and random states (written atomically, before its
                             journal line; ``sha256`` in the line is this file's)
    checkpoint.safetensors   agent, session and env state after the last learned interaction, with how many journal
                             lines it has learned and their digest (:mod:`papa_env.checkpoint`: no pickle)
    metrics.jsonl            the evaluations (rewritten from the checkpoint on resume)
    samples_before.png, samples_after.png, like_rate.png, model.safetensors   written by the session at its ends

A kill at any point leaves a folder that resumes: a journal line cut mid-write is cut back and restored from its
(complete) queries file; a queries file without its line is the interaction's record, and its line is restored.
Anything else that does not add up (lines missing, reordered or edited, a queries file that fails its checksum, a
checkpoint that learned more than the journal holds or fails its own checksum) raises
:class:`~papa_env.errors.RunCorruptedError` naming the file and the line, before anything is learned or written.
Nothing here unpickles: a folder someone sends you cannot run code when resumed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from papa_env.checkpoint import file_sha256, load_state, save_state, write_atomic
from papa_env.errors import RunCorruptedError, RunMismatchError

CONFIG, JOURNAL, CHECKPOINT, METRICS = "config.json", "replies.jsonl", "checkpoint.safetensors", "metrics.jsonl"


def as_json(value: Any) -> Any:
    """``value`` as it reads back from a JSON file (tuples become lists, other objects their ``str``)."""
    return json.loads(json.dumps(value, default=str))


class RunFolder:
    """One session's folder (created if missing). See the module docstring for its files."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"run folder {self.path} is a file; give a folder (it is created if missing)")
        (self.path / "queries").mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------------------------- config
    def check_config(self, config: dict[str, Any], agent_defaults: dict[str, Any] | None = None) -> None:
        """Refuse (:class:`RunMismatchError`, nothing touched) a folder started with other settings than ``config``
        once it holds a reply; a folder without one holds nothing to lose and is started again (:meth:`differences`
        says whether it must be)."""
        diffs = self.differences(config, agent_defaults)
        if diffs and self.replied():
            raise RunMismatchError(
                f"{self.path} was started with other settings than this resume ({'; '.join(diffs)}); resume it with "
                "the settings in its config.json, or use a new run folder"
            )

    def differences(self, config: dict[str, Any], agent_defaults: dict[str, Any] | None = None) -> list[str]:
        """How the folder's config.json differs from ``config`` (empty: the same, or no config.json yet).

        Every key is compared. A field of ``config["agent_config"]`` that the saved config lacks (added to the code
        after the folder was started) passes if it holds its default (``agent_defaults``). A config.json that is not
        JSON: :class:`RunCorruptedError`.
        """
        saved = self.saved_config()
        return [] if saved is None else _differences(saved, as_json(config), "", as_json(agent_defaults or {}))

    def saved_config(self) -> dict[str, Any] | None:
        """The folder's config.json (None: none yet); one that is not JSON: :class:`RunCorruptedError`."""
        path = self.path / CONFIG
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise RunCorruptedError(f"{path} is not readable JSON ({err})") from None

    def write_config(self, config: dict[str, Any]) -> None:
        write_atomic(self.path / CONFIG, (json.dumps(as_json(config), indent=2) + "\n").encode())

    def started(self) -> bool:
        """Whether a session has been started here (a checkpoint or a journal exists)."""
        return (self.path / CHECKPOINT).exists() or (self.path / JOURNAL).exists()

    def replied(self) -> bool:
        """Whether a user's reply has been persisted here (a journal line, or a queries file: written before it)."""
        journal = self.path / JOURNAL
        return (journal.exists() and journal.stat().st_size > 0) or any((self.path / "queries").glob("*.npz"))

    # ------------------------------------------------------------------------------------------ journal
    def append(
        self, step: int, queries: np.ndarray, replies: np.ndarray, replies_left: int, arrays: dict[str, np.ndarray]
    ) -> None:
        """Persist interaction ``step``: its queries file (atomically), then its journal line (fsync'd)."""
        name = f"queries/step_{step:04d}.npz"
        buf = io.BytesIO()
        np.savez(buf, step=np.int64(step), queries=queries, replies=replies, replies_left=np.int64(replies_left),
                 **arrays)  # fmt: skip
        data = buf.getvalue()
        write_atomic(self.path / name, data)
        line = {
            "step": step,
            "replies": np.asarray(replies).tolist(),
            "replies_left": int(replies_left),
            "queries": name,
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        self._append_line(JOURNAL, json.dumps(line) + "\n")

    def _append_line(self, name: str, text: str) -> None:
        """Append ``text`` (one line) to the file ``name`` and fsync it."""
        with (self.path / name).open("ab") as f:
            f.write(text.encode())
            f.flush()
            os.fsync(f.fileno())

    def journal(self) -> list[dict[str, Any]]:
        """The verified journal lines, in order; reads only (see :meth:`repair_journal`).

        An interaction whose queries file is complete but whose line is missing or was cut mid-write (a kill between
        or during the two writes) is included, its line rebuilt from the file and marked ``"restored": True``.
        """
        path = self.path / JOURNAL
        raw = path.read_bytes() if path.exists() else b""
        complete = raw.rpartition(b"\n")[0]
        lines = []
        for number, text in enumerate(complete.split(b"\n") if complete else [], 1):
            try:
                line = json.loads(text)
                step, replies, name, digest = line["step"], line["replies"], line["queries"], line["sha256"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise RunCorruptedError(f"{path}:{number} is not a journal line ({err!r})") from None
            if step != number or name != f"queries/step_{number:04d}.npz" or not isinstance(replies, list):
                raise RunCorruptedError(
                    f"{path}:{number} records step {step!r} ({name!r}); expected step {number}: lines are missing, "
                    "reordered or edited"
                )
            self._check_queries_file(path, number, name, digest)
            lines.append(line)
        files = sorted(p.name for p in (self.path / "queries").glob("step_*.npz"))
        known = {f"step_{n:04d}.npz" for n in range(1, len(lines) + 2)}
        extra = [name for name in files if name not in known]
        if extra:
            raise RunCorruptedError(
                f"{path} holds {len(lines)} interactions but queries/ also holds {', '.join(extra[:3])}"
                f"{' ...' if len(extra) > 3 else ''}: the journal was truncated, emptied or deleted"
            )
        orphan = self.path / f"queries/step_{len(lines) + 1:04d}.npz"
        if orphan.exists():
            lines.append(self._line_from_file(orphan, len(lines) + 1))
        return lines

    def repair_journal(self, lines: list[dict[str, Any]]) -> None:
        """Make the file hold exactly ``lines`` (from :meth:`journal`): cut a line left half-written by a kill and
        write the restored ones. Call it only once every check of the folder has passed."""
        path = self.path / JOURNAL
        raw = path.read_bytes() if path.exists() else b""
        keep = raw.rpartition(b"\n")[0] + b"\n" if b"\n" in raw else b""
        restored = [line for line in lines if line.get("restored")]
        if len(keep) == len(raw) and not restored:
            return
        with path.open("r+b" if path.exists() else "wb") as f:
            f.truncate(len(keep))
            f.seek(len(keep))
            for line in restored:
                f.write((json.dumps({k: v for k, v in line.items() if k != "restored"}) + "\n").encode())
                del line["restored"]
            f.flush()
            os.fsync(f.fileno())

    def _check_queries_file(self, journal: Path, number: int, name: str, digest: str) -> None:
        file = self.path / name
        if not file.is_file():
            raise RunCorruptedError(f"{journal}:{number}: its queries file {file} is missing")
        if file_sha256(file) != digest:
            raise RunCorruptedError(f"{journal}:{number}: {file} does not match the checksum the journal recorded")

    def _line_from_file(self, file: Path, step: int) -> dict[str, Any]:
        data = self.load_step_file(file)
        try:
            recorded, replies, left = int(data["step"]), data["replies"].tolist(), int(data["replies_left"])
        except (KeyError, TypeError, ValueError) as err:
            raise RunCorruptedError(f"{file} is not a queries file of this run ({err!r})") from None
        if recorded != step:
            raise RunCorruptedError(f"{file} records step {recorded}, expected {step}")
        name = f"queries/{file.name}"
        return {"step": step, "replies": replies, "replies_left": left, "queries": name, "sha256": file_sha256(file),
                "restored": True}  # fmt: skip

    def load_step(self, line: dict[str, Any]) -> dict[str, np.ndarray]:
        """The arrays persisted with a journal line (checked against its checksum)."""
        file = self.path / line["queries"]
        self._check_queries_file(self.path / JOURNAL, line["step"], line["queries"], line["sha256"])
        data = self.load_step_file(file)
        if "replies" not in data or data["replies"].tolist() != line["replies"]:
            raise RunCorruptedError(f"{self.path / JOURNAL}:{line['step']}: its replies differ from those in {file}")
        return data

    @staticmethod
    def load_step_file(file: Path) -> dict[str, np.ndarray]:
        try:
            with np.load(file, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        except Exception as err:  # noqa: BLE001 (a damaged zip raises many kinds)
            raise RunCorruptedError(f"{file} is not a readable queries file ({err})") from None

    def journal_digest(self, lines: int) -> str:
        """SHA-256 of the journal's first ``lines`` lines (what a checkpoint records having learned)."""
        path = self.path / JOURNAL
        raw = path.read_bytes() if path.exists() else b""
        return hashlib.sha256(b"".join(raw.splitlines(keepends=True)[:lines])).hexdigest()

    # --------------------------------------------------------------------------------------- checkpoint
    def save_checkpoint(self, state: dict[str, Any], learned: int) -> None:
        """``state`` after learning the journal's first ``learned`` lines (recorded with their digest)."""
        save_state({**state, "learned": learned, "journal_sha256": self.journal_digest(learned)}, self.checkpoint)

    def load_checkpoint(self, journal: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The checkpoint, checked against ``journal`` (from :meth:`journal`); None if there is none yet."""
        if not self.checkpoint.exists():
            if (self.path / "checkpoint.pt").exists():
                raise RunCorruptedError(
                    f"{self.path} holds a checkpoint.pt (a pickle, written by papa-env < 0.2); it is not loaded, "
                    "since unpickling a file can run code. Start a new run folder."
                )
            if journal:
                raise RunCorruptedError(
                    f"{self.path} has {len(journal)} journal lines but no {CHECKPOINT}: it was deleted; cannot resume"
                )
            return None
        state = load_state(self.checkpoint)
        learned = state.get("learned")
        if not isinstance(learned, int) or learned < 0:
            raise RunCorruptedError(f"{self.checkpoint} does not say how many replies it learned")
        if len(journal) < learned or self.journal_digest(learned) != state.get("journal_sha256"):
            raise RunCorruptedError(
                f"{self.path / JOURNAL} no longer holds the {learned} interactions {self.checkpoint.name} learned "
                f"from (it has {len(journal)}, or their contents changed): the journal was truncated, emptied or edited"
            )
        return state

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    # ------------------------------------------------------------------------------------------ metrics
    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        write_atomic(self.path / METRICS, "".join(json.dumps(r) + "\n" for r in records).encode())

    def append_metrics(self, record: dict[str, Any]) -> None:
        self._append_line(METRICS, json.dumps(record) + "\n")


def _differences(saved: Any, current: Any, where: str, agent_defaults: dict[str, Any]) -> list[str]:
    """Human-readable differences between two JSON values (``where``: the dotted path so far)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in dict.fromkeys([*current, *saved]):
            path = f"{where}.{key}" if where else key
            if key not in saved and where == "agent_config" and key in agent_defaults:
                was = agent_defaults[key]  # a field added to the code since: must hold its default
            elif key not in saved or key not in current:
                out.append(f"{path}: {saved.get(key, '(missing)')!r} -> {current.get(key, '(missing)')!r}")
                continue
            else:
                was = saved[key]
            out += _differences(was, current[key], path, agent_defaults)
        return out
    return [] if saved == current else [f"{where}: {saved!r} -> {current!r}"]
