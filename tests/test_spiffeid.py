"""Table tests for SPIFFE ID and trust domain parsing."""

from __future__ import annotations

import pytest

from agent.errors import AgentError
from agent.spiffeid import InvalidSpiffeIdError, SpiffeId, parse_trust_domain

VALID = [
    ("k8s", "spiffe://cluster.local/ns/default/sa/web", "cluster.local", "/ns/default/sa/web"),
    ("one_segment", "spiffe://example.org/web", "example.org", "/web"),
    ("digits_td", "spiffe://1.2.3.4/x", "1.2.3.4", "/x"),
    ("td_underscore_dash", "spiffe://my_td-1.example/x", "my_td-1.example", "/x"),
    ("upper_path", "spiffe://example.org/Web/API", "example.org", "/Web/API"),
    ("dots_in_segment", "spiffe://example.org/a.b/..c/c..", "example.org", "/a.b/..c/c.."),
    ("dashes_underscores", "spiffe://example.org/_-_/-", "example.org", "/_-_/-"),
    ("single_char_td", "spiffe://a/b", "a", "/b"),
    ("td_255_bytes", "spiffe://" + "a" * 255 + "/x", "a" * 255, "/x"),
    ("id_2048_bytes", "spiffe://td/" + "p" * (2048 - 12), "td", "/" + "p" * 2036),
]

INVALID = [
    ("empty", "", "bad_scheme"),
    ("no_scheme", "example.org/web", "bad_scheme"),
    ("http_scheme", "http://example.org/web", "bad_scheme"),
    ("single_slash", "spiffe:/example.org/web", "bad_scheme"),
    ("upper_scheme", "SPIFFE://example.org/web", "uppercase_scheme"),
    ("mixed_scheme", "Spiffe://example.org/web", "uppercase_scheme"),
    ("upper_td", "spiffe://Example.org/web", "uppercase_trust_domain"),
    ("all_upper_td", "spiffe://EXAMPLE.ORG/web", "uppercase_trust_domain"),
    ("empty_td", "spiffe:///web", "empty_trust_domain"),
    ("port", "spiffe://example.org:8080/web", "port_or_userinfo"),
    ("userinfo", "spiffe://user@example.org/web", "port_or_userinfo"),
    ("user_password", "spiffe://u:p@example.org/web", "port_or_userinfo"),
    ("td_space", "spiffe://exa mple.org/web", "invalid_trust_domain_char"),
    ("td_plus", "spiffe://exa+mple.org/web", "invalid_trust_domain_char"),
    ("td_unicode", "spiffe://exämple.org/web", "invalid_trust_domain_char"),
    ("td_256_bytes", "spiffe://" + "a" * 256 + "/x", "trust_domain_too_long"),
    ("no_path", "spiffe://example.org", "missing_path"),
    ("root_path", "spiffe://example.org/", "trailing_slash"),
    ("trailing_slash", "spiffe://example.org/web/", "trailing_slash"),
    ("double_slash", "spiffe://example.org/ns//web", "empty_segment"),
    ("leading_double_slash", "spiffe://example.org//web", "empty_segment"),
    ("dot", "spiffe://example.org/./web", "dot_segment"),
    ("dot_dot", "spiffe://example.org/ns/../web", "dot_segment"),
    ("final_dot_dot", "spiffe://example.org/web/..", "dot_segment"),
    ("percent", "spiffe://example.org/we%62", "percent_encoding"),
    ("percent_td", "spiffe://ex%41mple.org/web", "percent_encoding"),
    ("query", "spiffe://example.org/web?x=1", "query_or_fragment"),
    ("fragment", "spiffe://example.org/web#frag", "query_or_fragment"),
    ("path_space", "spiffe://example.org/my web", "invalid_path_char"),
    ("path_colon", "spiffe://example.org/a:b", "invalid_path_char"),
    ("path_tilde", "spiffe://example.org/~user", "invalid_path_char"),
    ("path_unicode", "spiffe://example.org/wéb", "invalid_path_char"),
    ("path_newline", "spiffe://example.org/web\n", "invalid_path_char"),
    ("backslash", "spiffe://example.org/a\\b", "invalid_path_char"),
    ("too_long", "spiffe://td/" + "p" * (2048 - 11), "too_long"),
]


@pytest.mark.parametrize(("text", "trust_domain", "path"),
                         [case[1:] for case in VALID], ids=[case[0] for case in VALID])
def test_parse_valid(text: str, trust_domain: str, path: str) -> None:
    parsed = SpiffeId.parse(text)
    assert parsed.trust_domain == trust_domain
    assert parsed.path == path
    assert str(parsed) == text


@pytest.mark.parametrize(("text", "reason"),
                         [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_parse_invalid(text: str, reason: str) -> None:
    with pytest.raises(InvalidSpiffeIdError) as caught:
        SpiffeId.parse(text)
    assert caught.value.reason == reason
    assert isinstance(caught.value, AgentError)


def test_table_size() -> None:
    assert len(VALID) + len(INVALID) >= 30


def test_uppercase_td_message_says_lowercase() -> None:
    with pytest.raises(InvalidSpiffeIdError) as caught:
        SpiffeId.parse("spiffe://Example.ORG/Web")
    message = str(caught.value)
    assert "'spiffe://Example.ORG/Web'" in message
    assert "lowercase it: 'spiffe://example.org/Web'" in message


def test_uppercase_scheme_message_says_lowercase() -> None:
    with pytest.raises(InvalidSpiffeIdError) as caught:
        SpiffeId.parse("SPIFFE://example.org/web")
    assert "lowercase it: 'spiffe://example.org/web'" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Bad Domain", "contains upper case and ' '"),
        ("spiffe://EX AMPLE/web", "contains upper case and ' '"),
        ("SPIFFE://Example.org/web", "the scheme contains upper case"),
    ],
    ids=["td_space", "id_td_space", "scheme_and_td"],
)
def test_lowercase_suggested_only_if_valid(text: str, problem: str) -> None:
    parse = SpiffeId.parse if "/" in text.partition("://")[2] else parse_trust_domain
    with pytest.raises(InvalidSpiffeIdError) as caught:
        parse(text)
    message = str(caught.value)
    assert problem in message
    assert "lowercase it" not in message


def test_message_names_bad_segment() -> None:
    with pytest.raises(InvalidSpiffeIdError) as caught:
        SpiffeId.parse("spiffe://example.org/a/b c")
    assert "'b c'" in str(caught.value)
    assert caught.value.value == "spiffe://example.org/a/b c"


def test_too_long_message_is_short() -> None:
    with pytest.raises(InvalidSpiffeIdError) as caught:
        SpiffeId.parse("spiffe://td/" + "p" * 5000)
    assert len(str(caught.value)) < 300


def test_trust_domain_id() -> None:
    assert SpiffeId.parse("spiffe://example.org/x").trust_domain_id == "spiffe://example.org"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("example.org", "example.org"), ("spiffe://example.org", "example.org"),
     ("cluster.local", "cluster.local")],
    ids=["bare", "with_scheme", "cluster_local"],
)
def test_trust_domain_valid(text: str, expected: str) -> None:
    assert parse_trust_domain(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Example.org", "uppercase_trust_domain"),
        ("spiffe://Example.org", "uppercase_trust_domain"),
        ("SPIFFE://example.org", "uppercase_scheme"),
        ("spiffe://example.org/web", "trust_domain_has_path"),
        ("spiffe://example.org/", "trust_domain_has_path"),
        ("https://example.org", "bad_scheme"),
        ("example.org:443", "port_or_userinfo"),
        ("", "empty_trust_domain"),
        ("spiffe://", "empty_trust_domain"),
        ("exa mple", "invalid_trust_domain_char"),
        ("a" * 256, "trust_domain_too_long"),
    ],
    ids=["upper", "upper_with_scheme", "upper_scheme", "with_path", "root_path",
         "https", "port", "empty", "scheme_only", "space", "too_long"],
)
def test_trust_domain_invalid(text: str, reason: str) -> None:
    with pytest.raises(InvalidSpiffeIdError) as caught:
        parse_trust_domain(text)
    assert caught.value.reason == reason
