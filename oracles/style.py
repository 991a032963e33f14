"""Fine-grained users: a taste *within* classes, measured from the image itself.

Three handwriting attributes, computed from ink = (image + 1) / 2 on (B, 1, 28, 28) images:

* ``thickness``: ink mass, the mean ink per pixel (thick strokes carry more ink);
* ``slant``: the second-moment shear ``-mu11 / mu02`` of the ink (x shift per row; > 0 leans right);
* ``size``: the area of the bounding box of pixels with ink > 0.5, as a fraction of the image.

A preference names an attribute and a direction: ``"thick"``, ``"thin"``, ``"slanted-right"``,
``"slanted-left"``, ``"large"``, ``"small"``. Utility is the attribute's z-score (signed by the direction)
against the shipped base model's own samples, and the user likes an image when the z-score reaches the
base model's quantile ``1 - base_like_rate``: so the base model's like-rate is known (0.4 by default).
The calibration (mean, std and quantiles of each attribute on 2,000 base samples) is
``papa_env/weights/<dataset>-style-calibration.json``, written by ``python -m benchmarks.calibrate_style``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from papa_env.oracles.base import Oracle, register_oracle

PREFERENCES: dict[str, tuple[str, float]] = {
    "thick": ("thickness", 1.0),
    "thin": ("thickness", -1.0),
    "slanted-right": ("slant", 1.0),
    "slanted-left": ("slant", -1.0),
    "large": ("size", 1.0),
    "small": ("size", -1.0),
}
"""preference -> (attribute, direction)."""

ATTRIBUTES = ("thickness", "slant", "size")


def style_attributes(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Handwriting attributes of (B, 1, 28, 28) images in [-1, 1]; each value is (B,) float32."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected images of shape (B, 1, H, W), got {tuple(images.shape)}")
    ink = ((images.float() + 1) / 2).clamp(0, 1)[:, 0]  # (B, H, W)
    b, h, w = ink.shape
    ys = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    mass = ink.sum((1, 2)).clamp_min(1e-6)
    cy = (ink * ys).sum((1, 2)) / mass
    cx = (ink * xs).sum((1, 2)) / mass
    dy, dx = ys - cy.view(b, 1, 1), xs - cx.view(b, 1, 1)
    mu11 = (ink * dx * dy).sum((1, 2)) / mass
    mu02 = (ink * dy * dy).sum((1, 2)) / mass
    slant = -mu11 / mu02.clamp_min(1e-6)  # rows go down: a right lean has x growing as y shrinks
    on = ink > 0.5
    rows, cols = on.any(2), on.any(1)  # (B, H), (B, W)

    def extent(m: torch.Tensor) -> torch.Tensor:
        idx = torch.arange(m.shape[1]).expand_as(m)
        first = torch.where(m, idx, m.shape[1]).min(1).values
        last = torch.where(m, idx, -1).max(1).values
        return (last - first + 1).clamp_min(0).float()

    size = extent(rows) * extent(cols) / (h * w)
    return {"thickness": ink.mean((1, 2)), "slant": slant, "size": size}


def calibration_path(dataset: str = "mnist") -> Path:
    from papa_env.models import WEIGHTS_DIR

    return WEIGHTS_DIR / f"{dataset}-style-calibration.json"


@register_oracle("style")
class StyleOracle(Oracle):
    """A user whose taste is a handwriting style (see the module docstring).

    Args:
        preference: one of :data:`PREFERENCES` (default ``"thick"``).
        base_like_rate: the share of the base model's samples this user likes, one of the calibrated
            rates (0.3, 0.4, 0.5); sets the like threshold.
        dataset: whose base model calibrates the attributes (``"mnist"``).
        calibration: a calibration dict (default: the shipped file).
    """

    def __init__(
        self,
        preference: str = "thick",
        base_like_rate: float = 0.4,
        dataset: str = "mnist",
        calibration: dict | None = None,
    ) -> None:
        if calibration is None:
            path = calibration_path(dataset)
            if not path.is_file():
                raise FileNotFoundError(f"no style calibration for {dataset!r} at {path}")
            calibration = json.loads(path.read_text())
        self.calibration = calibration
        rates = sorted(float(r) for r in calibration["thresholds"])
        if f"{base_like_rate:g}" not in calibration["thresholds"]:
            raise ValueError(f"base_like_rate must be one of the calibrated rates {rates}, got {base_like_rate!r}")
        self.base_like_rate = float(base_like_rate)
        self.dataset = dataset
        self._preference = ""
        self.set_preference(preference)

    @property
    def preference(self) -> str:
        return self._preference

    def set_preference(self, preference: str) -> None:
        if preference not in PREFERENCES:
            raise ValueError(f"unknown style preference {preference!r}; expected one of {sorted(PREFERENCES)}")
        self._preference = preference
        self.threshold = float(self.calibration["thresholds"][f"{self.base_like_rate:g}"][preference])

    def utility(self, images: torch.Tensor) -> torch.Tensor:
        """Signed z-score of the preferred attribute against the base model's samples, (B,)."""
        attr, sign = PREFERENCES[self._preference]
        stats = self.calibration["attributes"][attr]
        value = style_attributes(images)[attr]
        return (sign * (value - stats["mean"]) / stats["std"]).float()

    def attributes(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """All three raw attributes of ``images`` as numpy arrays (for plots and reports)."""
        return {k: v.numpy() for k, v in style_attributes(images).items()}


def calibrate(samples: torch.Tensor, rates: tuple[float, ...] = (0.3, 0.4, 0.5)) -> dict:
    """A calibration dict from base-model samples (N, 1, 28, 28): attribute stats and like thresholds."""
    attrs = style_attributes(samples)
    stats = {k: {"mean": float(v.mean()), "std": float(v.std())} for k, v in attrs.items()}
    thresholds: dict[str, dict[str, float]] = {}
    for rate in rates:
        thresholds[f"{rate:g}"] = {}
        for pref, (attr, sign) in PREFERENCES.items():
            z = sign * (attrs[attr] - stats[attr]["mean"]) / stats[attr]["std"]
            thresholds[f"{rate:g}"][pref] = float(torch.quantile(z, 1 - rate))
    return {"n_samples": len(samples), "attributes": stats, "thresholds": thresholds}
