"""papa_env/checkpoint.py: nested state round-trips without pickle; damage and foreign files are refused."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from papa_env.checkpoint import load_state, save_state
from papa_env.errors import RunCorruptedError


def _state() -> dict:
    layer = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(layer.parameters())
    layer(torch.ones(1, 3)).sum().backward()
    opt.step()
    return {
        "empty": torch.zeros(0),
        "flags": torch.tensor([True, False]),
        "opt": opt.state_dict(),  # int keys, tuples (betas), 0-d tensors
        "generator": torch.Generator().manual_seed(3).get_state(),
        "np_rng": np.random.default_rng(0).bit_generator.state,  # ints beyond 64 bits
        "array": np.arange(6).reshape(2, 3),
        "nan": float("nan"),
        "inf": float("-inf"),
        "text": "x",
        "none": None,
        "nested": [{"a": (1, 2.5)}, [torch.ones(2)]],
    }


def test_nested_state_round_trips(tmp_path) -> None:
    state = _state()
    save_state(state, tmp_path / "s.safetensors")
    back = load_state(tmp_path / "s.safetensors")
    assert torch.equal(back["generator"], state["generator"]) and back["np_rng"] == state["np_rng"]
    assert back["opt"]["param_groups"] == state["opt"]["param_groups"]
    assert all(torch.equal(back["opt"]["state"][0][k], v) for k, v in state["opt"]["state"][0].items())
    assert np.array_equal(back["array"], state["array"]) and back["empty"].shape == (0,)
    assert np.isnan(back["nan"]) and back["inf"] == float("-inf") and back["none"] is None
    assert back["nested"][0] == {"a": (1, 2.5)} and torch.equal(back["nested"][1][0], torch.ones(2))


def test_identical_states_give_identical_bytes(tmp_path) -> None:
    save_state(_state(), tmp_path / "a")
    save_state(_state(), tmp_path / "b")
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


class _Evil:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.write_text, (pathlib.Path(_Evil.target), "pwned"))


@pytest.mark.parametrize(
    "damage",
    ["truncated", "empty", "text", "zeroed", "pickle", "flipped"],
)
def test_damaged_or_foreign_files_are_refused_and_run_nothing(tmp_path, damage) -> None:
    path = tmp_path / "s.safetensors"
    save_state({"w": torch.randn(4000)}, path)
    data = bytearray(path.read_bytes())
    _Evil.target = str(tmp_path / "pwned.txt")
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = bytearray()
    elif damage == "text":
        data = bytearray(b"hello, I am a checkpoint\n")
    elif damage == "zeroed":
        data[-8192:-4096] = bytes(4096)
    elif damage == "pickle":
        data = bytearray(pickle.dumps({"agent": _Evil()}))
    elif damage == "flipped":
        data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RunCorruptedError, match=str(path)):
        load_state(path)
    assert not (tmp_path / "pwned.txt").exists()  # the pickle was never unpickled


def test_what_cannot_be_stored_is_said_before_writing(tmp_path) -> None:
    with pytest.raises(TypeError, match="object"):
        save_state({"f": object()}, tmp_path / "s")
    assert not (tmp_path / "s").exists()
