"""Host patterns: expansion like Ansible's, ports split off like Ansible's, and located range errors."""

from __future__ import annotations

from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployer.hostrange import RangeError, expand, is_host_like, split_port

ansible_expand: Callable[[str], Any] | None
try:  # the oracle: ansible-core's own expansion (ansible-core is in the test extras)
    from ansible.plugins.inventory import expand_hostname_range as ansible_expand
except ImportError:  # pragma: no cover
    ansible_expand = None
needs_ansible = pytest.mark.skipif(ansible_expand is None,
                                   reason="ansible-core is not installed: pip install -e '.[test]'")

EXPANSIONS = [
    ("web1", ["web1"], "a plain name stands for itself"),
    ("gpu[01:03].dc1", ["gpu01.dc1", "gpu02.dc1", "gpu03.dc1"], "zero padding on the begin value is kept"),
    ("n[8:11]", ["n8", "n9", "n10", "n11"], "no padding without a leading zero"),
    ("n[0:2]", ["n0", "n1", "n2"], "a lone zero is not padding"),
    ("n[1:10:4]", ["n1", "n5", "n9"], "a stride skips values"),
    ("n[01:10:3]", ["n01", "n04", "n07", "n10"], "a stride keeps the padding"),
    ("node-[a:c]", ["node-a", "node-b", "node-c"], "letters expand"),
    ("x[y:B]", ["xy", "xz", "xA", "xB"], "letters run from z on to A"),
    ("x[a:e:2]", ["xa", "xc", "xe"], "letters take a stride"),
    ("r[1:2]n[a:b]", ["r1na", "r1nb", "r2na", "r2nb"], "the first range varies slowest"),
    ("s[:2]", ["s0", "s1", "s2"], "an empty begin means zero"),
    ("solo[7:7]", ["solo7"], "a one-value range gives one host"),
]

BAD = [
    ("n[3:1]", "begins after it ends", 1, "a range that runs backwards"),
    ("n[c:a]", "begins after it ends", 1, "letters that run backwards"),
    ("n[a:01]", "two numbers or two single letters", 1, "a letter and a number mixed"),
    ("n[aa:ab]", "two numbers or two single letters", 1, "several letters as a bound"),
    ("n[1:5:0]", "step 0", 1, "a zero stride"),
    ("n[1:5:x]", "not a positive integer", 1, "a stride that is not a number"),
    ("host[1:3", "unclosed '['", 4, "an unclosed bracket"),
    ("n[01:100]", "different widths", 1, "padding of unequal width"),
    ("n[5]", "[begin:end]", 1, "a bracket with no colon"),
    ("n[1:]", "no end value", 1, "a range with no end"),
    ("ok[1:2]-bad[2:1]", "begins after it ends", 11, "the second range, located at its own bracket"),
]

PORTS = [
    ("web1:2222", ("web1", 2222), "a name with a port"),
    ("10.0.0.1:22", ("10.0.0.1", 22), "an IPv4 address with a port"),
    ("[2001:db8::1]:2200", ("2001:db8::1", 2200), "a bracketed IPv6 address with a port"),
    ("2001:db8::1", ("2001:db8::1", None), "a bare IPv6 address has no port"),
    ("gpu[01:04]:2222", ("gpu[01:04]", 2222), "a range with a port"),
    ("web 1:22", ("web 1:22", None), "a pattern that is no host name is kept whole, as Ansible does"),
    ("web1", ("web1", None), "no port"),
]

ADDRESSES = [
    ("10.0.0.1", True, "an IPv4 address"),
    ("2001:db8::1", True, "an IPv6 address"),
    ("node1.example.com", True, "a DNS name"),
    ("node_1", True, "underscores, as Ansible allows"),
    ("node1.example.com.", True, "a fully qualified name with its final dot"),
    ("bad..name", False, "an empty label"),
    ("-dash", False, "a leading dash"),
    ("web 1", False, "a space"),
    ("", False, "nothing"),
    ("n[1:2]", False, "an unexpanded range"),
]


@pytest.mark.parametrize(("pattern", "names"), [c[:2] for c in EXPANSIONS], ids=[c[2] for c in EXPANSIONS])
def test_expand(pattern: str, names: list[str]) -> None:
    assert expand(pattern) == names


@pytest.mark.parametrize(("pattern", "message", "offset"), [c[:3] for c in BAD], ids=[c[3] for c in BAD])
def test_bad_range_is_refused_at_its_bracket(pattern: str, message: str, offset: int) -> None:
    with pytest.raises(RangeError) as caught:
        expand(pattern)
    assert message in caught.value.message
    assert pattern in caught.value.message
    assert caught.value.offset == offset


@pytest.mark.parametrize(("pattern", "expected"), [c[:2] for c in PORTS], ids=[c[2] for c in PORTS])
def test_split_port(pattern: str, expected: tuple[str, int | None]) -> None:
    assert split_port(pattern) == expected


@pytest.mark.parametrize(("text", "expected"), [c[:2] for c in ADDRESSES], ids=[c[2] for c in ADDRESSES])
def test_is_host_like(text: str, expected: bool) -> None:
    assert is_host_like(text) is expected


numeric_bound = st.integers(min_value=0, max_value=120)


@needs_ansible
@settings(deadline=None)
@given(begin=numeric_bound, span=st.integers(0, 60), step=st.integers(1, 7), pad=st.booleans())
def test_numeric_ranges_agree_with_ansible(begin: int, span: int, step: int, pad: bool) -> None:
    assert ansible_expand is not None
    end = begin + span
    width = len(str(end)) + 1 if pad else 0
    low, high = (str(begin).zfill(width), str(end).zfill(width)) if pad else (str(begin), str(end))
    pattern = f"h[{low}:{high}:{step}].x"
    assert expand(pattern) == ansible_expand(pattern)


@needs_ansible
@settings(deadline=None)
@given(first=st.sampled_from("abcxyzABXZ"), second=st.sampled_from("abcxyzABXZ"), step=st.integers(1, 5))
def test_letter_ranges_agree_with_ansible_or_are_refused(first: str, second: str, step: int) -> None:
    assert ansible_expand is not None
    pattern = f"n-[{first}:{second}:{step}]"
    try:
        ours = expand(pattern)
    except RangeError:
        with pytest.raises(Exception):
            ansible_expand(pattern)
        return
    assert ours == ansible_expand(pattern)
