"""`dicomnode-train fetch`: pull the archived studies to train on from a PACS (C-FIND + C-GET).

`cli` is the command; `client` the Query/Retrieve SCU (C-FIND, C-GET); `storage` writes the
instances the PACS sends; `state` is ``fetch_state.json``, which makes a rerun resume; `studies`
holds the requests and per-study outcomes.
"""

from pipeline.dicom.addresses import AeAddress as PacsAddress
from train.fetch.cli import add_fetch_command, run_fetch
from train.fetch.client import DEFAULT_CALLING_AET, DEFAULT_TIMEOUT_S, fetch_studies
from train.fetch.studies import (
    FetchError,
    FetchSummary,
    Outcome,
    StudyOutcome,
    StudyRequest,
    read_requests,
)

__all__ = [
    "DEFAULT_CALLING_AET",
    "DEFAULT_TIMEOUT_S",
    "FetchError",
    "FetchSummary",
    "Outcome",
    "PacsAddress",
    "StudyOutcome",
    "StudyRequest",
    "add_fetch_command",
    "fetch_studies",
    "read_requests",
    "run_fetch",
]
