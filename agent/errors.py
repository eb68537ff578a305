"""Root of the agent's exception tree.

Every error the agent raises on purpose derives from AgentError. Each package defines
one base class below it (AttestationError, ManifestError, CAError, ConfigError, ...),
and leaf classes carry the offending value in typed fields and in their message.
OS, grpc and cryptography exceptions are translated once, at the package boundary,
and chained with ``raise ... from``.

    AgentError
    ├── ConfigError                 agent.config
    ├── InvalidSpiffeIdError        agent.spiffeid
    ├── PeerError                   agent.peer
    ├── AttestationError            agent.attest
    ├── ManifestError               agent.manifests
    └── CAError                     agent.ca
"""

from __future__ import annotations


class AgentError(Exception):
    """Base class of every error that attest-agent raises deliberately."""


class ConfigError(AgentError):
    """Invalid or missing agent setting; the message names the setting and the fix."""
