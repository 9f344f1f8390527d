"""Fixtures of the node's tests: a model bundle that loads but cannot analyse anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DEMO_BUNDLE = Path(__file__).resolve().parents[2] / "config" / "models" / "wrist-demo"


@pytest.fixture
def broken_bundle(tmp_path: Path) -> Path:
    """The demo bundle with a normalisation mean of NaN: it loads, and every output is NaN."""
    bundle = tmp_path / "broken-bundle"
    bundle.mkdir()
    info = json.loads((DEMO_BUNDLE / "model.json").read_text(encoding="utf-8"))
    info["mean"] = float("nan")
    (bundle / "model.json").write_text(json.dumps(info), encoding="utf-8")
    (bundle / "weights.pt").symlink_to(DEMO_BUNDLE / "weights.pt")
    (bundle / "ood.npz").symlink_to(DEMO_BUNDLE / "ood.npz")
    (bundle / "view-reader").symlink_to(DEMO_BUNDLE / "view-reader")  # the bundle carries it
    return bundle
