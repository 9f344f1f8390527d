"""`fit`: train a model on a prepared dataset into a run folder (thesis Section 6.2.2.3: Adam).

A run folder holds `config.json` (arguments, git commit, dataset hash, normalisation),
`metrics.jsonl` (one line per epoch), `checkpoints/epoch_NNN.pt`, `last.pt`, `best.pt` (best
validation study AUC), `curves.png` (loss, accuracy and AUC per epoch, as thesis Figure 6.8) and
`roc.png`. Runs resume from `last.pt`. Under `torchrun` it trains with DistributedDataParallel
(NCCL on GPUs, gloo on CPUs); only rank 0 writes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import subprocess
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline.aggregation import aggregate_studies
from pipeline.files import atomic_writer
from pipeline.models import build_aggregator, build_model
from train.data.augment import AugmentParams, evaluation_transform, training_transform
from train.data.datasets import (
    StudyDataset,
    ViewDataset,
    collate_studies,
    normalisation,
    read_views,
)
from train.data.device_data import DeviceViews, predict_device_views
from train.data.sampler import BalancedSampler
from train.evaluation.metrics import roc_auc, roc_curve


@dataclass(frozen=True)
class FitConfig:
    """Everything that defines a training run (saved as config.json)."""

    dataset: str
    arch: str
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    workers: int = 2
    aggregation: str = "max"
    """How validation view scores become study scores for model selection."""
    init_from: str = ""
    """For arch 'aggregator': a single-view run or checkpoint whose trunk is transferred."""
    trunk_arch: str = "resnet18"
    freeze_trunk: bool = False
    augment: AugmentParams = field(default_factory=AugmentParams)
    max_steps: int = 0
    """Stop an epoch after this many steps (0: no limit); for smoke tests and benchmarks."""
    schedule: str = "constant"
    """Learning rate over the run: 'constant' (the thesis) or 'cosine' (decays to 0)."""
    warmup_epochs: int = 0
    """Epochs of linear learning-rate warm-up before the schedule."""
    preload: bool = False
    """Decode every view once into device memory and augment there (single-view models)."""

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if not 0 <= self.warmup_epochs < max(self.epochs, 1):
            raise ValueError(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        if self.preload and self.arch == "aggregator":
            raise ValueError("preload trains single-view models; the aggregator reads studies")


SCHEDULES = ("constant", "cosine")


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def fit(config: FitConfig, run: Path, *, resume: bool = False) -> dict[str, Any]:
    """Train; returns the best epoch's metrics. Resumes from `run/last.pt` when asked."""
    ddp = _init_distributed()
    device = _device(ddp)
    _seed_everything(config.seed + ddp.rank)
    dataset = Path(config.dataset)
    mean, std = normalisation(dataset)
    augment = AugmentParams(**{**asdict(config.augment), "mean": mean, "std": std})
    config = FitConfig(**{**asdict(config), "augment": augment})
    model = _build(config).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its kernels
    optimiser = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr,
        weight_decay=config.weight_decay,
    )  # fmt: skip
    study_mode = config.arch == "aggregator"
    train_rows = read_views(dataset, ("train",))
    val_rows = read_views(dataset, ("val",))
    train_set: Dataset[Any]
    if study_mode:
        train_set = StudyDataset(train_rows, training_transform(augment))
        labels = train_set.labels
    else:
        train_set = ViewDataset(train_rows, training_transform(augment))
        labels = train_set.labels
    sampler = BalancedSampler(labels, seed=config.seed, rank=ddp.rank, world_size=ddp.world)
    steps_per_epoch = math.ceil(len(sampler) / config.batch_size)
    if config.max_steps:
        steps_per_epoch = min(steps_per_epoch, config.max_steps)
    scheduler = learning_rate_schedule(optimiser, config, steps_per_epoch)
    start_epoch, best = 0, {"val_auc_study": -1.0}
    if resume and (run / "last.pt").exists():
        state = torch.load(run / "last.pt", map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        if "scheduler" in state:
            scheduler.load_state_dict(state["scheduler"])
        start_epoch, best = state["epoch"] + 1, state["best"]
    if ddp.main:
        run.mkdir(parents=True, exist_ok=True)
        _write_config(run, config, dataset)
    wrapped: nn.Module = model
    if ddp.world > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    loader = DataLoader(
        train_set, batch_size=config.batch_size, sampler=sampler,
        num_workers=0 if config.preload else config.workers,
        collate_fn=collate_studies if study_mode else None, pin_memory=device.type == "cuda",
        persistent_workers=config.workers > 0 and not config.preload, drop_last=False,
    )  # fmt: skip
    train_views = val_views = None
    if config.preload:
        train_views = DeviceViews(train_rows, augment, device)
        val_views = DeviceViews(val_rows, augment, device) if ddp.main else None  # rank 0 validates
    loss_fn = nn.BCEWithLogitsLoss()
    for epoch in range(start_epoch, config.epochs):
        sampler.set_epoch(epoch)
        wrapped.train()
        started = time.perf_counter()
        total_loss, correct, seen = 0.0, 0, 0
        batches: Iterable[Any] = loader
        if train_views is not None:
            generator = torch.Generator(device).manual_seed(
                (config.seed * 100_003 + epoch) * 1_009 + ddp.rank
            )
            batches = train_views.batches(sampler, batch_size=config.batch_size,
                                          params=augment, generator=generator)  # fmt: skip
        bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                   unit="batch", disable=not ddp.main, leave=False)  # fmt: skip
        for step, batch in enumerate(bar):
            if config.max_steps and step >= config.max_steps:
                break
            inputs, target = _to_device(batch, device, study_mode)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = wrapped(*inputs)
                loss = loss_fn(logits.float(), target)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # bfloat16 autocast needs no loss scaling
            optimiser.step()
            scheduler.step()
            total_loss += float(loss.detach()) * len(target)
            correct += int(((logits.detach() > 0).float() == target).sum())
            seen += len(target)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
        elapsed = time.perf_counter() - started
        samples = seen * ddp.world  # views, or studies for the aggregator
        agree = _ranks_agree(model) if ddp.world > 1 else None
        if ddp.main:
            metrics = {
                "epoch": epoch + 1,
                "train_loss": total_loss / max(seen, 1),
                "train_accuracy": correct / max(seen, 1),
                "seconds": elapsed,
                "samples_per_second": samples / max(elapsed, 1e-9),
                "ranks": ddp.world,
                "ranks_agree": agree,
                "lr": scheduler.get_last_lr()[0],
                **_validate(model, val_rows, config, device, val_views),
            }
            improved = metrics["val_auc_study"] > best["val_auc_study"]
            if improved:
                best = metrics
            _checkpoint(run, model, optimiser, scheduler, epoch, best, config, improved)
            with (run / "metrics.jsonl").open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(metrics) + "\n")
            _plot(run)
            tqdm.write(
                f"epoch {epoch + 1}: loss {metrics['train_loss']:.4f}, val study AUC "
                f"{metrics['val_auc_study']:.4f}, {metrics['samples_per_second']:.1f} samples/s"
            )
        if ddp.world > 1:
            dist.barrier()
    if ddp.world > 1:
        dist.destroy_process_group()
    return best


def learning_rate_schedule(
    optimiser: torch.optim.Optimizer, config: FitConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step factor on the learning rate: linear warm-up, then constant or cosine to 0."""
    warmup = config.warmup_epochs * steps_per_epoch
    total = max(config.epochs * steps_per_epoch, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimiser, factor)


def _build(config: FitConfig) -> nn.Module:
    if config.arch != "aggregator":
        return build_model(arch=config.arch)
    trunk = None
    if config.init_from:
        trunk = build_model(arch=config.trunk_arch)
        trunk.load_state_dict(load_weights(Path(config.init_from)))
    return build_aggregator(trunk_arch=config.trunk_arch, trunk=trunk,
                            freeze_trunk=config.freeze_trunk)  # fmt: skip


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a run folder (its best.pt), a bundle folder (its weights.pt), a
    checkpoint or a weights file."""
    if path.is_dir():
        path = path / ("weights.pt" if (path / "model.json").exists() else "best.pt")
    state = torch.load(path, map_location="cpu", weights_only=False)
    weights: dict[str, torch.Tensor] = state.get("model", state)
    return weights


@torch.no_grad()
def predict_views(
    model: nn.Module,
    rows: list[Any],
    augment: AugmentParams,
    device: torch.device,
    batch_size: int = 32,
) -> np.ndarray:
    """Logits of a single-view model for `rows` (ViewRow), in order, no augmentation."""
    dataset = ViewDataset(rows, evaluation_transform(augment))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=0)
    model.eval()
    out = [model(x.to(device)).float().cpu() for x, _ in loader]
    return torch.cat(out).numpy() if out else np.zeros(0)


@torch.no_grad()
def predict_studies(
    model: nn.Module,
    rows: list[Any],
    augment: AugmentParams,
    device: torch.device,
    batch_size: int = 8,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(study ids, labels, logits) of the study-level aggregator."""
    dataset = StudyDataset(rows, evaluation_transform(augment))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=0, collate_fn=collate_studies)
    model.eval()
    logits = [model(v.to(device), m.to(device)).float().cpu() for v, m, _ in loader]
    ids = [study for study, _ in dataset.studies]
    labels = np.array(dataset.labels)
    return ids, labels, torch.cat(logits).numpy() if logits else np.zeros(0)


def _validate(
    model: nn.Module,
    rows: list[Any],
    config: FitConfig,
    device: torch.device,
    views: DeviceViews | None = None,
) -> dict[str, Any]:
    if not rows:
        return {"val_loss": float("nan"), "val_accuracy": float("nan"),
                "val_auc_instance": float("nan"), "val_auc_study": float("nan")}  # fmt: skip
    if config.arch == "aggregator":
        _, labels, logits = predict_studies(model, rows, config.augment, device)
        study_labels, study_scores = labels, 1 / (1 + np.exp(-logits))
        instance_auc = float("nan")
        view_labels, view_logits = labels, logits
    else:
        view_logits = (
            predict_device_views(model, views, config.augment)
            if views is not None
            else predict_views(model, rows, config.augment, device)
        )
        view_labels = np.array([r.label for r in rows])
        probabilities = 1 / (1 + np.exp(-view_logits))
        instance_auc = _safe_auc(view_labels, probabilities)
        ids, study_scores = aggregate_studies(
            [r.study for r in rows], probabilities, config.aggregation
        )
        first = {r.study: r.label for r in rows}
        study_labels = np.array([first[i] for i in ids])
    loss = float(
        nn.functional.binary_cross_entropy_with_logits(
            torch.as_tensor(view_logits), torch.as_tensor(view_labels, dtype=torch.float32)
        )
    )
    return {
        "val_loss": loss,
        "val_accuracy": float(((view_logits > 0) == (view_labels == 1)).mean()),
        "val_auc_instance": instance_auc,
        "val_auc_study": _safe_auc(study_labels, study_scores),
        "val_roc": [arr.tolist() for arr in roc_curve(study_labels, study_scores)[:2]]
        if len(set(study_labels.tolist())) == 2
        else [[], []],
    }


def _ranks_agree(model: nn.Module) -> bool:
    """DDP keeps replicas identical; check it (a cheap fingerprint of every parameter)."""
    fingerprint = torch.stack([p.detach().double().sum() for p in model.parameters()])
    gathered = [torch.zeros_like(fingerprint) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, fingerprint)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


def _safe_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    return roc_auc(labels, scores) if len(set(np.asarray(labels).tolist())) == 2 else float("nan")


def _to_device(
    batch: Any, device: torch.device, study_mode: bool
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    if study_mode:
        views, mask, target = batch
        return (views.to(device, non_blocking=True), mask.to(device)), target.to(device)
    images, target = batch
    images = images.to(device, non_blocking=True)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    return (images,), target.to(device)


def _checkpoint(
    run: Path,
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    epoch: int,
    best: dict[str, Any],
    config: FitConfig,
    improved: bool,
) -> None:
    state = {"model": model.state_dict(), "optimiser": optimiser.state_dict(),
             "scheduler": scheduler.state_dict(), "epoch": epoch, "best": best,
             "config": asdict(config)}  # fmt: skip
    folder = run / "checkpoints"
    folder.mkdir(exist_ok=True)
    _atomic_save(state, folder / f"epoch_{epoch + 1:03d}.pt")
    _atomic_save(state, run / "last.pt")
    if improved:
        _atomic_save(state, run / "best.pt")


def _atomic_save(state: dict[str, Any], path: Path) -> None:
    with atomic_writer(path, mode=0o644) as handle:
        torch.save(state, handle)


def _write_config(run: Path, config: FitConfig, dataset: Path) -> None:
    record = {
        **asdict(config),
        "git_commit": git_commit_of_code(),
        "dataset_hash": dataset_hash(dataset),
        "torch": torch.__version__,
    }
    (run / "config.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def dataset_hash(dataset: Path) -> str:
    """SHA-256 of the dataset's metadata.csv: it names every view, label and split."""
    return hashlib.sha256((dataset / "metadata.csv").read_bytes()).hexdigest()


def git_commit_of_code(here: Path | None = None) -> str:
    """HEAD's commit, with "+dirty" when tracked files differ from it (the run then used code
    that no commit holds)."""
    here = here or Path(__file__).resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess[str] | None:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=here,
                                  timeout=10, check=False)  # fmt: skip
        except OSError:
            return None

    head = git("rev-parse", "HEAD")
    if head is None or head.returncode != 0:
        return "unknown"
    changed = git("diff", "--quiet", "HEAD", "--")
    dirty = changed is not None and changed.returncode == 1
    return head.stdout.strip() + ("+dirty" if dirty else "")


def _plot(run: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (title, keys) in zip(
        axes,
        (
            ("loss", ("train_loss", "val_loss")),
            ("accuracy", ("train_accuracy", "val_accuracy")),
            ("AUC", ("val_auc_instance", "val_auc_study")),
        ),
        strict=True,
    ):
        for key in keys:
            ax.plot(epochs, [r[key] for r in rows], marker="o", label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(run / "curves.png", dpi=90)
    plt.close(fig)
    best = max(
        rows, key=lambda r: r["val_auc_study"] if r["val_auc_study"] == r["val_auc_study"] else -1
    )
    fpr, tpr = best.get("val_roc", [[], []])
    if fpr:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(fpr, tpr, label=f"epoch {best['epoch']}: AUC {best['val_auc_study']:.3f}")
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.set_title("validation ROC (study level)")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(run / "roc.png", dpi=90)
        plt.close(fig)


def _init_distributed() -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    return _Dist(rank=dist.get_rank(), world=world,
                 local_rank=int(os.environ.get("LOCAL_RANK", "0")))  # fmt: skip


def _device(ddp: _Dist) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(ddp.local_rank)
        return torch.device("cuda", ddp.local_rank)
    return torch.device("cpu")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
