"""cbn in processes forked after it has run a parallel kernel.

GNU OpenMP's thread pool does not survive fork(): a child entering a parallel
region would wait forever for its parent's threads. cbn runs serially in
forked children; these tests fail by timeout (not by hanging CI) if it does not.
"""
import multiprocessing
import os
import pickle
import select
import signal
import time

import numpy as np
import pytest

import cbn
import reference as ref
from cbn import _threads

TIMEOUT_S = 60
SHAPE = (16, 8, 32, 32)   # 131072 values: parallel at 2+ threads

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")


def _batch(seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(SHAPE) * 3 + 1).astype(np.float32)
    dy = rng.standard_normal(SHAPE).astype(np.float32)
    return x, dy


def _train_step(seed):
    """What a worker does: a training forward and backward on its own batch."""
    x, dy = _batch(seed)
    bn = cbn.BatchNorm2d(SHAPE[1])
    y = bn(x)
    dx = bn.backward(dy)
    return seed, cbn.get_num_threads(), y, dx, bn.running_mean.copy()


def _check_step(result):
    seed, _, y, dx, running_mean = result
    x, dy = _batch(seed)
    y_ref, mean, _, _ = ref.train_forward(x, 1)
    dx_ref, _, _ = ref.train_backward(dy, x, 1)
    np.testing.assert_allclose(y, y_ref, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(running_mean, 0.1 * mean, rtol=2e-5, atol=1e-6)


def _run_parallel_kernel_in_parent(threads):
    threads(2)
    _check_step(_train_step(0))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(),
                    reason="no fork start method")
def test_fork_pool_after_parallel_kernel(threads):
    _run_parallel_kernel_in_parent(threads)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map_async(_train_step, range(1, 7)).get(timeout=TIMEOUT_S)
    assert [r[0] for r in results] == list(range(1, 7))
    _check_step(results[0])
    for r in results:
        assert r[1] == 1   # serial in the children
        # bitwise what the parent computes with its threads
        for got, want in zip(r[2:], _train_step(r[0])[2:]):
            np.testing.assert_array_equal(got, want)
    # the parent keeps its threads
    assert cbn.get_num_threads() == (2 if cbn.openmp_enabled() else 1)


def _read_all(fd, deadline):
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _in_forked_child(child):
    """fork(); the child sends the bytes child() returns through a pipe and
    exits. Returns (those bytes, the child's exit code); fails the test if
    the child takes more than TIMEOUT_S."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: never return into pytest
        code = 1
        try:
            os.close(read_fd)
            payload = child()
            with os.fdopen(write_fd, "wb") as f:
                f.write(payload)
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        payload = _read_all(read_fd, time.monotonic() + TIMEOUT_S)
    except TimeoutError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail(f"the forked child did not finish within {TIMEOUT_S} s (an OpenMP hang)")
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    return payload, os.waitstatus_to_exitcode(status)


def test_os_fork_after_parallel_kernel(threads):
    _run_parallel_kernel_in_parent(threads)
    payload, code = _in_forked_child(lambda: pickle.dumps(_train_step(11)))
    assert code == 0
    result = pickle.loads(payload)
    assert result[1] == 1
    _check_step(result)


def test_forked_child_reports_why_it_is_serial(threads):
    threads(2)
    message, code = _in_forked_child(lambda: _threads.num_threads_source().encode())
    assert code == 0
    if cbn.openmp_enabled():
        assert "fork" in message.decode()
