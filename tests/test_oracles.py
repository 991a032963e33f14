from __future__ import annotations

import numpy as np
import pytest
import torch

from papa_env.oracles import (
    BradleyTerry,
    ClassifierOracle,
    ClipOracle,
    Mistakes,
    Oracle,
    Skips,
    StyleOracle,
    Ties,
    make_oracle,
    style_attributes,
)
from papa_env.oracles.clip_user import CLIP_MEAN, CLIP_STD, load_clip, preprocess_for_clip


class Fixed(Oracle):
    """Utility = the image's mean pixel: lets tests set utilities exactly."""

    threshold = 0.0
    preference = "fixed"

    def set_preference(self, preference) -> None:
        pass

    def utility(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean((1, 2, 3))


def _with_utility(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 28, 28).contiguous()


def _binomial_ok(successes: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    return abs(successes - n * p) <= sigmas * np.sqrt(n * p * (1 - p))


# ------------------------------------------------------------------------------------------------
# irrational users, checked statistically


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.3])
def test_mistake_rate_is_observed(eps: float) -> None:
    user = Mistakes(Fixed(), eps)
    rng = np.random.default_rng(0)
    imgs = _with_utility([0.5] * 500 + [-0.5] * 500)
    truth = Fixed().reply(imgs, rng)
    flips = sum(int((user.reply(imgs, rng) != truth).sum()) for _ in range(20))
    assert _binomial_ok(flips, 20_000, eps), (flips, eps)
    pairs_flipped = (user.compare(imgs[:500], imgs[500:], rng) == -1).sum()
    assert _binomial_ok(int(pairs_flipped), 500, eps)


@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_bradley_terry_matches_the_logistic(beta: float) -> None:
    user = BradleyTerry(Fixed(), beta)
    rng = np.random.default_rng(1)
    n = 20_000
    u = 0.7
    likes = (user.reply(_with_utility([u] * n), rng) == 1).sum()
    assert _binomial_ok(int(likes), n, 1 / (1 + np.exp(-beta * u)))
    first = (user.compare(_with_utility([u] * n), _with_utility([-u] * n), rng) == 1).sum()
    assert _binomial_ok(int(first), n, 1 / (1 + np.exp(-beta * 2 * u)))


def test_skips_and_ties() -> None:
    rng = np.random.default_rng(0)
    imgs = _with_utility([0.5, 0.05, -0.05, -0.5])
    assert Skips(Fixed(), 0.1).reply(imgs, rng).tolist() == [1, 0, 0, -1]
    low = _with_utility([-0.5, -0.2, 0.3])
    other = _with_utility([-0.1, 0.4, 0.25])
    assert Skips(Fixed(), 0.1).compare(low, other, rng).tolist() == [0, -1, 1]  # both below threshold -> skip
    assert Ties(Fixed(), 0.1).compare(low, other, rng).tolist() == [-1, -1, 0]
    assert Ties(Fixed(), 0.1).reply(imgs, rng).tolist() == [1, 1, -1, -1]


def test_wrappers_keep_true_utility_and_compose_in_bpref_order() -> None:
    user = Mistakes(BradleyTerry(Ties(Skips(Fixed(), 0.1), 0.1), 1.0), 0.1)
    imgs = _with_utility([0.3, -0.2])
    assert torch.equal(user.utility(imgs), Fixed().utility(imgs))
    assert isinstance(user.unwrapped, Fixed)
    assert "Mistakes" in repr(user) and "eps=0.1" in repr(user)
    # skipped replies stay skipped through Bradley-Terry and mistakes
    rng = np.random.default_rng(0)
    unsure = _with_utility([0.05] * 200)
    assert (user.reply(unsure, rng) == 0).all()


def test_noise_is_seeded_by_the_rng() -> None:
    user = Mistakes(BradleyTerry(Fixed(), 1.0), 0.2)
    imgs = _with_utility(np.linspace(-1, 1, 64))
    a = user.reply(imgs, np.random.default_rng(5))
    b = user.reply(imgs, np.random.default_rng(5))
    c = user.reply(imgs, np.random.default_rng(6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize(
    ("wrapper", "kwargs"),
    [(Mistakes, dict(eps=-0.1)), (Skips, dict(margin=-1)), (Ties, dict(margin=-1)), (BradleyTerry, dict(beta=0))],
)
def test_wrapper_arguments_are_checked(wrapper, kwargs) -> None:
    with pytest.raises(ValueError):
        wrapper(Fixed(), **kwargs)
    with pytest.raises(TypeError, match="Oracle"):
        wrapper("not an oracle")


def test_make_oracle_errors() -> None:
    with pytest.raises(ValueError, match="unknown oracle"):
        make_oracle("nobody")
    with pytest.raises(ValueError, match="instance"):
        make_oracle(Fixed(), preference="x")
    with pytest.raises(TypeError, match="not a papa_env.oracles.Oracle"):
        make_oracle(lambda: object())


# ------------------------------------------------------------------------------------------------
# classifier user


def test_classifier_user_likes_real_images_of_its_classes(data_root) -> None:
    from papa_env.data import load_dataset

    test = load_dataset("mnist", "test", root=data_root)
    user = ClassifierOracle("mnist", preference=(1, 4, 7, 9))
    liked = torch.isin(test.labels, torch.tensor([1, 4, 7, 9])).numpy()
    replies = user.reply(test.images[:2000], np.random.default_rng(0))
    assert (replies == np.where(liked[:2000], 1, -1)).mean() > 0.98
    u = user.utility(test.images[:2000]).numpy()
    assert ((u >= 0) & (u <= 1)).all() and u[liked[:2000]].mean() > 0.95


def test_classifier_user_agrees_with_the_judge_on_base_samples() -> None:
    """On the shipped base model's samples, the user's likes agree with the judge's classes >= 95%."""
    from papa_env import load_pretrained, sample
    from papa_env.metrics import judge

    for dataset, pref in (("mnist", (1, 4, 7, 9)), ("fashion-mnist", (5, 7, 9))):
        images = sample(load_pretrained(f"{dataset}-ddpm"), 200, generator=torch.Generator().manual_seed(0))
        user = ClassifierOracle(dataset, preference=pref)
        judged = torch.isin(judge(load_pretrained(f"{dataset}-judge"), images).labels, torch.tensor(pref)).numpy()
        agreement = float((user.likes(images) == judged).mean())
        print(
            f"{dataset}: user's likes agree with the judge on {agreement:.3f} of 200 base samples; "
            f"base like-rate {user.likes(images).mean():.3f}"
        )
        assert agreement >= 0.95


# ------------------------------------------------------------------------------------------------
# style user


def _stroke(width: int, slant: float = 0.0, height: int = 20) -> torch.Tensor:
    x = -torch.ones(1, 1, 28, 28)
    top = (28 - height) // 2
    for r in range(top, top + height):
        c = int(round(14 + slant * (14 - r)))
        x[0, 0, r, max(0, c - width // 2) : c - width // 2 + width] = 1.0
    return x


def test_style_attributes_on_drawn_strokes() -> None:
    thin, thick = style_attributes(_stroke(2)), style_attributes(_stroke(6))
    assert thick["thickness"] > 2.5 * thin["thickness"]
    right, left, upright = (style_attributes(_stroke(3, s))["slant"] for s in (0.4, -0.4, 0.0))
    assert right > 0.3 and left < -0.3 and abs(upright) < 0.05
    small, large = style_attributes(_stroke(3, height=8)), style_attributes(_stroke(3, height=24))
    assert large["size"] == pytest.approx(3 * 24 / 784) and small["size"] == pytest.approx(3 * 8 / 784)


def test_style_user_base_like_rate_is_calibrated() -> None:
    from papa_env import load_pretrained, sample

    images = sample(load_pretrained("mnist-ddpm"), 400, generator=torch.Generator().manual_seed(123))
    for pref in ("thick", "thin", "slanted-right", "large"):
        rate = StyleOracle(pref, base_like_rate=0.4).likes(images).mean()
        print(f"style {pref}: base like-rate {rate:.3f} on 400 fresh samples (calibrated 0.4)")
        assert 0.3 <= rate <= 0.5
    with pytest.raises(ValueError, match="expected one of"):
        StyleOracle("curly")
    with pytest.raises(ValueError, match="calibrated rates"):
        StyleOracle("thick", base_like_rate=0.9)


# ------------------------------------------------------------------------------------------------
# CLIP user (a tiny random CLIP: the plumbing, not the taste)


def test_clip_preprocessing_matches_clip_normalisation() -> None:
    imgs = torch.stack([-torch.ones(1, 28, 28), torch.ones(1, 28, 28)])
    x = preprocess_for_clip(imgs, 32)
    assert x.shape == (2, 3, 32, 32)
    black = (0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    white = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(x[0, :, 5, 5], black, atol=1e-5) and torch.allclose(x[1, :, 5, 5], white, atol=1e-5)


def test_clip_user_scores_and_replies(tiny_clip) -> None:
    user = ClipOracle(("a thick handwritten digit", "a thin handwritten digit"), clip_model=tiny_clip)
    imgs = torch.rand(6, 1, 28, 28) * 2 - 1
    u = user.utility(imgs)
    assert u.shape == (6,) and ((u >= 0) & (u <= 1)).all()
    replies = user.reply(imgs, np.random.default_rng(0))
    assert np.array_equal(replies, np.where(u.numpy() >= 0.5, 1, -1))
    swapped = ClipOracle(("a thin handwritten digit", "a thick handwritten digit"), clip_model=tiny_clip)
    assert torch.allclose(swapped.utility(imgs), 1 - u, atol=1e-5)
    with pytest.raises(ValueError, match="non-empty"):
        user.set_preference(("", "x"))


def test_clip_load_offline_without_weights_is_a_clear_error(tmp_path, monkeypatch) -> None:
    pytest.importorskip("clip")
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(RuntimeError, match="could not be downloaded") as err:
        load_clip("ViT-B/32", download_root=str(tmp_path))
    assert str(tmp_path) in str(err.value) and "clip_model" in str(err.value)
