"""The bench's memory floors (cbn._runtime.parallel_copy / parallel_read):
exact results for odd sizes and every thread count, serial or parallel."""
import numpy as np
import pytest

from cbn import _runtime


@pytest.mark.parametrize("nbytes", [1, 7, 8, 13, 4096, 65537, (1 << 21) + 5])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_parallel_copy_copies_every_byte(nbytes, threads):
    src = np.random.default_rng(nbytes).integers(1, 256, nbytes, dtype=np.uint8)
    dst = np.zeros_like(src)
    _runtime.parallel_copy(src, dst, threads)
    np.testing.assert_array_equal(dst, src)


@pytest.mark.parametrize("nbytes", [0, 7, 8, 13, 4096, 65541, (1 << 21) + 3])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_parallel_read_sums_the_whole_words(nbytes, threads):
    src = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)
    words = src[: nbytes // 8 * 8].view(np.uint64)
    expected = int(words.sum(dtype=np.uint64)) if words.size else 0   # wraps modulo 2**64
    assert _runtime.parallel_read(src, threads) == expected


def test_floors_refuse_bad_arguments():
    src = np.ones(16, np.uint8)
    with pytest.raises(ValueError, match="dst"):
        _runtime.parallel_copy(src, np.ones(15, np.uint8), 1)
    with pytest.raises(ValueError, match="nthreads"):
        _runtime.parallel_copy(src, np.ones(16, np.uint8), 0)
    with pytest.raises(ValueError, match="nthreads"):
        _runtime.parallel_read(src, 0)
