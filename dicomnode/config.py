"""The node's configuration: one TOML file parsed at start-up into frozen, typed objects.

Every key has an embedded default, so the node runs with no file at all. A file only overrides;
an unknown key, a wrong type or a bad value refuses to start with one sentence naming the key
and the file. Command-line flags override the file (see `with_overrides`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from rapidfuzz import process

from pipeline.dicom.addresses import AE_TITLE_RULE, AeAddress, is_valid_ae_title

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["text", "json"]


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and the file."""


class FieldError(ValueError):
    """A field value its check refused; `name` is the field."""

    def __init__(self, name: str, value: Any, reason: str) -> None:
        super().__init__(f"'{name}' = {value!r} {reason}")
        self.name, self.value, self.reason = name, value, reason


class MissingKeyError(FieldError):
    """A key the table needs given its other keys (a DIMSE destination's port)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name, None, reason)
        self.args = (f"lacks the key '{name}': {reason}",)


def _ae_title(value: str) -> None:
    if not is_valid_ae_title(value):
        raise ValueError(AE_TITLE_RULE)


def _port(value: int) -> None:
    if not 1 <= value <= 65535:
        raise ValueError("must be a TCP port between 1 and 65535")


_HOST_LABEL = r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)"  # RFC 1123, plus the "_" Windows names use
_HOST_NAME = re.compile(rf"{_HOST_LABEL}(\.{_HOST_LABEL})*\.?")


def _host(value: str) -> None:
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    # Digits and dots only is a mistyped address ("10.0.0.256"), not a name; a port, a scheme
    # or a path ("pacs:104", "http://pacs") is no name either.
    if len(value) > 253 or not _HOST_NAME.fullmatch(value) or re.fullmatch(r"[\d.]+", value):
        raise ValueError("must be a host name or an IP address (no port, scheme or path)")


def _positive(value: float) -> None:
    if value <= 0:
        raise ValueError("must be positive")


def _checked(default: Any = dataclasses.MISSING, *, check: Any) -> Any:
    if default is dataclasses.MISSING:
        return field(metadata={"check": check})
    return field(default=default, metadata={"check": check})


class _Validated:
    """Runs each field's `check` (from its metadata) after construction."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            check = f.metadata.get("check")
            value = getattr(self, f.name)
            if check is not None:
                try:
                    check(value)
                except ValueError as exc:
                    raise FieldError(f.name, value, str(exc)) from exc


def _unless_empty(check: Callable[[Any], None]) -> Callable[[Any], None]:
    """`check`, skipped for a key left out ("" or 0): DICOMweb destinations have no AE title,
    host or port of their own (see `Destination`)."""

    def checked(value: Any) -> None:
        if value:
            check(value)

    return checked


_DIMSE_KEYS = ("ae_title", "host", "port")


def _check_url(url: str) -> None:
    """A DICOMweb base URL; never echoes one holding credentials back (logs, stderr)."""
    shown = "<not shown>" if "@" in url else url
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise FieldError("url", shown, f"is not a valid URL ({exc})") from None
    if parts.username is not None or parts.password is not None:
        raise FieldError("url", shown, "must not hold credentials: name a 'credentials_file' "
                         "instead")  # fmt: skip
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise FieldError("url", url, "must be an http:// or https:// URL, the DICOMweb "
                         "service's base (e.g. https://pacs.example/dicom-web)")  # fmt: skip
    if parts.query or parts.fragment:
        raise FieldError("url", url, "must be the service's base URL, without '?' or '#'")


@dataclass(frozen=True)
class Destination(_Validated):
    """A peer that receives the node's results: a DICOM SCP (C-STORE to `ae_title` at
    `host`:`port`) or a DICOMweb service (STOW-RS to `url`); exactly one of the two."""

    ae_title: str = _checked("", check=_unless_empty(_ae_title))
    host: str = _checked("", check=_unless_empty(_host))
    port: int = _checked(0, check=_unless_empty(_port))
    tls: bool = False
    """Send over TLS (with the [tls] section's certificate, CA and minimum version)."""
    url: str = ""
    """DICOMweb instead of DIMSE: the STOW-RS base URL; results are POSTed to {url}/studies,
    over TLS (the [tls] section's CA bundle, certificate and minimum version) for https."""
    credentials_file: str = ""
    """For a `url`: the file holding HTTP basic or bearer credentials (see dicomnode.stow),
    read at each delivery so that a rotated secret needs no restart."""
    storage_commitment: bool = False
    """Count a delivery only once the PACS confirms storage (Storage Commitment Push Model,
    N-ACTION then N-EVENT-REPORT); DIMSE destinations only."""

    def __post_init__(self) -> None:
        super().__post_init__()
        given = [name for name in _DIMSE_KEYS if getattr(self, name)]
        if self.url:
            _check_url(self.url)
            if given:
                raise FieldError(given[0], getattr(self, given[0]), "cannot be combined with "
                                 "'url': a destination is either DIMSE (ae_title, host, port) "
                                 "or DICOMweb (url)")  # fmt: skip
            if self.tls:
                raise FieldError("tls", True, "applies to DIMSE destinations only: a DICOMweb "
                                 "destination uses TLS when its url is https://")  # fmt: skip
            if self.storage_commitment:
                raise FieldError("storage_commitment", True, "applies to DIMSE destinations "
                                 "only: DICOMweb (url) has no storage commitment")  # fmt: skip
            return
        missing = [name for name in _DIMSE_KEYS if name not in given]
        if missing:
            raise MissingKeyError(missing[0], "a destination needs ae_title, host and port "
                                  "(DIMSE C-STORE), or url (DICOMweb STOW-RS)")  # fmt: skip
        if self.credentials_file:
            raise FieldError("credentials_file", self.credentials_file, "applies to DICOMweb "
                             "destinations (url) only")  # fmt: skip

    @property
    def uses_tls(self) -> bool:
        """Whether deliveries go over TLS: `tls` for DIMSE, an https:// url for DICOMweb."""
        return self.tls or urllib.parse.urlsplit(self.url).scheme.lower() == "https"

    @classmethod
    def parse(cls, text: str) -> Destination:
        """Parse ``AET@HOST:PORT`` (IPv6: ``AET@[::1]:104``) or a DICOMweb base URL, as given on
        the command line."""
        try:
            if re.match(r"https?://", text, re.IGNORECASE):
                return cls(url=text)
            address = AeAddress.parse(text)
            return cls(address.aet, address.host, address.port)
        except ValueError as exc:
            raise ConfigError(f"destination {text!r}: {exc}") from exc


@dataclass(frozen=True)
class NodeSection(_Validated):
    """Where and as whom the node listens."""

    ae_title: str = _checked("WRISTAI", check=_ae_title)
    host: str = "127.0.0.1"
    port: int = _checked(11112, check=_port)
    max_associations: int = _checked(32, check=_positive)
    """Established associations at once; one more is rejected (transient, local limit)."""
    receivers: int = _checked(1, check=_positive)
    """Processes receiving on the port (SO_REUSEPORT, see dicomnode.receivers); 1 receives in
    the service process itself. Recommended: the number of cores."""
    network_timeout_seconds: float = _checked(30.0, check=_positive)
    """A peer silent this long (before or inside an association) is dropped."""


def _address_patterns(values: tuple[str, ...]) -> None:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"holds {value!r}, not an IP address or network") from None


def _ae_title_or_any(value: str) -> None:
    if value != "*":
        _ae_title(value)


@dataclass(frozen=True)
class AllowedCaller(_Validated):
    """A calling AE title the node accepts associations from, from these addresses only."""

    ae_title: str = _checked(check=_ae_title_or_any)
    """The caller's AE title, or "*" for any."""
    addresses: tuple[str, ...] = _checked(("127.0.0.1", "::1"), check=_address_patterns)
    """IP addresses or networks (CIDR) it may call from; empty: from anywhere."""

    @classmethod
    def parse(cls, text: str) -> AllowedCaller:
        """Parse ``AET`` or ``AET@ADDRESS`` (ADDRESS: an IP address or CIDR network)."""
        aet, _, address = text.strip().partition("@")
        try:
            return cls(aet, (address,) if address else ())
        except ValueError as exc:
            raise ConfigError(f"allowed caller {text!r}: {exc}") from exc


@dataclass(frozen=True)
class AccessSection:
    """Who may associate: the calling AE allow list, bound to addresses."""

    allow: tuple[AllowedCaller, ...] = (AllowedCaller("*"),)
    """Callers admitted; the default admits any AE title from loopback only."""
    require_called_ae_title: bool = True
    """Reject associations addressed to another AE title than node.ae_title."""


@dataclass(frozen=True)
class TlsSection:
    """DICOM over TLS (PS3.15 secure transport) for receiving and for sending."""

    enabled: bool = False
    """Listen with TLS only (destinations choose TLS each with their own `tls` key)."""
    certificate: str = ""
    """PEM certificate (chain) the node presents, as server and as client."""
    private_key: str = ""
    """PEM private key of the certificate (unencrypted; readable by the service user only)."""
    ca_certificates: str = ""
    """PEM CA bundle that verifies peers: callers' certificates, destinations' servers."""
    require_client_certificate: bool = False
    """Refuse callers that present no certificate the CA bundle verifies."""
    minimum_version: Literal["1.2", "1.3"] = "1.2"

    def __post_init__(self) -> None:
        if self.enabled and not (self.certificate and self.private_key):
            raise FieldError("enabled", True, "needs 'certificate' and 'private_key'")
        if self.require_client_certificate and not self.ca_certificates:
            raise FieldError("require_client_certificate", True, "needs 'ca_certificates'")


@dataclass(frozen=True)
class StorageSection:
    """Where received instances, the index and results live."""

    path: Path = Path("var/dicomnode")
    min_free_mb: float = 256.0
    """Refuse stores (status A700, Out of Resources) while less than this is free."""


def _non_negative(value: float) -> None:
    if value < 0:
        raise ValueError("must not be negative")


@dataclass(frozen=True)
class CompletenessSection(_Validated):
    """When a study counts as complete (see dicomnode.completeness)."""

    grace_seconds: float = _checked(2.0, check=_non_negative)
    """After the sender released its association, wait this long for more instances."""
    quiet_seconds: float = _checked(30.0, check=_non_negative)
    """Without a release (or across associations), wait this long after the last instance."""
    analyse_during_grace: bool = True
    """Analyse a released study at once and hold its results until the grace period ends (an
    instance arriving meanwhile withdraws them, unsent); false waits for the grace to end."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.grace_seconds > self.quiet_seconds:
            raise FieldError("grace_seconds", self.grace_seconds, "must not exceed quiet_seconds")


def _port_or_zero(value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError("must be a TCP port between 1 and 65535, or 0 to turn it off")


@dataclass(frozen=True)
class HttpSection(_Validated):
    """The local health and metrics endpoint (/healthz, /metrics)."""

    host: str = "127.0.0.1"
    port: int = _checked(9110, check=_port_or_zero)


@dataclass(frozen=True)
class ModelSection:
    """The model bundle the node analyses with."""

    bundle: Path = Path("config/models/wrist-demo")


@dataclass(frozen=True)
class AnalysisSection(_Validated):
    """Analysis worker processes, isolated from the receiver."""

    workers: int = _checked(0, check=_non_negative)
    """Processes analysing studies side by side; 0: one per core the node may use, at most
    MAX_AUTO_WORKERS. Each runs the model on cores / workers threads, so a burst of studies
    keeps every core busy without oversubscribing them."""

    @property
    def worker_count(self) -> int:
        """`workers`, with 0 resolved to the cores available (at least 1)."""
        return self.workers or min(MAX_AUTO_WORKERS, available_cores())

    @property
    def threads_per_worker(self) -> int:
        """The model's threads in each worker: the cores shared out, at least 1."""
        return max(1, available_cores() // self.worker_count)


MAX_AUTO_WORKERS = 8
"""Beyond this many, workers cost memory (up to ~2 GB each) for little: set `workers` explicitly."""


def available_cores() -> int:
    """The CPUs this process may run on (its affinity, which containers and systemd limit)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class SendingSection(_Validated):
    """Delivery of results to the destinations: exponential backoff, then give up."""

    timeout_seconds: float = _checked(30.0, check=_positive)
    initial_delay_seconds: float = _checked(30.0, check=_positive)
    max_delay_seconds: float = _checked(3600.0, check=_positive)
    give_up_after_seconds: float = _checked(86400.0, check=_positive)
    commitment_timeout_seconds: float = _checked(600.0, check=_positive)
    """How long a destination with storage_commitment has to report (N-EVENT-REPORT) after the
    request; past it the delivery is retried like a failed send."""


RESULT_KINDS = ("sr", "gsps", "sc")
"""The result objects an analysed study may get: the TID 1500 SR, a presentation state per image
(toggleable marks), a Secondary Capture per image (burned-in heat map)."""


def _result_kinds(values: tuple[str, ...]) -> None:
    unknown = [v for v in values if v not in RESULT_KINDS]
    if unknown:
        raise ValueError(f"holds {unknown[0]!r}: the kinds are {', '.join(RESULT_KINDS)}")
    if not values:
        raise ValueError(f"is empty: name at least one of {', '.join(RESULT_KINDS)} (to send "
                         "nothing, use shadow = true)")  # fmt: skip
    if len(set(values)) != len(values):
        raise ValueError("names a kind twice")


@dataclass(frozen=True)
class ResultsSection(_Validated):
    """What is sent: results of analysed studies, reports on others, or nothing (shadow)."""

    send: tuple[str, ...] = _checked(RESULT_KINDS, check=_result_kinds)
    """Which result objects an analysed study gets ("sr", "gsps", "sc"); a "not analysed"
    report is always an SR."""
    report_out_of_scope: bool = False
    """Send a short SR saying "not analysed" and why for studies with no wrist view."""
    shadow: bool = False
    """Shadow mode: analyse and keep the results (results spool, outcome, drift statistics) but
    send nothing to any destination, e.g. to watch a new model or site before going live."""


@dataclass(frozen=True)
class RetentionSection(_Validated):
    """Purging of delivered studies (spool files and results)."""

    purge_after_hours: float = _checked(720.0, check=_non_negative)
    """Age after delivery at which a study's files are removed; 0 keeps them for ever."""
    check_interval_seconds: float = _checked(3600.0, check=_positive)
    forget_after_days: float = _checked(365.0, check=_non_negative)
    """Age after its purge at which the index forgets a study (row, deliveries, associations),
    so the index stays bounded; 0 remembers every study for ever."""


@dataclass(frozen=True)
class AuditSection:
    """The audit trail: one JSON line per security-relevant event, no patient data."""

    path: Path = Path("")
    """The append-only file; empty: audit.jsonl in storage.path."""


@dataclass(frozen=True)
class LoggingSection:
    """Log verbosity and line format."""

    level: LogLevel = "INFO"
    format: LogFormat = "text"


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    node: NodeSection = field(default_factory=NodeSection)
    access: AccessSection = field(default_factory=AccessSection)
    tls: TlsSection = field(default_factory=TlsSection)
    storage: StorageSection = field(default_factory=StorageSection)
    completeness: CompletenessSection = field(default_factory=CompletenessSection)
    http: HttpSection = field(default_factory=HttpSection)
    model: ModelSection = field(default_factory=ModelSection)
    analysis: AnalysisSection = field(default_factory=AnalysisSection)
    sending: SendingSection = field(default_factory=SendingSection)
    results: ResultsSection = field(default_factory=ResultsSection)
    retention: RetentionSection = field(default_factory=RetentionSection)
    audit: AuditSection = field(default_factory=AuditSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    destinations: tuple[Destination, ...] = ()

    @property
    def audit_path(self) -> Path:
        """Where the audit trail is written."""
        return self.audit.path if str(self.audit.path) not in ("", ".") else (
            self.storage.path / "audit.jsonl")  # fmt: skip


def load_config(path: Path | None) -> Config:
    """Read `path` (or only the embedded defaults when None) into a validated `Config`."""
    if path is None:
        return Config()
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: configuration file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    # Relative paths (storage) are relative to the working directory, as `make run` and the
    # systemd unit (WorkingDirectory) set it.
    return typing.cast(Config, _build(Config, raw, key="", source=path))


def with_overrides(config: Config, **changes: Any) -> Config:
    """A copy of `config` with command-line overrides, e.g. ``node={'port': 104}``."""
    sections: dict[str, Any] = {}
    for name, value in changes.items():
        current = getattr(config, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            try:
                sections[name] = dataclasses.replace(current, **value)  # type: ignore[type-var]
            except FieldError as exc:
                raise ConfigError(
                    f"command line: '{name}.{exc.name}' = {exc.value!r} {exc.reason}"
                ) from exc
        else:
            sections[name] = value
    return dataclasses.replace(config, **sections)


def _build(cls: type[Any], raw: Any, *, key: str, source: Path) -> Any:
    where = f"[{key}]" if key else "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where} must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in raw:
        if name not in fields:
            guess = process.extractOne(name, list(fields), score_cutoff=60)
            hint = f" (did you mean '{guess[0]}'?)" if guess else ""
            raise ConfigError(f"{source}: unknown key '{_join(key, name)}'{hint}")
    values = {
        name: _coerce(hints[name], raw[name], key=_join(key, name), source=source) for name in raw
    }
    missing = [f.name for f in fields.values() if f.name not in raw and _required(f)]
    if missing:
        raise ConfigError(f"{source}: {where} lacks the key '{_join(key, missing[0])}'")
    try:
        return cls(**values)
    except MissingKeyError as exc:
        raise ConfigError(
            f"{source}: {where} lacks the key '{_join(key, exc.name)}': {exc.reason}"
        ) from exc
    except FieldError as exc:
        raise ConfigError(
            f"{source}: '{_join(key, exc.name)}' = {exc.value!r} {exc.reason}"
        ) from exc


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _coerce(hint: Any, value: Any, *, key: str, source: Path) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type[Any], hint), value, key=key, source=source)
    if origin is tuple:
        item = get_args(hint)[0]
        if not isinstance(value, list):
            raise ConfigError(f"{source}: '{key}' must be a list, not {_kind(value)}")
        return tuple(
            _coerce(item, v, key=f"{key}[{i}]", source=source) for i, v in enumerate(value)
        )
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            listed = ", ".join(repr(c) for c in choices)
            raise ConfigError(f"{source}: '{key}' must be one of {listed}, not {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported config type {hint}")  # pragma: no cover - schema bug
    expected = _TOML_TYPES[hint]
    if (isinstance(value, bool) and hint is not bool) or not isinstance(value, expected):
        raise ConfigError(f"{source}: '{key}' must be {_name(hint)}, not {_kind(value)}")
    return Path(str(value)) if hint is Path else hint(value)


_TOML_TYPES: dict[Any, type | tuple[type, ...]] = {
    Path: str,
    int: int,
    float: (int, float),
    str: str,
    bool: bool,
}


def _name(hint: Any) -> str:
    return {Path: "a path (string)", int: "an integer", float: "a number", str: "a string"}.get(
        hint, "a boolean"
    )


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)
