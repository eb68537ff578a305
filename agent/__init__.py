"""attest-agent: a per-node SPIFFE Workload API and Envoy SDS agent.

The agent identifies each caller on its Unix socket by the kernel's peer credentials,
collects evidence about the calling process, matches it against signed manifests and
only then issues short-lived SVIDs. See ARCHITECTURE.md for the data flow.
"""

__version__ = "0.1.0"
