"""benchmarks/balance_noise.py: a perfectly balanced model scored against either balance reference."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.balance_noise import main, score


def test_a_reference_on_many_base_samples_flags_a_balanced_model_less_than_the_first_evaluation() -> None:
    shares = np.array([0.04, 0.05, 0.06, 0.05, 0.3, 0.1, 0.1, 0.1, 0.1, 0.1])  # 0-3 liked: rare under the base
    out = score(shares, (0, 1, 2, 3), like_rate=0.85, eval_samples=100, sessions=300, base_samples=2000,
                rng=np.random.default_rng(0))  # fmt: skip
    first, many = out["first evaluation"], out["base samples"]
    assert first["flagged"] > 0.05 and many["flagged"] < first["flagged"] / 3  # ~20 base likes vs ~400 behind it
    assert first["balance"] < many["balance"] < 1.0  # still under 1: the min over classes of 85-sample shares
    exact = score(shares, (0, 1), like_rate=1.0, eval_samples=100_000, sessions=20, base_samples=10**7,
                  rng=np.random.default_rng(1))["base samples"]  # fmt: skip
    assert exact["balance"] == pytest.approx(1.0, abs=0.02) and exact["flagged"] == 0


@pytest.mark.slow
def test_both_references_are_scored_on_a_suite_runs_tuned_models(tmp_path, tiny_model_file) -> None:
    from papa_env import harness

    args = ["--suite", "tuning", "--quick", "--tastes", "mnist-2-3+mistakes0.15", "--agents", "epapa", "--budget", "10"]
    harness.main([*args, "--eval-samples", "20", "--model", tiny_model_file, "--no-grid", "--out", str(tmp_path)])
    out = tmp_path / "check.json"
    report = main(["--sessions-dir", str(tmp_path / "suite-tuning-quick"), "--base-samples", "50",
                   "--truth-samples", "250", "--out", str(out)])  # fmt: skip
    (row,) = report["sessions"]
    # the untrained tiny model may draw no 2 or 3 at all: then there is no balance to compare (None)
    assert row["session"].startswith("mnist-2-3+mistakes0.15/") and (row["kept"] is None or 0 <= row["kept"] <= 1)
    assert all(row[k] is None or row[k] >= 0 for k in ("truth", "first evaluation", "base samples"))
    assert set(report["summary"]) == {"first evaluation", "base samples"} and out.exists()
    with pytest.raises(SystemExit, match="no finished suite session"):
        main(["--sessions-dir", str(tmp_path), "--out", str(out)])  # the folder above: no session one level down


def test_bad_arguments_are_refused(tmp_path) -> None:
    with pytest.raises(SystemExit):
        main(["--like-rate", "0"])
    with pytest.raises(SystemExit):
        main(["--sessions-dir", str(tmp_path / "missing")])
