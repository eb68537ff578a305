"""Find the client end of an accepted Unix socket with NETLINK_SOCK_DIAG.

``client_socket_inode(accepted)`` returns the inode number of the peer socket, the one
in the client's file descriptor table. The attestor later looks for
``socket:[<inode>]`` in /proc/<pid>/fd to learn which processes hold the connection.
The kernel reports the peer through the UNIX_DIAG_PEER attribute of a
SOCK_DIAG_BY_FAMILY request for the accepted socket's own inode (linux/unix_diag.h).
Raises OSError when the kernel refuses the request (for example CONFIG_UNIX_DIAG is
missing) and ValueError when the reply is malformed or has no peer.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Protocol

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 0x2
UDIAG_SHOW_PEER = 0x4
UNIX_DIAG_PEER = 2
# A request for one socket carries no cookie: both words set means "any cookie".
_NO_COOKIE = 0xFFFFFFFF
_ALL_STATES = 0xFFFFFFFF

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_UNIX_DIAG_REQ = struct.Struct("=BBHIII2I")  # family, protocol, pad, states, ino, show, cookie
_UNIX_DIAG_MSG = struct.Struct("=BBBBI2I")  # family, type, state, pad, ino, cookie
_RTATTR = struct.Struct("=HH")  # len, type
_ERRNO = struct.Struct("=i")
_U32 = struct.Struct("=I")
_REPLY_BYTES = 8192


class FileDescriptorOwner(Protocol):
    """Anything with ``fileno()``: socket.socket or asyncio's TransportSocket."""

    def fileno(self) -> int: ...


def client_socket_inode(accepted: FileDescriptorOwner) -> int:
    """Return the inode of the client end connected to the ``accepted`` socket."""
    own_inode = os.fstat(accepted.fileno()).st_ino
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                       NETLINK_SOCK_DIAG) as netlink:
        netlink.sendto(_request(own_inode), (0, 0))
        reply = netlink.recv(_REPLY_BYTES)
    return parse_peer_reply(reply, own_inode)


def _request(inode: int) -> bytes:
    body = _UNIX_DIAG_REQ.pack(
        socket.AF_UNIX, 0, 0, _ALL_STATES, inode, UDIAG_SHOW_PEER, _NO_COOKIE, _NO_COOKIE
    )
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0)
    return header + body


def parse_peer_reply(reply: bytes, inode: int) -> int:
    """Return the UNIX_DIAG_PEER inode from a sock_diag reply about socket ``inode``."""
    if len(reply) < _NLMSGHDR.size:
        raise ValueError(f"sock_diag reply of {len(reply)} bytes is shorter than its header")
    length, kind, _, _, _ = _NLMSGHDR.unpack_from(reply)
    if kind == NLMSG_ERROR:
        if len(reply) < _NLMSGHDR.size + _ERRNO.size:
            raise ValueError(f"sock_diag error reply of {len(reply)} bytes has no error code")
        (code,) = _ERRNO.unpack_from(reply, _NLMSGHDR.size)
        raise OSError(-code, f"sock_diag lookup of socket {inode}: {os.strerror(-code)}")
    if kind != SOCK_DIAG_BY_FAMILY or not _UNIX_DIAG_MSG.size + _NLMSGHDR.size <= length <= len(
        reply
    ):
        raise ValueError(f"unexpected sock_diag reply type {kind} of {length} bytes")
    reported = _UNIX_DIAG_MSG.unpack_from(reply, _NLMSGHDR.size)[4]
    if reported != inode:
        raise ValueError(f"sock_diag answered for socket {reported}, expected {inode}")
    offset = _NLMSGHDR.size + _UNIX_DIAG_MSG.size
    while offset + _RTATTR.size <= length:
        attr_length, attr_type = _RTATTR.unpack_from(reply, offset)
        if attr_length < _RTATTR.size or offset + attr_length > length:
            raise ValueError(f"malformed sock_diag attribute at byte {offset}")
        if attr_type == UNIX_DIAG_PEER and attr_length >= _RTATTR.size + _U32.size:
            return int(_U32.unpack_from(reply, offset + _RTATTR.size)[0])
        offset += (attr_length + 3) & ~3  # attributes are 4-byte aligned
    raise ValueError(f"socket {inode} has no peer (the client already closed it?)")
