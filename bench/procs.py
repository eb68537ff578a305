"""Child processes of the benchmark: started, talked to over JSON lines, and always stopped.

Use one ``Children`` per run as a context manager. Every process started through it
is killed and reaped when the block ends, even on error, and each child also gets
SIGKILL from the kernel if the benchmark process dies first (PR_SET_PDEATHSIG), so
no client or server outlives a crashed or timed-out run.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import shlex
import signal
import site
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.pods import Pod

REPO_ROOT = Path(__file__).resolve().parents[1]

# prctl option number from <linux/prctl.h>.
_PR_SET_PDEATHSIG = 1

# Bounds a hung child; it measures nothing.
REPLY_DEADLINE_SECONDS = 60.0


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def python_env(*, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return an environment in which any interpreter copy imports the venv and this repo."""
    paths = [str(REPO_ROOT), *site.getsitepackages()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}
    env.update(extra or {})
    return env


class Child:
    """A child speaking JSON lines on stdin/stdout; stderr goes to a file for diagnosis."""

    def __init__(self, popen: subprocess.Popen[str], name: str, stderr_path: Path) -> None:
        self.popen = popen
        self.name = name
        self.stderr_path = stderr_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def send(self, message: dict[str, Any]) -> None:
        if self.popen.stdin is None:
            raise RuntimeError(f"{self.name} has no stdin pipe")
        self.popen.stdin.write(json.dumps(message) + "\n")
        self.popen.stdin.flush()

    def receive(self, deadline: float = REPLY_DEADLINE_SECONDS) -> dict[str, Any]:
        """Return the next JSON line the child prints, or raise with its stderr."""
        stdout = self.popen.stdout
        if stdout is None:
            raise RuntimeError(f"{self.name} has no stdout pipe")
        ready, _, _ = select.select([stdout], [], [], deadline)
        if not ready:
            raise TimeoutError(f"{self.name} (pid {self.pid}) sent nothing within {deadline} s")
        line = stdout.readline()
        if not line:
            self.popen.wait(timeout=10)
            raise RuntimeError(
                f"{self.name} (pid {self.pid}) exited with status {self.popen.returncode}:\n"
                f"{self.stderr_text()[-3000:]}"
            )
        message: dict[str, Any] = json.loads(line)
        return message

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stop(self, grace: float = 0.0) -> None:
        """End the child: SIGTERM and ``grace`` seconds first if asked, then SIGKILL."""
        if self.popen.poll() is None and grace > 0:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=30)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                stream.close()


class Children:
    """Every child of one benchmark run; leaving the ``with`` block stops them all."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._children: list[Child] = []

    def start(
        self,
        argv: Sequence[str],
        *,
        name: str,
        env: dict[str, str] | None = None,
        stdout_to_file: bool = False,
        pod: Pod | None = None,
    ) -> Child:
        """Start ``argv``, inside the cgroups of ``pod`` if given.

        With ``stdout_to_file`` both output streams go to the child's log file.
        """
        stderr_path = self.log_dir / f"{name}.log"
        if pod is not None:
            # The shell moves itself into the cgroups and then execs, so the program
            # runs there from its first instruction.
            moves = [f"echo $$ > {shlex.quote(str(path))}" for path in pod.procs_files]
            script = " && ".join([*moves, 'exec "$@"'])
            argv = ["/bin/sh", "-c", script, "sh", *argv]
        with stderr_path.open("wb") as stderr:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=stderr if stdout_to_file else subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env if env is not None else python_env(),
                cwd=REPO_ROOT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, before exec
            )
        child = Child(popen, name, stderr_path)
        self._children.append(child)
        return child

    def start_python(
        self, module: str, *args: str, name: str, pod: Pod | None = None
    ) -> Child:
        return self.start([sys.executable, "-m", module, *args], name=name, pod=pod)

    def stop(self, child: Child, grace: float = 0.0) -> None:
        child.stop(grace)
        if child in self._children:
            self._children.remove(child)

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for child in reversed(self._children):
            child.stop()
        self._children.clear()


def wait_for_path(path: Path, child: Child, deadline: float = REPLY_DEADLINE_SECONDS) -> None:
    """Wait until ``path`` exists, failing early if ``child`` exits."""
    end = time.monotonic() + deadline
    while not path.exists():
        if child.popen.poll() is not None:
            raise RuntimeError(
                f"{child.name} exited before creating {path}:\n{child.stderr_text()}"
            )
        if time.monotonic() > end:
            raise TimeoutError(f"{path} did not appear within {deadline} s")
        time.sleep(0.02)
