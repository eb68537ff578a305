"""Benchmarks of attest-agent, each measured beside the cheapest implementation on the machine.

Run ``python -m bench`` (full, several minutes) or ``python -m bench --quick`` (under a
minute, the same code paths with fewer clients and iterations). See docs/benchmarks.md
for the method and the last recorded results.

This package's ``__init__`` imports nothing, because the client worker modules run in
processes that must not import ``agent._proto``: py-spiffe registers the same protobuf
message names in the default pool.
"""
