"""Start-up checks: refuse what cannot work before anything is created or listened on.

`serve` and `check-config` run them on the parsed configuration: the destinations, the TLS
files, the storage folders and their free space, then the model bundle (loaded and run once).
A failure is one sentence naming the key, where its value came from (the configuration file, a
command-line flag or the embedded defaults) and the file at fault; the command exits with
status 2, which the systemd unit does not restart: restarting cannot fix a wrong path.
"""

from __future__ import annotations

import os
import pwd
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dicomnode.config import Config
from dicomnode.credentials import CredentialsError, read_credentials
from dicomnode.delivery import destination_key
from dicomnode.model_check import BundleCheck, check_bundle, check_bundle_apart

Origin = Callable[[str], str]
"""Where a key's value came from: the configuration file, a flag, or the embedded defaults."""

STATE_ENTRIES = ("spool", "spool/incoming", "spool/instances", "results", "results/incoming",
                 "results/instances", "index.sqlite", "index.sqlite-wal", "index.sqlite-shm",
                 "audit.jsonl")  # fmt: skip
"""What a previous run left in the storage folder, each of which the node writes again."""


class StartupError(ValueError):
    """Something the node needs does not work; one sentence naming the key and the file."""


@dataclass(frozen=True)
class StartupReport:
    """What the checks found: the storage's free space and the model that loads and runs."""

    free_mb: float
    model: BundleCheck

    def lines(self, config: Config) -> list[str]:
        """What `check-config` prints after the configuration."""
        return [
            f"storage.path {config.storage.path}: writable, {self.free_mb:.0f} MB free "
            f"(storage.min_free_mb {config.storage.min_free_mb:g})",
            f"model.bundle {config.model.bundle}: {self.model.name} {self.model.version}, "
            "loads and passes its self-test",
        ]


def check_startup(config: Config, origin: Origin, *, model_apart: bool) -> StartupReport:
    """Run every check, the slow model last; StartupError at the first failure.

    With `model_apart` the bundle is loaded in a process of its own (the receiver must not
    keep torch and a model it never uses in memory).
    """
    _check_destinations(config, origin)
    _check_tls(config, origin)
    free = _check_storage(config, origin)
    return StartupReport(free / 1e6, _check_model(config, origin, apart=model_apart))


def _fail(origin: Origin, key: str, value: object, problem: str) -> StartupError:
    return StartupError(f"{origin(key)}: '{key}' = {str(value)!r} {problem}")


def _check_destinations(config: Config, origin: Origin) -> None:
    # Each field's syntax is checked as the configuration is read; here, the list as a whole.
    seen: dict[str, int] = {}
    for i, destination in enumerate(config.destinations):
        name = destination_key(destination)
        if name in seen:
            raise _fail(origin, f"destinations[{i}]", name, f"repeats destinations[{seen[name]}]")
        seen[name] = i
        if destination.credentials_file:
            try:
                read_credentials(destination.credentials_file)
            except CredentialsError as exc:
                raise _fail(
                    origin,
                    f"destinations[{i}].credentials_file",
                    destination.credentials_file,
                    f"cannot be used: {exc}",
                ) from exc


def _check_tls(config: Config, origin: Origin) -> None:
    """Load the certificates, key and CA bundle once: a bad file stops the start rather than
    failing every association or every delivery."""
    from dicomnode.tls import TlsError, client_context, server_context

    tls = config.tls
    if not (tls.enabled or any(d.uses_tls for d in config.destinations)):
        return
    for name in ("certificate", "private_key", "ca_certificates"):
        value = getattr(tls, name)
        problem = _unreadable(Path(value)) if value else ""
        if problem:
            raise _fail(origin, f"tls.{name}", value, f"cannot be loaded: {problem}")
    try:
        if tls.enabled:
            server_context(tls)
        if any(d.uses_tls for d in config.destinations):
            client_context(tls)
    except TlsError as exc:
        raise StartupError(f"{origin(exc.key)}: '{exc.key}': {exc}") from exc


def _unreadable(path: Path) -> str:
    if not path.exists():
        return "no such file"
    if not path.is_file():
        return "not a file"
    return "" if os.access(path, os.R_OK) else f"not readable by user {_user()}"


def _check_storage(config: Config, origin: Origin) -> int:
    """The storage folder (or the folder it will be created in) is writable, as is what a
    previous run left in it, and its file system has storage.min_free_mb free; returns the
    free bytes."""
    root = config.storage.path
    existing = _check_folder(origin, "storage.path", root)
    for entry in STATE_ENTRIES:
        path = root / entry
        access = os.W_OK | (os.X_OK if path.is_dir() else 0)
        if path.exists() and not os.access(path, access):
            raise _fail(origin, "storage.path", root, f"holds {path}, which user {_user()} "
                        "cannot write (left by a run as another user?)")  # fmt: skip
    free = shutil.disk_usage(existing).free
    if free < config.storage.min_free_mb * 1e6:
        raise _fail(origin, "storage.path", root, f"has {free / 1e6:.0f} MB free, less than "
                    f"storage.min_free_mb ({config.storage.min_free_mb:g} MB)")  # fmt: skip
    if str(config.audit.path) not in ("", "."):
        audit = config.audit.path
        _check_folder(origin, "audit.path", audit.parent, shown=audit)
        if audit.exists() and not os.access(audit, os.W_OK):
            raise _fail(origin, "audit.path", audit, f"is not writable by user {_user()}")
    return free


def _check_folder(origin: Origin, key: str, folder: Path, *, shown: Path | None = None) -> Path:
    """`folder` exists and is writable, or can be created; returns the nearest existing one."""
    value = folder if shown is None else shown
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise _fail(origin, key, value, f"cannot be created: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "is" if existing == folder.absolute() else f"cannot be created: {existing} is"
        raise _fail(origin, key, value, f"{where} not writable by user {_user()}")
    return existing


def _check_model(config: Config, origin: Origin, *, apart: bool) -> BundleCheck:
    path = config.model.bundle
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise _fail(origin, "model.bundle", path, f"{what} (a model bundle folder, as "
                    "dicomnode-train export makes)")  # fmt: skip
    check = check_bundle_apart(path) if apart else check_bundle(path)
    if check.problem:
        raise _fail(origin, "model.bundle", path, f"cannot be used: {check.problem}")
    return check


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a uid without a passwd entry (DynamicUser, containers)
        return str(os.geteuid())
