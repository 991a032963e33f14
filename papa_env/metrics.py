"""Privileged evaluation: what the judge classifier says about a batch of images.

These spend no user replies; agents must not use them to learn (benchmarks only).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class JudgeReport(NamedTuple):
    """What the judge sees in a batch of images.

    Attributes:
        labels: (N,) int64 predicted classes.
        confidence: (N,) float32 max softmax probability.
        class_shares: (num_classes,) float64 fraction of images predicted as each class.
        probabilities: (N, num_classes) float32 softmax.
    """

    labels: torch.Tensor
    confidence: torch.Tensor
    class_shares: np.ndarray
    probabilities: torch.Tensor | None = None

    def confident_fraction(self, threshold: float = 0.9) -> float:
        """Fraction of images whose confidence is >= threshold."""
        return float((self.confidence >= threshold).float().mean())


@torch.no_grad()
def judge(classifier: torch.nn.Module, images: torch.Tensor, batch_size: int = 500) -> JudgeReport:
    """Classify ``images`` (N, 1, 28, 28) in [-1, 1] with ``classifier`` (eval mode)."""
    classifier.eval()
    probs = torch.cat([classifier(images[i : i + batch_size]).softmax(-1) for i in range(0, len(images), batch_size)])
    conf, labels = probs.max(-1)
    shares = np.bincount(labels.numpy(), minlength=probs.shape[1]) / len(labels)
    return JudgeReport(labels, conf, shares, probs)


def judge_ceiling(user: JudgeReport, judged: JudgeReport, liked: tuple[int, ...], sure: float = 0.9) -> dict:
    """How far the judge's like-rate can follow a classifier user with taste ``liked`` on images like these (both
    reports of the same images): ``given_liked``, the share of the images the user likes (its arg-max class is liked,
    the authors' rule) that the judge also puts in a liked class; ``given_sure``, the same among the images the user
    is sure of (probability >= ``sure`` on the liked classes), and ``n_liked`` / ``n_sure``, how many there were
    (a share is nan when none). A model that draws what this user likes, as the base draws it, is judged at about
    ``given_liked``; one that draws only what the user is sure of, at about ``given_sure``."""
    if user.probabilities is None or len(user.labels) != len(judged.labels):
        raise ValueError("expected the user's report with its probabilities and the judge's, of the same images")
    mask = torch.zeros(user.probabilities.shape[1], dtype=torch.bool)
    mask[list(liked)] = True
    judge_liked = mask[judged.labels]
    user_liked, user_sure = mask[user.labels], user.probabilities[:, mask].sum(-1) >= sure

    def share(rows: torch.Tensor) -> float:
        return float(judge_liked[rows].float().mean()) if bool(rows.any()) else float("nan")

    return {"given_liked": share(user_liked), "n_liked": int(user_liked.sum()), "given_sure": share(user_sure),
            "n_sure": int(user_sure.sum())}  # fmt: skip


@torch.no_grad()
def embed(classifier: torch.nn.Module, images: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """(N, D) float64 features from ``classifier.embed`` (e.g. the judge's pooled features)."""
    classifier.eval()
    return (
        torch.cat([classifier.embed(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
        .double()
        .numpy()
    )


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (the FID formula).

    ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` with feats of shape (N, D).
    """
    from scipy import linalg

    if feats_a.ndim != 2 or feats_b.ndim != 2 or feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"expected two (N, D) feature arrays with equal D, got {feats_a.shape} and {feats_b.shape}")
    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    cov_a, cov_b = np.cov(feats_a, rowvar=False), np.cov(feats_b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():  # singular product: regularise as pytorch-fid does
        eps = np.eye(len(cov_a)) * 1e-6
        covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))
