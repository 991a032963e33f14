"""Re-measures the shipped classifiers on the 10k held-out test images and asserts the bars."""

from __future__ import annotations

import pytest

from papa_env import load_dataset, load_pretrained
from papa_env.pretrain import accuracy

BARS = {"mnist": 0.985, "fashion-mnist": 0.90}


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("role", ["classifier", "judge"])
def test_shipped_classifier_accuracy_on_held_out_split(dataset: str, role: str, data_root) -> None:
    test = load_dataset(dataset, "test", root=data_root)
    acc = accuracy(load_pretrained(f"{dataset}-{role}"), test.images, test.labels)
    print(f"{dataset}-{role}: {acc:.4f} on {len(test.images)} test images")
    assert acc >= BARS[dataset]
