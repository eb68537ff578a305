"""Internal certificate authority: mints, rotates and publishes short-lived SVIDs.

Construct ``Authority(CASettings(...))``, ``await start()``, then call
``get_x509_svid``, ``mint_jwt_svid``, ``validate_jwt_svid``, ``x509_bundle`` and
``jwt_bundle``; watch ``notifier`` for renewals and bundle changes; ``await close()``
at shutdown. This package never imports grpc.
"""

from agent.ca.authority import Authority
from agent.ca.errors import (
    CAError,
    CAFileError,
    CANotReadyError,
    IntermediateExpiredError,
    InvalidSettingError,
    JwtSvidError,
    SvidRequestError,
    UnsupportedAlgorithmError,
    UnsupportedKeyTypeError,
)
from agent.ca.jwtissuer import JWT_LEEWAY_SECONDS
from agent.ca.jwtkeys import JwtBundle
from agent.ca.keys import JWT_ALGORITHMS, KEY_TYPES
from agent.ca.settings import CASettings
from agent.ca.x509svid import X509Bundle, X509Svid

__all__ = [
    "JWT_ALGORITHMS",
    "JWT_LEEWAY_SECONDS",
    "KEY_TYPES",
    "Authority",
    "CAError",
    "CAFileError",
    "CANotReadyError",
    "CASettings",
    "IntermediateExpiredError",
    "InvalidSettingError",
    "JwtBundle",
    "JwtSvidError",
    "SvidRequestError",
    "UnsupportedAlgorithmError",
    "UnsupportedKeyTypeError",
    "X509Bundle",
    "X509Svid",
]
