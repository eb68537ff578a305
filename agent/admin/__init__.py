"""Operator-facing state of the running agent: its callers, drift checks and the admin socket.

``callers`` keeps the table of connections the resolver has attested, ``drift``
re-attests them on request, ``server`` serves the root-only admin socket and
``client`` is what ``attest-agent drift`` uses to reach it. Only ``server`` and
``client`` touch sockets; none of these modules imports grpc.
"""
