"""Does the model bundle work? Loaded, then run once on a blank image of its own input size.

`serve` and `check-config` check this before starting (in a short-lived process: the receiver
never imports torch). A worker checks it when it starts and again when an analysis fails, which
tells a broken model (the study stays queued, the worker stops) from a bad study (it fails).
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.inference import ModelBundle

MAX_REASON_CHARS = 300


class ModelFault(Exception):
    """The model cannot analyse anything; the message says which bundle and why."""


@dataclass(frozen=True)
class BundleCheck:
    """The outcome of `check_bundle`: the model's name and version, or the problem."""

    name: str = ""
    version: str = ""
    problem: str = ""
    """One line on why the bundle cannot be used; empty when it works."""


def describe(exc: BaseException) -> str:
    """An exception as one bounded line (torch's messages can run over many lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


def self_test(bundle: ModelBundle) -> None:
    """Raise ModelFault unless the model classifies a blank mid-grey image of its input size,
    heat map and learned aggregator included, with finite outputs."""
    import torch

    from pipeline.gradcam import grad_cam

    info = bundle.info
    try:
        grey = (0.5 - info.mean) / info.std
        image = torch.full((1, 1, info.input_height, info.input_width), grey,
                           device=bundle.device)  # fmt: skip
        logit, _ = grad_cam(bundle.model, image)
        outputs = [logit]
        if bundle.aggregator is not None:
            mask = torch.ones((1, 1), dtype=torch.bool, device=bundle.device)
            with torch.no_grad():
                outputs.append(float(bundle.aggregator(image[None], mask)[0]))
    except Exception as exc:
        raise ModelFault(f"{bundle.path}: the model fails on a blank image: "
                         f"{type(exc).__name__}: {describe(exc)}") from exc  # fmt: skip
    if not all(math.isfinite(value) for value in outputs):
        raise ModelFault(f"{bundle.path}: the model's output for a blank image is not a number")


def load_checked(path: Path) -> ModelBundle:
    """Load the bundle at `path` and self-test it (imports torch); ModelFault, naming the
    bundle, when it cannot be used."""
    from pipeline.inference import ModelBundle

    try:
        bundle = ModelBundle.load(path)
    except Exception as exc:  # BundleError names the file; a state dict mismatch does not
        raise ModelFault(describe(exc) if str(path) in str(exc) else
                         f"{path}: cannot be loaded: {describe(exc)}") from exc  # fmt: skip
    self_test(bundle)
    return bundle


def check_bundle(path: Path) -> BundleCheck:
    """`load_checked` in this process, its outcome as a `BundleCheck`."""
    try:
        bundle = load_checked(path)
    except ModelFault as exc:
        return BundleCheck(problem=str(exc))
    return BundleCheck(bundle.info.name, bundle.info.version)


def check_bundle_apart(path: Path, timeout_s: float = 600.0) -> BundleCheck:
    """`check_bundle` in a process of its own, so this one never loads torch or the model."""
    context = get_context("spawn")  # fork would copy the receiver's threads and sockets
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            return pool.submit(check_bundle, path).result(timeout=timeout_s)
    except BrokenProcessPool:
        return BundleCheck(problem=f"{path}: loading it crashed the process")
    except TimeoutError:
        return BundleCheck(problem=f"{path}: not loaded within {timeout_s:.0f} s")
