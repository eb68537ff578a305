"""Telemetry: health endpoints, Prometheus metrics, the audit log and systemd readiness.

Nothing in this package imports grpc except ``grpc_health``, which the server imports
only to register grpc.health.v1 on the agent socket. Callers build one ``Metrics``, one
``ReadinessState`` and one ``AuditLog`` at start, hand them to the components that
record events, and serve them with ``HealthServer``.
"""
