"""Checks of SyncBatchNorm against single-process BatchNorm on the concatenated
batch, run on every rank of a communicator (an in-process fake or MPI)."""
import numpy as np

import cbn


def shard_sizes(size):
    """Uneven shards: one empty and one of a single row when there are two ranks or more."""
    return {1: [9], 2: [1, 8], 3: [0, 1, 8], 4: [3, 0, 1, 6], 5: [2, 1, 0, 3, 2]}.get(size,
                                                                                [2] * size)


def check_against_single_process(comm, layout, dtype, momentum, steps=2, virtual_batch_size=None):
    """Train `steps` steps on every rank and compare with one BatchNorm on the
    whole batch; returns this rank's final state_dict. With virtual batches
    of k rows every shard is k times as long."""
    rank, size = comm.Get_rank(), comm.Get_size()
    sizes = [s * (virtual_batch_size or 1) for s in shard_sizes(size)]
    rows = slice(sum(sizes[:rank]), sum(sizes[:rank + 1]))
    rng = np.random.default_rng(1234)  # the same data on every rank
    C = 3
    shape = (sum(sizes), C, 4, 5) if layout == "NCHW" else (sum(sizes), 4, 5, C)
    weight, bias = rng.uniform(0.5, 2, C), rng.standard_normal(C)
    options = dict(momentum=momentum, dtype=dtype, layout=layout,
                   virtual_batch_size=virtual_batch_size)
    single = cbn.BatchNorm2d(C, **options)
    sync = cbn.SyncBatchNorm(C, comm, **options)
    for layer in (single, sync):
        layer.weight[...] = weight
        layer.bias[...] = bias
    close = dict(rtol=1e-5, atol=1e-5) if single.param_dtype == np.float32 else dict(rtol=1e-12,
                                                                                    atol=1e-12)
    # data of a 2-byte type: y and dx within a unit or two in its last place
    eps_data = float(np.finfo(np.float16).eps) if np.dtype(dtype) == np.float16 else 2.0 ** -7
    close_data = close if single.param_dtype == single.dtype else dict(rtol=2 * eps_data,
                                                                       atol=2 * eps_data)
    for _ in range(steps):
        x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        y_ref = single(x)
        dx_ref = single.backward(dy)
        y = sync(x[rows])
        dx = sync.backward(dy[rows])
        np.testing.assert_allclose(y.astype(np.float64), y_ref[rows].astype(np.float64),
                                   **close_data)
        np.testing.assert_allclose(dx.astype(np.float64), dx_ref[rows].astype(np.float64),
                                   **close_data)
        grads = [sync.grad_weight.astype(np.float64), sync.grad_bias.astype(np.float64)]
        cbn.allreduce_gradients(grads, comm, average=False)
        np.testing.assert_allclose(grads[0], single.grad_weight, **close)
        np.testing.assert_allclose(grads[1], single.grad_bias, **close)
        np.testing.assert_allclose(sync.running_mean, single.running_mean, **close)
        np.testing.assert_allclose(sync.running_var, single.running_var, **close)
    assert int(sync.num_batches_tracked) == steps
    return sync.state_dict()
