from __future__ import annotations

import numpy as np
import pytest
import torch

from papa_env.metrics import JudgeReport, frechet_distance, judge, judge_ceiling


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
    assert torch.allclose(rep.probabilities.sum(-1), torch.ones(4))
    assert rep.probabilities.argmax(-1).tolist() == [2, 2, 2, 7]


def _report(probs: list[list[float]]) -> JudgeReport:
    p = torch.tensor(probs)
    conf, labels = p.max(-1)
    return JudgeReport(labels, conf, np.bincount(labels.numpy(), minlength=p.shape[1]) / len(p), p)


def test_judge_ceiling_follows_the_user_where_it_likes_and_where_it_is_sure() -> None:
    # 3 classes, the user likes {0}; its arg-max is liked on images 0-3, sure (>= 0.9 on class 0) on 0 and 1 only
    user = _report([[0.95, 0.05, 0], [0.9, 0, 0.1], [0.6, 0.4, 0], [0.5, 0.2, 0.3], [0.1, 0.9, 0], [0.2, 0, 0.8]])
    judged = _report([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]])  # judge's labels 0 0 1 2 0 1
    assert judge_ceiling(user, judged, (0,)) == {"given_liked": 0.5, "n_liked": 4, "given_sure": 1.0, "n_sure": 2}
    both = judge_ceiling(user, judged, (0, 1))  # the user likes all but image 5; the judge calls 0, 1, 2, 4 liked
    assert both["n_liked"] == 5 and both["given_liked"] == pytest.approx(0.8)
    assert both["n_sure"] == 4 and both["given_sure"] == 1.0  # image 3 has 0.7 on {0, 1}: liked, not sure
    nobody = judge_ceiling(user, judged, (2,))  # the user's arg-max is never class 2: no share to give
    assert nobody["n_liked"] == 1 and nobody["n_sure"] == 0 and np.isnan(nobody["given_sure"])
    with pytest.raises(ValueError, match="probabilities"):
        judge_ceiling(user._replace(probabilities=None), judged, (0,))
    with pytest.raises(ValueError, match="of the same images"):
        judge_ceiling(user, _report([[1, 0, 0]]), (0,))
