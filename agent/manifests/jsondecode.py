"""Strict decoding of manifest bytes into a JSON object.

``decode_object`` accepts only UTF-8 JSON of at most MAX_MANIFEST_BYTES whose top level
is an object, nested at most MAX_NESTING_DEPTH deep, with no duplicate keys and no
NaN or Infinity. Everything else raises ManifestSchemaError with a distinct reason, so
that an ambiguous document (two values for one key) never reaches the schema check.
"""

from __future__ import annotations

import json
from typing import Any

from agent.manifests.errors import ManifestSchemaError

MAX_MANIFEST_BYTES = 64 * 1024
# The schema needs depth 2 (an object holding lists); the margin keeps error messages
# about nested values specific while stopping recursion long before Python's limit.
MAX_NESTING_DEPTH = 8


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


class _BadConstant(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def decode_object(data: bytes, file: str) -> dict[str, Any]:
    """Decode ``data`` as one JSON object, raising ManifestSchemaError on any defect."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestSchemaError(
            file, "too_large",
            f"the file has more than {MAX_MANIFEST_BYTES} bytes; split it into several manifests",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ManifestSchemaError(
            file, "invalid_utf8",
            f"byte {error.start} is not valid UTF-8; save the file as UTF-8",
        ) from error
    depth = nesting_depth(text)
    if depth > MAX_NESTING_DEPTH:
        raise ManifestSchemaError(
            file, "too_deep",
            f"values are nested {depth} levels deep, the maximum is {MAX_NESTING_DEPTH}",
        )
    document = _loads(text, file)
    if not isinstance(document, dict):
        raise ManifestSchemaError(
            file, "not_an_object",
            f"the top level is a JSON {type(document).__name__}, expected an object",
        )
    return document


def nesting_depth(text: str) -> int:
    """Return the deepest nesting of ``[`` and ``{`` outside JSON strings."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _loads(text: str, file: str) -> Any:
    try:
        return json.loads(
            text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
        )
    except _DuplicateKey as error:
        raise ManifestSchemaError(
            file, "duplicate_key", "the key appears more than once; keep one of them", error.key
        ) from None
    except _BadConstant as error:
        raise ManifestSchemaError(
            file, "invalid_json", f"{error.name} is not valid JSON; use a number"
        ) from None
    except json.JSONDecodeError as error:
        raise ManifestSchemaError(
            file, "invalid_json",
            f"{error.msg} at line {error.lineno} column {error.colno}",
        ) from error
    except (ValueError, RecursionError) as error:
        # ValueError: an integer beyond Python's digit limit for int().
        raise ManifestSchemaError(file, "invalid_json", str(error)) from error


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise _BadConstant(name)
