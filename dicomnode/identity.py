"""Who the node is in the DICOM objects it creates, so its own results are recognised when PACS
routing sends them back (the loop guard) and so radiologists see where a result came from."""

MANUFACTURER = "wristai"
MODEL_NAME = "wristai dicomnode"
SERIES_DESCRIPTION_PREFIX = "AI decision support"
DISCLAIMER = "NOT FOR DIAGNOSTIC USE"
RESULT_UID_NAMESPACE = "wristai-result"
"""Seed of the deterministic result UIDs (see dicomnode.reports.uids)."""
