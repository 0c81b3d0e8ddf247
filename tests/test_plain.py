"""`probe.plain`: what the check path's data classes keep from the dataclasses they were."""

from __future__ import annotations

import copy
import pickle

import pytest

from probe.check.result import ShareResult
from probe.plain import FrozenError
from probe.syntax import AddressSet, Endpoint, Target, parse_target


def test_frozen_values_compare_hash_and_print_by_their_fields() -> None:
    a = parse_target("127.0.0.1-3:22,80")
    b = Target("127.0.0.1-3", ((22, 22), (80, 80)), False, AddressSet(4, a.addresses.segments))  # type: ignore[union-attr]
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != Target("127.0.0.1-3", ((22, 22),), False, a.addresses)
    assert Endpoint("h:1", "h", 1) != ("h:1", "h", 1)  # no tuple semantics
    assert repr(Endpoint("h:1", "h", 1)) == "Endpoint(host='h', port=1, target='h:1')"


def test_frozen_values_refuse_assignment_and_copy_with_replace() -> None:
    target = parse_target("127.0.0.1:22")
    with pytest.raises(FrozenError):
        target.host = "127.0.0.2"  # type: ignore[misc]
    with pytest.raises(FrozenError):
        del target.host
    moved = target.replace(host="127.0.0.2")
    assert (moved.host, moved.ports, target.host) == ("127.0.0.2", target.ports, "127.0.0.1")
    with pytest.raises(TypeError):
        target.replace(hostname="x")


@pytest.mark.parametrize(
    "copier", [copy.copy, copy.deepcopy, lambda v: pickle.loads(pickle.dumps(v))]
)
def test_values_survive_pickle_and_copy(copier: object) -> None:
    target = parse_target("[::1]/127:22")
    assert copier(target) == target  # type: ignore[operator]
    result = ShareResult(seen=3)
    result.ports = None  # a sweep over too many hosts keeps no ports: None must stay None
    again = copier(result)  # type: ignore[operator]
    assert again == result and again.ports is None and again.seen == 3


def test_mutable_values_are_unhashable() -> None:
    with pytest.raises(TypeError):
        hash(ShareResult())
