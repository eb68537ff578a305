"""Signed manifests: which SPIFFE ID a process with given evidence may hold.

Load trust anchors with ``load_trusted_keys``, run a ``ManifestStore`` over the manifest
directory, and call ``ManifestStore.match(evidence)`` for each attested caller. The
parts are usable alone: ``verify_signature`` and ``parse_manifest`` for the command
line, ``match_manifests`` for a fixed list of manifests.
"""

from agent.manifests.errors import (
    ManifestError,
    ManifestFileError,
    ManifestSchemaError,
    SignatureError,
    TrustedKeyError,
)
from agent.manifests.identity import Identity
from agent.manifests.matching import ManifestVerdict, explain_manifests, match_manifests
from agent.manifests.schema import (
    DEFAULT_SPIFFE_ID_TEMPLATE,
    Manifest,
    check_spiffe_id_template,
    parse_manifest,
)
from agent.manifests.signature import TrustedKey, load_trusted_keys, verify_signature
from agent.manifests.store import ManifestStore

__all__ = [
    "DEFAULT_SPIFFE_ID_TEMPLATE",
    "Identity",
    "Manifest",
    "ManifestError",
    "ManifestFileError",
    "ManifestSchemaError",
    "ManifestStore",
    "ManifestVerdict",
    "SignatureError",
    "TrustedKey",
    "TrustedKeyError",
    "check_spiffe_id_template",
    "explain_manifests",
    "load_trusted_keys",
    "match_manifests",
    "parse_manifest",
    "verify_signature",
]
