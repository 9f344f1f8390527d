"""DIMSE status codes (PS3.7 Annex C, PS3.4 B.2.3 and C.4): the one place they are spelt in hex."""

SUCCESS = 0x0000

# C-FIND/C-GET responses still to come (PS3.4 C.4.1.1.4, C.4.3.1.4).
PENDING = 0xFF00
PENDING_WITH_WARNINGS = 0xFF01
PENDING_STATUSES = frozenset({PENDING, PENDING_WITH_WARNINGS})

# C-STORE warnings (PS3.4 Table B.2-1): the peer stored the instance, so the SCU counts it sent.
WARNING_COERCION_OF_DATA_ELEMENTS = 0xB000
WARNING_ELEMENTS_DISCARDED = 0xB006
WARNING_DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xB007

# C-STORE failures (PS3.4 Annex B.2.3, Table B.2-1): the ranges A7xx, A9xx and Cxxx are the
# Storage Service Class's own; we send the base code of each range.
OUT_OF_RESOURCES = 0xA700
"""Refused: Out of Resources. The spool's disk is full (ENOSPC/EDQUOT); retrying later may work."""

DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
"""Error: Data Set Does Not Match SOP Class. The dataset's SOP Class UID is not the one the
C-STORE request (Affected SOP Class UID) and its presentation context announced."""

CANNOT_UNDERSTAND = 0xC000
"""Error: Cannot Understand. The dataset cannot be parsed, or lacks (or has malformed) the UIDs
that identify it (SOP Instance, Study Instance, Series Instance, SOP Class)."""

# General failure (PS3.7 Annex C.4.2).
PROCESSING_FAILURE = 0x0110
"""Failure: Processing Failure. Our fault (an I/O error other than a full disk, an index error,
a bug); the instance was not acknowledged and the sender may retry."""

# The C-STORE warnings as a group: the statuses an SCU counts as sent besides SUCCESS.
STORE_WARNINGS = frozenset(
    {
        WARNING_COERCION_OF_DATA_ELEMENTS,
        WARNING_ELEMENTS_DISCARDED,
        WARNING_DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    }
)

# N-EVENT-REPORT failures (PS3.7 10.1.1.1.8, Annex C.4) the node answers a storage commitment
# report with (PS3.4 J.3.3).
NO_SUCH_SOP_INSTANCE = 0x0112
"""Failure: No such SOP Instance. The report is not about the well-known Storage Commitment Push
Model SOP Instance (1.2.840.10008.1.20.1.1)."""

NO_SUCH_EVENT_TYPE = 0x0113
"""Failure: No such event type. Only 1 (all committed) and 2 (failures exist) are defined."""

INVALID_ARGUMENT_VALUE = 0x0115
"""Failure: Invalid argument value. The report's Transaction UID is not one this node issued to
the reporting AE (or the Event Information lacks one): the value, not the SOP class/instance
(0x0119 Class-Instance conflict) nor the node's own processing (0x0110), is what is wrong."""
