"""cbn called from several Python threads at once."""
import sys
import threading
import time

import numpy as np
import pytest

import cbn
from helpers import random_input


@pytest.fixture
def long_switch_interval():
    """A thread keeps the GIL until it releases it itself (or blocks)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(30.0)
    yield
    sys.setswitchinterval(before)


def _run_threads(targets):
    errors = []

    def guarded(target):
        try:
            target()
        except BaseException as e:   # reported in the main thread
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a thread did not finish within 120 s"
    if errors:
        raise errors[0]


def _overlap(a, b):
    """Total time during which an interval of a and one of b both run."""
    return sum(max(0.0, min(e1, e2) - max(s1, s2)) for s1, e1 in a for s2, e2 in b)


@pytest.mark.parametrize("step", ["forward", "backward"])
def test_kernels_release_the_gil(step, rng, threads, long_switch_interval):
    # With a 30 s switch interval a thread that never releases the GIL runs
    # all its calls before the other starts: the call intervals cannot
    # overlap at all. Kernels that release it let the other thread in, as
    # soon as the OS runs it: on a loaded machine that can take longer than
    # a call, so a few tries are allowed.
    threads(1)
    shape = (16, 32, 64, 64)
    layers = [cbn.BatchNorm2d(32) for _ in range(2)]
    xs = [random_input(rng, shape, np.float32) for _ in range(2)]
    dy = random_input(rng, shape, np.float32)
    for bn, x in zip(layers, xs):
        bn(x)

    def attempt():
        intervals = [[], []]
        both_started = threading.Barrier(2)

        def work(i):
            bn, x = layers[i], xs[i]
            both_started.wait()
            for _ in range(6):
                start = time.perf_counter()
                bn(x) if step == "forward" else bn.backward(dy)
                intervals[i].append((start, time.perf_counter()))

        _run_threads([lambda: work(0), lambda: work(1)])
        return intervals

    for _ in range(5):
        intervals = attempt()
        busy = min(sum(e - s for s, e in iv) for iv in intervals)
        if _overlap(*intervals) > 0.3 * busy:
            return
    pytest.fail(f"the two threads' calls never ran at the same time: {intervals}")


def _layer_steps(make, x, dy, steps=3):
    """Training forwards and backwards, then an eval forward: every output."""
    bn = make()
    outputs = []
    for _ in range(steps):
        outputs.append(bn(x))
        outputs.append(bn.backward(dy))
        outputs += [bn.grad_weight, bn.grad_bias]
    bn.eval()
    outputs.append(bn(x))
    outputs += [bn.running_mean, bn.running_var]
    return outputs


def _eight_jobs(rng):
    specs = [(cbn.BatchNorm2d, (4, 13, 17, 19), "NCHW", np.float32),
             (cbn.BatchNorm2d, (4, 17, 19, 13), "NHWC", np.float32),
             (cbn.BatchNorm2d, (8, 32, 24, 24), "NCHW", np.float64),
             (cbn.BatchNorm2d, (8, 24, 24, 32), "NHWC", np.float64),
             (cbn.BatchNorm1d, (600, 7), "NCHW", np.float32),
             (cbn.BatchNorm1d, (32, 7, 513), "NCHW", np.float64),
             (cbn.BatchNorm3d, (2, 5, 9, 11, 13), "NCHW", np.float32),
             (cbn.BatchNorm3d, (2, 9, 11, 13, 5), "NHWC", np.float64)]
    jobs = []
    for cls, shape, layout, dtype in specs:
        C = shape[1] if layout == "NCHW" else shape[-1]
        x = random_input(rng, shape, dtype)
        dy = random_input(rng, shape, dtype)

        def make(cls=cls, C=C, layout=layout, dtype=dtype):
            return cls(C, layout=layout, dtype=dtype, momentum=0.3)

        jobs.append((make, x, dy))
    return jobs


@pytest.mark.parametrize("kernel_threads", [1, 2])
def test_eight_threads_on_eight_layers_match_sequential_bitwise(kernel_threads, rng, threads):
    threads(kernel_threads)
    jobs = _eight_jobs(rng)
    sequential = [_layer_steps(*job) for job in jobs]
    concurrent = [None] * len(jobs)

    def work(i):
        concurrent[i] = _layer_steps(*jobs[i])

    for _ in range(3):
        _run_threads([lambda i=i: work(i) for i in range(len(jobs))])
        for want, got in zip(sequential, concurrent):
            assert len(want) == len(got)
            for w, g in zip(want, got):
                np.testing.assert_array_equal(g, w)


def test_eval_forwards_on_one_shared_layer_match_sequential_bitwise(rng, threads):
    # the documented safe use of a shared layer: inference with fixed statistics
    threads(2)
    bn = cbn.BatchNorm2d(24, layout="NHWC")
    for _ in range(3):
        bn(random_input(rng, (8, 20, 20, 24), np.float32))
    bn.eval()
    xs = [random_input(rng, (4 + i, 20, 20, 24), np.float32) for i in range(8)]
    want = [bn(x) for x in xs]
    got = [None] * len(xs)

    def work(i):
        for _ in range(5):
            got[i] = bn(xs[i])

    _run_threads([lambda i=i: work(i) for i in range(len(xs))])
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g, w)
