"""A stdlib-only gRPC client that keeps one FetchX509SVID stream open across execve().

Run by a copied interpreter as a workload would run it, never imported::

    python ops_stream.py SOCKET

It connects to the agent socket, opens a FetchX509SVID stream with a hand-written
HTTP/2 request, answers SETTINGS and PING frames, and prints JSON events on stdout:
``connected`` (with its pid), ``message`` for every gRPC message on the stream, and
``end`` with the stream's grpc-status and grpc-message when the agent ends it.

The line ``exec PATH`` on stdin makes it write every byte received so far to a file
and os.execv() PATH (another interpreter) on this same script with the connection's
descriptor inherited. The new program replays the saved bytes through its header
decoder, so it can decode the agent's later frames (HPACK state is per connection),
prints ``resumed`` with its pid and goes on serving the stream. That is how a test
makes the process behind an open stream run a different binary.

The line ``orphan`` makes it fork: the parent exits and the child, which inherited the
connection, prints ``resumed`` with its own pid and goes on serving the stream. The
process the agent pinned at connect time is then gone while its connection lives on.
The test must kill that child, since it is not the process the test started.

The header decoder handles what grpcio 1.85 sends: indexed fields and literals with
raw (not Huffman-coded) strings. A Huffman-coded string decodes to ``<huffman>``.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import sys
import tempfile

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0, 1, 3, 4, 6, 7
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 1, 1, 4, 8, 0x20
STREAM = 1

# The entries of the HPACK static table (RFC 7541 appendix A) that gRPC responses use.
STATIC = {8: (":status", "200"), 31: ("content-type", "")}


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    head = len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big")
    return head + payload


def literal(name: str, value: str) -> bytes:
    # Literal header field without indexing, new name, raw strings (all short here).
    raw_name, raw_value = name.encode(), value.encode()
    return bytes([0, len(raw_name)]) + raw_name + bytes([len(raw_value)]) + raw_value


def request_frames() -> bytes:
    fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/SpiffeWorkloadAPI/FetchX509SVID"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("workload.spiffe.io", "true"),
    ]
    block = b"".join(literal(name, value) for name, value in fields)
    message = b"\x00" + (0).to_bytes(4, "big")  # an empty X509SVIDRequest
    return (
        PREFACE
        + frame(SETTINGS, 0, 0, b"")
        + frame(HEADERS, END_HEADERS, STREAM, block)
        + frame(DATA, END_STREAM, STREAM, message)
    )


class Decoder:
    """HPACK decoding of raw-string header blocks, with the dynamic table."""

    def __init__(self) -> None:
        self.dynamic: list[tuple[str, str]] = []

    def entry(self, index: int) -> tuple[str, str]:
        if index <= 61:
            return STATIC.get(index, (f"static-{index}", ""))
        return self.dynamic[index - 62]

    def decode(self, block: bytes) -> dict[str, str]:
        fields: dict[str, str] = {}
        position = 0
        while position < len(block):
            first = block[position]
            if first & 0x80:
                index, position = integer(block, position, 7)
                name, value = self.entry(index)
            elif first & 0xE0 == 0x20:
                _size, position = integer(block, position, 5)
                continue
            else:
                prefix = 6 if first & 0x40 else 4
                index, position = integer(block, position, prefix)
                if index:
                    name = self.entry(index)[0]
                else:
                    name, position = string(block, position)
                value, position = string(block, position)
                if first & 0x40:
                    self.dynamic.insert(0, (name, value))
            fields[name] = value
        return fields


def integer(block: bytes, position: int, prefix: int) -> tuple[int, int]:
    limit = (1 << prefix) - 1
    value = block[position] & limit
    position += 1
    if value < limit:
        return value, position
    shift = 0
    while True:
        byte = block[position]
        position += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


def string(block: bytes, position: int) -> tuple[str, int]:
    huffman = block[position] & 0x80
    length, position = integer(block, position, 7)
    raw = block[position : position + length]
    return ("<huffman>" if huffman else raw.decode("latin-1")), position + length


class Stream:
    """Parses the agent's frames, acknowledges SETTINGS and PING, and reports stream 1."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = Decoder()
        self.buffer = b""
        self.history = b""
        self.block = b""
        self.block_flags = 0

    def feed(self, data: bytes, *, replay: bool = False) -> None:
        if not replay:
            self.history += data
        self.buffer += data
        while len(self.buffer) >= 9:
            length = int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < 9 + length:
                return
            kind, flags = self.buffer[3], self.buffer[4]
            stream = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
            payload = self.buffer[9 : 9 + length]
            self.buffer = self.buffer[9 + length :]
            self.on_frame(kind, flags, stream, payload, replay)

    def on_frame(self, kind: int, flags: int, stream: int, payload: bytes, replay: bool) -> None:
        if kind == SETTINGS and not flags & ACK and not replay:
            self.sock.sendall(frame(SETTINGS, ACK, 0, b""))
        elif kind == PING and not flags & ACK and not replay:
            self.sock.sendall(frame(PING, ACK, 0, payload))
        elif kind == HEADERS:
            self.block, self.block_flags = strip_header_padding(flags, payload), flags
            if flags & END_HEADERS:
                self.on_headers(stream, replay)
        elif kind == 9:  # CONTINUATION
            self.block += payload
            if flags & END_HEADERS:
                self.on_headers(stream, replay)
        elif kind == DATA and stream == STREAM and not replay:
            emit("message", bytes=len(payload))
        elif kind == RST_STREAM and stream == STREAM and not replay:
            emit("reset", code=int.from_bytes(payload[:4], "big"))
        elif kind == GOAWAY and not replay:
            emit("goaway")

    def on_headers(self, stream: int, replay: bool) -> None:
        fields = self.decoder.decode(self.block)
        if stream == STREAM and self.block_flags & END_STREAM and not replay:
            emit("end", grpc_status=fields.get("grpc-status"),
                 grpc_message=fields.get("grpc-message"))


def strip_header_padding(flags: int, payload: bytes) -> bytes:
    start, end = 0, len(payload)
    if flags & PADDED:
        start, end = 1, len(payload) - payload[0]
    if flags & PRIORITY:
        start += 5
    return payload[start:end]


def serve(stream: Stream) -> None:
    selector = selectors.DefaultSelector()
    selector.register(stream.sock, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is sys.stdin:
                command = sys.stdin.readline().split()
                if not command:
                    return
                if command[0] == "exec":
                    exec_into(stream, command[1])
                elif command[0] == "orphan":
                    fork_away()
                continue
            data = stream.sock.recv(65536)
            if not data:
                emit("closed")
                return
            stream.feed(data)


def exec_into(stream: Stream, program: str) -> None:
    fd, history_path = tempfile.mkstemp(prefix="ops-stream-")
    with os.fdopen(fd, "wb") as handle:
        handle.write(stream.history)
    descriptor = stream.sock.fileno()
    os.set_inheritable(descriptor, True)
    os.execv(program, [program, os.path.abspath(__file__), "--fd", str(descriptor), history_path])


def fork_away() -> None:
    if os.fork():
        os._exit(0)
    emit("resumed", pid=os.getpid(), exe=os.readlink("/proc/self/exe"))


def main() -> None:
    if sys.argv[1] == "--fd":
        sock = socket.socket(fileno=int(sys.argv[2]))
        stream = Stream(sock)
        with open(sys.argv[3], "rb") as handle:
            saved = handle.read()
        os.unlink(sys.argv[3])
        stream.history = saved
        stream.feed(saved, replay=True)
        emit("resumed", pid=os.getpid(), exe=os.readlink("/proc/self/exe"))
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(sys.argv[1])
        stream = Stream(sock)
        sock.sendall(request_frames())
        emit("connected", pid=os.getpid())
    serve(stream)


if __name__ == "__main__":
    main()
