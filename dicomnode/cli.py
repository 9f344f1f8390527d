"""The `dicomnode` command: run the node and check its configuration.

Exit status 2: the configuration or what it names cannot work (a wrong key or value, a missing
model bundle, TLS file or storage folder, too little free space, a database written by a newer
release); the message says which key and which file. The systemd unit does not restart the
node on it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from dicomnode import __version__
from dicomnode.config import (
    AllowedCaller,
    Config,
    ConfigError,
    Destination,
    load_config,
    with_overrides,
)
from dicomnode.logs import configure_logging
from dicomnode.migrations import SchemaError
from dicomnode.preflight import Origin, StartupError, StartupReport, check_startup

log = logging.getLogger("dicomnode")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dicomnode` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = _config_from(args)
    except ConfigError as exc:
        print(f"dicomnode: {exc}", file=sys.stderr)
        return 2
    try:
        result: int = args.run(config, args)
    except SchemaError as exc:  # a database from a newer release: refuse, do not restart
        print(f"dicomnode: {exc}", file=sys.stderr)
        return 2
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicomnode", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the DICOM node")
    _add_config_flags(serve)
    serve.set_defaults(run=_serve)

    check = commands.add_parser("check-config", help="validate a configuration and print it")
    _add_config_flags(check)
    check.set_defaults(run=_check_config)

    status = commands.add_parser("status", help="studies per state, backlog, recent failures")
    _add_config_flags(status)
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(run=_status)

    resend = commands.add_parser("resend", help="analyse and send a study again")
    _add_config_flags(resend)
    resend.add_argument("study_uid", metavar="STUDY_UID")
    resend.set_defaults(run=_resend)
    return parser


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration (default: embedded)")
    parser.add_argument("--ae-title", help="override node.ae_title")
    parser.add_argument("--host", help="override node.host (listening address)")
    parser.add_argument("--port", type=int, help="override node.port")
    parser.add_argument("--storage", type=Path, help="override storage.path")
    parser.add_argument("--http-port", type=int, help="override http.port (0: off)")
    parser.add_argument("--model", type=Path, help="override model.bundle")
    parser.add_argument(
        "--destination",
        action="append",
        default=[],
        metavar="AET@HOST:PORT|URL",
        help="replace the destinations (repeatable; a URL is a DICOMweb STOW-RS base)",
    )
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="AET[@ADDRESS]",
        help="replace the calling AE allow list (repeatable; AET '*' is any, ADDRESS an IP "
        "address or CIDR network, none: from anywhere)",
    )


def _config_from(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    node: dict[str, Any] = {
        key: value
        for key, value in (("ae_title", args.ae_title), ("host", args.host), ("port", args.port))
        if value is not None
    }
    changes: dict[str, Any] = {}
    if node:
        changes["node"] = node
    if args.storage is not None:
        changes["storage"] = {"path": args.storage}
    if args.http_port is not None:
        changes["http"] = {"port": args.http_port}
    if args.model is not None:
        changes["model"] = {"bundle": args.model}
    if args.destination:
        changes["destinations"] = tuple(Destination.parse(d) for d in args.destination)
    if args.allow:
        changes["access"] = {"allow": tuple(AllowedCaller.parse(a) for a in args.allow)}
    return with_overrides(config, **changes) if changes else config


# Keys the command line sets, by the flag that sets them (messages name where a value came from).
_FLAGS = {"storage.path": "storage", "model.bundle": "model", "destinations": "destination"}


def _origin(args: argparse.Namespace) -> Origin:
    def origin(key: str) -> str:
        for prefix, flag in _FLAGS.items():
            if key.startswith(prefix) and getattr(args, flag):
                return f"command line (--{flag})"
        return str(args.config) if args.config else "embedded defaults"

    return origin


def _startup_checks(config: Config, args: argparse.Namespace, *,
                    model_apart: bool) -> StartupReport | None:  # fmt: skip
    """The start-up checks (dicomnode.preflight); None, the reason printed, when one fails."""
    try:
        return check_startup(config, _origin(args), model_apart=model_apart)
    except StartupError as exc:
        print(f"dicomnode: {exc}", file=sys.stderr)
        return None


def _check_config(config: Config, args: argparse.Namespace) -> int:
    report = _startup_checks(config, args, model_apart=False)
    if report is None:
        return 2
    print(config)
    print("\n".join(report.lines(config)))
    return 0


def _status(config: Config, args: argparse.Namespace) -> int:
    import json

    from dicomnode.operations import format_status, status

    report = status(config)
    print(json.dumps(report) if args.json else format_status(report))
    return 0


def _resend(config: Config, args: argparse.Namespace) -> int:
    from dicomnode.operations import resend

    print(resend(config, args.study_uid))
    return 0


def _serve(config: Config, args: argparse.Namespace) -> int:
    """Receive, analyse and report until SIGTERM or SIGINT, then stop cleanly."""
    startup = _startup_checks(config, args, model_apart=True)
    if startup is None:
        return 2
    from apscheduler.schedulers.background import BackgroundScheduler

    from dicomnode.audit import AuditLog
    from dicomnode.completeness import CompletenessParams
    from dicomnode.receivers import ReceiverStartError, start_receiving
    from dicomnode.sd_notify import notify, watchdog_interval
    from dicomnode.spool import Spool
    from dicomnode.supervision import AnalysisHealth
    from dicomnode.work_queue import WorkQueue
    from dicomnode.worker import WorkerPool, database

    configure_logging(config.logging)
    from dicomnode.malloc import bound_arenas

    bound_arenas()  # before any receiving thread or spawned process exists
    log.info("model %s %s loads and passes its self-test; %.0f MB free for storage",
             startup.model.name, startup.model.version, startup.free_mb)  # fmt: skip
    os.umask(0o077)  # spool, index, results and audit trail: the service user's only
    root = config.storage.path
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    spool = Spool(root / "spool", min_free_bytes=int(config.storage.min_free_mb * 1e6))
    audit = AuditLog(config.audit_path)
    dropped = spool.discard_partial()  # writes a crash interrupted were never acknowledged
    if dropped:
        log.warning("discarded %d partial file(s) left by an interrupted run", dropped)
    queue = WorkQueue(database(config))
    resumed = queue.recover()
    if resumed:
        log.info("resuming %d study(ies) interrupted during analysis", resumed)
    queue.record_analysis_health(AnalysisHealth(since=time.time()))  # a start tries again

    def analysis_changed(health: AnalysisHealth) -> None:
        queue.record_analysis_health(health)  # for `dicomnode status`
        notify(f"STATUS=analysis {health.describe()}")  # for `systemctl status`

    pool = WorkerPool(config, on_change=analysis_changed)
    pool.start()
    completeness = CompletenessParams(config.completeness.grace_seconds,
                                      config.completeness.quiet_seconds,
                                      config.completeness.analyse_during_grace)  # fmt: skip
    scheduler = BackgroundScheduler()
    scheduler.add_job(_promote, "interval", args=[queue, completeness, audit], seconds=0.25,
                      max_instances=1, coalesce=True)  # fmt: skip
    scheduler.add_job(pool.supervise, "interval", seconds=2, max_instances=1, coalesce=True)
    if config.retention.purge_after_hours > 0:  # 0 keeps everything
        from dicomnode.retention import scheduled_purge

        scheduler.add_job(scheduled_purge, "interval", args=[queue, root,
                          config.retention.purge_after_hours * 3600, audit,
                          config.retention.forget_after_days * 86400],
                          seconds=config.retention.check_interval_seconds, max_instances=1,
                          coalesce=True)  # fmt: skip
    scheduler.start()
    try:
        receivers = start_receiving(config, spool, queue, audit)
    except ReceiverStartError as exc:
        print(f"dicomnode: {exc}", file=sys.stderr)
        scheduler.shutdown(wait=True)
        pool.shutdown()
        queue.close()
        return 2
    scheduler.add_job(receivers.supervise, "interval", seconds=1, max_instances=1, coalesce=True)
    http = None
    if config.http.port:
        from dicomnode.drift import DriftMonitor, reference_of
        from dicomnode.health import health, start_http

        expected, shadow = config.analysis.worker_count, config.results.shadow
        drift = DriftMonitor(root, reference_of(config.model.bundle))
        http = start_http(config.http.host, config.http.port, queue,
                          lambda: health(queue, pool.alive(), expected, pool.health, drift, shadow,
                                         receivers=(receivers.alive(), receivers.expected)),
                          drift)  # fmt: skip
    log.info("storage in %s; %s", root, _counts(queue))
    if config.results.shadow:
        from dicomnode.worker import SHADOW_REASON

        log.warning("%s: no destination receives anything ([results] shadow = true)",
                    SHADOW_REASON)  # fmt: skip
    interval = watchdog_interval()
    if interval:
        scheduler.add_job(lambda: notify("WATCHDOG=1"), "interval", seconds=interval)
    notify("READY=1")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    notify("STOPPING=1")
    log.info("stopping: no new associations; letting the workers finish their current study")
    pool.stop.set()  # first: no worker that stops from now on is restarted (supervise)
    receivers.shutdown()
    if http is not None:
        http.shutdown()
    scheduler.shutdown(wait=True)
    pool.shutdown()
    queue.close()
    return 0


def _promote(queue: Any, completeness: Any, audit: Any) -> None:
    """Move studies whose senders are done to 'complete', and audit their receipt."""
    for study_uid in queue.promote_complete(time.time(), completeness):
        study = queue.study(study_uid)
        audit.record(
            "study-received",
            study_uid=study_uid,
            instances=study.n_instances if study else None,
            calling_aets=queue.calling_aets(study_uid),
        )


def _counts(index: Any) -> str:
    counts = index.counts()
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "empty"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
