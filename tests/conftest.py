import zlib

import numpy as np
import pytest

import cbn


@pytest.fixture
def rng(request):
    # a fixed, test-specific seed: reproducible and different across tests
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


@pytest.fixture
def threads():
    """Restore the thread setting after a test changes it."""
    yield cbn.set_num_threads
    cbn.set_num_threads(None)
