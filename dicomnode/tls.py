"""TLS contexts for DICOM secure transport (PS3.15 Annex B): TLS 1.2 or newer.

The node presents `certificate` as server and as client. With `ca_certificates` it verifies
peers: callers' certificates (required or optional) and destinations' servers (always, when
given; a destination's host name must then match its certificate).

The listening side handshakes in each connection's own thread (`accept`), never in the accept
loop, so a caller that connects and stays silent cannot stall anyone else.
"""

from __future__ import annotations

import re
import socket
import ssl

from dicomnode.config import TlsSection

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsError(ValueError):
    """A certificate, key or CA bundle that cannot be used; the message names the file, `key`
    the configuration key that names it."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


def server_context(tls: TlsSection) -> ssl.SSLContext:
    """The listening side's context."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[tls.minimum_version]
    _load_identity(context, tls)
    if tls.ca_certificates:
        _load_ca(context, tls)
        context.verify_mode = (
            ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
        )
    return context


def client_context(tls: TlsSection) -> ssl.SSLContext:
    """The sending side's context: verifies the destination against the CA bundle, or the
    system's trust store without one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = _VERSIONS[tls.minimum_version]
    if tls.certificate and tls.private_key:
        _load_identity(context, tls)
    if tls.ca_certificates:
        _load_ca(context, tls)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return context


def accept(connection: socket.socket, context: ssl.SSLContext, timeout_s: float) -> ssl.SSLSocket:
    """The server side of the handshake on an accepted `connection`, within `timeout_s`.

    Raises OSError (`ssl.SSLError`, `TimeoutError`) when the peer is refused or too slow; the
    connection is then closed. The timeout stays on the socket: a peer silent this long inside
    the association is dropped too, as `node.network_timeout_seconds` promises.
    """
    connection.settimeout(timeout_s)
    return context.wrap_socket(connection, server_side=True)


def describe_failure(exc: OSError) -> str:
    """One phrase on why a handshake failed, for logs and delivery reasons."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"peer certificate not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        # reason: OpenSSL's short name, e.g. WRONG_VERSION_NUMBER, or TLSV1_ALERT_UNKNOWN_CA
        # for an alert the peer sent (it refused our certificate, version or ciphers).
        reason = str(exc.reason or exc)
        alert = re.fullmatch(r"(?:SSLV3|TLSV1|TLSV13)_ALERT_(\w+)", reason)
        if alert:
            return f"refused by the peer ({alert[1].replace('_', ' ').lower()})"
        return reason.replace("_", " ").lower()
    if isinstance(exc, TimeoutError):
        return "no TLS handshake within the network timeout"
    return (exc.strerror or str(exc)).lower()


def _load_identity(context: ssl.SSLContext, tls: TlsSection) -> None:
    try:
        context.load_cert_chain(tls.certificate, tls.private_key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(
            f"TLS certificate {tls.certificate!r} with key {tls.private_key!r} cannot be "
            f"loaded: {getattr(exc, 'strerror', None) or exc}",
            "tls.certificate",
        ) from exc


def _load_ca(context: ssl.SSLContext, tls: TlsSection) -> None:
    try:
        context.load_verify_locations(cafile=tls.ca_certificates)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(
            f"TLS CA bundle {tls.ca_certificates!r} cannot be loaded: "
            f"{getattr(exc, 'strerror', None) or exc}",
            "tls.ca_certificates",
        ) from exc
