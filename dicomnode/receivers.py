"""Several receiver processes on the node's one port, supervised by the service.

One Python process receives at the speed of one core: pynetdicom runs an association per
thread, but decoding PDUs, checking headers and writing files all hold the GIL. With
``[node] receivers = N`` the service starts N processes (spawned, like the analysis workers),
each running its own pynetdicom AE, with the same handlers as the single receiver (access
control, TLS, checks, spool with fsync before Success, index, audit, one summary line per
association) on its own listening socket bound with SO_REUSEPORT to the same address.

Why SO_REUSEPORT rather than one listening socket shared by pre-forked processes: the kernel
hands each new connection to one listening socket (by a hash of the addresses), so there is no
thundering herd and no process blocks in ``accept`` after a sibling took the connection (which
socketserver's select-then-accept loop would do on a shared blocking socket); pynetdicom's own
server runs unchanged, with only the bind overridden. What it costs: a connection waiting in the
backlog of a receiver that dies is reset (the caller retries; nothing was acknowledged), and
connections are spread by hash, not by load. Linux lets only processes of the same user join
the port; the service checks that no other program listens on it before starting receivers.

Shared state: the spool (files written under unique temporary names, then renamed), the index
(SQLite in WAL mode; each write waits up to 30 s for the lock, and a write that fails anyway
answers a failure status, never Success), the audit trail (one ``O_APPEND`` write per line) and
the study locks (flock, see `Index.study_lock`). ``max_associations`` is node-wide: each
receiver publishes how many associations it holds in a shared array and counts its siblings'
when it decides on a request. Two requests decided at the same instant in two receivers may
both pass, so the limit may be exceeded by at most N - 1.

The service restarts a receiver that dies (logged, with its exit status), closes in the index
the associations it left open (their studies then complete as after an abort), and stops them
all on SIGTERM. A receiver ends itself when the service is gone (see `exit_with_parent`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.audit import AuditLog
from dicomnode.config import Config
from dicomnode.index import Index
from dicomnode.receiver_status import ReceiverStatus, write_status
from dicomnode.spool import Spool
from dicomnode.work_queue import WorkQueue

log = logging.getLogger("dicomnode.receivers")

READY = "listening"
START_TIMEOUT_S = 60.0
"""How long the service waits for every receiver to listen at start (spawning imports pydicom
and pynetdicom afresh in each)."""
QUICK_DEATH_S = 10.0
"""A receiver that dies sooner than this after its start waits before its restart..."""
MAX_RESTART_DELAY_S = 60.0
"""...twice as long as the last time, up to this (a receiver that cannot start never spins)."""
DRAIN_S = 5.0
"""At shutdown, how long a receiver lets open associations finish after it stopped listening."""


class ReceiverStartError(RuntimeError):
    """The receivers could not start (the port is taken, a TLS file unreadable...)."""


class ReusePortServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, its socket bound with SO_REUSEPORT so that sibling
    processes listen on the same address and the kernel spreads connections over them."""

    def server_bind(self) -> None:
        assert self.socket is not None  # made by TCPServer before it binds
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class ReceiverRole:
    """What makes one receiver process a sibling among `len(counts)`: its server binds with
    SO_REUSEPORT, and it shares its count of established associations in `counts[slot]`."""

    def __init__(self, counts: ctypes.Array[ctypes.c_int], slot: int) -> None:
        self.counts, self.slot = counts, slot
        self._held: set[int] = set()
        self._lock = threading.Lock()
        counts[slot] = 0

    def established_elsewhere(self) -> int:
        """Associations the other receivers hold (for the node-wide max_associations)."""
        return sum(n for i, n in enumerate(self.counts) if i != self.slot)

    def handlers(self) -> list[Any]:
        """Event handlers that keep this receiver's count."""
        return [
            (evt.EVT_ACCEPTED, self._accepted),
            (evt.EVT_RELEASED, self._closed),
            (evt.EVT_ABORTED, self._closed),
        ]

    def serve(self, ae: AE, address: tuple[str, int],
              handlers: list[Any]) -> ThreadedAssociationServer:  # fmt: skip
        """Start `ae` listening on `address` in a daemon thread, as `AE.start_server` does."""
        server = ae.make_server(address, evt_handlers=handlers, server_class=ReusePortServer)
        ae._servers.append(server)  # as AE.start_server: the server's shutdown() removes it
        thread = threading.Thread(target=server.serve_forever, name="dicomnode-acceptor",
                                  daemon=True)  # fmt: skip
        thread.start()
        return server

    def _accepted(self, event: Event) -> None:
        with self._lock:
            self._held.add(id(event.assoc))
            self.counts[self.slot] = len(self._held)

    def _closed(self, event: Event) -> None:
        with self._lock:
            self._held.discard(id(event.assoc))
            self.counts[self.slot] = len(self._held)


def run_receiver(config: Config, slot: int, counts: ctypes.Array[ctypes.c_int],
                 stop: EventType, parent: int, ready: Connection) -> None:  # fmt: skip
    """One receiver process (a process target): listen until `stop` is set, SIGTERM arrives
    or the service is gone. Says READY on `ready` once listening, or why it could not."""
    from dicomnode.logs import configure_logging
    from dicomnode.scp import start_server
    from dicomnode.worker import database, exit_with_parent

    configure_logging(config.logging)
    exit_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the service, which stops us
    terminated = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: terminated.set())
    spool = Spool(config.storage.path / "spool",
                  min_free_bytes=int(config.storage.min_free_mb * 1e6))  # fmt: skip
    queue = WorkQueue(database(config))
    try:
        server = start_server(config, spool, queue, AuditLog(config.audit_path),
                              receiver=ReceiverRole(counts, slot))  # fmt: skip
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        log.error("receiver process %d cannot listen: %s", os.getpid(), reason)
        _tell(ready, reason)
        queue.close()
        sys.exit(1)
    _tell(ready, READY)
    while not (stop.is_set() or terminated.is_set()):
        terminated.wait(0.1)
    server.shutdown()  # no new connections; open associations may finish their store
    deadline = time.monotonic() + DRAIN_S
    while server.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    queue.close()


class ReceiverPool:
    """Starts `config.node.receivers` receiver processes and restarts any that dies; `index`
    is the service's, where a dead receiver's open associations are closed."""

    def __init__(self, config: Config, index: Index) -> None:
        self.config, self.index = config, index
        self.expected = config.node.receivers
        self.context = multiprocessing.get_context("spawn")
        self.stop = self.context.Event()
        self.counts: ctypes.Array[ctypes.c_int] = self.context.RawArray(ctypes.c_int, self.expected)
        self.processes: list[BaseProcess | None] = [None] * self.expected
        self.restarts = 0
        self._started = [0.0] * self.expected
        self._delay = [0.0] * self.expected
        self._due = [0.0] * self.expected
        self._lock = threading.Lock()

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start every receiver and wait until each listens; ReceiverStartError (the others
        stopped) when one cannot."""
        _check_port_free(self.config.node.host, self.config.node.port)
        waiting = {i: self._spawn(i) for i in range(self.expected)}
        deadline = time.monotonic() + timeout_s
        try:
            for i, reader in waiting.items():
                answer = _answer(reader, deadline - time.monotonic())
                if answer != READY:
                    raise ReceiverStartError(f"receiver process {i + 1} of {self.expected} did "
                                             f"not start: {answer}")  # fmt: skip
        except BaseException:
            self.shutdown()
            raise
        finally:
            for reader in waiting.values():
                reader.close()
        log.info("%d receiver processes listen on %s:%d (pids %s)", self.expected,
                 self.config.node.host, self.config.node.port,
                 ", ".join(str(p) for p in self.pids()))  # fmt: skip
        self._record()

    def supervise(self, now: float | None = None) -> None:
        """Restart receivers that died (called by the service's timer)."""
        if self.stop.is_set():
            return
        at = time.time() if now is None else now
        with self._lock:
            changed = False
            for i, process in enumerate(self.processes):
                if process is not None and not process.is_alive():
                    self._bury(i, process, at)
                    changed = True
                if self.processes[i] is None and self._due[i] <= at:
                    self._spawn(i).close()  # not waited for: it says so in the log
                    self.restarts += 1
                    changed = True
            if changed:
                self._record()

    def alive(self) -> int:
        """How many receivers are running."""
        return sum(1 for p in self.processes if p is not None and p.is_alive())

    def pids(self) -> list[int]:
        """The running receivers' process ids."""
        return [p.pid for p in self.processes if p is not None and p.is_alive() and p.pid]

    def shutdown(self, timeout_s: float = 2 * DRAIN_S) -> None:
        """Stop every receiver: no new associations; open ones get DRAIN_S to finish."""
        self.stop.set()
        with self._lock:  # a restart in progress ends first, then stops like the others
            for process in self.processes:
                if process is None:
                    continue
                process.join(timeout_s)
                if process.is_alive():
                    process.terminate()
                    process.join(timeout_s)
            self._record()

    def _bury(self, i: int, process: BaseProcess, at: float) -> None:
        """Log why receiver `i` stopped, close what it left open, schedule its restart."""
        from dicomnode.scp import association_prefix

        code = process.exitcode
        if code is not None and code < 0:
            how = f"was killed by signal {signal.Signals(-code).name}"
        else:
            how = f"exited with status {code}"
        quick = at - self._started[i] < QUICK_DEATH_S
        self._delay[i] = min(MAX_RESTART_DELAY_S, max(1.0, 2 * self._delay[i])) if quick else 0.0
        self._due[i] = at + self._delay[i]
        self.processes[i] = None
        self.counts[i] = 0
        assert process.pid is not None
        try:
            closed = self.index.close_open_associations(at, prefix=association_prefix(process.pid))
        except Exception as exc:  # the index busy or full: they close at the next start
            log.error("closing the associations of receiver %d failed: %s", process.pid, exc)
            closed = 0
        log.error("receiver process %d %s (%d open association(s) closed as aborted); "
                  "restarting it %s", process.pid, how, closed,
                  f"in {self._delay[i]:.0f} s" if self._delay[i] else "now")  # fmt: skip

    def _spawn(self, i: int) -> Connection:
        reader, writer = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=run_receiver,
            args=(self.config, i, self.counts, self.stop, os.getpid(), writer),
            name="dicomnode-receiver",
            daemon=True,
        )
        process.start()
        writer.close()
        self.processes[i], self._started[i] = process, time.time()
        return reader

    def _record(self) -> None:
        status = ReceiverStatus(self.expected, self.alive(), tuple(self.pids()), self.restarts,
                                time.time())  # fmt: skip
        try:
            write_status(self.config.storage.path, status)
        except OSError as exc:  # only `dicomnode status` reads it
            log.warning("receiver status not recorded: %s", exc)


def _tell(ready: Connection, what: str) -> None:
    """Say `what` to the service; a restarted receiver's service no longer listens."""
    with contextlib.suppress(OSError):
        ready.send(what)
    ready.close()


def _answer(reader: Connection, timeout_s: float) -> str:
    """What a starting receiver said, or why it said nothing."""
    try:
        if reader.poll(max(0.0, timeout_s)):
            return str(reader.recv())
        return f"no answer within {START_TIMEOUT_S:.0f} s"
    except (EOFError, OSError):
        return "it exited before listening (see its log lines above)"


def _check_port_free(host: str, port: int) -> None:
    """ReceiverStartError when another program listens on `host`:`port`: with SO_REUSEPORT the
    receivers would otherwise join its socket (same user) and share its callers."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ReceiverStartError("'node.receivers' > 1 needs SO_REUSEPORT, which this system "
                                 "lacks: set node.receivers = 1")  # fmt: skip
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as pynetdicom binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ReceiverStartError(
                f"'node.port' {port} on {host} cannot be used: {exc.strerror or exc}"
            ) from exc


class InProcessReceiver:
    """``receivers = 1``: the service process receives itself, as it always did (same
    interface as `ReceiverPool`, for the service and /healthz)."""

    expected = 1

    def __init__(self, server: ThreadedAssociationServer, storage: Path) -> None:
        self.server, self.storage = server, storage
        self._record(alive=1)

    def supervise(self) -> None:
        """Nothing to restart: were this receiver dead, so would be the service."""

    def alive(self) -> int:
        """1: the service itself."""
        return 1

    def shutdown(self) -> None:
        """Stop listening."""
        self.server.shutdown()
        self._record(alive=0)

    def _record(self, *, alive: int) -> None:
        status = ReceiverStatus(1, alive, (os.getpid(),) if alive else (), 0, time.time())
        with contextlib.suppress(OSError):  # only `dicomnode status` reads it
            write_status(self.storage, status)


def start_receiving(
    config: Config, spool: Spool, index: WorkQueue, audit: AuditLog
) -> ReceiverPool | InProcessReceiver:
    """Listen as `config.node.receivers` says; ReceiverStartError when that cannot be done."""
    if config.node.receivers == 1:
        from dicomnode.scp import start_server

        return InProcessReceiver(start_server(config, spool, index, audit), config.storage.path)
    index.close_open_associations(time.time())  # left open by a crash: nobody sends on them
    pool = ReceiverPool(config, index)
    pool.start()
    return pool
