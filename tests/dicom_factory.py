"""Small hand-made DICOM datasets for tests: every attribute explicit, nothing random."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pydicom
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset


def ramp(rows: int = 48, columns: int = 64, bits: int = 12) -> np.ndarray:
    """A deterministic image using the whole stored range: a ramp plus a bright disc."""
    full = (1 << bits) - 1
    y, x = np.mgrid[0:rows, 0:columns]
    image = (x / (columns - 1)) * 0.7 * full
    image[(y - rows / 2) ** 2 + (x - columns / 2) ** 2 < (rows / 4) ** 2] = full
    return np.rint(image).astype(np.uint8 if bits <= 8 else np.uint16)


def make_dataset(
    pixels: np.ndarray,
    *,
    bits_stored: int | None = None,
    sop_class: str = uid.ComputedRadiographyImageStorage,
    photometric: str = "MONOCHROME2",
    syntax: str = uid.ExplicitVRLittleEndian,
    **attributes: Any,
) -> Dataset:
    """A minimal, valid image dataset holding `pixels` natively, round-tripped through bytes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid(
        entropy_srcs=[str(pixels.shape), photometric, str(sorted(attributes))]
    )
    ds.file_meta.TransferSyntaxUID = syntax
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.Modality = "CR"
    ds.BodyPartExamined = "WRIST"
    set_pixels(ds, pixels, photometric, bits_stored=bits_stored or pixels.dtype.itemsize * 8)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return roundtrip(ds)


def set_pixels(ds: Dataset, pixels: np.ndarray, photometric: str, *, bits_stored: int) -> None:
    """The Image Pixel module of `ds` describing native `pixels` (grey, or RGB interleaved)."""
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = pixels.tobytes()


def roundtrip(ds: Dataset) -> Dataset:
    """Write to bytes and read back, as the node and the tools would see the instance."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)
