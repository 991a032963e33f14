from __future__ import annotations

import pytest
import torch
from PIL import Image

from papa_env.cli import field_docs, main
from papa_env.models import save_model
from papa_env.pretrain import ClassifierTrainConfig, DDPMTrainConfig
from papa_env.viz import grid_array


def test_every_config_field_has_a_help_line() -> None:
    for cls in (DDPMTrainConfig, ClassifierTrainConfig):
        docs = field_docs(cls)
        missing = [f for f in cls.__dataclass_fields__ if not docs.get(f)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


def test_pretrain_help_comes_from_the_dataclass(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "ddpm", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "total optimizer steps" in out and "--checkpoint-every" in out


def test_bad_choice_is_rejected_by_argparse(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "classifier", "--arch", "ResNet"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_sample_writes_a_grid(tmp_path, tiny_unet) -> None:
    weights = tmp_path / "tiny.safetensors"
    save_model(tiny_unet, weights)
    out = tmp_path / "grid.png"
    assert main(["sample", "--model", str(weights), "--n", "4", "--steps", "2", "--out", str(out)]) == 0
    img = Image.open(out)
    assert img.mode == "RGB" and img.size == (2 * 56 + 3 * 2,) * 2  # 2x2 tiles upscaled 2x, 2px padding


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["sample", "--model", "nope"], "--model must be"),
        (["sample", "--n", "0"], "--n must be"),
    ],
)
def test_sample_bad_input(argv, match) -> None:
    with pytest.raises(SystemExit, match=match):
        main(argv)


def test_grid_array_layout() -> None:
    x = torch.linspace(-1, 1, 6 * 28 * 28).view(6, 1, 28, 28)
    g = grid_array(x, nrow=3, padding=2)
    assert g.shape == (2 * 28 + 3 * 2, 3 * 28 + 4 * 2, 3) and g.dtype.name == "uint8"
    with pytest.raises(ValueError, match="B, C, H, W"):
        grid_array(torch.zeros(28, 28))
