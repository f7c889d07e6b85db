"""Fixtures for the VM tests: the VM image, built once per session (cached under build/vm)."""
import pytest

from tests.qemu.image import build_image


@pytest.fixture(scope="session")
def image():
    try:
        return build_image()
    except Exception as e:  # no mirror reachable, apt-get missing, ...
        pytest.skip(f"cannot build the VM image: {e}")
