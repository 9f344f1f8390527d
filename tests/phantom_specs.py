"""A plain, fully specified synthetic wrist view for tests to vary with `dataclasses.replace`."""

from __future__ import annotations

from train.phantoms.anatomy import ViewSpec

PLAIN = ViewSpec(
    body_part="wrist",
    view="PA",
    height=512,
    width=384,
    angle_deg=0.0,
    fingers_down=False,
    fracture=None,
    implant=False,
    cast=False,
    marker=None,
    ruler=False,
    frame=None,
    parts=1,
    layout="single",
    specks=0,
    exposure=1.0,
    noise=0.005,
    blur=0.5,
    heel=0.0,
)
