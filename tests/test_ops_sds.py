"""SDS telemetry of the running agent: open SDS streams and NACKs on /metrics.

A copied interpreter in a pod cgroup runs a grpc SDS client (the script below) against
the agent subprocess. It opens StreamSecrets and reads the first response. Then it
rejects that response with error_detail, as Envoy does for a config it cannot use,
and keeps the stream open.
"""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from tests.support.agent_process import agent_files, sign_manifest, start_agent
from tests.support.cgroups import pod_cgroup
from tests.support.ops_agent import health_port, sample, scrape, wait_for_sample
from tests.support.processes import CopiedBinary, copy_python, run_python

PREFIX = "attest_agent"

NACKING_CLIENT = r"""
import sys, grpc
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.rpc import status_pb2

TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
requests = []
channel = grpc.insecure_channel("unix:" + sys.argv[1])
stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)

def request(nonce="", error=None):
    req = discovery_pb2.DiscoveryRequest(
        resource_names=["default"], type_url=TYPE_URL, response_nonce=nonce)
    req.node.id = "ops-test"
    if error:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req

import queue
outgoing = queue.Queue()
outgoing.put(request())
call = stub.StreamSecrets(iter(outgoing.get, None))
first = next(call)
outgoing.put(request(nonce=first.nonce, error="certificate rejected by the test"))
# One line only: the test reads stdout with select, which misses a second buffered line.
print("nacked", len(first.resources), flush=True)
sys.stdin.readline()
"""


@pytest.fixture(scope="module")
def python(tmp_path_factory: pytest.TempPathFactory) -> CopiedBinary:
    return copy_python(tmp_path_factory.mktemp("ops-sds"), "ops-sds", site_packages=True)


def test_sds_streams_and_nacks(python: CopiedBinary) -> None:
    with ExitStack() as stack:
        files = stack.enter_context(agent_files())
        agent = stack.enter_context(start_agent(files))
        port = health_port(agent)
        pod = stack.enter_context(pod_cgroup())
        sign_manifest(files, "envoy", {
            "spiffe_id": f"spiffe://{files.trust_domain}/ns/demo/sa/envoy",
            "exe_sha256": [python.sha256],
            "pod_uid": pod.pod_uid,
            "namespace": "demo",
            "service_account": "envoy",
        })
        agent.wait_for_log("manifest loaded", "envoy.json")
        client = stack.enter_context(
            run_python(python, NACKING_CLIENT, str(files.socket_path), cgroup_dirs=[pod.path])
        )
        nacked = client.wait_for_line("nacked ")
        nacks = wait_for_sample(port, f"{PREFIX}_sds_nacks_total", lambda v: v >= 1)
        agent.wait_for_log("SDS client rejected a response", "certificate rejected by the test")
        samples = scrape(port)

    assert nacked == "nacked 1", "the first response carried the one requested Secret"
    assert nacks == 1
    assert sample(samples, f"{PREFIX}_open_streams", api="sds") == 1
    assert sample(samples, f"{PREFIX}_open_streams", api="workload_api") == 0
