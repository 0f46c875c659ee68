"""SyncBatchNorm under real MPI. Run on N processes with

    timeout 300 mpiexec -n N python -m mpi4py -m pytest tests/mpi

(every rank runs the same tests in the same order). Skipped without mpi4py.
"""
import numpy as np
import pytest

MPI = pytest.importorskip("mpi4py.MPI")

import cbn  # noqa: E402
from fake_mpi import Forwarding  # noqa: E402
from helpers import DTYPES  # noqa: E402
from sync_cases import (  # noqa: E402
    DISAGREEMENTS,
    check_against_single_process,
    check_backward_and_gradient_cases,
    disagreement_message,
    forward_with_disagreeing_option,
)

COMM = MPI.COMM_WORLD


@pytest.mark.parametrize("virtual_batch_size", [None, 2])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_matches_single_process_batch_norm_on_the_whole_batch(layout, dtype, momentum,
                                                              virtual_batch_size, exchange_path):
    state = check_against_single_process(COMM, layout, dtype, momentum, steps=3,
                                         virtual_batch_size=virtual_batch_size)
    for other in COMM.allgather(state):  # bitwise equal running statistics on every rank
        for key, value in state.items():
            np.testing.assert_array_equal(other[key], value)


def test_one_value_per_channel_overall_raises_on_every_rank(exchange_path):
    bn = cbn.SyncBatchNorm(2, COMM)
    x = np.ones((1 if COMM.Get_rank() == 0 else 0, 2), np.float32)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(x)
    assert COMM.allgather(True) == [True] * COMM.Get_size()  # nobody is left waiting


def test_a_rejected_input_on_one_rank_raises_on_every_rank(exchange_path):
    bn = cbn.SyncBatchNorm(2, COMM)
    last = COMM.Get_size() - 1
    x = np.ones((3, 2), np.float64 if COMM.Get_rank() == last else np.float32)
    if COMM.Get_size() == 1:
        with pytest.raises(TypeError):
            bn(x)
        return
    with pytest.raises((TypeError, ValueError)):
        bn(x)
    assert COMM.allgather(True) == [True] * COMM.Get_size()


def test_a_mean_that_jumps_every_step_the_same_bits_on_every_rank(exchange_path):
    rng = np.random.default_rng(5)   # the same batches on every rank
    bn = cbn.SyncBatchNorm(4, COMM, dtype=np.float64, momentum=None)
    rows = np.array_split(np.arange(6 * COMM.Get_size()), COMM.Get_size())[COMM.Get_rank()]
    single = cbn.BatchNorm1d(4, dtype=np.float64, momentum=None)
    for step in range(4):
        x = rng.standard_normal((6 * COMM.Get_size(), 4, 5)) * 0.5 + 1e3 * (step + 1)
        bn(x[rows])
        single(x)
    np.testing.assert_allclose(bn.running_var, single.running_var, rtol=1e-12)
    for mean, var in COMM.allgather((bn.running_mean, bn.running_var)):
        np.testing.assert_array_equal(mean, bn.running_mean)
        np.testing.assert_array_equal(var, bn.running_var)


def test_a_forwarding_communicator_works(exchange_path):
    state = check_against_single_process(Forwarding(COMM), "NHWC", np.float64, None, steps=2)
    for other in COMM.allgather(state):
        for key, value in state.items():
            np.testing.assert_array_equal(other[key], value)


needs_two = pytest.mark.skipif(COMM.Get_size() < 2, reason="one process has no one to disagree with")


@needs_two
@pytest.mark.parametrize("option,first,others", DISAGREEMENTS)
def test_ranks_that_disagree_on_an_option_all_raise_the_same_error(option, first, others,
                                                                   exchange_path):
    size = COMM.Get_size()
    message = forward_with_disagreeing_option(Forwarding(COMM), option, first, others)
    assert COMM.allgather(message) == [disagreement_message(
        option, [first] + [others] * (size - 1))] * size


@needs_two
def test_backward_operation_and_gradients_disagreements_raise_on_every_rank(exchange_path):
    check_backward_and_gradient_cases(lambda fn: COMM.allgather(fn(Forwarding(COMM))),
                                      COMM.Get_size())
