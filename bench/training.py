"""Benchmark: training images per second (ResNet18 by default, 341x512, batch 32).

Three figures: compute only (random tensors already in memory); with data loading (PNG views of
a prepared dataset through the training augmentation and DataLoader workers); and with the views
preloaded into device memory and augmented there (`fit --preload`). On a GPU it uses bf16
autocast, channels-last and cuDNN autotuning, as `fit` does.

    .venv/bin/python bench/training.py [--dataset DATASET] [--arch resnet18] [--steps 10]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from pipeline.models import build_model
from train.data.augment import AugmentParams, training_transform
from train.data.datasets import ViewDataset, read_views
from train.data.device_data import DeviceViews


def _steps(model: torch.nn.Module, batches: object, device: torch.device, steps: int) -> float:
    optimiser = torch.optim.Adam(model.parameters(), 1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    seen, start = 0, 0.0
    for i, (x, y) in enumerate(batches):  # type: ignore[attr-defined]
        if i == 2:  # the first steps warm up kernels and caches
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, seen = time.perf_counter(), 0
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(model(x).float(), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        seen += len(y)
        if i + 1 >= steps + 2:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", type=Path)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    model = build_model(arch=args.arch).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.train()
    x = torch.randn(args.batch_size, 1, 512, 341)
    y = torch.randint(0, 2, (args.batch_size,)).float()
    batches = [(x, y)] * (args.steps + 2)
    name = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"CPU x{torch.get_num_threads()}"
    )
    rate = _steps(model, batches, device, args.steps)
    print(
        f"{args.arch} 341x512 batch {args.batch_size} on {name}: {rate:.1f} images/s (compute only)"
    )
    if args.dataset:
        dataset = ViewDataset(
            read_views(args.dataset, ("train",)), training_transform(AugmentParams())
        )
        loader = DataLoader(
            dataset,
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=args.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=args.workers > 0,
            drop_last=True,
        )
        rate = _steps(model, _cycle(loader), device, args.steps)
        print(
            f"{args.arch} 341x512 batch {args.batch_size} on {name}: {rate:.1f} images/s "
            f"(PNG loading + augmentation, {args.workers} workers)"
        )
        started = time.perf_counter()
        views = DeviceViews(read_views(args.dataset, ("train",)), AugmentParams(), device)
        loaded = time.perf_counter() - started
        rate = _steps(model, _device_batches(views, args.batch_size), device, args.steps)
        print(
            f"{args.arch} 341x512 batch {args.batch_size} on {name}: {rate:.1f} images/s "
            f"(preloaded into device memory, augmented there; {len(views)} views loaded in "
            f"{loaded:.1f} s)"
        )


def _device_batches(views: DeviceViews, batch_size: int) -> object:
    generator = torch.Generator(views.images.device).manual_seed(0)
    while True:
        order = torch.randperm(len(views)).tolist()
        yield from views.batches(
            order, batch_size=batch_size, params=AugmentParams(), generator=generator
        )


def _cycle(loader: DataLoader[tuple[torch.Tensor, torch.Tensor]]) -> object:
    while True:
        yield from loader


if __name__ == "__main__":
    main()
