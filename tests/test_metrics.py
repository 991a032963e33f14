from __future__ import annotations

import numpy as np
import pytest
import torch

from papa_env.metrics import frechet_distance, judge


def test_frechet_matches_closed_form_for_diagonal_gaussians() -> None:
    rng = np.random.default_rng(0)
    n, d = 200_000, 3
    mu_a, mu_b = np.array([0.0, 1.0, -1.0]), np.array([0.5, 1.0, 0.0])
    sd_a, sd_b = np.array([1.0, 2.0, 0.5]), np.array([1.5, 1.0, 0.5])
    a = rng.normal(mu_a, sd_a, size=(n, d))
    b = rng.normal(mu_b, sd_b, size=(n, d))
    expected = ((mu_a - mu_b) ** 2).sum() + ((sd_a - sd_b) ** 2).sum()  # W2^2 between diagonal Gaussians
    assert frechet_distance(a, b) == pytest.approx(expected, abs=0.03)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_rejects_mismatched_features() -> None:
    with pytest.raises(ValueError, match="equal D"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))


def test_judge_report() -> None:
    class Fixed(torch.nn.Module):
        def forward(self, x):  # class 2 with high confidence for bright images, class 7 weakly otherwise
            logits = torch.zeros(len(x), 10)
            bright = x.mean((1, 2, 3)) > 0
            logits[bright, 2] = 10.0
            logits[~bright, 7] = 0.5
            return logits

    images = torch.cat([torch.ones(3, 1, 28, 28), -torch.ones(1, 1, 28, 28)])
    rep = judge(Fixed(), images)
    assert rep.labels.tolist() == [2, 2, 2, 7]
    assert rep.class_shares[2] == 0.75 and rep.class_shares[7] == 0.25 and rep.class_shares.sum() == 1
    assert rep.confident_fraction(0.9) == 0.75
