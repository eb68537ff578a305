"""The Workload API servicer's cache of serialized stream responses.

Fakes stand in for the resolver and the caller states: the cache reads only the
resolver's change counters and each state's SPIFFE IDs and fingerprint, and these
tests count how often a response is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.workload_api.servicer import WorkloadApiServicer


@dataclass
class FakeResolver:
    versions: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class FakeState:
    spiffe_ids: tuple[str, ...]
    serial: int

    def fingerprint(self) -> tuple[object, ...]:
        return (self.spiffe_ids, self.serial)


@dataclass
class Builder:
    built: list[FakeState] = field(default_factory=list)

    def __call__(self, state: Any) -> Any:
        self.built.append(state)
        return Encoded(f"{state.spiffe_ids}:{state.serial}".encode())


@dataclass(frozen=True)
class Encoded:
    data: bytes

    def SerializeToString(self) -> bytes:
        return self.data


def test_same_state_built_once() -> None:
    servicer = WorkloadApiServicer(FakeResolver())  # type: ignore[arg-type]
    build = Builder()
    state = FakeState(("spiffe://example.org/web",), 1)
    first = servicer._serialized("FetchX509SVID", state, build)  # type: ignore[arg-type]
    second = servicer._serialized("FetchX509SVID", state, build)  # type: ignore[arg-type]
    assert first == second == b"('spiffe://example.org/web',):1"
    assert len(build.built) == 1


def test_renewed_state_rebuilt() -> None:
    servicer = WorkloadApiServicer(FakeResolver())  # type: ignore[arg-type]
    build = Builder()
    ids = ("spiffe://example.org/web",)
    servicer._serialized("FetchX509SVID", FakeState(ids, 1), build)  # type: ignore[arg-type]
    renewed = servicer._serialized("FetchX509SVID", FakeState(ids, 2), build)  # type: ignore[arg-type]
    assert renewed.endswith(b":2")
    assert len(build.built) == 2


def test_change_empties_cache() -> None:
    resolver = FakeResolver()
    servicer = WorkloadApiServicer(resolver)  # type: ignore[arg-type]
    build = Builder()
    state = FakeState(("spiffe://example.org/web",), 1)
    servicer._serialized("FetchX509SVID", state, build)  # type: ignore[arg-type]
    assert len(servicer._responses) == 1
    resolver.versions = (0, 1)  # a renewal anywhere on the node
    other = FakeState(("spiffe://example.org/db",), 7)
    servicer._serialized("FetchX509SVID", other, build)  # type: ignore[arg-type]
    # The web response, with its key, is gone; only the new one is kept.
    assert list(servicer._responses) == [("FetchX509SVID", other.spiffe_ids)]
