"""papa_env/runfolder.py: a kill mid-write resumes; any other damage is refused before anything is touched."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import bright_env

from benchmarks.faults import CORRUPTIONS
from papa_env.agents.papa import PAPA, PAPAConfig
from papa_env.checkpoint import load_state
from papa_env.errors import RunCorruptedError
from papa_env.session import run_session


def _agent(tiny_unet) -> PAPA:
    return PAPA(tiny_unet, PAPAConfig(lr=3e-3, batch_size=10, timesteps_per_image=4, num_sampling_steps=3))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    """A finished 6-interaction session, and the same session stopped after 4 interactions."""
    from conftest import TINY_UNET

    from papa_env.models import make_unet

    torch.manual_seed(0)
    unet = make_unet(**TINY_UNET).eval()
    root = tmp_path_factory.mktemp("runs")
    run_session(_agent(unet), bright_env(60), root / "full", eval_every=0, progress=False)
    run_session(_agent(unet), bright_env(60), root / "part", eval_every=0, progress=False, stop_after_steps=4)
    return {"unet": unet, "full": root / "full", "part": root / "part"}


def _resume(folders, run) -> list:
    return run_session(_agent(folders["unet"]), bright_env(60), run, eval_every=0, progress=False)


def _lines(run) -> list[dict]:
    return [json.loads(x) for x in (run / "replies.jsonl").read_text().splitlines()]


def _copy(folders, tmp_path, which: str = "part"):
    run = tmp_path / "run"
    shutil.copytree(folders[which], run)
    return run


def _snapshot(run) -> dict:
    return {f.relative_to(run): f.read_bytes() for f in run.rglob("*") if f.is_file()}


def _weights(run) -> dict:
    return load_state(run / "checkpoint.safetensors")["agent"]["unet"]


def _same_as_full(folders, run) -> None:
    assert _lines(run) == _lines(folders["full"])
    full = _weights(folders["full"])
    assert all(torch.equal(full[k], v) for k, v in _weights(run).items())


def test_a_kill_while_a_journal_line_was_written_cuts_it_and_restores_it(folders, tmp_path) -> None:
    """The step-5 queries file is on disk, its line only half: the resume keeps the reply, asks nothing twice."""
    run = _copy(folders, tmp_path)
    full_line = (folders["full"] / "replies.jsonl").read_text().splitlines()[4]
    shutil.copy(folders["full"] / "queries" / "step_0005.npz", run / "queries" / "step_0005.npz")
    with (run / "replies.jsonl").open("a") as f:
        f.write(full_line[:40])  # cut mid-line, no newline
    _resume(folders, run)
    _same_as_full(folders, run)
    assert [line["step"] for line in _lines(run)] == [1, 2, 3, 4, 5, 6]


def test_a_queries_file_whose_line_never_got_written_is_the_interactions_record(folders, tmp_path) -> None:
    run = _copy(folders, tmp_path)
    shutil.copy(folders["full"] / "queries" / "step_0005.npz", run / "queries" / "step_0005.npz")
    _resume(folders, run)
    _same_as_full(folders, run)


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_damage_is_refused_with_a_clear_error_before_anything_is_touched(folders, tmp_path, case) -> None:
    """Every damage of the fault benchmark's list, on a folder of 4 learned interactions."""
    run = _copy(folders, tmp_path)
    CORRUPTIONS[case](run)
    before = _snapshot(run)
    with pytest.raises(RunCorruptedError) as err:
        _resume(folders, run)
    print(f"{case}: {err.value}")
    assert str(run) in str(err.value)
    assert _snapshot(run) == before  # nothing written, nothing learned


def test_an_edited_pending_line_is_refused(folders, tmp_path) -> None:
    """A line persisted after the last checkpoint is learned on resume only if it matches its queries file."""
    run = _copy(folders, tmp_path)
    shutil.copy(folders["full"] / "queries" / "step_0005.npz", run / "queries" / "step_0005.npz")
    line = json.loads((folders["full"] / "replies.jsonl").read_text().splitlines()[4])
    line["replies"] = [-r or 1 for r in line["replies"]]
    with (run / "replies.jsonl").open("a") as f:
        f.write(json.dumps(line) + "\n")
    with pytest.raises(RunCorruptedError, match="replies differ"):
        _resume(folders, run)


def test_a_checkpoint_from_another_run_is_refused(folders, tmp_path) -> None:
    run = _copy(folders, tmp_path)
    other = tmp_path / "other"
    run_session(
        _agent(folders["unet"]), bright_env(60), other, eval_every=0, progress=False, seed=1, stop_after_steps=4
    )
    shutil.copy(other / "checkpoint.safetensors", run / "checkpoint.safetensors")
    with pytest.raises(RunCorruptedError, match="no longer holds the 4 interactions"):
        _resume(folders, run)


@pytest.mark.slow
def test_kills_at_several_points_resume_bit_for_bit(tmp_path) -> None:
    """The fault benchmark's kill check on a tiny model: killed in a subprocess, resumed, the same session."""
    from benchmarks import faults

    model = faults.tiny_model(tmp_path / "tiny.safetensors")
    rows = faults.kills(tmp_path, True, model, [[("reply", 1)], [("line-partial", 1), ("learn-mid", 2)]])
    assert all(r["ok"] for r in rows), rows
    assert rows[0]["asked_again"] == [1] and rows[1]["asked_again"] == []  # only the kill before the reply was saved
