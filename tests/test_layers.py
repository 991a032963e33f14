"""The import graph keeps its layers: core -> diffusion math -> agents | session -> apps, benchmarks on top.

Every ``import`` in every module (function-level ones included) is read from the source. Core, diffusion and
session modules never import ``papa_env.agents`` or ``benchmarks``; agents never import the session layer or the
apps; nothing in the package imports ``benchmarks``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
FOLDERS = {
    "papa_env": "papa_env",
    "agents": "papa_env.agents",
    "oracles": "papa_env.oracles",
    "benchmarks": "benchmarks",
}

LAYERS = {
    # core: data, models, the env and its users, persistence
    **{
        f"papa_env.{m}": 0
        for m in (
            "errors",
            "checkpoint",
            "data",
            "models",
            "registration",
            "env",
            "wrappers",
            "metrics",
            "viz",
            "runfolder",
            "distributed",
        )
    },
    "papa_env": 0,
    "papa_env.oracles": 0,
    # the diffusion math every agent shares, and what trains the base models with it
    "papa_env.diffusion": 1,
    "papa_env.noise_env": 1,
    "papa_env.rl_zoo": 0,
    "papa_env.pretrain": 1,
    # agents and the session are side by side: neither imports the other
    "papa_env.agents": 2,
    "papa_env.session": 2.5,
    "papa_env.evaluation": 2.5,
    # apps wire agents and sessions together
    "papa_env.cli": 3,
    "papa_env.demo": 3,
    "papa_env.harness": 3,
    "papa_env.suite": 0,
    "papa_env.serve": 3,
    "papa_env.__main__": 3,
    "benchmarks": 4,
}


def _layer(module: str) -> float:
    while module not in LAYERS:
        if "." not in module:
            raise KeyError(module)
        module = module.rsplit(".", 1)[0]
    return LAYERS[module]


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {m for m in found if m.split(".")[0] in ("papa_env", "benchmarks")}


@pytest.mark.parametrize("module", sorted(_modules()))
def test_every_import_goes_down_the_layers(module: str) -> None:
    mine = _layer(module)
    bad = []
    for imported in _imports(_modules()[module]):
        theirs = _layer(imported)
        side_by_side = {mine, theirs} == {2, 2.5}  # agents and session never import each other
        if (theirs > mine and not module.startswith(imported + ".")) or side_by_side:
            bad.append(imported)
    assert not bad, f"{module} (layer {mine}) imports {bad} from above or beside it"


def test_importing_the_errors_loads_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, papa_env.errors, papa_env; assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)
