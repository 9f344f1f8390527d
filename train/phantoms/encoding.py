"""Turn a rendered display-space image into stored values and write it in a transfer syntax.

Photometric situations (the cases a reader must get right):
- ``monochrome2``: low stored value = dark, the ordinary case;
- ``monochrome1``: the stored values run the other way and the tag says so;
- ``inverted``: a workstation inverted the pixels but kept MONOCHROME2, so the image *displays*
  with a white background and dark bone (the case the thesis's corner heuristic exists for).

Compressed syntaxes use pydicom's encoders (RLE, JPEG-LS, JPEG 2000) and dcmtk's reference
encoders for the JPEG process 1/2-4/14 family and Explicit VR Big Endian, which pydicom does not
write.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset

PHOTOMETRIC_SITUATIONS = ("monochrome2", "monochrome1", "inverted")
VOI_KINDS = ("window", "sigmoid", "voi_lut", "none")


@dataclass(frozen=True)
class SyntaxSpec:
    """A transfer syntax and the bit depths its encoder accepts."""

    uid: uid.UID
    max_bits: int
    lossy: bool
    method: str = ""
    """Lossy Image Compression Method code (PS3.3 C.7.6.1.1.5) for lossy syntaxes."""


TRANSFER_SYNTAXES: dict[str, SyntaxSpec] = {
    "explicit_le": SyntaxSpec(uid.ExplicitVRLittleEndian, 16, False),
    "implicit_le": SyntaxSpec(uid.ImplicitVRLittleEndian, 16, False),
    "explicit_be": SyntaxSpec(uid.ExplicitVRBigEndian, 16, False),
    "deflated": SyntaxSpec(uid.DeflatedExplicitVRLittleEndian, 16, False),
    "jpeg_baseline": SyntaxSpec(uid.JPEGBaseline8Bit, 8, True, "ISO_10918_1"),
    "jpeg_extended": SyntaxSpec(uid.JPEGExtended12Bit, 12, True, "ISO_10918_1"),
    "jpeg_lossless": SyntaxSpec(uid.JPEGLossless, 16, False),
    "jpeg_lossless_sv1": SyntaxSpec(uid.JPEGLosslessSV1, 16, False),
    "jpegls_lossless": SyntaxSpec(uid.JPEGLSLossless, 16, False),
    "jpegls_near_lossless": SyntaxSpec(uid.JPEGLSNearLossless, 16, True, "ISO_14495_1"),
    "j2k_lossless": SyntaxSpec(uid.JPEG2000Lossless, 16, False),
    "j2k_lossy": SyntaxSpec(uid.JPEG2000, 16, True, "ISO_15444_1"),
    "rle": SyntaxSpec(uid.RLELossless, 16, False),
}

_DCMTK_ENCODER_FLAGS: dict[str, list[str]] = {
    "jpeg_baseline": ["dcmcjpeg", "+eb", "+q", "92"],
    "jpeg_extended": ["dcmcjpeg", "+ee", "+q", "92"],
    "jpeg_lossless": ["dcmcjpeg", "+el"],
    "jpeg_lossless_sv1": ["dcmcjpeg", "+e1"],
    "explicit_be": ["dcmconv", "+tb"],
}


def to_stored(
    display: np.ndarray,
    *,
    photometric: str,
    bits_stored: int,
    voi: str,
    rng: np.random.Generator,
) -> tuple[np.ndarray, Dataset]:
    """Stored pixel values and the Image Pixel / VOI LUT attributes for a display image.

    The detector's raw range is narrower than the full scale and offset, as real ones are, so a
    reader that ignores the VOI (or its absence) shows a washed-out image.
    """
    if photometric not in PHOTOMETRIC_SITUATIONS:
        raise ValueError(f"unknown photometric situation {photometric!r}")
    if voi not in VOI_KINDS:
        raise ValueError(f"unknown VOI kind {voi!r}")
    full = (1 << bits_stored) - 1
    low = float(rng.uniform(0.02, 0.15)) * full
    span = float(rng.uniform(0.55, 0.8)) * full
    raw = low + display.astype(np.float64) * span
    stored = full - raw if photometric in ("monochrome1", "inverted") else raw
    dtype = np.uint8 if bits_stored <= 8 else np.uint16
    pixels = np.clip(np.rint(stored), 0, full).astype(dtype)

    attrs = Dataset()
    attrs.SamplesPerPixel = 1
    attrs.PhotometricInterpretation = (
        "MONOCHROME1" if photometric == "monochrome1" else "MONOCHROME2"
    )
    attrs.Rows, attrs.Columns = (int(n) for n in pixels.shape)
    attrs.BitsAllocated = 8 if bits_stored <= 8 else 16
    attrs.BitsStored = bits_stored
    attrs.HighBit = bits_stored - 1
    attrs.PixelRepresentation = 0
    # A window over the stored range: displays the image as rendered (inverted ones stay
    # inverted, MONOCHROME1 is inverted back by the reader).
    stored_low = full - low - span if photometric in ("monochrome1", "inverted") else low
    center, width = stored_low + span / 2.0, span
    if voi == "window":
        attrs.WindowCenter = f"{center:.1f}"
        attrs.WindowWidth = f"{width:.1f}"
    elif voi == "sigmoid":
        attrs.WindowCenter = f"{center:.1f}"
        attrs.WindowWidth = f"{width / 2.0:.1f}"
        attrs.VOILUTFunction = "SIGMOID"
    elif voi == "voi_lut":
        attrs.VOILUTSequence = [_voi_lut_item(stored_low, span)]
    return pixels, attrs


def _voi_lut_item(low: float, span: float) -> Dataset:
    """A 16-bit output VOI LUT with a gentle gamma, one entry per raw value of the range.

    PS3.3 C.11.2.1.1: the third LUT Descriptor value (bits per entry) is 8 or 16."""
    first = int(low)
    entries = int(span) + 1
    x = np.arange(entries, dtype=np.float64) / span
    data = np.clip(np.rint(65535.0 * np.clip(x, 0.0, 1.0) ** 0.8), 0, 65535).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [entries, first, 16]
    item["LUTDescriptor"].VR = "US"
    item.LUTExplanation = "Synthetic bone VOI"
    # OW, not US: a US element's 16-bit length cannot hold more than 32767 entries.
    item.add_new("LUTData", "OW", data.astype("<u2").tobytes())
    return item


def write_instance(ds: Dataset, pixels: np.ndarray, syntax: str, path: Path) -> None:
    """Write `ds` with `pixels` in the named transfer syntax to `path`."""
    spec = TRANSFER_SYNTAXES[syntax]
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OB" if pixels.dtype == np.uint8 else "OW"
    if spec.lossy:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = spec.method
    if syntax in _DCMTK_ENCODER_FLAGS:
        _encode_with_dcmtk(ds, _DCMTK_ENCODER_FLAGS[syntax], path)
        return
    if syntax in ("explicit_le", "implicit_le", "deflated"):
        ds.file_meta.TransferSyntaxUID = spec.uid
        ds.save_as(path, enforce_file_format=True)
        return
    # generate_instance_uid=False: the synthetic truth is keyed by the SOP Instance UID.
    if syntax == "jpegls_near_lossless":
        ds.compress(spec.uid, pixels, generate_instance_uid=False, jls_error=2)
    elif syntax == "j2k_lossy":
        ds.compress(spec.uid, pixels, generate_instance_uid=False, j2k_cr=[15])
    else:
        ds.compress(spec.uid, pixels, generate_instance_uid=False)
    if spec.lossy:
        ratio = pixels.nbytes / max(len(ds.PixelData), 1)
        ds.LossyImageCompressionRatio = f"{ratio:.2f}"
    ds.save_as(path, enforce_file_format=True)


def _encode_with_dcmtk(ds: Dataset, command: list[str], path: Path) -> None:
    if shutil.which(command[0]) is None:
        raise RuntimeError(
            f"{command[0]} (dcmtk) is needed to write this transfer syntax: run `make install`"
        )
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in.dcm"
        ds.save_as(source, enforce_file_format=True)
        # +un keeps the SOP Instance UID: the synthetic truth is keyed by it.
        extra = ["+un"] if command[0] == "dcmcjpeg" else []
        result = subprocess.run(
            [*command, *extra, str(source), str(path)], capture_output=True, text=True, check=False
        )
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed on {path.name}: {result.stderr.strip()}")
