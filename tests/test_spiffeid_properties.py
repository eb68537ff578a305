"""Property tests: the SPIFFE ID parser raises only InvalidSpiffeIdError, and valid IDs
round-trip."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.spiffeid import InvalidSpiffeIdError, SpiffeId, parse_trust_domain

TD_CHARS = string.ascii_lowercase + string.digits + "._-"
SEGMENT_CHARS = string.ascii_letters + string.digits + "._-"

trust_domains = st.text(TD_CHARS, min_size=1, max_size=40)
segments = st.text(SEGMENT_CHARS, min_size=1, max_size=20).filter(lambda s: s not in (".", ".."))
valid_ids = st.builds(
    lambda td, parts: f"spiffe://{td}/" + "/".join(parts),
    trust_domains,
    st.lists(segments, min_size=1, max_size=6),
)
# Text built from the characters that matter to the grammar, so mutations hit every rule.
near_ids = st.builds(
    lambda prefix, body: prefix + body,
    st.sampled_from(["spiffe://", "SPIFFE://", "spiffe:/", "", "http://", "spiffe://A"]),
    st.text(TD_CHARS + "/:@%?#. A\u00e9\\", max_size=60),
)


@settings(max_examples=300)
@given(valid_ids)
def test_valid_ids_round_trip(text: str) -> None:
    parsed = SpiffeId.parse(text)
    assert str(parsed) == text
    assert parse_trust_domain(parsed.trust_domain_id) == parsed.trust_domain


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=80), near_ids))
def test_parse_raises_only_documented_error(text: str) -> None:
    try:
        parsed = SpiffeId.parse(text)
    except InvalidSpiffeIdError as error:
        assert error.reason
        assert error.reason.replace("_", "").isalpha()
        return
    # Whatever parses must satisfy the rules on its own.
    assert str(parsed) == text
    assert set(parsed.trust_domain) <= set(TD_CHARS)
    assert all(seg and seg not in (".", "..") for seg in parsed.path[1:].split("/"))


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=80), near_ids))
def test_trust_domain_raises_only_documented_error(text: str) -> None:
    try:
        name = parse_trust_domain(text)
    except InvalidSpiffeIdError:
        return
    assert name
    assert set(name) <= set(TD_CHARS)
