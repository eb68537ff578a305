"""Table tests of parse_cgroup_file: real node layouts, conflicts and malformed input."""

from __future__ import annotations

import pytest

from agent.attest.cgroups import CgroupInfo, parse_cgroup_file
from agent.attest.errors import AttestationError, CgroupParseError
from agent.denial import Reason

UID = "8f2e4c1a-3b5d-4e6f-9a0b-1c2d3e4f5a6b"
UID_ = UID.replace("-", "_")
OTHER_UID = "11111111-2222-3333-4444-555555555555"
CID = "4c01db0b339c3c1e8b2f0a5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f0"
OTHER_CID = "a" * 64
STATIC_POD = "6e0ee9f8d3c2a1b0f9e8d7c6b5a49382"

V1_ROOT_LINES = "9:name=systemd:/\n8:pids:/\n4:memory:/\n0::/\n"

OK_CASES = {
    # cgroup v1, cgroupfs driver
    "v1-cgroupfs-containerd": (
        f"11:pids:/kubepods/burstable/pod{UID}/{CID}\n",
        CgroupInfo(UID, CID),
    ),
    "v1-cgroupfs-besteffort": (
        f"4:memory:/kubepods/besteffort/pod{UID}/{CID}\n",
        CgroupInfo(UID, CID),
    ),
    "v1-cgroupfs-guaranteed": (
        f"3:cpu,cpuacct:/kubepods/pod{UID}/{CID}\n",
        CgroupInfo(UID, CID),
    ),
    "v1-cgroupfs-crio-prefix": (
        f"8:pids:/kubepods/burstable/pod{UID}/crio-{CID}\n",
        CgroupInfo(UID, CID),
    ),
    "v1-all-hierarchies-agree": (
        "".join(
            f"{n}:{c}:/kubepods/burstable/pod{UID}/{CID}\n"
            for n, c in [(12, "pids"), (11, "memory"), (3, "cpu,cpuacct"), (1, "name=systemd")]
        ),
        CgroupInfo(UID, CID),
    ),
    "v1-pod-line-beside-root-lines": (
        f"{V1_ROOT_LINES}7:pids:/kubepods/burstable/pod{UID}/{CID}\n",
        CgroupInfo(UID, CID),
    ),
    # systemd driver
    "v1-systemd-docker": (
        "1:name=systemd:/kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{UID_}.slice/docker-{CID}.scope\n",
        CgroupInfo(UID, CID),
    ),
    "v2-systemd-containerd": (
        "0::/kubepods.slice/kubepods-besteffort.slice/"
        f"kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
        CgroupInfo(UID, CID),
    ),
    "v2-systemd-guaranteed-crio": (
        f"0::/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope\n",
        CgroupInfo(UID, CID),
    ),
    "v2-systemd-crio-container-subgroup": (
        f"0::/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope/container\n",
        CgroupInfo(UID, CID),
    ),
    "v2-kubelet-slice-prefix": (
        "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/"
        f"kubelet-kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
        CgroupInfo(UID, CID),
    ),
    "v2-cgroupfs": (
        f"0::/kubepods/burstable/pod{UID}/{CID}\n",
        CgroupInfo(UID, CID),
    ),
    # cgroup namespaces
    "v2-namespace-relative": (
        f"0::/../../../burstable/pod{UID}/{CID}\n",
        CgroupInfo(UID, CID),
    ),
    "v2-namespace-crio-no-pod": (
        f"0::/../crio-{CID}.scope\n",
        CgroupInfo(None, CID),
    ),
    "v2-namespace-root": ("0::/\n", CgroupInfo()),
    # pods and containers seen only partly
    "conmon-is-not-a-container": (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"crio-conmon-{CID}.scope\n",
        CgroupInfo(UID, None),
    ),
    "pod-level-only": (
        f"0::/kubepods/burstable/pod{UID}\n",
        CgroupInfo(UID, None),
    ),
    "pod-line-and-container-line": (
        f"8:pids:/kubepods/burstable/pod{UID}\n0::/../crio-{CID}.scope\n",
        CgroupInfo(UID, CID),
    ),
    "static-pod-hash-uid": (
        f"0::/kubepods/burstable/pod{STATIC_POD}/{CID}\n",
        CgroupInfo(STATIC_POD, CID),
    ),
    "kind-node-container-prefix": (
        f"0::/docker/{OTHER_CID}/kubepods/burstable/pod{UID}/{CID}\n",
        CgroupInfo(UID, CID),
    ),
    # docker without Kubernetes
    "docker-cgroupfs": (f"0::/docker/{CID}\n", CgroupInfo(None, CID)),
    "docker-systemd": (f"0::/system.slice/docker-{CID}.scope\n", CgroupInfo(None, CID)),
    # systemd services outside any pod
    "v2-systemd-service": (
        "0::/system.slice/nginx.service\n",
        CgroupInfo(systemd_unit="nginx.service"),
    ),
    "v1-systemd-service": (
        "9:name=systemd:/system.slice/nginx.service\n8:pids:/system.slice/nginx.service\n"
        "4:memory:/\n",
        CgroupInfo(systemd_unit="nginx.service"),
    ),
    "templated-user-service": (
        "0::/user.slice/user-1000.slice/user@1000.service/app.slice/backup@daily.service\n",
        CgroupInfo(systemd_unit="backup@daily.service"),
    ),
    "session-scope-no-unit": (
        "0::/user.slice/user-1000.slice/session-4.scope\n",
        CgroupInfo(),
    ),
    "service-inside-container-ignored": (
        f"0::/docker/{CID}/system.slice/nginx.service\n",
        CgroupInfo(None, CID),
    ),
    # IDs that look close but are not IDs
    "63-hex-not-a-container": (f"0::/docker/{CID[:63]}\n", CgroupInfo()),
    "65-hex-not-a-container": (f"0::/docker/{CID}0\n", CgroupInfo()),
    "uppercase-hex-not-a-container": (f"0::/docker/{CID.upper()}\n", CgroupInfo()),
    "mixed-separators-not-a-pod": (
        f"0::/kubepods/pod{UID[:8]}_{UID[9:]}\n",
        CgroupInfo(),
    ),
    "32-hex-without-pod-prefix": (
        "4:memory:/process_api/de16ff234bb4340d83e21d1624f72884\n",
        CgroupInfo(),
    ),
    "colon-in-path": ("0::/system.slice/a:b.service\n", CgroupInfo(systemd_unit="a:b.service")),
    "no-trailing-newline": (f"0::/kubepods/pod{UID}/{CID}", CgroupInfo(UID, CID)),
}


@pytest.mark.parametrize(("text", "expected"), OK_CASES.values(), ids=OK_CASES.keys())
def test_parse_layouts(text: str, expected: CgroupInfo) -> None:
    assert parse_cgroup_file(text) == expected


DENIED_CASES = {
    "two-pods-across-lines": (
        f"8:pids:/kubepods/pod{UID}/{CID}\n0::/kubepods/pod{OTHER_UID}/{CID}\n",
        Reason.AMBIGUOUS_CGROUPS,
    ),
    "two-containers-across-lines": (
        f"8:pids:/kubepods/pod{UID}/{CID}\n0::/kubepods/pod{UID}/{OTHER_CID}\n",
        Reason.AMBIGUOUS_CGROUPS,
    ),
    "two-pods-in-one-path": (
        f"0::/kubepods/pod{UID}/{CID}/pod{OTHER_UID}/{OTHER_CID}\n",
        Reason.AMBIGUOUS_CGROUPS,
    ),
    "two-containers-after-pod": (
        f"0::/kubepods/pod{UID}/{CID}/{OTHER_CID}\n",
        Reason.AMBIGUOUS_CGROUPS,
    ),
    "two-containers-no-pod": (
        f"0::/docker/{CID}/docker/{OTHER_CID}\n",
        Reason.AMBIGUOUS_CGROUPS,
    ),
    "two-services": (
        "9:name=systemd:/system.slice/a.service\n0::/system.slice/b.service\n",
        Reason.AMBIGUOUS_CGROUPS,
    ),
    "empty-file": ("", Reason.INVALID_CGROUP),
    "only-newline": ("\n", Reason.INVALID_CGROUP),
    "garbage": ("this is not a cgroup file\n", Reason.INVALID_CGROUP),
    "binary-garbage": ("\x00\xff\x01garbage\x7f", Reason.INVALID_CGROUP),
    "missing-path": ("0:\n", Reason.INVALID_CGROUP),
    "relative-path": ("0::kubepods/pod\n", Reason.INVALID_CGROUP),
    "non-numeric-hierarchy": ("x::/\n", Reason.INVALID_CGROUP),
    "blank-line-between": ("0::/\n\n8:pids:/\n", Reason.INVALID_CGROUP),
    "path-over-path-max": ("0::/" + "a/" * 3000 + "\n", Reason.INVALID_CGROUP),
    "ten-megabyte-line": ("0::/" + "a" * (10 * 1024 * 1024) + "\n", Reason.INVALID_CGROUP),
}


@pytest.mark.parametrize(("text", "reason"), DENIED_CASES.values(), ids=DENIED_CASES.keys())
def test_parse_denials(text: str, reason: Reason) -> None:
    with pytest.raises(CgroupParseError) as caught:
        parse_cgroup_file(text)
    assert caught.value.reason == reason
    assert isinstance(caught.value, AttestationError)
    denial = caught.value.to_denial()
    assert denial.reason == reason
    assert denial.message
    assert len(denial.message) < 400  # the bad input is quoted, never in full


def test_parse_same_pod_two_spellings() -> None:
    text = (
        f"1:name=systemd:/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope\n"
        f"8:pids:/kubepods/pod{UID}/{CID}\n"
    )
    assert parse_cgroup_file(text) == CgroupInfo(UID, CID)


def test_parse_ambiguous_message_names_both() -> None:
    text = f"8:pids:/kubepods/pod{UID}/{CID}\n0::/kubepods/pod{OTHER_UID}/{CID}\n"
    with pytest.raises(CgroupParseError) as caught:
        parse_cgroup_file(text)
    assert UID in caught.value.message
    assert OTHER_UID in caught.value.message
    assert "ambiguous cgroups" in caught.value.message


def test_parse_errors_are_not_cached() -> None:
    # Results are cached by text; an unusable text must fail on every call, with an
    # exception of its own that the attestor may annotate.
    text = f"8:pids:/kubepods/pod{UID}/{CID}\n0::/kubepods/pod{OTHER_UID}/{CID}\n"
    errors = []
    for _ in range(2):
        with pytest.raises(CgroupParseError) as caught:
            parse_cgroup_file(text)
        errors.append(caught.value)
    assert errors[0] is not errors[1]
    assert errors[1].reason == Reason.AMBIGUOUS_CGROUPS


def test_parse_cached_and_long_texts_agree() -> None:
    line = f"8:pids:/kubepods/burstable/pod{UID}/{CID}\n"
    short = line + V1_ROOT_LINES
    # Repeating a consistent line makes a text too long for the cache. The result must
    # not change.
    long = line * 200
    assert len(long) > 8192
    assert parse_cgroup_file(short) == parse_cgroup_file(short) == CgroupInfo(UID, CID)
    assert parse_cgroup_file(long) == CgroupInfo(UID, CID)
