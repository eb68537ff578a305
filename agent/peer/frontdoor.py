"""The front door: accept on the public socket, pin the caller, relay to grpcio.

grpcio gives servicers no peer credentials for Unix-socket calls, so the agent accepts
connections itself. For each accepted connection the front door reads SO_PEERCRED,
pins the process (pidfd and start time) before reading any byte, waits for the HTTP/2
client preface, registers the connection, and relays bytes to the internal grpcio
server. The relay's client socket is bound to the abstract name derived from the
connection id, so ``registry.lookup(context.peer())`` finds the connection.

Callers: run ``prepare_public_socket`` and ``prepare_internal_socket`` (agent.peer.
sockets), start grpcio on ``unix:<internal_path>``, then ``await start()``; on
shutdown ``await close()`` before stopping grpcio. Use one instance per event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from agent.denial import Reason
from agent.log import event
from agent.peer.connection import Connection
from agent.peer.errors import PeerError, PinError
from agent.peer.limits import raise_open_file_limit
from agent.peer.process import peer_credentials, pin_peer, read_exe_file
from agent.peer.registry import PeerRegistry, abstract_name
from agent.peer.sockdiag import FileDescriptorOwner, client_socket_inode
from agent.peer.sockets import PUBLIC_SOCKET_MODE, check_internal_dir

logger = logging.getLogger(__name__)

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_RELAY_CHUNK_BYTES = 64 * 1024
# Each relayed connection uses the accepted socket, a pidfd, the relay's internal socket
# and grpcio's end of it.
FDS_PER_CONNECTION = 4


class FrontDoor:
    """Accepts on the public socket and relays each connection to the internal server."""

    def __init__(
        self,
        public_path: Path,
        internal_path: Path,
        *,
        max_connections: int = 4096,
        preface_timeout: float = 10.0,
        proc_root: Path = Path("/proc"),
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.public_path = public_path
        self.internal_path = internal_path
        self.max_connections = max_connections
        self.preface_timeout = preface_timeout
        self.registry = PeerRegistry()
        self._proc_root = proc_root
        self._server: asyncio.AbstractServer | None = None
        self._socket_inode: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._rejected_over_limit = 0
        self._hidden_pid_rejections = 0

    async def start(self) -> None:
        """Bind the public socket (mode 0777) and start accepting."""
        if self._server is not None:
            raise PeerError("the front door is already started")
        check_internal_dir(self.internal_path)
        raise_open_file_limit(self.max_connections * FDS_PER_CONNECTION)
        try:
            self._server = await asyncio.start_unix_server(
                self._on_accept,
                path=str(self.public_path),
                backlog=min(self.max_connections, socket.SOMAXCONN),
            )
            os.chmod(self.public_path, PUBLIC_SOCKET_MODE)
            self._socket_inode = os.stat(self.public_path).st_ino
        except OSError as exc:
            raise PeerError(f"cannot listen on {self.public_path}: {exc}") from exc
        event(logger, logging.INFO, "listening", socket=self.public_path)

    async def close(self) -> None:
        """Stop accepting, end every relayed connection and remove the public socket."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()
        self._remove_own_socket()
        event(logger, logging.INFO, "stopped listening", socket=self.public_path)

    def _remove_own_socket(self) -> None:
        # Remove the path only if it is still the socket this instance bound.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.public_path).st_ino == self._socket_inode:
                os.unlink(self.public_path)

    def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback: this class owns the task, so close() can cancel it cleanly.
        if len(self._tasks) >= self.max_connections:
            self._reject_over_limit(writer)
            return
        if self._rejected_over_limit:
            event(
                logger,
                logging.INFO,
                "accepting connections again",
                count=self._rejected_over_limit,
                limit=self.max_connections,
            )
            self._rejected_over_limit = 0
        task = asyncio.get_running_loop().create_task(self._handle(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reject_over_limit(self, writer: asyncio.StreamWriter) -> None:
        if self._rejected_over_limit == 0:
            # Logged once per overload episode; the count follows when it ends.
            event(
                logger,
                logging.WARNING,
                "connection limit reached, closing new connections",
                limit=self.max_connections,
            )
        self._rejected_over_limit += 1
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            conn = self._pin(writer)
            if conn is None:
                return
            try:
                await self._serve(conn, reader, writer)
            finally:
                conn.close()
                event(logger, logging.DEBUG, "connection closed", conn_id=conn.conn_id)
        except Exception:
            # A bug in one connection must not stop the accept loop; log it and drop it.
            logger.exception("connection handler failed")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _pin(self, writer: asyncio.StreamWriter) -> Connection | None:
        sock = writer.get_extra_info("socket")
        try:
            creds = peer_credentials(sock)
        except OSError as exc:
            event(
                logger,
                logging.INFO,
                "connection dropped before its credentials were read",
                error=exc,
            )
            return None
        if creds.pid == 0:
            self._hidden_pid_rejections += 1
            # A misdeployed agent rejects every call: log the 1st, 2nd, 4th, 8th, ... one.
            if self._hidden_pid_rejections & (self._hidden_pid_rejections - 1) == 0:
                event(
                    logger,
                    logging.WARNING,
                    "connection rejected: the caller's PID namespace is not visible, "
                    "run the agent in the host PID namespace (hostPID: true)",
                    uid=creds.uid,
                    gid=creds.gid,
                    reason=Reason.PID_NAMESPACE_HIDDEN.value,
                    count=self._hidden_pid_rejections,
                )
            return None
        try:
            pidfd, start_time = pin_peer(sock, creds.pid, self._proc_root)
        except PinError as exc:
            event(logger, logging.WARNING, "connection rejected", pid=creds.pid, error=exc.problem)
            return None
        try:
            client_inode, exe_file = self._socket_facts(sock, creds.pid, pidfd)
        except PinError as exc:
            os.close(pidfd)
            event(logger, logging.WARNING, "connection rejected", pid=creds.pid, error=exc.problem)
            return None
        conn = Connection(
            secrets.token_hex(16), creds, pidfd, start_time, client_inode, exe_file
        )
        event(
            logger,
            logging.DEBUG,
            "connection accepted",
            conn_id=conn.conn_id,
            pid=creds.pid,
            uid=creds.uid,
            gid=creds.gid,
            start_time=start_time,
        )
        return conn

    def _socket_facts(
        self, sock: FileDescriptorOwner, pid: int, pidfd: int
    ) -> tuple[int, tuple[int, int]]:
        # The client end's inode lets the attestor find every process holding the
        # connection; the executable's identity lets it notice an execve() after accept.
        try:
            client_inode = client_socket_inode(sock)
        except (OSError, ValueError) as exc:
            raise PinError(pid, f"cannot find the client end of its socket: {exc}") from exc
        return client_inode, read_exe_file(pid, pidfd, self._proc_root)

    async def _serve(
        self, conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        preface = await self._read_preface(conn, reader)
        if preface is None:
            return
        self.registry.add(conn)
        try:
            relay = await self._connect_internal(conn)
        except BaseException:
            self.registry.remove(conn)
            raise
        if relay is None:
            self.registry.remove(conn)
            return
        try:
            await _relay(preface, reader, writer, relay)
        finally:
            # Forget the connection before its abstract name is freed by the close.
            self.registry.remove(conn)
            relay.close()

    async def _read_preface(self, conn: Connection, reader: asyncio.StreamReader) -> bytes | None:
        try:
            preface = await asyncio.wait_for(
                reader.readexactly(len(HTTP2_PREFACE)), self.preface_timeout
            )
        except TimeoutError:
            event(
                logger,
                logging.INFO,
                "connection closed: no HTTP/2 preface before the timeout",
                conn_id=conn.conn_id,
                pid=conn.pid,
                limit=self.preface_timeout,
            )
            return None
        except (asyncio.IncompleteReadError, ConnectionError):
            return None  # the caller went away before sending a request
        if preface != HTTP2_PREFACE:
            event(
                logger,
                logging.INFO,
                "connection closed: the caller did not send the HTTP/2 preface",
                conn_id=conn.conn_id,
                pid=conn.pid,
            )
            return None
        return preface

    async def _connect_internal(self, conn: Connection) -> _InternalSide | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            sock.bind("\0" + abstract_name(conn.conn_id))
            await asyncio.get_running_loop().sock_connect(sock, str(self.internal_path))
            internal_reader, internal_writer = await asyncio.open_unix_connection(sock=sock)
        except OSError as exc:
            sock.close()
            event(
                logger,
                logging.ERROR,
                "cannot connect to the internal gRPC server",
                conn_id=conn.conn_id,
                path=self.internal_path,
                error=exc,
            )
            return None
        except BaseException:
            sock.close()
            raise
        return _InternalSide(internal_reader, internal_writer)


@dataclass(frozen=True, slots=True)
class _InternalSide:
    """The relay's connection to the internal server, bound to the connection's name."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def close(self) -> None:
        self.writer.close()


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await source.read(_RELAY_CHUNK_BYTES):
            sink.write(data)
            await sink.drain()


async def _relay(
    preface: bytes,
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    internal: _InternalSide,
) -> None:
    """Copy bytes both ways until either side closes, then stop both directions."""
    internal.writer.write(preface)
    directions = {
        asyncio.ensure_future(_pump(client_reader, internal.writer)),
        asyncio.ensure_future(_pump(internal.reader, client_writer)),
    }
    try:
        await asyncio.wait(directions, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for direction in directions:
            direction.cancel()
        await asyncio.gather(*directions, return_exceptions=True)
