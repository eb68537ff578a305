"""Read and write CA certificates and keys on disk.

Key files are written atomically with mode 0600. A temporary file in the same
directory gets its mode before any byte is written, is fsynced, and is then renamed
over the target. A reader therefore sees the old or the new file, never a partial key.
OS and cryptography errors become CAFileError naming the path. All functions block:
async callers run them in a thread.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from agent.ca.errors import CAFileError
from agent.ca.keys import PrivateKey, private_key_pem

KEY_FILE_MODE = 0o600
CERT_FILE_MODE = 0o644

# (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) of each watched file, or None
# when a file is missing. A changed tuple means a file was replaced or rewritten.
FileSignature = tuple[tuple[int, int, int, int, int] | None, ...]


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` through a temporary file and a rename."""
    try:
        fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise CAFileError(path, f"cannot create a temporary file: {error.strerror}") from error
    try:
        # Set the final mode before writing so key bytes never sit in a wider-open file.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
        _fsync_directory(path.parent)
    except OSError as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise CAFileError(path, f"cannot write: {error.strerror}") from error


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_key(path: Path, key: PrivateKey) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM with mode 0600."""
    write_atomic(path, private_key_pem(key), KEY_FILE_MODE)


def write_certificates(path: Path, certificates: tuple[x509.Certificate, ...]) -> None:
    """Write certificates as concatenated PEM with mode 0644."""
    data = b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certificates)
    write_atomic(path, data, CERT_FILE_MODE)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as error:
        raise CAFileError(path, "file not found") from error
    except OSError as error:
        raise CAFileError(path, f"cannot read: {error.strerror}") from error


def read_certificates(path: Path) -> tuple[x509.Certificate, ...]:
    """Read one or more PEM certificates from ``path``; raise if there are none."""
    data = _read(path)
    try:
        certificates = tuple(x509.load_pem_x509_certificates(data))
    except ValueError as error:
        raise CAFileError(path, f"not a PEM certificate file ({error})") from error
    return certificates


def read_private_key(path: Path) -> PrivateKey:
    """Read an unencrypted PEM private key (PKCS#8 or traditional) from ``path``."""
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        # The message of these errors never contains key bytes.
        raise CAFileError(path, f"not an unencrypted PEM private key ({error})") from error
    except UnsupportedAlgorithm as error:
        raise CAFileError(path, "unsupported private key algorithm") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CAFileError(path, f"unsupported key type {type(key).__name__}: use EC or RSA")
    return key


def file_signature(paths: tuple[Path, ...]) -> FileSignature:
    """Return the stat fingerprint of ``paths``, following symbolic links."""
    signature: list[tuple[int, int, int, int, int] | None] = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            signature.append(None)
            continue
        signature.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(signature)


def make_private_directory(path: Path) -> None:
    """Create ``path`` (and parents) with mode 0700 if it does not exist."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise CAFileError(path, f"cannot create directory: {error.strerror}") from error
