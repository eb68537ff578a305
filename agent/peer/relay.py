"""The byte relay between an accepted connection and the internal grpcio server.

The relay runs on asyncio protocols and transports: each side's ``data_received``
writes straight to the other side's transport, and a side whose write buffer is full
pauses reading on the other side until it drains. This costs one callback per chunk
instead of a task switch per read and per drain.

Callers (the front door): create the accepted socket's protocol as ``PublicSide`` and
the internal socket's as ``RelaySide``, read what must be checked before relaying with
``wait_for_bytes``, then ``await relay(public, internal)``. ``relay`` returns when
either side reaches EOF or is lost, and the caller then closes both transports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from agent.peer.errors import PeerError

__all__ = ["PublicSide", "RelaySide", "relay"]

# Bytes kept from a client before its relay to grpcio is connected. Beyond this the
# front door stops reading from the client until the relay takes the bytes.
_MAX_PENDING_BYTES = 64 * 1024


class RelaySide(asyncio.Protocol):
    """One socket of a relayed connection; it writes what it receives to its peer.

    Until ``link`` connects it to its peer, received bytes are kept in ``pending``.
    ``finished`` completes when the socket reaches EOF or is lost (either ends the
    relay), ``lost`` when the transport is closed.
    """

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.finished: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.pending = bytearray()
        self._transport: asyncio.Transport | None = None
        self._peer: RelaySide | None = None
        self._needed = 0
        self._arrived: asyncio.Future[None] | None = None

    @property
    def transport(self) -> asyncio.Transport:
        if self._transport is None:
            raise PeerError("the relay socket is not connected yet")
        return self._transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):
            raise PeerError(f"the relay needs a stream transport, got {transport!r}")
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        peer = self._peer
        if peer is not None:
            if not peer.transport.is_closing():
                peer.transport.write(data)
            return
        self.pending += data
        if len(self.pending) >= _MAX_PENDING_BYTES:
            self.transport.pause_reading()
        if self._arrived is not None and len(self.pending) >= self._needed:
            _complete(self._arrived)

    def eof_received(self) -> bool:
        self._finish()
        return False  # close the transport: the relay ends on EOF from either side

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()
        _complete(self.lost)

    def pause_writing(self) -> None:
        # This side's write buffer is full: stop reading what would be written to it.
        if self._peer is not None:
            self._peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self._peer is not None:
            self._peer.transport.resume_reading()

    async def wait_for_bytes(self, count: int) -> bytes | None:
        """Return the pending bytes once at least ``count`` arrived, or None at EOF."""
        while len(self.pending) < count:
            if self.finished.done():
                return None
            self._needed = count
            self._arrived = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait(
                    (self._arrived, self.finished), return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                self._arrived = None
        return bytes(self.pending)

    def link(self, peer: RelaySide) -> None:
        """Send pending bytes to ``peer`` and relay everything received from now on."""
        self._peer = peer
        data, self.pending = bytes(self.pending), bytearray()
        if not self.transport.is_closing():
            self.transport.resume_reading()
        if data and not peer.transport.is_closing():
            peer.transport.write(data)

    def _finish(self) -> None:
        _complete(self.finished)
        if self._arrived is not None:
            _complete(self._arrived)


class PublicSide(RelaySide):
    """The accepted socket; the front door pins its caller as soon as it is made."""

    def __init__(self, on_accept: Callable[[PublicSide], None]) -> None:
        super().__init__()
        self._on_accept = on_accept

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._on_accept(self)


def _complete(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def relay(public: RelaySide, internal: RelaySide) -> None:
    """Copy bytes both ways until either side reaches EOF or closes."""
    internal.link(public)
    public.link(internal)  # sends the preface and whatever followed it
    await asyncio.wait((public.finished, internal.finished), return_when=asyncio.FIRST_COMPLETED)
