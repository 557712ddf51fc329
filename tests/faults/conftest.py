"""Fixtures of the fault tests."""

import pytest

from tests.conftest import two_worker_client


@pytest.fixture(scope="module")
def client():
    """Two worker processes of the module's own: killing one must not disturb other tests."""
    yield from two_worker_client()
