from __future__ import annotations

import json
import re
from pathlib import Path

from papa_env.demo import run_demo


def test_demo_runs_a_short_session_and_writes_its_files(tmp_path, capsys) -> None:
    records = run_demo(out=tmp_path / "demo", budget=20, eval_samples=20)
    assert [r["replies"] for r in records] == [0, 20]
    for name in (
        "config.json",
        "replies.jsonl",
        "metrics.jsonl",
        "samples_before.png",
        "samples_after.png",
        "like_rate.png",
        "model.safetensors",
    ):
        assert (tmp_path / "demo" / name).exists(), name
    config = json.loads((tmp_path / "demo" / "config.json").read_text())["agent_config"]
    assert config["k"] == 300 and config["base_queries"] == 5  # the default: the epapa preset
    assert config["ema_decay"] == 0.95 and config["ema_start"] == 30
    out = capsys.readouterr().out
    assert "epapa preset" in out and "like-rate (judge)" in out and "max class share" in out


def test_readme_plug_in_example_runs() -> None:
    """The README's 'plug in your own user' example, executed as written."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"<!-- plug-in-example -->\s*```python\n(.*?)```", readme, re.S)
    assert block, "README lost its plug-in example"
    code = block.group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 22  # "a 20-line example"
    exec(compile(code, "README.md", "exec"), {})
