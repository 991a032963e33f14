"""benchmarks/speed.py: presets interleaved with the reference, and their ratio."""

from __future__ import annotations

import json

import pytest

from benchmarks import speed


def test_speed_benchmark_interleaves_the_presets_and_reports_their_ratio(tmp_path) -> None:

    out = tmp_path / "speed.json"
    argv = ["--preset", "epapa", "--reference", "papa", "--interactions", "3"]
    argv += ["--reference-interactions", "2", "--eval-samples", "4", "--sequential-too", "--out", str(out)]
    result = speed.main(argv)
    assert json.loads(out.read_text())["ratio"] == pytest.approx(result["ratio"])
    per = result["seconds_per_interaction"]
    sequential = "epapa (models one after the other)"
    assert set(per) == {"papa", "epapa", sequential}
    assert result["ratio"] == pytest.approx(per["papa"] / per["epapa"])  # the first preset's
    assert result["ratios"][sequential] == pytest.approx(per["papa"] / per[sequential])
    assert [b["interactions"] for b in result["blocks"]] == [2, 1] and len(result["block_ratios"]) == 2
    like = result["like_rate"]
    assert like["epapa"]["replies"] == like[sequential]["replies"] == 30 and like["papa"]["replies"] == 20
    for bad in (
        ["--preset", "nope"],
        ["--preset", "epapa,nope"],
        ["--interactions", "1", "--reference-interactions", "2"],
    ):
        with pytest.raises(SystemExit):
            speed.main([*bad, "--out", str(out)])
