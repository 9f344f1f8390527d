"""What a received instance must be before the node stores it: checked on its header alone,
cheaply, without decoding pixels.

`read_header` parses every element up to Pixel Data (bounded inflation for deflated data);
`checked_uids`, `checked_pixels` and `known_elsewhere` refuse, with a `Rejected` carrying the
DIMSE status, what cannot be true. Messages quote validated UIDs only, never a raw value.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import Any, cast

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from dicomnode.index import Index
from pipeline.dicom import dimse
from pipeline.dicom.uids import is_valid_uid
from pipeline.dicomio import MAX_SIDE

MAX_INFLATED_BYTES = 512 << 20
"""Largest Deflated Explicit VR Little Endian dataset accepted, inflated: above the largest
image the pipeline reads (10000 x 10000 pixels, 8-bit RGB 300 MB, 16-bit grey 200 MB). Beyond
it the dataset is refused (A700) as a deflate bomb before it is inflated any further."""

_PIXEL_DATA = BaseTag(0x7FE00010)
_UNDEFINED_LENGTH = 0xFFFFFFFF
_LOOKBACK = 1 << 16  # bytes behind the position an inflating reader keeps for seeks back
_INFLATE_CHUNK = 1 << 20  # inflated, counted and dropped at a time
_DEFER_BYTES = 1 << 16  # element values longer than this are skipped, not copied, by the parser


class Rejected(Exception):
    """An instance we refuse: `status` is the DIMSE status, the message the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class _PixelData:
    """Where the Pixel Data element sits in the (inflated) dataset and how long it says it is."""

    length: int | None
    """Its defined value length; None for an undefined length (encapsulated fragments)."""
    value_start: int
    """Offset of its value in the dataset stream."""


@dataclass(frozen=True)
class Header:
    """A received dataset's elements before Pixel Data, and where its Pixel Data is."""

    dataset: Dataset
    pixel_data: _PixelData | None
    stream: bytes
    """The dataset bytes as received (deflated ones stay deflated), for walking fragments."""


class _InflatingReader:
    """A forward-only file over a deflated dataset, for the parser: a read inflates what it
    needs, a forward seek (past a long value) inflates and drops, and only the last
    `_LOOKBACK` bytes are kept for the short seeks back the parser makes. So the header of a
    deflated dataset is parsed, however large its values, holding about one chunk."""

    def __init__(self, deflated: bytes) -> None:
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._pending = deflated
        self._buffer = bytearray()
        self._start = 0  # stream offset of self._buffer[0]
        self._position = 0

    def _fill(self, end: int) -> None:
        """Inflate until the buffer reaches stream offset `end` or the data ends."""
        while self._start + len(self._buffer) < end:
            chunk = self._inflater.decompress(self._pending, _INFLATE_CHUNK)
            self._pending = self._inflater.unconsumed_tail
            if not chunk:
                return
            self._buffer += chunk
            if self._position - self._start > 2 * _LOOKBACK:  # drop what is long behind
                drop = min(self._position - _LOOKBACK - self._start, len(self._buffer))
                del self._buffer[:drop]
                self._start += drop

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all that is left for a negative size) from the position."""
        if size < 0:
            size = MAX_INFLATED_BYTES
        self._fill(self._position + size)
        offset = self._position - self._start
        data = bytes(self._buffer[offset : offset + size])
        self._position += len(data)
        return data

    def tell(self) -> int:
        """The stream position."""
        return self._position

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move to `offset` (from the start, or from the position for whence=1)."""
        target = offset + (self._position if whence == 1 else 0)
        if whence not in (0, 1) or target < self._start:
            raise OSError("a deflated dataset is read forward only")
        self._position = target
        self._fill(target)
        return target


def read_header(event: Event) -> Header:
    """Parse the dataset's elements before Pixel Data, cheaply and with bounded memory.

    Refused (raises `Rejected`): an element whose length runs past the end of the data
    (truncated), an encoding other than the transfer syntax's (implicit VR in an explicit
    syntax or the reverse), deflated data that is corrupt, truncated or inflates past
    `MAX_INFLATED_BYTES` (a deflate bomb: counted chunk by chunk, never held), and anything else
    the parser cannot read. Values longer than `_DEFER_BYTES` are skipped, not copied.
    """
    try:
        syntax = event.context.transfer_syntax
        stream = event.encoded_dataset(include_meta=False)
    except Exception as exc:
        raise Rejected(dimse.CANNOT_UNDERSTAND, "dataset cannot be read") from exc
    fp: Any = BytesIO(stream)
    total = len(stream)
    if syntax.is_deflated:
        total = _inflated_size(stream)
        fp = _InflatingReader(stream)
    found: list[_PixelData] = []

    def stop_when(tag: BaseTag, vr: str | None, length: int) -> bool:
        # Called at each top-level element with the file positioned at its value.
        start = fp.tell()
        if (vr is None) != bool(syntax.is_implicit_VR):
            raise Rejected(
                dimse.CANNOT_UNDERSTAND,
                f"dataset is not encoded in {'implicit' if syntax.is_implicit_VR else 'explicit'}"
                f" VR as its transfer syntax {syntax.name} says",
            )
        defined = length != _UNDEFINED_LENGTH
        if defined and start + length > total:
            raise Rejected(
                dimse.CANNOT_UNDERSTAND,
                f"dataset is truncated or malformed: element {BaseTag(tag)} says {length} "
                f"bytes, {total - start} remain",
            )
        if tag == _PIXEL_DATA:
            found.append(_PixelData(length if defined else None, start))
            return True
        return bool(tag > _PIXEL_DATA)  # trailing padding and the like: nothing we need

    try:
        dataset = read_dataset(
            fp,
            syntax.is_implicit_VR,
            syntax.is_little_endian,
            stop_when=stop_when,
            defer_size=_DEFER_BYTES,
        )
    except Rejected:
        raise
    except Exception as exc:
        raise Rejected(dimse.CANNOT_UNDERSTAND, "dataset cannot be parsed") from exc
    return Header(dataset, found[0] if found else None, stream)


def _inflated_size(deflated: bytes) -> int:
    """The inflated size of a deflated dataset, inflated `_INFLATE_CHUNK` at a time and only
    counted: a deflate bomb costs bounded memory, and at most `MAX_INFLATED_BYTES` of
    inflating before it is refused (A700)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total, pending = 0, deflated
    try:
        while not inflater.eof:
            chunk = inflater.decompress(pending, _INFLATE_CHUNK)
            pending = inflater.unconsumed_tail
            total += len(chunk)
            if total > MAX_INFLATED_BYTES:
                raise Rejected(
                    dimse.OUT_OF_RESOURCES,
                    f"deflated dataset inflates past {MAX_INFLATED_BYTES >> 20} MiB "
                    f"({len(deflated)} bytes received): a deflate bomb?",
                )
            if not chunk and not pending:
                break  # all input consumed before the end of the deflate stream
    except zlib.error as exc:
        raise Rejected(dimse.CANNOT_UNDERSTAND, "deflated data is corrupt") from exc
    if not inflater.eof:
        raise Rejected(dimse.CANNOT_UNDERSTAND, "deflated data is truncated")
    return total


def checked_uids(event: Event, header: Dataset) -> tuple[str, str, str]:
    """SOP Instance, Series Instance and SOP Class UIDs, checked against the request.

    A UID that is missing, malformed, multi-valued, over 64 characters or holds anything but
    digits and dots (so never a path separator or '..') cannot be understood (C000): the UIDs
    name the spool's directories and files. A dataset SOP Class other than the request's (and
    so the file meta's) is A900."""
    uids = {}
    for keyword in ("StudyInstanceUID", "SOPInstanceUID", "SeriesInstanceUID", "SOPClassUID"):
        value = text_value(header, keyword)
        if not is_valid_uid(value):
            raise Rejected(dimse.CANNOT_UNDERSTAND, f"{keyword} missing or malformed")
        uids[keyword] = value
    request = cast(C_STORE, event.request)
    requested = str(request.AffectedSOPClassUID)
    if uids["SOPClassUID"] != requested:
        shown = requested if is_valid_uid(requested) else "(invalid)"  # never log raw input
        raise Rejected(
            dimse.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            f"dataset SOP Class {uids['SOPClassUID']} but request {shown}",
        )
    if uids["SOPInstanceUID"] != str(request.AffectedSOPInstanceUID):
        raise Rejected(dimse.CANNOT_UNDERSTAND, "SOP Instance UID differs from request")
    return uids["SOPInstanceUID"], uids["SeriesInstanceUID"], uids["SOPClassUID"]


def checked_pixels(header: Header, syntax: Any) -> None:
    """Refuse an image whose pixel description is certainly unusable, cheaply (no decoding).

    Cannot Understand (C000), the data contradicting itself: no Pixel Data; Rows, Columns,
    Samples per Pixel, Bits Allocated, Bits Stored or High Bit missing or not a positive number;
    Bits Allocated neither 1 nor a multiple of 8; Bits Stored above Bits Allocated; High Bit
    other than Bits Stored - 1 (PS3.3 C.7.6.3.1); native Pixel Data (any length: zero, odd)
    other than Rows x Columns x Samples x Frames x Bits Allocated needs (an odd need may come
    with its pad byte or without);
    fragments (undefined length) in a native syntax or a defined length in an encapsulated one;
    fragments that run past the end. These checks come first: such an instance is broken for
    good, whatever its size, and C000 tells the sender so.

    Out of Resources (A700): Rows or Columns above `MAX_SIDE`. Decoding would need memory the
    node does not grant one instance (65535 x 65535 x 16 bits is 8 GiB), and the pipeline
    never reads such an image, so it is not stored.

    Accepted (the analysis later says why it cannot use them): multi-frame, colour (RGB, YBR,
    palette), Bits Allocated other than 8 or 16, and compressed data the codec cannot decode.
    """
    ds, pixels = header.dataset, header.pixel_data
    if pixels is None:
        raise Rejected(dimse.CANNOT_UNDERSTAND, "dataset has no Pixel Data")
    rows, columns, samples, allocated, stored = (
        _positive_int(ds, keyword)
        for keyword in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored")
    )
    high = _positive_int(ds, "HighBit", minimum=0)
    frames = _positive_int(ds, "NumberOfFrames") if "NumberOfFrames" in ds else 1
    if allocated != 1 and allocated % 8:
        raise Rejected(
            dimse.CANNOT_UNDERSTAND,
            f"Bits Allocated {allocated} is not 1 or a multiple of 8",
        )
    if stored > allocated or high != stored - 1:
        raise Rejected(
            dimse.CANNOT_UNDERSTAND,
            f"Bits Allocated/Stored/High Bit ({allocated}/{stored}/{high}) disagree",
        )
    if syntax.is_encapsulated != (pixels.length is None):
        found = "encapsulated Pixel Data (undefined length) in the native"
        if pixels.length is not None:
            found = "native Pixel Data (defined length) in the encapsulated"
        raise Rejected(dimse.CANNOT_UNDERSTAND, f"{found} transfer syntax {syntax.name}")
    if pixels.length is None:
        _check_fragments(header, pixels.value_start)
    else:
        bits = rows * columns * samples * frames * allocated
        if _photometric(ds) == "YBR_FULL_422":
            bits = bits // 3 * 2  # two samples of chroma per two pixels (PS3.3 C.7.6.3.1.2)
        expected = (bits + 7) // 8
        # An odd length is padded to even (PS3.5 7.1.1); unpadded, every value is still there.
        if pixels.length not in (expected, expected + expected % 2):
            raise Rejected(
                dimse.CANNOT_UNDERSTAND,
                f"Pixel Data holds {pixels.length} bytes but {rows} x {columns} x {samples} "
                f"samples x {frames} frame(s) at {allocated} bits needs {expected}",
            )
    if rows > MAX_SIDE or columns > MAX_SIDE:
        raise Rejected(
            dimse.OUT_OF_RESOURCES,
            f"{rows} x {columns} pixels exceeds the {MAX_SIDE} px limit per side",
        )


def _check_fragments(header: Header, start: int) -> None:
    """Walk the items of encapsulated Pixel Data (headers only): each must be an Item or the
    Sequence Delimiter, and none may run past the end of the data."""
    stream, position = header.stream, start
    while True:
        if position + 8 > len(stream):
            raise Rejected(dimse.CANNOT_UNDERSTAND, "encapsulated Pixel Data is truncated")
        group, element, length = struct.unpack_from("<HHL", stream, position)
        if (group, element) == (0xFFFE, 0xE0DD):
            return
        if (group, element) != (0xFFFE, 0xE000) or length == _UNDEFINED_LENGTH:
            raise Rejected(dimse.CANNOT_UNDERSTAND, "encapsulated Pixel Data has a malformed item")
        position += 8 + length


def _positive_int(ds: Dataset, keyword: str, *, minimum: int = 1) -> int:
    """An Image Pixel attribute (one US, or one IS) as an int >= `minimum`, from its raw bytes;
    refused (C000) if absent, multi-valued or not a number."""
    raw, vr = _raw(ds, keyword)
    value = minimum - 1
    if vr == "US" and len(raw) == 2:
        little_endian = ds.original_encoding[1] is not False
        value = int.from_bytes(raw, "little" if little_endian else "big")
    elif vr == "IS" and raw.strip(b"\0 ").isdigit():
        value = int(raw.strip(b"\0 "))
    if value < minimum:
        raise Rejected(dimse.CANNOT_UNDERSTAND, f"{keyword} missing or not a number")
    return value


def _photometric(ds: Dataset) -> str:
    return text_value(ds, "PhotometricInterpretation").upper()


def known_elsewhere(index: Index, sop_uid: str, study_uid: str) -> None:
    """Refuse (C000) a SOP Instance UID the index holds in another study.

    Within one study the latest copy wins (the spool replaces the file, the index its row): a
    sender may resend a corrected instance. Across studies the UID is not unique, as PS3.5
    requires; accepting it would move the instance from one study to the other and leave the
    first study's file and counts stale, so the second claim is refused and logged."""
    known = index.instance(sop_uid)
    if known is not None and known.study_uid != study_uid:
        raise Rejected(
            dimse.CANNOT_UNDERSTAND,
            f"SOP Instance UID {sop_uid} is already stored in study {known.study_uid}",
        )


def text_value(header: Dataset, keyword: str) -> str:
    """An element's value as text (Latin-1, enough for UIDs and our own ASCII markers), stripped
    of padding; "" if absent. Read from the raw bytes: pydicom's conversion would log the raw
    value of an invalid UID (a peer's text in our log) and warn on every unknown charset."""
    return _raw(header, keyword)[0].decode("latin-1").strip("\0 ")


def _raw(header: Dataset, keyword: str) -> tuple[bytes, str]:
    """An element's undecoded value and VR; (b"", "") if absent or deferred (too long)."""
    try:
        element = header.get_item(keyword)
        if element is None:
            return b"", ""
        vr = element.VR or dictionary_VR(element.tag)  # None in implicit VR
        value = element.value
        if isinstance(value, str):  # converted already (pydicom does so for some elements)
            value = value.encode("latin-1", "replace")
        return (value, str(vr)) if isinstance(value, bytes) else (b"", "")
    except Exception:
        return b"", ""
