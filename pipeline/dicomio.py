"""Read a wrist radiograph from DICOM into display space (what the radiologist sees: bone bright).

The grey-level chain follows PS3.3 C.11: stored values -> Modality LUT (Rescale Slope/Intercept or
Modality LUT Sequence) -> VOI LUT (Window Center/Width with LINEAR, LINEAR_EXACT or SIGMOID, or a
VOI LUT Sequence) -> Presentation (MONOCHROME1 is inverted). When the instance carries no VOI, a
robust percentile window is used. The whole chain is folded into one lookup table indexed by the
stored value, which is how viewers do it and why a 2500x3000 image maps in milliseconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import UID

from pipeline.dicom.uids import RADIOGRAPH_SOP_CLASSES, is_valid_uid

MAX_SIDE = 10_000
"""Largest Rows or Columns accepted: no wrist detector is larger; beyond it is an error or abuse."""

PREFERRED_DECODERS: dict[str, str] = {
    # The fastest plugin measured per syntax on a 2500x3000 16-bit image (bench/decode.py):
    # openjpeg 1.1 s vs GDCM 1.3 s for JPEG 2000, CharLS 0.17 s vs GDCM 0.36 s for JPEG-LS;
    # GDCM cannot decode 12-bit JPEG Extended at all.
    str(pydicom.uid.JPEG2000Lossless): "pylibjpeg",
    str(pydicom.uid.JPEG2000): "pylibjpeg",
    str(pydicom.uid.JPEGLSLossless): "pyjpegls",
    str(pydicom.uid.JPEGLSNearLossless): "pyjpegls",
    str(pydicom.uid.JPEGExtended12Bit): "pylibjpeg",
    str(pydicom.uid.JPEGBaseline8Bit): "pylibjpeg",
    str(pydicom.uid.JPEGLossless): "pylibjpeg",
    str(pydicom.uid.JPEGLosslessSV1): "pylibjpeg",
    str(pydicom.uid.RLELossless): "pylibjpeg",
}

PERCENTILE_WINDOW = (0.5, 99.5)
"""Percentiles of the modality values that bound the window when the instance has no VOI."""


class DicomImageError(ValueError):
    """An instance that cannot become a display-space radiograph; the message says why and which."""


class UnsupportedImage(DicomImageError):
    """A well-formed instance of a kind this product does not analyse (multi-frame, colour
    palette, another SOP class, an absurd size)."""


class CorruptImage(DicomImageError):
    """An instance whose content is broken: unreadable header, missing or truncated pixel data,
    attributes that contradict the data."""


@dataclass(frozen=True)
class Radiograph:
    """A decoded radiograph in display space, with the metadata the pipeline and the node use."""

    pixels: np.ndarray
    """float32, shape (rows, columns), values in [0, 1], bone bright."""
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    body_part_examined: str
    study_description: str
    series_description: str
    view_position: str
    laterality: str
    image_laterality: str
    pixel_spacing: tuple[float, float] | None
    """Row and column spacing in mm: Pixel Spacing, else Imager Pixel Spacing, else None."""
    photometric_interpretation: str
    manufacturer: str
    rows: int
    columns: int
    bits_stored: int
    transfer_syntax_uid: str
    voi_source: str
    """Which rule mapped values to grey: 'voi_lut_sequence', 'window', or 'percentile'."""


def read_radiograph(source: Dataset | str | os.PathLike[str]) -> Radiograph:
    """Decode a radiograph from a dataset or a file path into display space.

    Raises `UnsupportedImage` or `CorruptImage` with a message naming the SOP Instance UID
    (and the file, when given a path).
    """
    where = f" in {source}" if not isinstance(source, Dataset) else ""
    ds = _load(source) if not isinstance(source, Dataset) else source
    uid = _parsed_header(ds, where)
    label = f"SOP Instance {uid}{where}"
    _check_attributes(ds, label)
    stored = _decode(ds, label)
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if stored.ndim == 3:
        pixels, voi_source = _colour_to_display(stored), "percentile"
    else:
        pixels, voi_source = _grey_to_display(stored, ds, label)
    if photometric == "MONOCHROME1":
        np.subtract(1.0, pixels, out=pixels)
    return Radiograph(
        pixels=pixels,
        sop_instance_uid=uid,
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        study_instance_uid=str(ds.get("StudyInstanceUID", "")),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        modality=_text(ds, "Modality"),
        body_part_examined=_text(ds, "BodyPartExamined"),
        study_description=_text(ds, "StudyDescription"),
        series_description=_text(ds, "SeriesDescription"),
        view_position=_text(ds, "ViewPosition"),
        laterality=_text(ds, "Laterality"),
        image_laterality=_text(ds, "ImageLaterality"),
        pixel_spacing=_pixel_spacing(ds),
        photometric_interpretation=photometric,
        manufacturer=_text(ds, "Manufacturer"),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        bits_stored=int(ds.BitsStored),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        voi_source=voi_source,
    )


def _load(path: str | os.PathLike[str]) -> Dataset:
    try:
        return pydicom.dcmread(Path(path))
    except InvalidDicomError as exc:
        raise CorruptImage(f"{path} is not a DICOM file: {exc}") from exc
    except FileNotFoundError:
        raise
    except Exception as exc:  # pydicom raises many kinds on a broken header
        raise CorruptImage(f"{path}: the DICOM header cannot be parsed ({exc})") from exc


def _parsed_header(ds: Dataset, where: str) -> str:
    """Parse every element now (pydicom is lazy), so a broken header fails here, clearly, and
    return the SOP Instance UID for messages."""
    try:
        for _ in ds:
            pass
        uid = str(ds.get("SOPInstanceUID", "") or "")
    except Exception as exc:  # a corrupt element can raise almost anything
        raise CorruptImage(f"instance{where}: the DICOM header is corrupt ({exc})") from exc
    if not uid:
        return "<no SOP Instance UID>"
    if not is_valid_uid(uid):
        raise CorruptImage(f"instance{where}: SOP Instance UID {uid[:80]!r} is not a valid UID")
    return uid


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            try:
                return float(value[0]), float(value[1])
            except (TypeError, ValueError):
                return None
    return None


def _required_int(ds: Dataset, keyword: str, label: str) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        raise CorruptImage(f"{label}: {keyword} is missing")
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise CorruptImage(f"{label}: {keyword} is not a number ({value!r})") from exc


def _check_attributes(ds: Dataset, label: str) -> None:
    """Reject what cannot be decoded before spending time (or memory) on the pixel data."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class and not is_valid_uid(sop_class):
        raise CorruptImage(f"{label}: SOP Class UID {sop_class[:80]!r} is not a valid UID")
    if sop_class not in RADIOGRAPH_SOP_CLASSES:
        name = UID(sop_class).name if sop_class else "missing"
        raise UnsupportedImage(
            f"{label}: SOP Class {name} is not a radiograph this product reads "
            "(CR, DX For Presentation/Processing, Secondary Capture)"
        )
    if "PixelData" not in ds:
        raise CorruptImage(f"{label}: the instance has no Pixel Data")
    if not ds.PixelData:  # zero length: pydicom holds None
        raise CorruptImage(f"{label}: the Pixel Data is empty")
    if ds.get("NumberOfFrames") not in (None, ""):  # IS: pydicom may hold 'x' as a string
        frames = _required_int(ds, "NumberOfFrames", label)
        if frames > 1:
            raise UnsupportedImage(
                f"{label}: multi-frame images ({frames} frames) are not supported"
            )
    rows = _required_int(ds, "Rows", label)
    columns = _required_int(ds, "Columns", label)
    if rows <= 0 or columns <= 0:
        raise CorruptImage(f"{label}: Rows x Columns is {rows} x {columns}")
    if rows > MAX_SIDE or columns > MAX_SIDE:
        raise UnsupportedImage(
            f"{label}: {rows} x {columns} pixels exceeds the {MAX_SIDE} px limit per side"
        )
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    samples = _required_int(ds, "SamplesPerPixel", label)
    grey = photometric in ("MONOCHROME1", "MONOCHROME2")
    colour = photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT")
    if not (grey or colour):
        raise UnsupportedImage(
            f"{label}: Photometric Interpretation {photometric or 'missing'} is not supported"
        )
    if samples != (1 if grey else 3):
        raise CorruptImage(f"{label}: {samples} samples per pixel contradicts {photometric}")
    allocated = _required_int(ds, "BitsAllocated", label)
    stored = _required_int(ds, "BitsStored", label)
    high = _required_int(ds, "HighBit", label)
    if allocated not in (8, 16):
        raise UnsupportedImage(f"{label}: Bits Allocated {allocated} is not supported (8 or 16)")
    if not 1 <= stored <= allocated or high != stored - 1:
        raise CorruptImage(
            f"{label}: Bits Allocated/Stored/High Bit ({allocated}/{stored}/{high}) disagree"
        )
    if colour and allocated != 8:
        raise UnsupportedImage(f"{label}: {allocated}-bit colour images are not supported")
    if not _transfer_syntax(ds, label).is_encapsulated:
        expected = rows * columns * samples * allocated // 8
        actual = len(ds.PixelData)
        if actual < expected:
            raise CorruptImage(
                f"{label}: Pixel Data is truncated ({actual} bytes, {rows} x {columns} "
                f"at {allocated} bits needs {expected})"
            )
        if actual > expected + 1:
            raise CorruptImage(
                f"{label}: Rows x Columns ({rows} x {columns}) do not match the Pixel Data "
                f"({actual} bytes, expected {expected})"
            )


def _transfer_syntax(ds: Dataset, label: str) -> UID:
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        raise CorruptImage(f"{label}: no Transfer Syntax UID in the file meta information")
    return UID(meta.TransferSyntaxUID)


def _decode(ds: Dataset, label: str) -> np.ndarray:
    preferred = PREFERRED_DECODERS.get(_transfer_syntax(ds, label), "")
    try:
        arr = _pixel_array(ds, preferred)
    except Exception as first:  # every decoder plugin has its own exception types
        if not preferred:
            raise CorruptImage(f"{label}: the pixel data cannot be decoded ({first})") from first
        try:  # the preferred plugin may be missing or refuse a variant: let pydicom choose
            arr = _pixel_array(ds, "")
        except Exception as exc:
            raise CorruptImage(f"{label}: the pixel data cannot be decoded ({exc})") from exc
    rows, columns = int(ds.Rows), int(ds.Columns)
    if arr.shape[:2] != (rows, columns):
        raise CorruptImage(
            f"{label}: Rows x Columns ({rows} x {columns}) do not match the decoded image "
            f"{arr.shape[0]} x {arr.shape[1]}"
        )
    return np.asarray(arr)


def _pixel_array(ds: Dataset, plugin: str) -> np.ndarray:
    """`ds.pixel_array` decoded by `plugin` ("" lets pydicom choose).

    A decoder written in Rust (pylibjpeg-rle) panics on some malformed fragments; pyo3 raises
    that as PanicException, a BaseException, which would escape every `except Exception`:
    it is turned into a RuntimeError here. Other BaseExceptions (KeyboardInterrupt) pass."""
    try:
        ds.pixel_array_options(decoding_plugin=plugin)
        return np.asarray(ds.pixel_array)
    except Exception:
        raise
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":
            raise
        raise RuntimeError(f"the {plugin or 'default'} decoder panicked: {exc}") from exc


def _colour_to_display(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luminance of an 8-bit RGB secondary capture, scaled to [0, 1]."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32) / np.float32(255.0)
    return np.clip(rgb.astype(np.float32) @ weights, 0.0, 1.0).astype(np.float32)


def _grey_to_display(stored: np.ndarray, ds: Dataset, label: str) -> tuple[np.ndarray, str]:
    """Map stored values to [0, 1] through one lookup table spanning the stored value range."""
    bits = int(ds.BitsStored)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    low = -(1 << (bits - 1)) if signed else 0
    high = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    # Out-of-range values (overlay bits, sloppy encoders) are clipped, never used as indices.
    index = np.clip(stored, low, high) if stored.min() < low or stored.max() > high else stored
    index = (index.astype(np.int32) - low) if low else index
    domain = np.arange(low, high + 1, dtype=np.int64)
    values = _modality(domain, ds, label)
    lut, source = _voi(values, ds, label, index)
    return lut[index], source


def _modality(domain: np.ndarray, ds: Dataset, label: str) -> np.ndarray:
    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(domain, ds), dtype=np.float64)
    slope = _number(ds, "RescaleSlope", label) or 1.0
    intercept = _number(ds, "RescaleIntercept", label) or 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        values = domain * slope + intercept
    if not np.isfinite(values).all():
        raise CorruptImage(
            f"{label}: Rescale Slope {slope} and Intercept {intercept} overflow the value range"
        )
    return values


def _voi(values: np.ndarray, ds: Dataset, label: str, index: np.ndarray) -> tuple[np.ndarray, str]:
    """The float32 display LUT over the modality values, and which VOI rule produced it."""
    if "VOILUTSequence" in ds and ds.VOILUTSequence:
        return _voi_lut_sequence(values, ds.VOILUTSequence[0], label), "voi_lut_sequence"
    center = _number(ds, "WindowCenter", label)
    width = _number(ds, "WindowWidth", label)
    if center is not None and width is not None:
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        return _window(values, center, width, function, label), "window"
    lo, hi = _percentiles(values, index)
    width = max(hi - lo, 1e-6)
    return _unit((values - lo) / width), "percentile"


def _voi_lut_sequence(values: np.ndarray, item: Dataset, label: str) -> np.ndarray:
    """PS3.3 C.11.2.1.1: values below the first mapped one take the first entry, above the last
    the last entry. Done here rather than by pydicom, which assumes integer input."""
    try:
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        raw = item.LUTData
    except (AttributeError, TypeError, ValueError) as exc:
        raise CorruptImage(f"{label}: the VOI LUT Sequence is malformed ({exc})") from exc
    entries = entries or 65536  # PS3.3: 0 means 2^16 entries
    if isinstance(raw, bytes):
        data = np.frombuffer(raw, dtype="<u2" if bits > 8 or len(raw) >= 2 * entries else "u1")
    else:
        data = np.asarray(raw if isinstance(raw, list | tuple) else [raw], dtype=np.float64)
    if data.size < entries or not 1 <= bits <= 16:
        raise CorruptImage(f"{label}: the VOI LUT has {data.size} of {entries} entries")
    index = np.clip(np.rint(values) - first, 0, entries - 1).astype(np.int64)
    return _unit(data[index].astype(np.float64) / float((1 << bits) - 1))


def _number(ds: Dataset, keyword: str, label: str) -> float | None:
    """A DS attribute (its first value) as a finite float; None when absent or empty;
    CorruptImage when it is not a finite number (pydicom keeps 'abc' as a string)."""
    value = ds.get(keyword)
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise CorruptImage(f"{label}: {keyword} {str(value)[:40]!r} is not a number") from exc
    if not np.isfinite(number):
        raise CorruptImage(f"{label}: {keyword} {number} is not a finite number")
    return number


def _window(
    values: np.ndarray, center: float, width: float, function: str, label: str
) -> np.ndarray:
    """PS3.3 C.11.2.1.2 window functions, with the output range taken as [0, 1]."""
    if function == "SIGMOID":
        if width <= 0:
            raise CorruptImage(f"{label}: Window Width {width} must be positive for SIGMOID")
        return _unit(1.0 / (1.0 + np.exp(-4.0 * (values - center) / width)))
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise CorruptImage(f"{label}: Window Width {width} must be positive for LINEAR_EXACT")
        return _unit((values - center) / width + 0.5)
    if width < 1:
        raise CorruptImage(f"{label}: Window Width {width} must be at least 1 for LINEAR")
    return _unit((values - (center - 0.5)) / (width - 1.0) + 0.5)


def _percentiles(values: np.ndarray, index: np.ndarray) -> tuple[float, float]:
    """Percentile window of the modality values, from the stored-value histogram (no sort)."""
    histogram = np.bincount(index.ravel(), minlength=values.size)[: values.size]
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(histogram[order])
    total = cumulative[-1]
    lo_rank, hi_rank = (total * p / 100.0 for p in PERCENTILE_WINDOW)
    lo = values[order[min(np.searchsorted(cumulative, lo_rank), values.size - 1)]]
    hi = values[order[min(np.searchsorted(cumulative, hi_rank), values.size - 1)]]
    return float(lo), float(hi)


def _unit(x: np.ndarray) -> np.ndarray:
    unit: np.ndarray = np.clip(x, 0.0, 1.0).astype(np.float32)
    return unit
