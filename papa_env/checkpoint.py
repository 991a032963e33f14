"""Checkpoints without pickle: nested state (tensors, numbers, strings, lists, dicts) in one safetensors file.

A run folder or a pretraining folder is something people share, so resuming one must never run code from it:
``torch.load(weights_only=False)`` unpickles whatever the file says. Here every tensor goes into a safetensors file
and the structure around them into its metadata as JSON (with tagged values for what JSON lacks: tensors, numpy
arrays, tuples, dicts with non-string keys, NaN / inf). A SHA-256 over the tensors' bytes and the JSON is stored with
them and checked on load, so a truncated, zeroed or edited file is refused with :class:`~papa_env.errors.
RunCorruptedError` instead of loading silently. The metadata is a single key, so identical states give identical
bytes (safetensors writes several metadata keys in a random order).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from papa_env.errors import RunCorruptedError

FORMAT = "papa-env-state/1"
_KEY = "papa_env"  # the one metadata key


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON-able data; tensors and arrays are moved into ``tensors`` under generated names."""
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().cpu().clone().contiguous()
        return {"__tensor__": name}
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError("object arrays cannot be stored without pickle")
        name = f"t{len(tensors)}"
        tensors[name] = torch.from_numpy(np.ascontiguousarray(value).copy())
        return {"__ndarray__": name}
    if isinstance(value, bool | None | str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        value = float(value)
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {"__dict__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    raise TypeError(f"cannot store a {type(value).__name__} in a papa-env checkpoint")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return tensors[value["__ndarray__"]].numpy()
    if "__float__" in value:
        return float(value["__float__"])
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__dict__" in value:
        return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in value["__dict__"]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def _digest(tensors: dict[str, torch.Tensor], structure: str) -> str:
    h = hashlib.sha256(structure.encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_state(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` atomically (a temporary file, fsync'd, then renamed over ``path``)."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    structure = json.dumps(_encode(state, tensors), sort_keys=True, allow_nan=False)
    meta = json.dumps({"format": FORMAT, "sha256": _digest(tensors, structure), "state": structure}, sort_keys=True)
    path = Path(path)
    write_atomic(path, save(tensors, metadata={_KEY: meta}))
    return path


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by :func:`save_state`; :class:`RunCorruptedError` if it is not one, or is damaged."""
    from safetensors.torch import load

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RunCorruptedError(f"{path}: cannot read the checkpoint ({err})") from err
    try:
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"][_KEY])
        tensors = load(data)
    except Exception as err:  # noqa: BLE001 (any parse failure means the same thing to the user)
        raise RunCorruptedError(
            f"{path} is not a valid papa-env checkpoint (truncated, damaged, or another format): {err}"
        ) from None
    if meta.get("format") != FORMAT:
        raise RunCorruptedError(f"{path}: unknown checkpoint format {meta.get('format')!r}; expected {FORMAT!r}")
    if _digest(tensors, meta["state"]) != meta["sha256"]:
        raise RunCorruptedError(f"{path} is damaged: its contents do not match the checksum written with them")
    return _decode(json.loads(meta["state"]), tensors)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """``data`` into ``path`` via a temporary file, fsync'd, then renamed: a kill leaves the old file or the new."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
