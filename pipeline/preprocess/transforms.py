"""Affine maps between image pixel grids, so any model-input pixel maps back to the source image.

Convention (used everywhere in the pipeline and in `dicomnode-train preprocess` output): a 3x3
matrix maps an *output* pixel (x, y, 1) to the *input* pixel it samples, with x = column and
y = row measured at pixel centres. Composing steps multiplies their matrices in step order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Affine:
    """An affine map from output pixels to input pixels (see the module docstring)."""

    matrix: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, dtype=np.float64)
        if m.shape != (3, 3) or not np.allclose(m[2], (0.0, 0.0, 1.0)):
            raise ValueError(f"an affine matrix is 3x3 with last row (0, 0, 1), not {m.tolist()}")
        object.__setattr__(self, "matrix", m)

    @staticmethod
    def translation(dx: float, dy: float) -> Affine:
        """Output (x, y) samples input (x + dx, y + dy)."""
        return Affine(np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]]))

    @staticmethod
    def scaling(sx: float, sy: float) -> Affine:
        """Output (x, y) samples input (sx * x, sy * y)."""
        return Affine(np.array([[sx, 0.0, 0.0], [0.0, sy, 0.0], [0.0, 0.0, 1.0]]))

    @staticmethod
    def rotation(degrees: float) -> Affine:
        """The output is the input turned `degrees` counter-clockwise on screen (y points down),
        about the origin."""
        t = math.radians(degrees)
        c, s = math.cos(t), math.sin(t)
        # Turning the image CCW on screen by t means an output point samples the input point
        # obtained by turning it clockwise on screen; with y down that is this matrix.
        return Affine(np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]))

    def then(self, later: Affine) -> Affine:
        """The map of `later` applied to this step's output: output of `later` -> our input."""
        return Affine(self.matrix @ later.matrix)

    def inverse(self) -> Affine:
        """The map from input pixels to output pixels."""
        return Affine(np.linalg.inv(self.matrix))

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map an (N, 2) array of (x, y) output points to input points."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        mapped: np.ndarray = p @ self.matrix[:2, :2].T + self.matrix[:2, 2]
        return mapped

    @property
    def scale(self) -> float:
        """Input pixels per output pixel (geometric mean of the axes)."""
        return float(math.sqrt(abs(np.linalg.det(self.matrix[:2, :2]))))

    def as_list(self) -> list[list[float]]:
        """Row-major nested lists, for JSON."""
        return [[float(v) for v in row] for row in self.matrix]


def warp(
    image: np.ndarray,
    to_input: Affine,
    shape: tuple[int, int],
    *,
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """Resample `image` onto an output grid of `shape` (rows, columns) through `to_input`."""
    from scipy import ndimage

    m = to_input.matrix
    # ndimage indexes (row, column): swap x and y in the linear part and in the offset.
    linear = np.array([[m[1, 1], m[1, 0]], [m[0, 1], m[0, 0]]])
    offset = np.array([m[1, 2], m[0, 2]])
    out: np.ndarray = ndimage.affine_transform(
        image, linear, offset=offset, output_shape=shape, order=order, cval=cval, mode="constant"
    )
    return out
