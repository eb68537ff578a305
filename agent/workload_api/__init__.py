"""SPIFFE Workload API service: register it with ``add_to_server(server, resolver)``."""

from agent.workload_api.servicer import SECURITY_HEADER, WorkloadApiServicer, add_to_server

__all__ = ["SECURITY_HEADER", "WorkloadApiServicer", "add_to_server"]
