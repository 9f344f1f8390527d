"""Connection-level handlers of the SCP: the TLS handshake per connection, timeouts on
plain connections, and connections that close before any association request."""

from __future__ import annotations

import logging
import ssl
from typing import Any

from pynetdicom.events import Event

from dicomnode.audit import AuditLog

log = logging.getLogger(__name__)


def handle_tls_open(
    event: Event, context: ssl.SSLContext, timeout_s: float, audit: AuditLog | None = None
) -> None:
    """A connection to the TLS port: handshake in its own thread before any PDU is read; a
    refused or silent peer is logged and disconnected (pynetdicom then ends the association)."""
    transport = event.assoc.dul.socket
    if transport is None or transport.socket is None:
        return
    try:
        from dicomnode.tls import accept, describe_failure

        try:
            transport.socket = accept(transport.socket, context, timeout_s)
        except OSError as exc:
            peer = event.assoc.requestor
            reason = describe_failure(exc)
            log.warning("TLS connection from %s:%s refused: %s", peer.address, peer.port, reason)
            if audit is not None:
                audit.record("tls-refused", address=peer.address, reason=reason)
            transport.close()
    except Exception as exc:  # a handler must not kill the connection's thread silently
        log.error("TLS handshake handling failed: %s", type(exc).__name__)
        transport.close()


def handle_plain_open(event: Event, timeout_s: float) -> None:
    """A plain TCP connection: put the network timeout on its socket before any PDU is read.

    pynetdicom sets it on the listening socket only, and Python hands out accepted sockets
    blocking: a peer that sent half a PDU (or a few stray bytes) and went silent held its
    thread and socket for ever. With the timeout the read fails and pynetdicom drops the
    connection ("Connection closed before the entire PDU was received")."""
    try:
        transport = event.assoc.dul.socket
        if transport is not None and transport.socket is not None:
            transport.socket.settimeout(timeout_s)
    except Exception as exc:  # a handler must not kill the connection's thread silently
        log.error("setting the network timeout on a connection failed: %s", type(exc).__name__)


def handle_conn_close(event: Event) -> None:
    """A closed connection that never completed an A-ASSOCIATE-RQ (silent until the timeout,
    half a PDU, bytes that are not DICOM, a port probe): one line, since nothing else logs it."""
    try:
        peer = event.assoc.requestor
        if peer.primitive is None:
            log.info(
                "connection from %s:%s closed before an association was requested "
                "(silent, partial or not DICOM)",
                peer.address,
                peer.port,
            )
    except Exception as exc:  # a handler must not kill the connection's thread silently
        log.error("recording a closed connection failed: %s", type(exc).__name__)


def is_tls(assoc: Any) -> bool:
    """True when the association runs over TLS."""
    socket = assoc.dul.socket
    return socket is not None and isinstance(socket.socket, ssl.SSLSocket)
