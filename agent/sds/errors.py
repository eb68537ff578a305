"""Errors of the SDS service.

SdsError
├── UnknownResourceError    a resource name the caller may not request (INVALID_ARGUMENT)
├── InvalidRequestError     a request this service cannot serve (INVALID_ARGUMENT)
└── SecretEncodingError     agent data that cannot become a Secret (UNAVAILABLE)
"""

from __future__ import annotations

from agent.errors import AgentError

__all__ = ["InvalidRequestError", "SdsError", "SecretEncodingError", "UnknownResourceError"]


class SdsError(AgentError):
    """Base class of errors in the SDS service."""


class UnknownResourceError(SdsError):
    """A requested resource name that the caller is not entitled to or that has no meaning."""

    def __init__(self, resource: str) -> None:
        self.resource = resource
        super().__init__(
            f"unknown SDS resource {resource!r}: request 'default', a SPIFFE ID that this "
            f"workload holds, 'ROOTCA', 'spiffe://<trust domain>' or 'ALL'"
        )


class InvalidRequestError(SdsError):
    """A discovery request that this service cannot serve, such as one with a foreign type_url."""

    def __init__(self, field: str, value: str, expected: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"invalid SDS request: {field} is {value!r}, expected {expected}")


class SecretEncodingError(SdsError):
    """An SVID or bundle from the CA that cannot be encoded, such as an empty bundle."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        super().__init__(f"cannot encode SDS secret {name!r}: {problem}; check the CA files")
