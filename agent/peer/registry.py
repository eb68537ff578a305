"""Map grpc peers of the internal server back to accepted connections.

The front door relays each public connection through its own internal client socket,
bound to the abstract name ``abstract_name(conn_id)``. grpcio reports such a peer as
``unix-abstract:<name>`` (checked with grpcio 1.85), so a servicer calls
``registry.lookup(context.peer())`` to find the Connection and its pinned process.
Only the front door calls ``add`` and ``remove``; all calls happen on the event loop
thread.
"""

from __future__ import annotations

from agent.peer.connection import Connection
from agent.peer.errors import PeerError

ABSTRACT_NAME_PREFIX = "attest-agent-"
GRPC_ABSTRACT_PEER_PREFIX = "unix-abstract:"


def abstract_name(conn_id: str) -> str:
    """Return the abstract socket name (without the leading NUL) for a connection."""
    return ABSTRACT_NAME_PREFIX + conn_id


class PeerRegistry:
    """Live connections, keyed by the abstract name of their internal relay socket."""

    def __init__(self) -> None:
        self._by_name: dict[str, Connection] = {}

    def add(self, conn: Connection) -> None:
        """Register a connection before its relay socket connects to the internal server."""
        name = abstract_name(conn.conn_id)
        if name in self._by_name:
            raise PeerError(f"connection id {conn.conn_id} is already registered")
        self._by_name[name] = conn

    def remove(self, conn: Connection) -> None:
        """Forget a connection; call this before closing its relay socket."""
        name = abstract_name(conn.conn_id)
        if self._by_name.get(name) is conn:
            del self._by_name[name]

    def lookup(self, grpc_peer: str) -> Connection | None:
        """Return the connection behind grpc's ``context.peer()``, or None if unknown."""
        if not grpc_peer.startswith(GRPC_ABSTRACT_PEER_PREFIX):
            return None
        conn = self._by_name.get(grpc_peer[len(GRPC_ABSTRACT_PEER_PREFIX) :])
        if conn is None or conn.closed:
            return None
        return conn

    def connections(self) -> list[Connection]:
        """Return a snapshot of the live connections."""
        return list(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)
