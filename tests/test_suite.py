"""papa_env/suite.py: the user suite's halves are drawn deterministically, disjoint, and hold what the issue asks."""

from __future__ import annotations

import pytest

from papa_env.suite import PAPER_TASTE, STYLES, make_suite, quick_suite


def _key(taste) -> tuple:
    return (taste.env, repr(taste.liked or taste.env_kwargs["preference"]))


def test_halves_are_deterministic_and_disjoint() -> None:
    tuning, held_out = make_suite("tuning"), make_suite("held-out")
    assert tuning == make_suite("tuning") and held_out == make_suite("held-out")
    assert not {t.name for t in tuning} & {t.name for t in held_out}
    assert not {_key(t) for t in tuning} & {_key(t) for t in held_out}  # not even under another noise model
    styles = [t.env_kwargs["preference"] for t in tuning + held_out if t.group == "style"]
    assert sorted(styles, key=STYLES.index) == list(STYLES)  # all six directions, three per half


@pytest.mark.parametrize("half", ["tuning", "held-out"])
def test_each_half_holds_every_kind_of_user_and_not_the_papers_taste(half) -> None:
    tastes = make_suite(half)
    groups = [t.group for t in tastes]
    assert groups.count("mnist") == 8 and groups.count("fashion") == 4 and groups.count("style") == 3
    assert all(1 <= len(t.liked) <= 5 for t in tastes if t.env == "PAPA-MNIST-v0")
    assert all(1 <= len(t.liked) <= 4 for t in tastes if t.group == "fashion")
    noisy = [t.env_kwargs for t in tastes if t.group == "noisy"]
    assert any(0.1 <= k.get("mistake_rate", 0) <= 0.2 for k in noisy) and any("rationality" in k for k in noisy)
    assert [t.mode for t in tastes if t.group == "pairwise"] == ["pairwise"]
    assert all(t.liked != PAPER_TASTE for t in tastes)
    assert len({t.name for t in tastes}) == len(tastes)


def test_quick_suite_is_three_tuning_tastes_and_a_bad_half_is_refused() -> None:
    quick = quick_suite()
    assert [t.group for t in quick] == ["mnist", "style", "noisy"] and all(t in make_suite("tuning") for t in quick)
    with pytest.raises(ValueError, match="unknown half"):
        make_suite("test")
