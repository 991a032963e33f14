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
        ["--variant", "filtered"],  # no JSON
        ["--variant", "filtered={generate_candidates: 4}"],  # not JSON
        ["--variant", "filtered=[4]"],  # not an object
        ["--variant", 'filtered={"nope": 4}'],  # not a field
        ["--variant", 'filtered={"generate_candidates": 0}'],  # a field's bad value
    ):
        with pytest.raises(SystemExit):
            speed.main([*bad, "--out", str(out)])


def test_speed_benchmark_times_a_variant_of_the_preset_beside_it(tmp_path) -> None:
    """``--variant LABEL=JSON``: the first preset with these fields changed, interleaved and labelled preset+LABEL."""
    out = tmp_path / "speed.json"
    argv = ["--preset", "epapa", "--reference", "papa", "--interactions", "2", "--reference-interactions", "1"]
    argv += ["--eval-samples", "4", "--variant", 'fewer={"base_queries": 2, "fewer_base_queries": false}']
    result = speed.main([*argv, "--out", str(out)])
    per = result["seconds_per_interaction"]
    assert set(per) == {"papa", "epapa", "epapa+fewer"} and result["ratio"] == pytest.approx(per["papa"] / per["epapa"])
    assert result["ratios"]["epapa+fewer"] == pytest.approx(per["papa"] / per["epapa+fewer"])
    assert result["like_rate"]["epapa+fewer"]["replies"] == 20


def test_speed_benchmark_times_the_baselines_and_reports_each_ones_update_compute(tmp_path) -> None:
    """Baselines built as `papa bench` builds them (D3PO on the pairwise user), their fields in the label form."""
    from papa_env.agents.ddpo import DDPOConfig

    out = tmp_path / "speed.json"
    ddpo, d3po = "ddpo+inner_epochs=2+num_sampling_steps=4", "d3po+num_sampling_steps=4"
    argv = ["--preset", f"epapa,{ddpo},{d3po}", "--reference", "papa", "--interactions", "1"]
    result = speed.main([*argv, "--reference-interactions", "1", "--eval-samples", "4", "--out", str(out)])
    steps, rows = result["optimizer_steps_per_interaction"], result["update_rows_per_interaction"]
    assert set(steps) == set(rows) == {"papa", "epapa", ddpo, d3po}
    # DDPO: 2 passes over 10 trajectories in minibatches; D3PO: one step per decided pair (continuous utilities:
    # no ties), each backpropagating the pair's 2 trajectories; both at each of the 4-step sampler's noisy steps
    batch = DDPOConfig().train_batch_size
    assert steps[ddpo] == 2 * 10 / batch and steps[d3po] == 10
    noisy = rows[ddpo] / (steps[ddpo] * batch)
    assert noisy in (3, 4) and rows[d3po] == 10 * 2 * noisy
    assert result["like_rate"][d3po]["replies"] == 10  # pairs asked of the pairwise user
    for bad in (["--preset", "ddpo+inner_epochs"], ["--preset", "ddpo+nope=1"], ["--preset", "dpo"]):
        with pytest.raises(SystemExit):
            speed.main([*bad, "--out", str(out)])
    with pytest.raises(SystemExit, match="is a baseline"):
        speed.main(["--preset", "ddpo", "--variant", 'x={"lr": 1e-4}', "--out", str(out)])
