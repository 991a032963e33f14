"""A CLIP user: a taste described in words (needs the ``clip`` extra: ``pip install 'papa-env[clip]'``).

The user compares each image with two texts, the liked one and its opposite
(default: "a thick handwritten digit" vs "a thin handwritten digit"), and likes the image when CLIP finds
the liked text more probable. Weights come from the real ``clip.load(name, download_root=...)``; with no
weights on disk and no internet it fails with a message saying where to put them, or pass a loaded
``clip_model`` yourself (the tests build a tiny random CLIP that way).
"""

from __future__ import annotations

import urllib.error

import torch
import torch.nn.functional as F

from papa_env.oracles.base import Oracle, register_oracle

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_PREFERENCE = ("a thick handwritten digit", "a thin handwritten digit")


def _import_clip():
    try:
        import clip
    except ImportError as err:
        raise ImportError("the CLIP user needs clip-anytorch: pip install 'papa-env[clip]'") from err
    return clip


def load_clip(name: str = "ViT-B/32", download_root: str | None = None) -> torch.nn.Module:
    """``clip.load(name, device="cpu", download_root=...)`` with a clear error when offline without weights."""
    clip = _import_clip()
    try:
        model, _ = clip.load(name, device="cpu", download_root=download_root)
    except (urllib.error.URLError, OSError) as err:
        root = download_root or "~/.cache/clip"
        raise RuntimeError(
            f"CLIP weights {name!r} are not in {root} and could not be downloaded ({err}). Copy the checkpoint "
            f"there (or pass its path as the name), or pass an already loaded model as clip_model=..."
        ) from err
    return model.float().eval()


def preprocess_for_clip(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """(B, 1, H, W) in [-1, 1] -> (B, 3, resolution, resolution) normalised as CLIP's own preprocessing.

    Grey to RGB, bicubic resize (CLIP's ``Resize``; a square image needs no centre crop), then CLIP's
    per-channel mean / std.
    """
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected images of shape (B, 1, H, W), got {tuple(images.shape)}")
    x = ((images.float() + 1) / 2).clamp(0, 1).expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", align_corners=False).clamp(0, 1)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@register_oracle("clip")
class ClipOracle(Oracle):
    """A user who likes images that CLIP matches to a text more than to its opposite.

    Args:
        preference: ``(liked_text, opposite_text)``, or one liked text (opposite: "a handwritten digit").
        model: a ``clip.available_models()`` name or a checkpoint path, for ``clip.load``.
        download_root: where ``clip.load`` looks for (and would download) the weights.
        clip_model: an already loaded ``clip.model.CLIP`` (skips ``clip.load``).
    """

    threshold = 0.5

    def __init__(
        self,
        preference: str | tuple[str, str] = DEFAULT_PREFERENCE,
        model: str = "ViT-B/32",
        download_root: str | None = None,
        clip_model: torch.nn.Module | None = None,
    ) -> None:
        self.clip = _import_clip()
        self.model = (clip_model if clip_model is not None else load_clip(model, download_root)).eval()
        self.resolution = int(self.model.visual.input_resolution)
        self._preference: tuple[str, str] = ("", "")
        self.set_preference(preference)

    @property
    def preference(self) -> tuple[str, str]:
        return self._preference

    def set_preference(self, preference: str | tuple[str, str]) -> None:
        if isinstance(preference, str):
            preference = (preference, "a handwritten digit")
        if (
            not isinstance(preference, tuple | list)
            or len(preference) != 2
            or not all(isinstance(t, str) and t.strip() for t in preference)
        ):
            raise ValueError(
                f"preference must be a non-empty text or a (liked, opposite) pair of texts, got {preference!r}"
            )
        self._preference = (preference[0], preference[1])
        with torch.no_grad():
            tokens = self.clip.tokenize(list(self._preference))
            self._text = F.normalize(self.model.encode_text(tokens).float(), dim=-1)  # (2, D)

    @torch.no_grad()
    def utility(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's probability of the liked text over its opposite, (B,) in [0, 1]."""
        feats = F.normalize(self.model.encode_image(preprocess_for_clip(images, self.resolution)).float(), dim=-1)
        logits = self.model.logit_scale.exp() * feats @ self._text.T  # (B, 2)
        return logits.softmax(-1)[:, 0]
