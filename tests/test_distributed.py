"""papa_env/distributed.py: one session's update split across torchrun's processes equals the single-process one."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from papa_env.distributed import all_reduce_gradients, all_reduce_sum, close, shard, world
from papa_env.models import load_model, make_unet, save_model

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
SCRIPT = Path(__file__).parent / "scripts" / "dist_update.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_alone_a_process_computes_every_row_and_reduces_nothing() -> None:
    assert world() == (0, 1) and shard(5).tolist() == [0, 1, 2, 3, 4] and all_reduce_sum([1.5]) == [1.5]
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    all_reduce_gradients([p])
    assert p.grad.tolist() == [3.0, 3.0]


def test_close_leaves_the_process_group_and_is_a_no_op_without_one() -> None:
    import torch.distributed as dist

    close()  # none yet: nothing happens
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    assert world() == (0, 1) and dist.is_initialized()
    close()
    assert not dist.is_initialized()
    close()


def _tiny(path: Path) -> str:
    torch.manual_seed(0)
    save_model(make_unet(block_out_channels=(4, 8, 8), norm_num_groups=2, attention_head_dim=4), path)
    return str(path)


@pytest.mark.slow
def test_two_processes_give_the_single_process_update(tmp_path) -> None:
    """PAPA's (k = 0) and EPAPA's (k = 400) full-sum update, rows split over 2 gloo processes, gradients summed."""
    model = _tiny(tmp_path / "tiny.safetensors")
    out = tmp_path / "two"
    done = subprocess.run([*TORCHRUN, str(SCRIPT), model, "0,400", str(out)], env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stderr[-3000:]}"
    spec = importlib.util.spec_from_file_location("dist_update", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for k in (0, 400):
        alone = script.update(model, k).unet
        grads = torch.load(f"{out}-{k}.safetensors.grads", weights_only=True)  # this test's own subprocess wrote it
        for p, g in zip(alone.parameters(), grads):  # summed over the processes: the single-process gradient
            assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-9 + 1e-4 * float(p.grad.abs().max()))
        two, before = load_model(f"{out}-{k}.safetensors"), load_model(model)
        after = alone.state_dict().values()
        moved = [float((a - c).abs().max()) for a, c in zip(after, before.state_dict().values())]
        diffs = [float((a - b).abs().max()) for a, b in zip(after, two.state_dict().values())]
        print(f"k={k}: largest weight change {max(moved):.2e}, largest difference between the two {max(diffs):.2e}")
        assert max(moved) > 1e-4 and max(diffs) < 0.05 * max(moved)  # the same Adam step (tiny gradients)


def _papa_run(model: str, out: Path, budget: int) -> list[str]:
    return [*TORCHRUN, "-m", "papa_env.cli", "run", "--model", model, "--preset", "epapa", "--sampler", "ddim",
            "--num-sampling-steps", "2", "--budget", str(budget), "--eval-every", "0", "--threads", "1",
            "--device", "cpu", "--out", str(out)]  # fmt: skip


def _replies(run: Path) -> list:
    return [json.loads(x)["replies"] for x in (run / "replies.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_distributed_session_killed_and_resumed_loses_nothing(tmp_path) -> None:
    model = _tiny(tmp_path / "tiny.safetensors")
    subprocess.run(_papa_run(model, tmp_path / "straight", 40), check=True, env=ENV, capture_output=True)
    run = tmp_path / "killed"
    proc = subprocess.Popen(_papa_run(model, run, 40), env=ENV, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    end = time.time() + 300
    while time.time() < end and not (run / "replies.jsonl").exists() or len(_replies(run)) < 2:
        time.sleep(0.2)
    # torchrun starts its workers in sessions of their own: kill every process of this run (its folder is unique)
    subprocess.run(["pkill", "-KILL", "-f", str(run)], check=False)
    proc.wait()
    time.sleep(0.5)
    assert 2 <= len(_replies(run)) < 4
    subprocess.run(_papa_run(model, run, 40), check=True, env=ENV, capture_output=True)  # the same command resumes
    assert _replies(run) == _replies(tmp_path / "straight")  # every reply once, the same ones
    a, b = load_model(run / "model.safetensors"), load_model(tmp_path / "straight" / "model.safetensors")
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    shutil.rmtree(run)
