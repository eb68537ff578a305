"""Create CA directories on disk: an offline root, node intermediates, a development CA.

``init_root`` backs ``attest-agent ca init``, ``issue_intermediate`` backs
``attest-agent ca issue-intermediate``, and ``ensure_dev_ca`` gives ``run`` a CA when
none is configured. Everything here blocks (key generation, file I/O): async callers
run it in a thread. Key files get mode 0600 and are replaced atomically.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from agent.ca.certs import build_intermediate, build_root
from agent.ca.errors import CAError, CAFileError
from agent.ca.files import (
    make_private_directory,
    read_certificates,
    read_private_key,
    write_certificates,
    write_private_key,
)
from agent.ca.keys import check_key_type, generate_private_key
from agent.ca.material import CAMaterial, check_material
from agent.log import event

logger = logging.getLogger(__name__)

ROOT_CERT = "root.pem"
ROOT_KEY = "root.key"
INTERMEDIATE_CERT = "intermediate.pem"
INTERMEDIATE_KEY = "intermediate.key"
BUNDLE = "bundle.pem"
DEV_CA_DIR = "dev-ca"

DEV_ROOT_LIFETIME = timedelta(days=365)
DEV_INTERMEDIATE_LIFETIME = timedelta(days=7)
# The development intermediate is replaced once less than this remains, which is
# earlier than the expiry warning that configured intermediates get.
DEV_REISSUE_BEFORE = timedelta(days=1)


@dataclass(frozen=True)
class IntermediatePaths:
    """Files the agent reads its signing material from."""

    cert: Path
    key: Path
    bundle: Path


def init_root(
    out_dir: Path, trust_domain: str, key_type: str, lifetime: timedelta, now: datetime
) -> x509.Certificate:
    """Create ``root.pem`` and ``root.key`` (mode 0600) in ``out_dir``."""
    check_key_type(key_type)
    make_private_directory(out_dir)
    key = generate_private_key(key_type)
    root = build_root(trust_domain, key, lifetime, now)
    write_private_key(out_dir / ROOT_KEY, key)
    write_certificates(out_dir / ROOT_CERT, (root,))
    return root


def trust_domain_of(cert: x509.Certificate, path: Path) -> str:
    """Return the trust domain named by a CA certificate's spiffe:// URI SAN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return uri.removeprefix("spiffe://").partition("/")[0]
    raise CAFileError(path, "the root certificate names no spiffe:// trust domain in its SAN")


def issue_intermediate(
    root_dir: Path,
    node: str,
    out_dir: Path,
    *,
    key_type: str,
    lifetime: timedelta,
    now: datetime,
) -> CAMaterial:
    """Write a node intermediate signed by the root in ``root_dir`` into ``out_dir``.

    Writes intermediate.pem, intermediate.key (mode 0600) and bundle.pem (the root),
    after checking the result the way the agent will when it loads the files.
    """
    check_key_type(key_type)
    root_path = root_dir / ROOT_CERT
    roots = read_certificates(root_path)
    root_key = read_private_key(root_dir / ROOT_KEY)
    root = roots[0]
    trust_domain = trust_domain_of(root, root_path)
    key = generate_private_key(key_type)
    cert = build_intermediate(
        trust_domain,
        node,
        public_key=key.public_key(),
        issuer=root,
        issuer_key=root_key,
        lifetime=lifetime,
        now=now,
    )
    material = check_material((cert,), key, (root,), trust_domain, now=now, source=root_path)
    make_private_directory(out_dir)
    write_private_key(out_dir / INTERMEDIATE_KEY, key)
    write_certificates(out_dir / INTERMEDIATE_CERT, (cert,))
    write_certificates(out_dir / BUNDLE, (root,))
    return material


def dev_ca_paths(state_dir: Path) -> IntermediatePaths:
    """Return where the development CA keeps its intermediate and bundle."""
    directory = state_dir / DEV_CA_DIR
    return IntermediatePaths(
        cert=directory / INTERMEDIATE_CERT,
        key=directory / INTERMEDIATE_KEY,
        bundle=directory / BUNDLE,
    )


def ensure_dev_ca(state_dir: Path, trust_domain: str, now: datetime) -> IntermediatePaths:
    """Create or reuse the development CA under ``state_dir`` and return its paths.

    The root is reused while it belongs to ``trust_domain`` and outlives a fresh
    intermediate; the intermediate is reused while more than DEV_REISSUE_BEFORE of it
    remains. Anything else is replaced, with a log line saying why.
    """
    directory = state_dir / DEV_CA_DIR
    make_private_directory(directory)
    paths = dev_ca_paths(state_dir)
    if not _dev_root_usable(directory, trust_domain, now):
        event(
            logger,
            logging.WARNING,
            "creating a development root CA",
            path=directory,
            trust_domain=trust_domain,
        )
        init_root(directory, trust_domain, "ec-p256", DEV_ROOT_LIFETIME, now)
    elif _dev_intermediate_usable(paths, trust_domain, now):
        return paths
    event(logger, logging.INFO, "issuing a development intermediate CA", path=directory)
    issue_intermediate(
        directory, "dev", directory, key_type="ec-p256", lifetime=DEV_INTERMEDIATE_LIFETIME, now=now
    )
    return paths


def _dev_root_usable(directory: Path, trust_domain: str, now: datetime) -> bool:
    root_path = directory / ROOT_CERT
    if not root_path.exists():
        return False
    try:
        root = read_certificates(root_path)[0]
        key = read_private_key(directory / ROOT_KEY)
        check_material((root,), key, (root,), trust_domain, now=now, source=root_path)
    except CAError as error:
        event(
            logger, logging.WARNING, "development root CA is unusable", path=root_path, error=error
        )
        return False
    return root.not_valid_after_utc - now > DEV_INTERMEDIATE_LIFETIME


def _dev_intermediate_usable(paths: IntermediatePaths, trust_domain: str, now: datetime) -> bool:
    if not paths.cert.exists():
        return False
    try:
        chain = read_certificates(paths.cert)
        key = read_private_key(paths.key)
        roots = read_certificates(paths.bundle)
        material = check_material(chain, key, roots, trust_domain, now=now, source=paths.cert)
    except CAError as error:
        event(
            logger,
            logging.INFO,
            "development intermediate CA is unusable",
            path=paths.cert,
            error=error,
        )
        return False
    return material.not_after - now > DEV_REISSUE_BEFORE
