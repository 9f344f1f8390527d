"""The catalogue of bad inputs the node must survive, each numbered, with what it must answer.

Every C-STORE case is a `Case`: a builder of the exact bytes an SCU puts on the wire (`Sent`:
the request's SOP Class and Instance UIDs, the presentation context's transfer syntax and the
dataset as encoded, right or wrong) and the expected outcome: the DIMSE status, a piece of the
node's log line, and for an accepted instance what `pipeline.dicomio.read_radiograph` makes of
the stored file. The association-level cases (half a PDU, idle connections, SOP classes we do
not serve) are listed in `ASSOCIATION_CASES` and tested one by one in test_bad_input.py.

Everything is deterministic: UIDs come from the case number, pixels from a fixed ramp.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.encoders.base import RLELosslessEncoder
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode, encode_file_meta

from pipeline.dicom import dimse
from pipeline.dicomio import CorruptImage, DicomImageError, UnsupportedImage
from tests.dicom_factory import set_pixels

UID_ROOT = "1.2.826.0.1.3680043.8.498.4242"
"""Root of every UID the catalogue makes (under pydicom's root, so never a real patient's)."""

CR = ComputedRadiographyImageStorage
SC = SecondaryCaptureImageStorage
DX = DigitalXRayImageStorageForPresentation

CANNOT_UNDERSTAND = dimse.CANNOT_UNDERSTAND
MISMATCH = dimse.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
OUT_OF_RESOURCES = dimse.OUT_OF_RESOURCES
SUCCESS = dimse.SUCCESS

READABLE = "readable"
"""`Case.read` for an accepted instance that read_radiograph turns into an image."""


@dataclass(frozen=True)
class Sent:
    """One C-STORE as put on the wire."""

    sop_class: str
    """The request's Affected SOP Class UID (so the file meta's, and the context's)."""
    sop_uid: str
    """The request's Affected SOP Instance UID."""
    syntax: str
    """The presentation context's transfer syntax."""
    payload: bytes
    """The dataset as encoded, without file meta."""
    study_uid: str
    """The Study Instance UID the dataset claims (where the spool keeps an accepted one)."""


@dataclass(frozen=True)
class Case:
    """A bad C-STORE and the node's required answer."""

    number: int
    name: str
    build: Callable[[], Sent]
    status: int
    log: str
    """A piece of the node's log line for this instance."""
    read: type[DicomImageError] | str | None = None
    """For an accepted instance: READABLE, or the error read_radiograph must raise."""
    read_message: str = ""
    """A piece of that error's message."""
    secrets: tuple[str, ...] = field(default=())
    """Text of the dataset that must never reach a log line: patient data, and the raw value
    of a malicious UID in the dataset (one in the request, pynetdicom's command decoding
    quotes itself, through pydicom's logger too)."""

    @property
    def id(self) -> str:
        """The pytest id: number and name."""
        return f"{self.number:02d}-{self.name}"


def uid(case: int, item: int) -> str:
    """A deterministic UID for case `case`, item `item`."""
    return f"{UID_ROOT}.{case}.{item}"


def ramp(rows: int = 48, columns: int = 64, bits: int = 12) -> np.ndarray:
    """A deterministic grey ramp using the whole stored range."""
    full = (1 << bits) - 1
    image = np.linspace(0, full, rows * columns).reshape(rows, columns)
    return np.rint(image).astype(np.uint8 if bits <= 8 else np.uint16)


def image(
    case: int,
    pixels: np.ndarray | None = None,
    *,
    sop_class: str = CR,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    **attributes: object,
) -> Dataset:
    """A valid radiograph dataset (no file meta) for case `case`: UIDs from the case number."""
    pixels = ramp() if pixels is None else pixels
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid(case, 3)
    ds.StudyInstanceUID = uid(case, 1)
    ds.SeriesInstanceUID = uid(case, 2)
    ds.PatientName = "Bad^Input"
    ds.PatientID = f"BAD{case:04d}"
    ds.Modality = "CR" if sop_class == CR else "DX" if sop_class == DX else "OT"
    ds.BodyPartExamined = "WRIST"
    allocated = pixels.dtype.itemsize * 8
    default_stored = 12 if allocated == 16 else allocated
    set_pixels(ds, pixels, photometric, bits_stored=bits_stored or default_stored)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def encoded(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    """`ds` encoded as `syntax` says (deflated too)."""
    ts = UID(syntax)
    data = encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
    assert data is not None
    return data


def sent(ds: Dataset, syntax: str = ExplicitVRLittleEndian, payload: bytes | None = None) -> Sent:
    """A C-STORE of `ds` (or of `payload`, claimed to be it) with the request taken from it."""
    return Sent(
        sop_class=str(ds.SOPClassUID),
        sop_uid=str(ds.SOPInstanceUID),
        syntax=syntax,
        payload=encoded(ds, syntax) if payload is None else payload,
        study_uid=str(ds.StudyInstanceUID),
    )


def without_pixels(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    """`ds` encoded without its Pixel Data (to append a hand-made one)."""
    copy = Dataset(ds)
    del copy.PixelData
    return encoded(copy, syntax)


def pixel_element(value: bytes, *, length: int | None = None, explicit: bool = True) -> bytes:
    """A native Pixel Data element (OW) holding `value`, declaring `length` (default: its own)."""
    declared = len(value) if length is None else length
    if explicit:
        return struct.pack("<HH2s2xL", 0x7FE0, 0x0010, b"OW", declared) + value
    return struct.pack("<HHL", 0x7FE0, 0x0010, declared) + value


def encapsulated_element(fragments: list[bytes]) -> bytes:
    """An encapsulated Pixel Data element (OB, undefined length): empty offset table, one
    fragment per frame, sequence delimiter."""
    items = encapsulate(fragments, has_bot=False)
    delimiter = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return struct.pack("<HH2s2xL", 0x7FE0, 0x0010, b"OB", 0xFFFFFFFF) + items + delimiter


def rle_fragment(pixels: np.ndarray) -> bytes:
    """One frame of `pixels` RLE Lossless encoded (pydicom's own encoder)."""
    bits = pixels.dtype.itemsize * 8
    return RLELosslessEncoder.encode(
        pixels.tobytes(),
        rows=pixels.shape[0],
        columns=pixels.shape[1],
        samples_per_pixel=1,
        bits_allocated=bits,
        bits_stored=bits,
        photometric_interpretation="MONOCHROME2",
        pixel_representation=0,
        number_of_frames=1,
        byteorder="<",
    )


def store_event(item: Sent) -> Any:
    """The C-STORE event pynetdicom would hand `handle_store` for `item` (cf. the fake events
    of tests/dicomnode/test_scp.py): the request, the context's syntax, the bytes as sent."""
    request = C_STORE()
    request.AffectedSOPClassUID = item.sop_class
    request.AffectedSOPInstanceUID = item.sop_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(item.sop_class)
    meta.MediaStorageSOPInstanceUID = UID(item.sop_uid)
    meta.TransferSyntaxUID = UID(item.syntax)
    whole = b"\0" * 128 + b"DICM" + encode_file_meta(meta) + item.payload

    def encoded_dataset(include_meta: bool = True) -> bytes:
        return whole if include_meta else item.payload

    requestor = SimpleNamespace(ae_title="BADINPUT", address="127.0.0.1")
    return SimpleNamespace(
        context=SimpleNamespace(transfer_syntax=UID(item.syntax)),
        encoded_dataset=encoded_dataset,
        request=request,
        assoc=SimpleNamespace(name="bad-input-assoc", requestor=requestor),
    )


def good(case: int) -> Sent:
    """A valid CR instance for case `case` (the one that must still store after a bad one)."""
    ds = image(case)
    ds.SOPInstanceUID = uid(case, 9)  # not the bad instance's UID
    return sent(ds)


def deflate_bomb(case: int, inflated_bytes: int = 600_000_000) -> Sent:
    """A deflated dataset whose Pixel Data inflates to `inflated_bytes` zeros (~0.6 MB sent).

    The header is consistent (10000 x 10000 RGB at 16 bits is 600 MB), so only its inflated
    size gives it away."""
    ds = image(case, ramp(4, 4), photometric="RGB")
    ds.Rows = ds.Columns = 10_000
    ds.SamplesPerPixel, ds.PlanarConfiguration, ds.BitsStored, ds.HighBit = 3, 0, 16, 15
    header = without_pixels(ds) + pixel_element(b"", length=inflated_bytes)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(header)]
    chunk = bytes(16 << 20)
    left = inflated_bytes
    while left:
        parts.append(compressor.compress(chunk[: min(left, len(chunk))]))
        left -= min(left, len(chunk))
    parts.append(compressor.flush())
    return sent(ds, DeflatedExplicitVRLittleEndian, b"".join(parts))


# --- builders of the bad instances, one per case ---------------------------------------------


def _truncated_header(n: int) -> Sent:
    data = encoded(image(n))
    series = data.index(b"\x20\x00\x0e\x00UI")  # cut inside Series Instance UID's value
    return sent(image(n), payload=data[: series + 12])


def _truncated_pixels(n: int) -> Sent:
    data = encoded(image(n))
    return sent(image(n), payload=data[: len(data) - 1000])


def _truncated_fragments(n: int) -> Sent:
    ds = image(n)
    data = without_pixels(ds, RLELossless) + encapsulated_element([rle_fragment(ramp())])
    return sent(ds, RLELossless, data[:-200])


def _cut_in_element_header(n: int) -> Sent:
    ds = image(n)
    return sent(ds, payload=without_pixels(ds) + pixel_element(b"")[:5])


def _empty(n: int) -> Sent:
    return sent(image(n), payload=b"")


def _garbage(n: int) -> Sent:
    junk = bytes((i * 131 + 7) % 256 for i in range(4096))
    return sent(image(n), payload=junk)


def _implicit_as_explicit(n: int) -> Sent:
    ds = image(n)
    return sent(ds, ExplicitVRLittleEndian, encoded(ds, ImplicitVRLittleEndian))


def _explicit_as_implicit(n: int) -> Sent:
    ds = image(n)
    return sent(ds, ImplicitVRLittleEndian, encoded(ds, ExplicitVRLittleEndian))


def _big_endian_as_little(n: int) -> Sent:
    ds = image(n)
    big = encode(ds, False, False)
    assert big is not None
    return sent(ds, ExplicitVRLittleEndian, big)


def _native_in_encapsulated(n: int) -> Sent:
    ds = image(n)
    return sent(ds, JPEG2000Lossless, encoded(ds, ExplicitVRLittleEndian))


def _encapsulated_in_native(n: int) -> Sent:
    ds = image(n)
    data = without_pixels(ds) + encapsulated_element([rle_fragment(ramp())])
    return sent(ds, ExplicitVRLittleEndian, data)


def _rle_labelled_jpeg2000(n: int) -> Sent:
    ds = image(n)
    data = without_pixels(ds, JPEG2000Lossless) + encapsulated_element([rle_fragment(ramp())])
    return sent(ds, JPEG2000Lossless, data)


def _deflate_truncated(n: int) -> Sent:
    ds = image(n)
    return sent(
        ds, DeflatedExplicitVRLittleEndian, encoded(ds, DeflatedExplicitVRLittleEndian)[:-64]
    )


def _not_deflated(n: int) -> Sent:
    ds = image(n)
    return sent(ds, DeflatedExplicitVRLittleEndian, encoded(ds, ExplicitVRLittleEndian))


def _missing(keyword: str) -> Callable[[int], Sent]:
    def build(n: int) -> Sent:
        ds = image(n)
        request = sent(ds)
        delattr(ds, keyword)
        return Sent(
            request.sop_class, request.sop_uid, request.syntax, encoded(ds), request.study_uid
        )

    return build


def _request_uid_differs(n: int) -> Sent:
    ds = image(n)
    request = sent(ds)
    return Sent(request.sop_class, uid(n, 4), request.syntax, request.payload, request.study_uid)


def _uid(
    keyword: str, value: str | list[str], *, in_request: bool = False
) -> Callable[[int], Sent]:
    """The dataset's `keyword` set to a malicious `value` (and the request's too, if asked)."""

    def build(n: int) -> Sent:
        ds = image(n)
        request = sent(ds)
        setattr(ds, keyword, value)
        request_uid = str(value) if in_request else request.sop_uid
        return Sent(request.sop_class, request_uid, request.syntax, encoded(ds), request.study_uid)

    return build


def _sop_class_differs(n: int) -> Sent:
    ds = image(n, sop_class=DX)
    request = sent(ds)
    return Sent(CR, request.sop_uid, request.syntax, request.payload, request.study_uid)


def _huge_native(n: int) -> Sent:
    ds = image(n)
    ds.Rows = ds.Columns = 65535
    ds.BitsStored, ds.HighBit = 16, 15
    return sent(ds, payload=without_pixels(ds) + pixel_element(bytes(4096)))


def _huge_encapsulated(n: int) -> Sent:
    ds = image(n)
    ds.Rows = ds.Columns = 60000
    data = without_pixels(ds, RLELossless) + encapsulated_element([rle_fragment(ramp())])
    return sent(ds, RLELossless, data)


def _zero_rows(n: int) -> Sent:
    ds = image(n)
    ds.Rows = 0
    return sent(ds, payload=without_pixels(ds) + pixel_element(b""))


def _bits(allocated: int, stored: int, high: int) -> Callable[[int], Sent]:
    def build(n: int) -> Sent:
        ds = image(n)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, stored, high
        return sent(ds)

    return build


def _bits_allocated_32(n: int) -> Sent:
    return sent(image(n, ramp().astype(np.uint32), bits_stored=32))


def _pixel_bytes(value: bytes, rows: int = 48, columns: int = 64) -> Callable[[int], Sent]:
    def build(n: int) -> Sent:
        ds = image(n, ramp(rows, columns, bits=8))
        return sent(ds, payload=without_pixels(ds) + pixel_element(value))

    return build


def _no_pixel_data(n: int) -> Sent:
    ds = image(n)
    return sent(ds, payload=without_pixels(ds))


def _multi_frame(n: int) -> Sent:
    frames = np.stack([ramp(), ramp()[::-1], ramp()])
    ds = image(n, frames[0], NumberOfFrames=3)
    ds.PixelData = frames.tobytes()
    return sent(ds)


def _rgb(n: int) -> Sent:
    grey = ramp(bits=8)
    rgb = np.stack([grey, grey, np.flipud(grey)], axis=-1)
    return sent(image(n, rgb, sop_class=SC, photometric="RGB"))


def _palette(n: int) -> Sent:
    ds = image(n, ramp(bits=8), sop_class=SC, photometric="PALETTE COLOR")
    lut = np.arange(256, dtype=np.uint16) * 257
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", lut.tobytes())
    return sent(ds)


def _named(charset: str | list[str], name: str, patient_id: str) -> Callable[[int], Sent]:
    def build(n: int) -> Sent:
        ds = image(n)
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
        ds.PatientID = patient_id
        return sent(ds)

    return build


def _undeclared_bytes(n: int) -> Sent:
    """UTF-8 bytes under a declared charset pydicom does not know."""
    ds = image(n)
    ds.SpecificCharacterSet = "ISO_IR 999"
    data = encoded(ds).replace(b"Bad^Input", "Kővári^Ödön".encode()[:9])
    return sent(ds, payload=data)


def _private_tags(n: int, count: int = 5000) -> Sent:
    ds = image(n)
    per_block = 250
    for block_number in range(count // per_block):
        block = ds.private_block(0x0009, f"WRISTAI BAD INPUT {block_number}", create=True)
        for offset in range(per_block):
            block.add_new(offset, "LO", f"value {block_number}.{offset}")
    return sent(ds)


def _raw(ds: Dataset, keyword: str, text: str) -> None:
    """Set `keyword` to `text` as raw bytes: pydicom refuses to hold 'abc' in a DS or IS."""
    tag = Tag(keyword)
    value = text.encode() + b" " * (len(text) % 2)
    ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)


def _attribute(keyword: str, text: str) -> Callable[[int], Sent]:
    def build(n: int) -> Sent:
        ds = image(n)
        _raw(ds, keyword, text)
        return sent(ds)

    return build


def _rle_segment(length: int) -> bytes:
    """An RLE segment of literal runs that decodes to `length` bytes."""
    out = b""
    while length > 0:
        run = min(length, 128)
        out += bytes([run - 1]) + bytes(range(run))
        length -= run
    return out


def _panicking_rle(n: int) -> Sent:
    """16 x 12 at 16 bits: two segments of 192 bytes each, the first one 300 bytes long.
    pylibjpeg-rle (Rust) panics writing past its frame buffer (found by the fuzzer)."""
    first, second = _rle_segment(300), _rle_segment(192)
    header = struct.pack("<16L", 2, 64, 64 + len(first), *([0] * 13))
    ds = image(n, ramp(16, 12))
    data = without_pixels(ds, RLELossless) + encapsulated_element([header + first + second])
    return sent(ds, RLELossless, data)


def _case(
    number: int,
    name: str,
    builder: Callable[[int], Sent],
    status: int,
    log: str,
    read: type[DicomImageError] | str | None = None,
    read_message: str = "",
    secrets: tuple[str, ...] = (),
) -> Case:
    return Case(number, name, lambda: builder(number), status, log, read, read_message, secrets)


C000, A900, A700, OK = CANNOT_UNDERSTAND, MISMATCH, OUT_OF_RESOURCES, SUCCESS
_STORED = "stored study"
_UID_BAD = "missing or malformed"

CASES: tuple[Case, ...] = (
    # Truncated files
    _case(1, "truncated-in-header", _truncated_header, C000, "truncated or malformed"),
    _case(2, "truncated-in-pixel-data", _truncated_pixels, C000, "truncated or malformed"),
    _case(3, "truncated-fragments", _truncated_fragments, C000,
          "encapsulated Pixel Data is truncated"),
    _case(4, "cut-inside-element-header", _cut_in_element_header, C000, "no Pixel Data"),
    _case(5, "empty-dataset", _empty, C000, "StudyInstanceUID missing or malformed"),
    _case(6, "random-bytes", _garbage, C000, "study unknown: dataset is not encoded in"),
    # A transfer syntax that does not match the data
    _case(7, "implicit-vr-in-explicit-context", _implicit_as_explicit, C000,
          "is not encoded in explicit VR"),
    _case(8, "explicit-vr-in-implicit-context", _explicit_as_implicit, C000,
          "is not encoded in implicit VR"),
    _case(9, "big-endian-in-little-endian-context", _big_endian_as_little, C000, "refused"),
    _case(10, "native-pixels-in-jpeg2000-context", _native_in_encapsulated, C000,
          "native Pixel Data (defined length) in the encapsulated transfer syntax JPEG 2000"),
    _case(11, "fragments-in-native-context", _encapsulated_in_native, C000,
          "encapsulated Pixel Data (undefined length) in the native transfer syntax Explicit"),
    _case(12, "rle-stream-labelled-jpeg2000", _rle_labelled_jpeg2000, OK, _STORED,
          CorruptImage, "pixel data cannot be decoded"),
    _case(13, "deflated-stream-truncated", _deflate_truncated, C000,
          "deflated data is truncated"),
    _case(14, "plain-bytes-in-deflated-context", _not_deflated, C000, "refused"),
    # Missing UIDs
    _case(15, "missing-sop-instance-uid", _missing("SOPInstanceUID"), C000,
          f"SOPInstanceUID {_UID_BAD}"),
    _case(16, "missing-study-instance-uid", _missing("StudyInstanceUID"), C000,
          f"StudyInstanceUID {_UID_BAD}"),
    _case(17, "missing-series-instance-uid", _missing("SeriesInstanceUID"), C000,
          f"SeriesInstanceUID {_UID_BAD}"),
    _case(18, "missing-sop-class-uid", _missing("SOPClassUID"), C000, f"SOPClassUID {_UID_BAD}"),
    _case(19, "sop-instance-uid-differs-from-request", _request_uid_differs, C000,
          "SOP Instance UID differs from request"),
    # Malicious UIDs
    _case(20, "study-uid-with-path-separators", _uid("StudyInstanceUID", "1.2/../../../tmp/x"),
          C000, f"study (invalid): StudyInstanceUID {_UID_BAD}", secrets=("../tmp/x",)),
    _case(21, "sop-uid-dot-dot", _uid("SOPInstanceUID", "..", in_request=True), C000,
          f"SOPInstanceUID {_UID_BAD}"),
    _case(22, "sop-uid-absolute-path", _uid("SOPInstanceUID", "/etc/passwd", in_request=True),
          C000, f"SOPInstanceUID {_UID_BAD}"),  # in the request: pynetdicom's decoding logs it
    _case(23, "series-uid-over-64-characters", _uid("SeriesInstanceUID", "1." + "2" * 70),
          C000, f"SeriesInstanceUID {_UID_BAD}", secrets=("2" * 70, "value length (72)")),
    _case(24, "study-uid-non-numeric", _uid("StudyInstanceUID", "1.2.840.wrist"), C000,
          f"StudyInstanceUID {_UID_BAD}", secrets=("1.2.840.wrist",)),
    _case(25, "study-uid-multi-valued", _uid("StudyInstanceUID", ["1.2.3", "1.2.4"]), C000,
          f"StudyInstanceUID {_UID_BAD}"),
    _case(26, "sop-uid-leading-zero", _uid("SOPInstanceUID", "1.2.03", in_request=True), C000,
          f"SOPInstanceUID {_UID_BAD}"),
    # The dataset's SOP class differs from the request's (and so the file meta's)
    _case(27, "dataset-sop-class-differs-from-request", _sop_class_differs, A900,
          f"dataset SOP Class {DX} but request {CR}"),
    # Rows x Columns that would need gigabytes
    _case(28, "65535x65535-native-with-4-kb", _huge_native, C000,
          "Pixel Data holds 4096 bytes but 65535 x 65535"),
    _case(29, "60000x60000-encapsulated", _huge_encapsulated, A700,
          "60000 x 60000 pixels exceeds the 10000 px limit"),
    _case(30, "zero-rows", _zero_rows, C000, "Rows missing or not a number"),
    # Bits Allocated / Stored / High Bit that disagree
    _case(31, "bits-stored-above-allocated", _bits(16, 17, 16), C000, "(16/17/16) disagree"),
    _case(32, "high-bit-not-stored-minus-one", _bits(16, 12, 15), C000, "(16/12/15) disagree"),
    _case(33, "bits-allocated-12", _bits(12, 12, 11), C000,
          "Bits Allocated 12 is not 1 or a multiple of 8"),
    _case(34, "bits-allocated-32", _bits_allocated_32, OK, _STORED, UnsupportedImage,
          "Bits Allocated 32 is not supported"),
    # Zero-length and odd-length pixel data
    _case(35, "zero-length-pixel-data", _pixel_bytes(b""), C000,
          "Pixel Data holds 0 bytes but 48 x 64"),
    _case(36, "odd-length-pixel-data-short", _pixel_bytes(bytes(3071)), C000,
          "Pixel Data holds 3071 bytes"),
    _case(37, "odd-length-pixel-data-consistent", _pixel_bytes(bytes(range(9)), 3, 3), OK,
          _STORED, READABLE),
    _case(38, "no-pixel-data", _no_pixel_data, C000, "dataset has no Pixel Data"),
    # Multi-frame, RGB and palette colour
    _case(39, "multi-frame", _multi_frame, OK, _STORED, UnsupportedImage,
          "multi-frame images (3 frames)"),
    _case(40, "rgb-secondary-capture", _rgb, OK, _STORED, READABLE),
    _case(41, "palette-colour", _palette, OK, _STORED, UnsupportedImage,
          "PALETTE COLOR is not supported"),
    # Deflate bomb
    _case(42, "deflate-bomb", deflate_bomb, A700, "inflates past 512 MiB"),
    # Character sets in patient names: stored, never logged
    _case(43, "latin-1-name", _named("ISO_IR 100", "Müller^Jürgen", "PÄT-100"), OK, _STORED,
          READABLE, secrets=("Müller", "Jürgen", "PÄT-100")),
    _case(44, "utf-8-greek-japanese-name",
          _named("ISO_IR 192", "Παπαδόπουλος^Γιάννης=山田^太郎", "ΑΒΓ-192"), OK, _STORED,
          READABLE, secrets=("Παπαδόπουλος", "山田", "ΑΒΓ-192")),
    _case(45, "gb18030-name", _named("GB18030", "王^小东", "中文-18030"), OK, _STORED, READABLE,
          secrets=("王", "小东", "中文-18030")),
    _case(46, "iso-2022-japanese-name",
          _named(["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎", "YAMA-87"), OK, _STORED,
          READABLE, secrets=("Yamada", "山田", "YAMA-87")),
    _case(47, "unknown-charset-utf8-bytes", _undeclared_bytes, OK, _STORED, READABLE,
          secrets=("Kővári",)),
    # Private tags by the thousand
    _case(48, "5000-private-tags", _private_tags, OK, _STORED, READABLE),
    # Found by the fuzzer (test_fuzz_store.py): read_radiograph raised untyped errors
    _case(58, "rle-fragment-that-panics-the-decoder", _panicking_rle, OK, _STORED, CorruptImage,
          "decoder panicked"),
    _case(59, "rescale-slope-not-a-number", _attribute("RescaleSlope", "abc"), OK, _STORED,
          CorruptImage, "RescaleSlope 'abc' is not a number"),
    _case(60, "window-width-nan", _attribute("WindowWidth", "nan"), OK, _STORED, CorruptImage,
          "WindowWidth nan is not a finite number"),
    _case(61, "rescale-overflow", _attribute("RescaleSlope", "1e308"), OK, _STORED,
          CorruptImage, "overflow the value range"),
    _case(62, "number-of-frames-not-a-number", _attribute("NumberOfFrames", "x"), C000,
          "NumberOfFrames missing or not a number"),
)  # fmt: skip
"""The C-STORE cases, numbered (1-48 from the issue, 58-62 found by the fuzzer); the duplicate
UID cases (49-51) need two stores each and are tested on their own, as are the association-level
cases (52-57)."""

DUPLICATE_CASES: dict[int, str] = {
    49: "same instance twice: both Success, one file, one index row",
    50: "same SOP Instance UID, same study, other content: Success, the latest copy wins",
    51: "same SOP Instance UID claimed by another study: refused C000, the first kept",
}

ASSOCIATION_CASES: dict[int, str] = {
    52: "SOP class we do not serve (MR) alone: no context accepted, association aborted",
    53: "SOP class we do not serve next to CR: MR context rejected, CR stores",
    54: "half an A-ASSOCIATE-RQ, then silence: dropped after the network timeout",
    55: "half a P-DATA-TF inside an association, then silence: aborted after the timeout",
    56: "50 idle TCP connections: a good client still stores; the node closes them",
    57: "bytes that are not a PDU at all (an HTTP request): dropped, others served",
}

CASE_COUNT = len(CASES) + len(DUPLICATE_CASES) + len(ASSOCIATION_CASES)
