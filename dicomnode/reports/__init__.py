"""Pure builders of the DICOM objects the node sends back: the SR, the Secondary Captures
and the presentation states."""

from dicomnode.reports.gsps import build_gsps
from dicomnode.reports.sc import build_sc
from dicomnode.reports.sr import ReportContext, build_not_analysed_sr, build_sr
from dicomnode.reports.uids import result_uid

__all__ = [
    "ReportContext",
    "build_gsps",
    "build_not_analysed_sr",
    "build_sc",
    "build_sr",
    "result_uid",
]
