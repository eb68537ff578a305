"""The table of callers: accepted connections the resolver has attested, with their state.

The IdentityResolver owns one CallerTable. It calls ``record(conn)`` for every
decision about a connection and keeps ``stream(conn, api)`` open around every stream,
so the table contains each caller's identities, its last denial and its open streams.
The admin socket reads ``current()`` to list callers for ``attest-agent drift``, and
the metrics read ``served_validities()`` at scrape time.

Records of closed connections are dropped, so the table contains at most one record per
open connection. Use the table from the event loop thread only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from agent.attest.evidence import Evidence
from agent.ca import X509Svid
from agent.denial import Denial
from agent.manifests.identity import Identity
from agent.peer.connection import Connection

__all__ = ["CallerRecord", "CallerTable", "GrantedState", "HeldIdentity"]


class HeldIdentity(Protocol):
    """One identity granted to a caller with its current X.509-SVID."""

    @property
    def identity(self) -> Identity: ...
    @property
    def svid(self) -> X509Svid: ...


class GrantedState(Protocol):
    """A caller's grant: the evidence it was attested with and its identities."""

    @property
    def evidence(self) -> Evidence: ...
    @property
    def identities(self) -> Sequence[HeldIdentity]: ...


@dataclass(eq=False)
class CallerRecord:
    """One connection's latest decision.

    ``held`` maps each SPIFFE ID issued on this connection, and not revoked since, to
    the serial number of the SVID last issued for it. ``granted`` is the latest state
    with identities (None before the first grant and after a denial). ``denial`` is
    the latest denial and is cleared by the next grant. ``streams`` counts the open
    streams by API name.
    """

    conn: Connection
    streams: dict[str, int] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)
    granted: GrantedState | None = None
    denial: Denial | None = None
    decided_at: datetime | None = None

    @property
    def open_streams(self) -> int:
        return sum(self.streams.values())


class CallerTable:
    """Records of the open connections that asked for an identity, keyed by connection id."""

    def __init__(self) -> None:
        self._records: dict[str, CallerRecord] = {}

    def record(self, conn: Connection) -> CallerRecord:
        """Return the record of ``conn``, creating it (and dropping closed ones) if new."""
        found = self._records.get(conn.conn_id)
        if found is not None and found.conn is conn:
            return found
        # Pruning only when a connection is added keeps the cost per request constant.
        self._prune()
        created = CallerRecord(conn)
        self._records[conn.conn_id] = created
        return created

    @contextmanager
    def stream(self, conn: Connection, api: str) -> Iterator[CallerRecord]:
        """Count one open stream of ``api`` on ``conn`` for the duration of the block."""
        record = self.record(conn)
        record.streams[api] = record.streams.get(api, 0) + 1
        try:
            yield record
        finally:
            remaining = record.streams.get(api, 1) - 1
            if remaining > 0:
                record.streams[api] = remaining
            else:
                record.streams.pop(api, None)

    def current(self) -> list[CallerRecord]:
        """Return the records of open connections, oldest connection first."""
        self._prune()
        return list(self._records.values())

    def served_validities(self) -> list[tuple[datetime, datetime]]:
        """Return (not_before, not_after) of every X.509-SVID served on an open stream."""
        served = []
        for record in self._records.values():
            if record.conn.closed or not record.open_streams or record.granted is None:
                continue
            for held in record.granted.identities:
                served.append((held.svid.not_before, held.svid.not_after))
        return served

    def __len__(self) -> int:
        return len(self._records)

    def _prune(self) -> None:
        closed = [conn_id for conn_id, rec in self._records.items() if rec.conn.closed]
        for conn_id in closed:
            del self._records[conn_id]
