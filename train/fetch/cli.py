"""`dicomnode-train fetch`: pull the archived studies to train on from a PACS (C-FIND + C-GET).

Each study is found by accession number (or Study Instance UID) with a Study Root C-FIND, then
retrieved with a Study Root C-GET over the same association; every instance is written
atomically to ``ARCHIVE/dicom/<StudyInstanceUID>/<SOPInstanceUID>.dcm`` exactly as the PACS
encoded it. ``ARCHIVE/fetch_state.json`` records the completed studies, so a rerun fetches only
what is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from pipeline.dicom.addresses import AE_TITLE_RULE, AeAddress, is_valid_ae_title
from train.fetch.client import DEFAULT_CALLING_AET, DEFAULT_TIMEOUT_S, fetch_studies
from train.fetch.studies import read_requests

LOGGER = logging.getLogger(__name__)


def add_fetch_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `fetch` on a `dicomnode-train` sub-command parser."""
    parser = commands.add_parser(
        "fetch",
        help="pull the studies to train on from a PACS (C-FIND + C-GET)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--pacs", type=_pacs_argument, required=True, metavar="AET@HOST:PORT", help="the PACS"
    )
    parser.add_argument(
        "--accessions",
        type=Path,
        required=True,
        metavar="CSV",
        help="CSV with an accession_number and/or study_instance_uid column",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="ARCHIVE", help="archive")
    parser.add_argument(
        "--calling-aet",
        type=_aet_argument,
        default=DEFAULT_CALLING_AET,
        help=f"our AE title ({DEFAULT_CALLING_AET})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"network and DIMSE timeout in seconds ({DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log the DICOM exchange")
    parser.set_defaults(run=run_fetch)


def run_fetch(args: argparse.Namespace) -> int:
    """Run `dicomnode-train fetch`: 0 when every requested study is in the archive, else 1."""
    verbose = bool(getattr(args, "verbose", False))
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        requests = read_requests(args.accessions)
    except (OSError, ValueError, csv.Error) as exc:
        LOGGER.error("cannot read the accessions list: %s", exc)
        return 1
    with (
        _pynetdicom_log_level(logging.WARNING if verbose else logging.CRITICAL),
        logging_redirect_tqdm(),
        tqdm(total=len(requests), unit="study", desc="fetch", disable=None) as bar,
    ):
        summary = fetch_studies(
            args.pacs,
            requests,
            args.out,
            calling_aet=args.calling_aet,
            timeout=args.timeout,
            progress=bar.update,
        )
    print(summary.line())
    return 0 if summary.ok else 1


def _pacs_argument(text: str) -> AeAddress:
    try:
        return AeAddress.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"PACS {exc}") from exc


def _aet_argument(text: str) -> str:
    if not is_valid_ae_title(text):
        raise argparse.ArgumentTypeError(f"AE title {text!r} {AE_TITLE_RULE}")
    return text


@contextlib.contextmanager
def _pynetdicom_log_level(level: int) -> Iterator[None]:
    # pynetdicom logs every failed connection itself; the command reports one sentence instead.
    logger = logging.getLogger("pynetdicom")
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)
