from __future__ import annotations

import json

import pytest
import torch

from papa_env import load_pretrained, sample
from papa_env.models import (
    PRETRAINED,
    JudgeCNN,
    UserCNN,
    load_model,
    make_unet,
    model_metadata,
    pretrained_path,
    save_model,
)


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_every_shipped_model_loads_offline_and_is_small(name: str, no_network) -> None:
    model = load_pretrained(name)
    assert not model.training
    assert pretrained_path(name).stat().st_size <= 10 * 2**20
    meta = model_metadata(pretrained_path(name))
    assert meta["dataset"] in ("mnist", "fashion-mnist")
    if name.endswith("-ddpm"):
        assert model.config.sample_size == 28 and model.config.in_channels == 1
    else:
        out = model(torch.zeros(2, 1, 28, 28))
        assert out.shape == (2, 10)
        assert 0 < float(meta["test_accuracy"]) <= 1


@pytest.mark.parametrize("name", ["mnist-ddpm", "fashion-mnist-ddpm"])
def test_shipped_ddpm_samples_shape_range_and_seed(name: str, no_network) -> None:
    unet = load_pretrained(name)
    a = sample(unet, 3, num_steps=4, generator=torch.Generator().manual_seed(7))
    b = sample(unet, 3, num_steps=4, generator=torch.Generator().manual_seed(7))
    c = sample(unet, 3, num_steps=4, generator=torch.Generator().manual_seed(8))
    assert a.shape == (3, 1, 28, 28) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_unknown_pretrained_name() -> None:
    with pytest.raises(ValueError, match="expected one of"):
        load_pretrained("cifar-ddpm")


@pytest.mark.parametrize(
    "factory", [UserCNN, JudgeCNN, lambda: make_unet(block_out_channels=(4, 8, 8), norm_num_groups=2)]
)
def test_save_load_round_trip(tmp_path, factory) -> None:
    torch.manual_seed(0)
    model = factory().eval()
    path = tmp_path / "m.safetensors"
    save_model(model, path, note="hello")
    loaded = load_model(path)
    assert type(loaded) is type(model)
    assert model_metadata(path)["note"] == "hello"
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def test_load_model_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "absent.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ValueError, match="config"):
        load_model(tmp_path / "bare.safetensors")


def test_judge_and_user_architectures_differ() -> None:
    user, judge = load_pretrained("mnist-classifier"), load_pretrained("mnist-judge")
    assert type(user) is not type(judge)
    assert (
        model_metadata(pretrained_path("mnist-classifier"))["seed"]
        != model_metadata(pretrained_path("mnist-judge"))["seed"]
    )


def test_base_quality_measures_with_the_shipped_or_a_given_judge(tiny_unet, data_root, tmp_path) -> None:
    from benchmarks import base_quality

    r = base_quality.measure("mnist", tiny_unet, n=20, steps=2, data_root=str(data_root))
    assert r["images"].shape == (20, 1, 28, 28) and 0 <= r["confident_fraction"] <= 1
    assert sum(r["class_shares"]) == pytest.approx(1.0, abs=1e-3) and r["frechet_judge"] > 0
    assert r["test_confident_fraction"] > 0.9  # the shipped judge on real test digits
    # the user's own classifier as the "judge": it agrees with itself on every sample
    user = load_pretrained("mnist-classifier")
    r2 = base_quality.measure("mnist", tiny_unet, n=20, steps=2, data_root=str(data_root), judge_net=user)
    assert r2["user_judge_agreement"] == 1.0 and torch.equal(r2["images"], r["images"])
    # the judge's like-rate where the user likes, per classifier taste of the suite: 1 when the judge is the user
    assert "mnist-3 (tuning)" in r["judge_ceiling"] and "mnist-9 (held-out)" in r["judge_ceiling"]
    assert not any(name.startswith(("fashion", "style")) for name in r["judge_ceiling"])
    assert all(c["given_liked"] == 1.0 for c in r2["judge_ceiling"].values() if c["n_liked"])
    conf = r["class_confidence"]
    assert len(conf) == 10 and all(v is None or 0.1 <= v <= 1 for v in conf)  # max-softmax of 10 classes >= 0.1
    save_model(user, tmp_path / "candidate.safetensors")
    args = ["--n", "20", "--steps", "2", "--judge", str(tmp_path / "candidate.safetensors")]
    out = base_quality.main([*args, "--out", str(tmp_path), "--data-root", str(data_root)])
    assert out["user_judge_agreement"] == 1.0
    written = json.loads(next(tmp_path.glob("base_quality_mnist_ddim2_eta1_judge-candidate.json")).read_text())
    assert written["judge"].endswith("candidate.safetensors") and written["model"] == "mnist-ddpm"


def test_base_confidence_at_a_sessions_end_class_mix() -> None:
    """A session that ends on the classes the judge is less sure of is compared with the base on those classes."""
    from benchmarks import base_quality
    from benchmarks.base_quality import confidence_at_class_mix

    def session(env, taste, end_shares, start_conf=0.9, end_conf=0.7):
        shares = lambda d: {f"eval/class_share/{c}": d.get(c, 0.0) for c in range(10)}  # noqa: E731
        records = [{"eval/judge_confidence": start_conf, **shares({c: 0.1 for c in range(10)})},
                   {"eval/judge_confidence": end_conf, **shares(end_shares)}]  # fmt: skip
        return {"spec": {"env": env}, "taste": taste, "records": records}

    class_conf = [0.6, 0.8, None, *[0.9] * 7]  # class 2 never drawn by the base: left out of the mix
    results = [session("PAPA-FashionMNIST-v0", "fashion-0-1", {0: 0.5, 1: 0.4, 2: 0.1}),
               session("PAPA-FashionMNIST-v0", "fashion-0-1", {0: 0.9, 1: 0.1}, end_conf=0.65),
               session("PAPA-MNIST-v0", "mnist-0", {0: 1.0})]  # fmt: skip
    mix = confidence_at_class_mix(results, "fashion-mnist", class_conf, overall=0.8)
    assert list(mix) == ["fashion-0-1"]  # the MNIST session is another dataset's
    start, end, matched, scaled = mix["fashion-0-1"]
    expected = ((0.5 * 0.6 + 0.4 * 0.8) / 0.9 + (0.9 * 0.6 + 0.1 * 0.8)) / 2
    assert (start, end) == pytest.approx((0.9, 0.675)) and matched == pytest.approx(expected)
    assert scaled == pytest.approx(expected * 0.9 / 0.8)
    style = confidence_at_class_mix([session("PAPA-MNIST-Style-v0", "style-thin", {1: 1.0})], "mnist", class_conf, 0.8)
    assert style["style-thin"][2] == pytest.approx(0.8)  # the Style users draw from the MNIST model
    with pytest.raises(SystemExit):  # refused before any sampling
        base_quality.main(["--suite-results", "no-such-results.jsonl"])
