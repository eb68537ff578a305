"""The agent process: builds every component from Settings, serves, and shuts down in order.

Call ``run(settings)`` from the ``run`` command; it returns after SIGTERM or SIGINT
once streams are drained and the public socket is removed (exit status 0). SIGHUP
reloads the manifests and the CA files without dropping connections.

Wiring: FrontDoor (public socket, peer credentials) relays each connection to a
grpc.aio server on an internal socket in a 0700 directory; the services registered on
that server resolve callers through one IdentityResolver (Attestor -> ManifestStore ->
Authority). Other packages add services by appending an ``add_to_server(server,
resolver)`` function to SERVICE_HOOKS before ``run`` is called.

Operations (agent.server_telemetry): grpc.health.v1 on the agent socket, /live, /ready
and /metrics on ``health_address``, the audit log, READY=1 and STOPPING=1 to systemd,
and the root-only admin socket that serves ``attest-agent drift``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent import sds, workload_api
from agent.admin.server import AdminServer
from agent.attest.attestor import Attestor
from agent.ca import Authority, CASettings
from agent.config import Settings
from agent.errors import AgentError
from agent.identities import IdentityResolver
from agent.log import event
from agent.manifests import ManifestStore, load_trusted_keys
from agent.peer.frontdoor import FrontDoor
from agent.peer.sockets import prepare_public_socket
from agent.server_telemetry import AgentTelemetry, CountingAuthority

__all__ = ["SERVICE_HOOKS", "Agent", "ServiceHook", "run"]

logger = logging.getLogger(__name__)

ServiceHook = Callable[[Any, IdentityResolver], None]

# gRPC services served on the agent socket; every hook gets the grpc.aio server and the
# resolver. The agent adds grpc.health.v1 itself, after these.
SERVICE_HOOKS: list[ServiceHook] = [workload_api.add_to_server, sds.add_to_server]

# Streams get this long to end after SIGTERM; the rest of the shutdown fits in the 5 s
# that orchestrators commonly wait before SIGKILL.
SHUTDOWN_GRACE_SECONDS = 2.0

# Without manifest_keys the agent trusts this key pair in state_dir, so a first run
# can sign manifests with `openssl dgst -sha256 -sign <state_dir>/dev-manifest.key`.
DEV_MANIFEST_KEY_NAME = "dev-manifest.key"
DEV_MANIFEST_PUBLIC_KEY_NAME = "dev-manifest.pub"

_PUBLIC_DIR_MODE = 0o755
_PRIVATE_DIR_MODE = 0o700


class Agent:
    """All running components of one agent, started and stopped in dependency order."""

    def __init__(self, settings: Settings, hooks: Sequence[ServiceHook] | None = None) -> None:
        self.settings = settings
        self._hooks = tuple(SERVICE_HOOKS if hooks is None else hooks)
        self._authority: Authority | None = None
        self._store: ManifestStore | None = None
        self._resolver: IdentityResolver | None = None
        self._server: Any = None
        self._front_door: FrontDoor | None = None
        self._telemetry: AgentTelemetry | None = None
        self._admin: AdminServer | None = None
        self._bound_internal = False

    async def start(self) -> None:
        """Start every component; on failure, stop what started and re-raise."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        settings = self.settings
        _make_directory(settings.socket_path.parent, _PUBLIC_DIR_MODE)
        # Fail before touching any state if another live agent serves this socket.
        prepare_public_socket(settings.socket_path)
        _make_directory(settings.state_dir, _PRIVATE_DIR_MODE)
        _make_directory(settings.internal_socket_path.parent, _PRIVATE_DIR_MODE)
        _make_directory(settings.manifests_dir, _PRIVATE_DIR_MODE)
        # First, so that a bad audit_log path fails the start before any other work.
        self._telemetry = telemetry = AgentTelemetry(settings)

        self._authority = Authority(_ca_settings(settings))
        await self._authority.start()

        key_paths = settings.manifest_keys or (await _development_key(settings),)
        trusted_keys = await asyncio.to_thread(load_trusted_keys, key_paths)
        self._store = _manifest_store(settings, trusted_keys)
        await self._store.start()

        self._front_door = FrontDoor(
            settings.socket_path,
            settings.internal_socket_path,
            max_connections=settings.max_connections,
        )
        self._resolver = IdentityResolver(
            self._front_door.registry,
            Attestor(),
            self._store,
            CountingAuthority(self._authority, telemetry.metrics),
            reattest_interval=settings.reattest_interval,
            metrics=telemetry.metrics,
            audit=telemetry.audit,
        )
        await telemetry.start(self._authority, self._store, self._resolver.callers)
        await self._start_grpc(self._resolver, telemetry)
        self._admin = AdminServer(
            settings.admin_socket_path, self._resolver.callers, self._resolver.recheck
        )
        await self._admin.start()
        await self._front_door.start()
        await telemetry.serving()
        event(
            logger,
            logging.INFO,
            "agent started",
            socket=settings.socket_path,
            state_dir=settings.state_dir,
            manifests_dir=settings.manifests_dir,
            trust_domain=settings.trust_domain,
            manifest_keys=len(trusted_keys),
        )

    async def _start_grpc(self, resolver: IdentityResolver, telemetry: AgentTelemetry) -> None:
        internal = self.settings.internal_socket_path
        with contextlib.suppress(FileNotFoundError):
            internal.unlink()
        server = grpc.aio.server()
        for hook in (*self._hooks, telemetry.add_grpc_health):
            hook(server, resolver)
        server.add_insecure_port(f"unix:{internal}")
        self._server = server
        self._bound_internal = True
        await server.start()

    async def reload(self) -> None:
        """Re-read manifests and CA files; a failure is logged and the old state kept."""
        event(logger, logging.INFO, "reload requested", signal="SIGHUP")
        if self._store is not None:
            await _reload_logged("manifests", self._store.reload())
        if self._authority is not None:
            await _reload_logged("CA", self._authority.reload())

    async def stop(self) -> None:
        """Drain streams, stop serving and remove the sockets; safe to call more than once."""
        if self._telemetry is not None:
            # NOT_SERVING and STOPPING=1 first, so probes and systemd see the drain.
            await self._telemetry.stopping()
        if self._resolver is not None:
            # Open streams end with UNAVAILABLE, so clients reconnect to the next agent.
            self._resolver.close()
        if self._server is not None:
            await self._server.stop(SHUTDOWN_GRACE_SECONDS)
            self._server = None
        if self._front_door is not None:
            await self._front_door.close()
            self._front_door = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None
        if self._store is not None:
            await self._store.close()
            self._store = None
        if self._authority is not None:
            await self._authority.close()
            self._authority = None
        if self._telemetry is not None:
            await self._telemetry.close()
            self._telemetry = None
        if self._bound_internal:
            # The front door removed the public socket; a start that failed early must not
            # remove a socket that another agent serves.
            with contextlib.suppress(FileNotFoundError):
                self.settings.internal_socket_path.unlink()
            self._bound_internal = False


async def run(settings: Settings, hooks: Sequence[ServiceHook] | None = None) -> None:
    """Run the agent until SIGTERM or SIGINT; SIGHUP reloads. Raises AgentError at start."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    agent = Agent(settings, hooks)
    reloads: set[asyncio.Task[None]] = set()

    def on_stop(signum: signal.Signals) -> None:
        event(logger, logging.INFO, "agent stopping", signal=signum.name)
        stop.set()

    def on_reload() -> None:
        task = loop.create_task(agent.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop, signum)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    try:
        await agent.start()
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        await agent.stop()
    event(logger, logging.INFO, "agent stopped", socket=settings.socket_path)


def _ca_settings(settings: Settings) -> CASettings:
    # The CA itself warns once when it creates or reuses a development CA.
    ca_dir = settings.state_dir / "ca"
    return CASettings(
        trust_domain=settings.trust_domain,
        state_dir=ca_dir,
        cert_path=settings.ca_cert,
        key_path=settings.ca_key,
        bundle_path=settings.ca_bundle,
        x509_svid_ttl=settings.x509_svid_ttl,
        jwt_svid_ttl=settings.jwt_svid_ttl,
    )


def _manifest_store(settings: Settings, trusted_keys: Sequence[Any]) -> ManifestStore:
    if settings.spiffe_id_template is None:
        return ManifestStore(
            settings.manifests_dir, trusted_keys, trust_domain=settings.trust_domain
        )
    return ManifestStore(
        settings.manifests_dir,
        trusted_keys,
        trust_domain=settings.trust_domain,
        spiffe_id_template=settings.spiffe_id_template,
    )


async def _development_key(settings: Settings) -> Path:
    private_path = settings.state_dir / DEV_MANIFEST_KEY_NAME
    public_path = settings.state_dir / DEV_MANIFEST_PUBLIC_KEY_NAME
    await asyncio.to_thread(_ensure_development_key, private_path, public_path)
    event(
        logger,
        logging.WARNING,
        "no manifest_keys configured: trusting a development manifest signing key",
        key=private_path,
        path=public_path,
    )
    return public_path


async def _reload_logged(what: str, reloading: Any) -> None:
    try:
        await reloading
    except AgentError as error:
        event(logger, logging.ERROR, "reload failed; keeping the previous state",
              resource=what, error=error)


def _ensure_development_key(private_path: Path, public_path: Path) -> None:
    """Create an EC P-256 manifest signing key pair unless the private key exists."""
    if private_path.exists():
        key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_atomically(private_path, pem, 0o600)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_atomically(public_path, public_pem, 0o644)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


def _make_directory(path: Path, mode: int) -> None:
    """Create ``path`` with ``mode`` if missing; leave an existing directory's mode alone."""
    try:
        path.mkdir(parents=True, mode=mode)
    except FileExistsError:
        if not path.is_dir():
            raise DirectoryError(path, "exists and is not a directory") from None
        return
    except OSError as error:
        raise DirectoryError(path, f"cannot be created ({error.strerror})") from error
    # mkdir applies the umask; set the mode the socket's visibility depends on.
    os.chmod(path, mode)


class DirectoryError(AgentError):
    """A directory the agent needs cannot be created or used."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        super().__init__(f"directory {path} {problem}: fix the path or its permissions")
