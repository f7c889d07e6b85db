"""Shared fixtures: a running stack and namespace guests (see tests/harness.py)."""
from __future__ import annotations

import pytest

from tests.harness import Guest, Stack, have_root_net


def pytest_collection_modifyitems(config, items):
    if have_root_net():
        return
    skip = pytest.mark.skip(reason="needs root, /dev/net/tun and iproute2")
    for item in items:
        if "e2e" in item.keywords or "vm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def make_guest():
    guests = []

    def make(prefix: str = "gwt") -> Guest:
        g = Guest(prefix)
        guests.append(g)
        return g

    yield make
    for g in guests:
        g.close()


@pytest.fixture
def make_stack():
    stacks = []

    def make(overrides: dict | None = None, **kw) -> Stack:
        s = Stack(overrides, **kw)
        stacks.append(s)
        return s

    yield make
    for s in stacks:
        s.cleanup()


@pytest.fixture
def lan(make_stack, make_guest):
    """A stack with one namespace guest attached (not yet configured: call guest.dhcp())."""
    guest = make_guest()
    stack = make_stack().up(netns=[guest.name])
    guest.wait_link()
    return stack, guest
