"""Thread control, and results that do not depend on the thread count."""
import os

import numpy as np
import pytest

import cbn
from cbn import _runtime
from helpers import DTYPES, random_input


def test_openmp_is_what_the_build_asked_for():
    if _runtime.serial_requested():   # CBN_DISABLE_OPENMP=1 at build time
        assert cbn.openmp_enabled() is False
        return
    if os.environ.get("CBN_ALLOW_NO_OPENMP", "") not in ("", "0"):
        pytest.skip("CBN_ALLOW_NO_OPENMP is set: a serial build is acceptable here")
    assert cbn.openmp_enabled() is True


def test_set_and_get_num_threads(threads):
    threads(3)
    assert cbn.get_num_threads() == (3 if cbn.openmp_enabled() else 1)
    threads(None)
    assert cbn.get_num_threads() >= 1


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                     ("2", TypeError), (True, TypeError)])
def test_set_num_threads_rejects_bad_values(bad, exc, threads):
    threads(2)
    with pytest.raises(exc, match="n: expected a positive int"):
        cbn.set_num_threads(bad)
    assert cbn.get_num_threads() == (2 if cbn.openmp_enabled() else 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout,shape", [("NCHW", (16, 3, 40, 40)), ("NCHW", (16, 40, 12, 12)),
                                          ("NHWC", (16, 40, 40, 3)), ("NHWC", (8, 12, 12, 96)),
                                          ("NCHW", (600, 200))])
def test_results_do_not_depend_on_thread_count(layout, shape, dtype, rng, threads):
    x = random_input(rng, shape, dtype)
    dy = random_input(rng, shape, dtype)
    cls = cbn.BatchNorm2d if len(shape) == 4 else cbn.BatchNorm1d
    C = shape[1] if layout == "NCHW" else shape[-1]
    results = []
    for n in (1, 2, 3):
        threads(n)
        bn = cls(C, dtype=dtype, layout=layout)
        y = bn(x)
        dx = bn.backward(dy)
        results.append((y, dx, bn.grad_weight, bn.running_var))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_threadpoolctl_limits_are_respected(threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not cbn.openmp_enabled():
        pytest.skip("serial build")
    threads(None)
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert cbn.get_num_threads() == 1
