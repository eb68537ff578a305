"""The front door: accept on the public socket, pin the caller, relay to grpcio.

grpcio gives servicers no peer credentials for Unix-socket calls, so the agent accepts
connections itself. For each accepted connection the front door reads SO_PEERCRED,
pins the process (pidfd and start time) before reading any byte, waits for the HTTP/2
client preface, registers the connection, and relays bytes to the internal grpcio
server. The relay's client socket is bound to the abstract name derived from the
connection id, so ``registry.lookup(context.peer())`` finds the connection.

The byte relay itself, with its flow control, is in agent.peer.relay.

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
from pathlib import Path

from agent.denial import Reason
from agent.log import event, is_logged_occurrence
from agent.peer.connection import Connection
from agent.peer.errors import PeerError, PinError
from agent.peer.limits import raise_open_file_limit
from agent.peer.process import peer_credentials, pin_peer, read_exe_file
from agent.peer.registry import PeerRegistry, abstract_name
from agent.peer.relay import PublicSide, RelaySide, relay
from agent.peer.sockdiag import FileDescriptorOwner, client_socket_inode
from agent.peer.sockets import PUBLIC_SOCKET_MODE, check_internal_dir

logger = logging.getLogger(__name__)

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
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
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_unix_server(
                lambda: PublicSide(self._on_accept),
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

    def _on_accept(self, public: PublicSide) -> None:
        # Runs in connection_made, so the caller is pinned before any byte is read.
        # This class owns the task, so close() can cancel it cleanly.
        if len(self._tasks) >= self.max_connections:
            self._reject_over_limit(public)
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
        try:
            conn = self._pin(public.transport)
        except Exception:
            # A bug in one connection must not stop the accept loop; log it and drop it.
            logger.exception("pinning the caller of a new connection failed")
            conn = None
        if conn is None:
            public.transport.close()
            return
        task = asyncio.get_running_loop().create_task(self._handle(conn, public))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reject_over_limit(self, public: PublicSide) -> None:
        if self._rejected_over_limit == 0:
            # Logged once per overload episode; the count follows when it ends.
            event(
                logger,
                logging.WARNING,
                "connection limit reached, closing new connections",
                limit=self.max_connections,
            )
        self._rejected_over_limit += 1
        public.transport.close()

    async def _handle(self, conn: Connection, public: PublicSide) -> None:
        try:
            try:
                await self._serve(conn, public)
            finally:
                conn.close()
                event(logger, logging.DEBUG, "connection closed", conn_id=conn.conn_id)
        except Exception:
            # A bug in one connection must not stop the accept loop; log it and drop it.
            logger.exception("connection handler failed")
        finally:
            public.transport.close()
            await public.lost

    def _pin(self, transport: asyncio.Transport) -> Connection | None:
        sock = transport.get_extra_info("socket")
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
            if is_logged_occurrence(self._hidden_pid_rejections):
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

    async def _serve(self, conn: Connection, public: PublicSide) -> None:
        if not await self._read_preface(conn, public):
            return
        self.registry.add(conn)
        try:
            internal = await self._connect_internal(conn)
        except BaseException:
            self.registry.remove(conn)
            raise
        if internal is None:
            self.registry.remove(conn)
            return
        try:
            await relay(public, internal)
        finally:
            # Forget the connection before its abstract name is freed by the close.
            self.registry.remove(conn)
            internal.transport.close()

    async def _read_preface(self, conn: Connection, public: PublicSide) -> bool:
        try:
            received = await asyncio.wait_for(
                public.wait_for_bytes(len(HTTP2_PREFACE)), self.preface_timeout
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
            return False
        if received is None:
            return False  # the caller went away before sending a request
        if received[: len(HTTP2_PREFACE)] != HTTP2_PREFACE:
            event(
                logger,
                logging.INFO,
                "connection closed: the caller did not send the HTTP/2 preface",
                conn_id=conn.conn_id,
                pid=conn.pid,
            )
            return False
        return True

    async def _connect_internal(self, conn: Connection) -> RelaySide | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        loop = asyncio.get_running_loop()
        try:
            sock.setblocking(False)
            sock.bind("\0" + abstract_name(conn.conn_id))
            await loop.sock_connect(sock, str(self.internal_path))
            _, internal = await loop.create_unix_connection(RelaySide, sock=sock)
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
        return internal
