"""UIDs: what a valid one is (PS3.5 9.1), and the SOP classes and transfer syntaxes we use."""

from __future__ import annotations

import re

import pydicom.uid
from pydicom.uid import UID

MAX_UID_LENGTH = 64
# Components of digits separated by dots; no leading zero except the single digit "0".
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_valid_uid(value: object) -> bool:
    """True for a PS3.5 9.1 UID: digit components without leading zeros, dots, <= 64 chars.

    Such a UID is also safe as a path component: it never holds '/', '..' or whitespace.
    """
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_UID_LENGTH
        and _UID.fullmatch(value) is not None
    )


# -- SOP classes (PS3.4 Annex B.5, C.6.2) ----------------------------------------------------

CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
DX_FOR_PROCESSING = UID("1.2.840.10008.5.1.4.1.1.1.1.1")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")

RADIOGRAPH_SOP_CLASSES: tuple[UID, ...] = (
    CR_IMAGE_STORAGE,
    DX_FOR_PRESENTATION,
    DX_FOR_PROCESSING,
    SECONDARY_CAPTURE,
)
"""The image storage SOP classes this product reads (and the node accepts, and fetch asks for)."""

COMPREHENSIVE_SR = UID("1.2.840.10008.5.1.4.1.1.88.33")
COMPREHENSIVE_3D_SR = UID("1.2.840.10008.5.1.4.1.1.88.34")
SR_SOP_CLASSES = frozenset({COMPREHENSIVE_SR, COMPREHENSIVE_3D_SR})
"""The structured report classes the node's reports may have (TID 1500 goes in either)."""

# pynetdicom.sop_class builds these at import time, invisible to a type checker.
STUDY_ROOT_FIND = UID("1.2.840.10008.5.1.4.1.2.2.1")
STUDY_ROOT_GET = UID("1.2.840.10008.5.1.4.1.2.2.3")

# -- transfer syntaxes (PS3.5 Section 10, Annex A) --------------------------------------------

READABLE_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    pydicom.uid.ExplicitVRLittleEndian,
    pydicom.uid.ImplicitVRLittleEndian,
    pydicom.uid.ExplicitVRBigEndian,
    pydicom.uid.DeflatedExplicitVRLittleEndian,
    pydicom.uid.JPEGBaseline8Bit,
    pydicom.uid.JPEGExtended12Bit,
    pydicom.uid.JPEGLossless,
    pydicom.uid.JPEGLosslessSV1,
    pydicom.uid.JPEGLSLossless,
    pydicom.uid.JPEGLSNearLossless,
    pydicom.uid.JPEG2000Lossless,
    pydicom.uid.JPEG2000,
    pydicom.uid.RLELossless,
)
"""Every transfer syntax `pipeline.dicomio` decodes: what the node accepts and fetch asks for."""

UNCOMPRESSED_LITTLE_ENDIAN: tuple[UID, ...] = (
    pydicom.uid.ExplicitVRLittleEndian,
    pydicom.uid.ImplicitVRLittleEndian,
)
"""The syntaxes every peer accepts (Implicit VR Little Endian is the DICOM default)."""
