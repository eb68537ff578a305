"""SPIFFE ID parsing and strict validation.

Callers parse every SPIFFE ID that crosses a trust boundary (manifests, JWT ``sub``
claims, SDS resource names) with ``SpiffeId.parse`` and trust domains with
``parse_trust_domain``. Both raise InvalidSpiffeIdError, whose ``reason`` is a short
fixed code and whose message names the rejected value and the fix.

The rules follow the SPIFFE ID standard (spiffe/spiffe, standards/SPIFFE-ID.md). The
scheme is ``spiffe``. The trust domain uses [a-z0-9._-] and is at most 255 bytes. Path
segments use [A-Za-z0-9._-], with no empty, ``.`` or ``..`` segments and no trailing
slash. Percent-encoding, query, fragment, port and userinfo are rejected. An ID is at
most 2048 bytes. Upper case in the scheme or trust domain is rejected rather than folded, so that
one identity has exactly one spelling.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from agent.errors import AgentError

SCHEME_PREFIX = "spiffe://"
MAX_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255

_TRUST_DOMAIN_CHARS = frozenset(string.ascii_lowercase + string.digits + "._-")
_PATH_SEGMENT_CHARS = frozenset(string.ascii_letters + string.digits + "._-")
_ASCII_LOWERCASE = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


class InvalidSpiffeIdError(AgentError):
    """A SPIFFE ID or trust domain that breaks the SPIFFE ID rules.

    ``value`` is the rejected text and ``reason`` a short code such as
    ``uppercase_trust_domain``, ``empty_segment`` or ``too_long``.
    """

    def __init__(
        self, value: str, reason: str, problem: str, fix: str, subject: str = "SPIFFE ID"
    ) -> None:
        self.value = value
        self.reason = reason
        self.problem = problem
        self.fix = fix
        super().__init__(f"invalid {subject} {value!r}: {problem}; {fix}")


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A validated SPIFFE ID with a non-empty path.

    ``path`` starts with ``/``, for example ``/ns/default/sa/web``.
    """

    trust_domain: str
    path: str

    def __str__(self) -> str:
        return f"{SCHEME_PREFIX}{self.trust_domain}{self.path}"

    @property
    def trust_domain_id(self) -> str:
        """ID of the trust domain, such as ``spiffe://example.org``, used as bundle key."""
        return f"{SCHEME_PREFIX}{self.trust_domain}"

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse a workload SPIFFE ID, raising InvalidSpiffeIdError if it breaks a rule."""
        _check_whole_id(text)
        rest = _strip_scheme(text)
        authority, slash, path = rest.partition("/")
        _check_trust_domain(text, authority)
        if not slash:
            raise InvalidSpiffeIdError(
                text, "missing_path", "a workload ID needs a path after the trust domain",
                f"add a path, for example {text + '/ns/default/sa/default'!r}",
            )
        _check_path(text, "/" + path)
        return cls(trust_domain=authority, path="/" + path)


def parse_trust_domain(text: str) -> str:
    """Parse ``example.org`` or ``spiffe://example.org`` and return ``example.org``.

    Raises InvalidSpiffeIdError for a bad name, and for an ID with a path, since a
    trust domain setting must not carry one.
    """
    try:
        _check_whole_id(text)
        name = _strip_scheme(text) if "://" in text else text
        if "/" in name:
            raise InvalidSpiffeIdError(
                text, "trust_domain_has_path", "a trust domain has no path",
                f"remove everything after the name, for example {name.split('/')[0]!r}",
            )
        _check_trust_domain(text, name)
    except InvalidSpiffeIdError as error:
        raise InvalidSpiffeIdError(
            error.value, error.reason, error.problem, error.fix, subject="trust domain"
        ) from None
    return name


def _check_whole_id(text: str) -> None:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_ID_BYTES:
        raise InvalidSpiffeIdError(
            _shorten(text), "too_long", f"the ID is {size} bytes, the maximum is {MAX_ID_BYTES}",
            "use shorter path segments",
        )
    if "?" in text or "#" in text:
        raise InvalidSpiffeIdError(
            text, "query_or_fragment", "a SPIFFE ID has no query or fragment",
            "remove everything from the first '?' or '#'",
        )
    if "%" in text:
        raise InvalidSpiffeIdError(
            text, "percent_encoding", "percent-encoding is not allowed",
            "write the characters themselves, using only letters, digits, '.', '_' and '-'",
        )


def _strip_scheme(text: str) -> str:
    if text.startswith(SCHEME_PREFIX):
        return text[len(SCHEME_PREFIX) :]
    if text.lower().startswith(SCHEME_PREFIX):
        fixed = SCHEME_PREFIX + text[len(SCHEME_PREFIX) :]
        # Suggest the corrected text only when the parser would accept it unchanged.
        fix = f"lowercase it: {fixed!r}" if _is_valid(fixed) else "write the scheme as 'spiffe://'"
        raise InvalidSpiffeIdError(text, "uppercase_scheme", "the scheme contains upper case", fix)
    raise InvalidSpiffeIdError(
        text, "bad_scheme", "a SPIFFE ID starts with 'spiffe://'",
        "write it as spiffe://<trust domain>/<path>",
    )


def _check_trust_domain(text: str, name: str) -> None:
    if not name:
        raise InvalidSpiffeIdError(
            text, "empty_trust_domain", "the trust domain is empty",
            "name the trust domain, for example spiffe://example.org/...",
        )
    if "@" in name or ":" in name:
        raise InvalidSpiffeIdError(
            text, "port_or_userinfo", "the trust domain contains a port or userinfo",
            "remove the ':port' and the 'user@' parts",
        )
    if len(name.encode("utf-8", "surrogatepass")) > MAX_TRUST_DOMAIN_BYTES:
        raise InvalidSpiffeIdError(
            _shorten(text), "trust_domain_too_long",
            f"the trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes",
            "use a shorter trust domain name",
        )
    if any(char in string.ascii_uppercase for char in name):
        lowered = name.translate(_ASCII_LOWERCASE)
        if _only(lowered, _TRUST_DOMAIN_CHARS):
            problem = "the trust domain contains upper case"
            fix = f"lowercase it: {text.replace(name, lowered, 1)!r}"
        else:
            # Lowercasing alone would not make it valid, so suggesting it would mislead.
            bad = _first_outside(lowered, _TRUST_DOMAIN_CHARS)
            problem = f"the trust domain contains upper case and {bad!r}"
            fix = "use only lowercase letters, digits, '.', '_' and '-'"
        raise InvalidSpiffeIdError(text, "uppercase_trust_domain", problem, fix)
    if not _only(name, _TRUST_DOMAIN_CHARS):
        bad = _first_outside(name, _TRUST_DOMAIN_CHARS)
        raise InvalidSpiffeIdError(
            text, "invalid_trust_domain_char", f"the trust domain contains {bad!r}",
            "use only lowercase letters, digits, '.', '_' and '-'",
        )


def _check_path(text: str, path: str) -> None:
    if path.endswith("/"):
        raise InvalidSpiffeIdError(
            text, "trailing_slash", "the path ends with '/'", "remove the trailing slash",
        )
    for segment in path[1:].split("/"):
        if segment == "":
            raise InvalidSpiffeIdError(
                text, "empty_segment", "the path contains an empty segment ('//')",
                "remove the doubled slash",
            )
        if segment in (".", ".."):
            raise InvalidSpiffeIdError(
                text, "dot_segment", f"the path contains the segment {segment!r}",
                "write the path without '.' and '..' segments",
            )
        if not _only(segment, _PATH_SEGMENT_CHARS):
            bad = _first_outside(segment, _PATH_SEGMENT_CHARS)
            raise InvalidSpiffeIdError(
                text, "invalid_path_char", f"the path segment {segment!r} contains {bad!r}",
                "use only letters, digits, '.', '_' and '-' in path segments",
            )


def _is_valid(text: str) -> bool:
    """Tell whether ``text`` is a valid workload SPIFFE ID or trust domain."""
    try:
        if "/" in text[len(SCHEME_PREFIX) :]:
            SpiffeId.parse(text)
        else:
            parse_trust_domain(text)
    except InvalidSpiffeIdError:
        return False
    return True


def _only(text: str, allowed: frozenset[str]) -> bool:
    return all(char in allowed for char in text)


def _first_outside(text: str, allowed: frozenset[str]) -> str:
    return next(char for char in text if char not in allowed)


def _shorten(text: str) -> str:
    # Keeps error messages readable when the rejected value is many kilobytes long.
    return text if len(text) <= 80 else text[:80] + "..."
