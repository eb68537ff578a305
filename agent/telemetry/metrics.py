"""Prometheus metrics of the agent, on a private registry.

Build one ``Metrics`` at start and pass it to the components that record events; the
health server exposes ``metrics.registry`` on /metrics. The calls, and who makes them:

- ``observe_attestation(denial, seconds)``: once per attestation decision, with the
  Denial or None when an identity was granted.
- ``svid_minted("x509" | "jwt")``: the CA, once per minted SVID.
- ``svid_rotated()``: the CA, once per renewal of a cached X.509-SVID.
- ``stream_opened(api)`` / ``stream_closed(api)``, or ``with metrics.open_stream(api):``
  around a stream: the Workload API (api="workload_api") and SDS (api="sds") servicers.
- ``set_served_svids_source(fn)``: once at start; ``fn`` returns the validity window
  ``(not_before, not_after)`` of every X.509-SVID currently served. It runs at every
  scrape on the event loop, so it must be cheap and must not block.
- ``set_intermediate_ca_not_after(not_after)``: whenever the intermediate CA is loaded.
- ``manifest_load_error()``: the manifest store, once per rejected file (the store's
  log line carries the file and the reason).
- ``sds_nack()``: the SDS servicer, once per request that carries error_detail.

The expiry gauges are computed at scrape time, so they never go stale between events.
They read NaN while there is nothing to report; the alert rules compare them with
``<``, which is false for NaN in PromQL.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agent.denial import ATTESTATION_FAILURES, Denial, Reason

PREFIX = "attest_agent"

SvidType = Literal["x509", "jwt"]
Validity = tuple[datetime, datetime]
StreamApi = Literal["workload_api", "sds"]

# Attestation includes hashing the caller's executable, which takes from microseconds
# (cached digest) to seconds (first hash of a large binary).
ATTESTATION_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

# The names exported in the exposition format, as alert rules use them. Histograms add
# _bucket, _sum and _count.
EXPORTED_NAMES: tuple[str, ...] = (
    f"{PREFIX}_attestations_total",
    f"{PREFIX}_attestation_duration_seconds_bucket",
    f"{PREFIX}_attestation_duration_seconds_sum",
    f"{PREFIX}_attestation_duration_seconds_count",
    f"{PREFIX}_svids_minted_total",
    f"{PREFIX}_svid_rotations_total",
    f"{PREFIX}_open_streams",
    f"{PREFIX}_earliest_svid_expiry_seconds",
    f"{PREFIX}_svid_min_remaining_lifetime_ratio",
    f"{PREFIX}_intermediate_ca_expiry_seconds",
    f"{PREFIX}_manifest_load_errors_total",
    f"{PREFIX}_sds_nacks_total",
)

# Values of the attestations_total "result" label.
RESULT_SUCCESS = "success"
RESULT_DENIED = "denied"
RESULT_ERROR = "error"
NO_REASON = "none"


class Metrics:
    """The agent's metric families, registered on their own CollectorRegistry.

    ``clock`` returns the current Unix time in seconds; tests pass a fixed one.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._served_svids_source: Callable[[], Iterable[Validity]] = tuple
        self._intermediate_not_after: datetime | None = None
        self._register_counters()
        self._register_gauges()
        self._initialize_label_sets()

    def _register_counters(self) -> None:
        registry = self.registry
        self._attestations = Counter(
            f"{PREFIX}_attestations",
            "Attestation decisions by result (success, denied, error) and denial reason.",
            ["result", "reason"], registry=registry,
        )
        self._attestation_seconds = Histogram(
            f"{PREFIX}_attestation_duration_seconds",
            "Time from a request to its attestation decision, in seconds.",
            buckets=ATTESTATION_BUCKETS, registry=registry,
        )
        self._svids_minted = Counter(
            f"{PREFIX}_svids_minted", "SVIDs minted, by type (x509, jwt).",
            ["type"], registry=registry,
        )
        self._rotations = Counter(
            f"{PREFIX}_svid_rotations", "Cached X.509-SVIDs renewed before expiry.",
            registry=registry,
        )
        # No reason label: a counter without labels is exported at 0 from the start, so
        # increase() in the alert rules also sees the first error.
        self._manifest_errors = Counter(
            f"{PREFIX}_manifest_load_errors", "Manifest files rejected at load or reload.",
            registry=registry,
        )
        self._sds_nacks = Counter(
            f"{PREFIX}_sds_nacks", "SDS requests from Envoy that rejected a response.",
            registry=registry,
        )

    def _register_gauges(self) -> None:
        self._open_streams = Gauge(
            f"{PREFIX}_open_streams", "Open streams by API (workload_api, sds).",
            ["api"], registry=self.registry,
        )
        earliest = Gauge(
            f"{PREFIX}_earliest_svid_expiry_seconds",
            "Seconds until the earliest served SVID expires; NaN when none is served.",
            registry=self.registry,
        )
        earliest.set_function(self._seconds_to_earliest_svid_expiry)
        # Rotation renews an SVID at about half its lifetime, so a ratio well under 0.5
        # means an SVID missed its rotation. The alert rules use the ratio to tell a
        # failed rotation from an SVID whose whole TTL is short.
        remaining = Gauge(
            f"{PREFIX}_svid_min_remaining_lifetime_ratio",
            "Smallest fraction of its lifetime that a served SVID has left; NaN when none.",
            registry=self.registry,
        )
        remaining.set_function(self._min_remaining_lifetime_ratio)
        intermediate = Gauge(
            f"{PREFIX}_intermediate_ca_expiry_seconds",
            "Seconds until the node intermediate CA certificate expires; NaN before it loads.",
            registry=self.registry,
        )
        intermediate.set_function(self._seconds_to_intermediate_expiry)

    def _initialize_label_sets(self) -> None:
        # Export every known label set at 0, so that rate() and increase() count the
        # first event of each kind instead of treating its new series as the baseline.
        # The per-call series are kept, so the hot path skips the label lookup.
        self._successes = self._attestations.labels(result=RESULT_SUCCESS, reason=NO_REASON)
        for reason in Reason:
            result = RESULT_ERROR if reason in ATTESTATION_FAILURES else RESULT_DENIED
            self._attestations.labels(result=result, reason=str(reason))
        for svid_type in ("x509", "jwt"):
            self._svids_minted.labels(type=svid_type)
        self._open_stream_gauges = {
            api: self._open_streams.labels(api=api) for api in ("workload_api", "sds")
        }

    def observe_attestation(self, denial: Denial | None, duration_seconds: float) -> None:
        """Count one attestation decision and record how long it took."""
        self._attestation_seconds.observe(duration_seconds)
        if denial is None:
            self._successes.inc()
            return
        if denial.is_attestation_failure:
            result, reason = RESULT_ERROR, str(denial.reason)
        else:
            result, reason = RESULT_DENIED, str(denial.reason)
        self._attestations.labels(result=result, reason=reason).inc()

    def svid_minted(self, svid_type: SvidType) -> None:
        self._svids_minted.labels(type=svid_type).inc()

    def svid_rotated(self) -> None:
        self._rotations.inc()

    def stream_opened(self, api: StreamApi) -> None:
        self._open_stream_gauges[api].inc()

    def stream_closed(self, api: StreamApi) -> None:
        self._open_stream_gauges[api].dec()

    @contextmanager
    def open_stream(self, api: StreamApi) -> Iterator[None]:
        """Count a stream as open for the duration of the ``with`` block."""
        self.stream_opened(api)
        try:
            yield
        finally:
            self.stream_closed(api)

    def set_served_svids_source(self, source: Callable[[], Iterable[Validity]]) -> None:
        """Use ``source`` at scrape time to list the validity of every served SVID."""
        self._served_svids_source = source

    def set_intermediate_ca_not_after(self, not_after: datetime | None) -> None:
        self._intermediate_not_after = not_after

    def manifest_load_error(self) -> None:
        self._manifest_errors.inc()

    def sds_nack(self) -> None:
        self._sds_nacks.inc()

    def _seconds_to_earliest_svid_expiry(self) -> float:
        not_afters = [not_after for _not_before, not_after in self._served_svids_source()]
        return self._seconds_until(min(not_afters, default=None))

    def _min_remaining_lifetime_ratio(self) -> float:
        now = self._clock()
        ratios = [
            (not_after.timestamp() - now) / lifetime
            for not_before, not_after in self._served_svids_source()
            if (lifetime := not_after.timestamp() - not_before.timestamp()) > 0
        ]
        return min(ratios, default=math.nan)

    def _seconds_to_intermediate_expiry(self) -> float:
        return self._seconds_until(self._intermediate_not_after)

    def _seconds_until(self, not_after: datetime | None) -> float:
        if not_after is None:
            return math.nan
        return not_after.timestamp() - self._clock()
