import os
import zlib

import numpy as np
import pytest

import cbn


@pytest.fixture
def rng(request):
    # a fixed, test-specific seed: reproducible and different across tests
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


@pytest.fixture(params=["sums", "gather"])
def exchange_path(request, monkeypatch):
    """SyncBatchNorm's forward exchange at any process count: by fixed-point
    sums (the Allgather limit set to 0) or by Allgather (set above every
    count in the tests)."""
    from cbn import _collectives
    monkeypatch.setattr(_collectives, "GATHER_MAX_PROCESSES", 0 if request.param == "sums" else 99)
    return request.param


@pytest.fixture
def threads():
    """Restore the thread setting after a test changes it."""
    yield cbn.set_num_threads
    cbn.set_num_threads(None)


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true",
                     help="also run the tests marked slow (minutes, ~18 GB of memory)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow") or os.environ.get("CBN_RUN_SLOW", "") not in ("", "0"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow or CBN_RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def python_path():
    """The layers take their Python path only during the test (their compiled
    call path, src/_call.pyx, switched off)."""
    from cbn import _call
    _call.set_enabled(False)
    yield
    _call.set_enabled(True)
