"""Real processes for tests: binaries with their own SHA-256, and socket clients.

``copy_binary`` and ``copy_python`` write a copy of a program with distinct bytes
appended, so that each copy has its own digest while it still runs. ``start_process``
starts any command, optionally moving it into cgroups before it runs its program (a
``/bin/sh`` wrapper writes its own pid to each ``cgroup.procs`` and then execs, so the
process is in place before it connects anywhere). ``start_socket_client`` runs a small
stdlib-only client in a copied Python that connects to a Unix socket, sends the HTTP/2
connection preface, answers SETTINGS and PING frames, and holds the connection open
until the test stops it::

    python = copy_python(tmp_path, "client-a")
    with start_socket_client(python, socket_path, cgroup_dirs=[pod.path]) as client:
        ...  # client.pid is connected; python.sha256 is what /proc/<pid>/exe hashes to

Every ChildProcess is killed and reaped when its ``with`` block ends.
"""

from __future__ import annotations

import hashlib
import os
import select
import shlex
import shutil
import site
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[2]

# Line the /bin/sh wrapper prints after moving itself into the requested cgroups.
_IN_CGROUPS_LINE = "attest-test-in-cgroups"

# Deadline for a child to print an expected line; a functional limit, not a measurement.
LINE_DEADLINE_SECONDS = 20.0


def sha256_file(path: Path) -> str:
    """Return the lowercase hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class CopiedBinary:
    """A program copy with its own digest; ``env`` contains variables it needs to run."""

    path: Path
    sha256: str
    env: dict[str, str] = field(default_factory=dict)


def copy_binary(source: Path, dest_dir: Path, marker: str) -> CopiedBinary:
    """Copy ``source`` (symlinks resolved) into ``dest_dir`` and append ``marker``.

    The copy is named after the marker and made executable. Appended bytes after an
    ELF image do not change how it runs, so the copy behaves like the original.
    """
    real = Path(source).resolve()
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / f"{real.name}-{marker}"
    shutil.copyfile(real, target)
    with target.open("ab") as handle:
        handle.write(f"\nattest-test-marker:{marker}\n".encode())
    target.chmod(0o755)
    return CopiedBinary(path=target, sha256=sha256_file(target))


def copy_sleep(dest_dir: Path, marker: str) -> CopiedBinary:
    """Copy /bin/sleep (or the ``sleep`` on PATH) with a marker appended."""
    found = shutil.which("sleep") or "/bin/sleep"
    return copy_binary(Path(found), dest_dir, marker)


def _python_runs(path: Path, env: dict[str, str]) -> bool:
    result = subprocess.run(
        [str(path), "-c", "import encodings, socket, selectors"],
        env={**os.environ, **env},
        capture_output=True,
        timeout=60,
        check=False,
    )
    return result.returncode == 0


def copy_python(dest_dir: Path, marker: str, *, site_packages: bool = False) -> CopiedBinary:
    """Copy the real Python interpreter (not the venv symlink) with a marker appended.

    The interpreter finds its standard library from its own location and falls back to
    its build prefix. When the copy cannot start that way, ``env`` sets PYTHONHOME to
    the base installation. With ``site_packages`` the copy can also import the venv's
    packages (grpc, ...) and this repository's ``agent`` package through PYTHONPATH.
    """
    copied = copy_binary(Path(sys.executable), dest_dir, marker)
    env: dict[str, str] = {}
    if not _python_runs(copied.path, env):
        env["PYTHONHOME"] = sys.base_prefix
        if not _python_runs(copied.path, env):
            raise RuntimeError(f"copied interpreter {copied.path} does not start")
    if site_packages:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *site.getsitepackages()])
    return CopiedBinary(path=copied.path, sha256=copied.sha256, env=env)


class ChildProcess:
    """A started child with line-based stdout; kill and reap it with ``stop()`` or ``with``."""

    def __init__(self, popen: subprocess.Popen[str]) -> None:
        self.popen = popen
        self.lines: list[str] = []

    @property
    def pid(self) -> int:
        return self.popen.pid

    def read_line(self, deadline: float = LINE_DEADLINE_SECONDS) -> str:
        """Return the next stdout line, failing if none arrives before the deadline."""
        stdout = self.popen.stdout
        if stdout is None:
            raise RuntimeError("the child was started without a stdout pipe")
        ready, _, _ = select.select([stdout], [], [], deadline)
        if not ready:
            raise TimeoutError(f"child {self.pid} printed nothing within {deadline} s")
        line = stdout.readline()
        if not line:
            stderr = self.popen.stderr.read() if self.popen.stderr else ""
            raise RuntimeError(f"child {self.pid} exited early: {stderr.strip()}")
        self.lines.append(line.rstrip("\n"))
        return self.lines[-1]

    def wait_for_line(self, prefix: str, deadline: float = LINE_DEADLINE_SECONDS) -> str:
        """Read lines until one starts with ``prefix`` and return it."""
        end = time.monotonic() + deadline
        while True:
            line = self.read_line(max(0.0, end - time.monotonic()))
            if line.startswith(prefix):
                return line

    def wait_exe(self, path: Path, deadline: float = LINE_DEADLINE_SECONDS) -> None:
        """Wait until the child runs ``path`` (after wrappers such as sh or setpriv exec it)."""
        end = time.monotonic() + deadline
        expected = str(Path(path).resolve())
        while time.monotonic() < end:
            try:
                if os.readlink(f"/proc/{self.pid}/exe") == expected:
                    return
            except FileNotFoundError:
                pass  # the child is between exec calls or exited; poll() below tells
            if self.popen.poll() is not None:
                raise RuntimeError(f"child {self.pid} exited before it ran {expected}")
            time.sleep(0.01)
        raise TimeoutError(f"child {self.pid} did not run {expected} within {deadline} s")

    def send_line(self, text: str) -> None:
        """Write one line to the child's stdin."""
        if self.popen.stdin is None:
            raise RuntimeError("the child was started without a stdin pipe")
        self.popen.stdin.write(text + "\n")
        self.popen.stdin.flush()

    def stop(self) -> int:
        """Kill the child if it still runs, reap it and return its exit status."""
        if self.popen.poll() is None:
            self.popen.kill()
        status = self.popen.wait(timeout=30)
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()
        return status

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_process(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cgroup_dirs: Sequence[Path] = (),
) -> ChildProcess:
    """Start ``argv`` with pipes on stdin/stdout/stderr.

    ``env`` adds to the current environment. For each directory in ``cgroup_dirs`` a
    ``/bin/sh`` wrapper writes its pid to ``<dir>/cgroup.procs`` and then execs
    ``argv``, so the program starts inside those cgroups; this function returns after
    the move.
    """
    command = list(argv)
    if cgroup_dirs:
        moves = [f"echo $$ > {shlex.quote(str(d / 'cgroup.procs'))}" for d in cgroup_dirs]
        steps = [*moves, f"echo {_IN_CGROUPS_LINE}", 'exec "$@"']
        command = ["/bin/sh", "-c", " && ".join(steps), "sh", *command]
    popen = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    child = ChildProcess(popen)
    if cgroup_dirs:
        # Return only once the wrapper has moved itself, so callers see the final cgroups.
        try:
            child.wait_for_line(_IN_CGROUPS_LINE)
        except BaseException:
            child.stop()
            raise
    return child


def start_sleeper(binary: CopiedBinary, *, cgroup_dirs: Sequence[Path] = ()) -> ChildProcess:
    """Start a copied ``sleep`` for an hour and return once it runs; the test stops it."""
    child = start_process([str(binary.path), "3600"], env=binary.env, cgroup_dirs=cgroup_dirs)
    try:
        child.wait_exe(binary.path)
    except BaseException:
        child.stop()
        raise
    return child


# A stdlib-only HTTP/2 peer: connect, send the client preface and an empty SETTINGS
# frame, acknowledge the server's SETTINGS and PING frames, print "connected <pid>",
# and print "closed" when the server ends the connection. Closing stdin ends it.
SOCKET_CLIENT_SCRIPT = r"""
import os, selectors, socket, sys

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, PING, ACK = 4, 6, 1

sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
if sys.argv[2] == "preface":
    sock.sendall(PREFACE + bytes([0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]))
print("connected", os.getpid(), flush=True)

selector = selectors.DefaultSelector()
selector.register(sock, selectors.EVENT_READ)
selector.register(sys.stdin, selectors.EVENT_READ)
buffer = b""
while True:
    for key, _ in selector.select():
        if key.fileobj is sys.stdin:
            if not sys.stdin.readline():
                sys.exit(0)
            continue
        data = sock.recv(65536)
        if not data:
            print("closed", flush=True)
            sys.exit(0)
        buffer += data
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, flags = buffer[3], buffer[4]
            payload = buffer[9 : 9 + length]
            buffer = buffer[9 + length :]
            if kind == SETTINGS and not flags & ACK:
                sock.sendall(bytes([0, 0, 0, SETTINGS, ACK, 0, 0, 0, 0]))
            elif kind == PING and not flags & ACK:
                sock.sendall(bytes([0, 0, 8, PING, ACK, 0, 0, 0, 0]) + payload)
"""


def start_socket_client(
    python: CopiedBinary,
    socket_path: Path,
    *,
    send_preface: bool = True,
    cgroup_dirs: Sequence[Path] = (),
    wrapper: Sequence[str] = (),
    wait_connected: bool = True,
) -> ChildProcess:
    """Start a client in ``python`` that connects to ``socket_path`` and holds the connection.

    ``wrapper`` prefixes the command, e.g. ``["unshare", "--pid", "--fork"]``. With
    ``wait_connected`` this returns after the client printed ``connected <pid>``; the
    pid it printed is in ``client.lines[-1]`` (inside a PID namespace it is the
    namespace's pid, not the host's).
    """
    mode = "preface" if send_preface else "silent"
    argv = [*wrapper, str(python.path), "-c", SOCKET_CLIENT_SCRIPT, str(socket_path), mode]
    child = start_process(argv, env=python.env, cgroup_dirs=cgroup_dirs)
    if wait_connected:
        try:
            child.wait_for_line("connected ")
        except BaseException:
            child.stop()
            raise
    return child


def run_python(
    python: CopiedBinary,
    script: str,
    *args: str,
    cgroup_dirs: Sequence[Path] = (),
    wrapper: Sequence[str] = (),
) -> ChildProcess:
    """Start ``python -c script args...`` with the copy's environment."""
    argv = [*wrapper, str(python.path), "-c", script, *args]
    return start_process(argv, env=python.env, cgroup_dirs=cgroup_dirs)


def host_pid_of_child(parent_pid: int, deadline: float = LINE_DEADLINE_SECONDS) -> int:
    """Return the host pid of the single child of ``parent_pid`` (e.g. of ``unshare --fork``)."""
    end = time.monotonic() + deadline
    children_file = Path(f"/proc/{parent_pid}/task/{parent_pid}/children")
    while time.monotonic() < end:
        children = children_file.read_text().split()
        if len(children) == 1:
            return int(children[0])
        time.sleep(0.02)
    raise TimeoutError(f"process {parent_pid} has no single child after {deadline} s")
