"""One session across processes with ``torchrun``: the update's rows split across ranks, gradients summed.

    torchrun --nproc_per_node=2 -m papa_env.cli run --preset faithful --budget 30 --out runs/faithful-2proc

``torchrun`` starts N processes; :func:`init` joins them (gloo on CPU, nccl on CUDA). Rank 0 runs the session as
usual: it samples the queries, the user answers each query **once**, and only rank 0 writes the run folder. Every
call of the agent's ``learn`` (and ``load_state_dict``, on resume) is sent to the other ranks first
(:class:`Leader`), which replay it on their copy of the agent (:func:`follow`): all ranks hold the same replies, draw
the same timesteps and noise, and each computes its share of the (query, timestep) rows of every optimizer step
(:func:`shard`). :func:`all_reduce_gradients` then **sums** their gradients, so each step equals the single-process
step (DDP's default would average, changing the step with the number of processes, as the authors' 8-GPU runs
did). Nothing here reads SLURM or CUDA variables: torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` only.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, number of processes) of this session; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init(device: str = "cpu") -> tuple[int, int]:
    """Join the process group torchrun describes in the environment (a no-op outside torchrun or with one process).
    Returns :func:`world`."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
        atexit.register(close)
    return world()


def close() -> None:
    """Leave the process group (a no-op when there is none). :func:`init` registers it to run at exit: a gloo group
    left to the interpreter's teardown can abort the process ("terminate called without an active exception",
    pytorch/pytorch#190489) after its work is done."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int) -> torch.Tensor:
    """The indices of ``n`` rows this rank computes: every size-th, starting at its rank (all of them alone)."""
    rank, size = world()
    return torch.arange(rank, n, size)


def all_reduce_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over the ranks, in place (a rank that computed no row adds zeros)."""
    if world()[1] == 1:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum of each value over the ranks (the partial losses of each rank's rows)."""
    if world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _send(message: tuple) -> None:
    dist.broadcast_object_list([message], src=0)


def _receive() -> tuple:
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Leader:
    """Rank 0's agent: each ``learn`` / ``load_state_dict`` is sent to the other ranks before it runs here."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.name = agent.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.agent, name)

    def propose(self, generator):
        return self.agent.propose(generator)

    def generate(self, n, generator):
        return self.agent.generate(n, generator)

    def learn(self, queries, replies):
        _send(("learn", queries, replies))
        return self.agent.learn(queries, replies)

    def state_dict(self) -> dict[str, Any]:
        return self.agent.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _send(("load", state))
        self.agent.load_state_dict(state)

    def close(self) -> None:
        """Let the other ranks return."""
        _send(("stop",))


def follow(agent: Any) -> int:
    """A rank > 0: replay rank 0's ``learn`` / ``load_state_dict`` calls on ``agent`` until it stops; returns how
    many updates it took part in."""
    learned = 0
    while True:
        message = _receive()
        if message[0] == "stop":
            return learned
        if message[0] == "learn":
            agent.learn(message[1], message[2])
            learned += 1
        elif message[0] == "load":
            agent.load_state_dict(message[1])
