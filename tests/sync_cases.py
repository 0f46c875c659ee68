"""Checks of SyncBatchNorm against single-process BatchNorm on the concatenated
batch, run on every rank of a communicator (an in-process fake or MPI)."""
import copy

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


# ranks that disagree on an option: (option, its value on rank 0, on the
# others); the reproducer first (None against 2)
DISAGREEMENTS = [
    ("virtual_batch_size", None, 2), ("virtual_batch_size", 2, 4), ("num_features", 3, 4),
    ("num_features", 100, 300),   # rows longer than the opening, of other sizes
    ("dtype", np.float32, np.float64), ("dtype", np.float16, np.float32),
    ("layout", "NCHW", "NHWC"), ("affine", True, False), ("track_running_stats", True, False),
    ("momentum", 0.1, None), ("momentum", 0.1, 0.2), ("eps", 1e-5, 1e-3),
    ("bias_correction", False, True), ("activation", None, "relu"),
]


def disagreement_message(option, values):
    """The message every rank must raise: values are each rank's."""
    text = {np.float32: "float32", np.float64: "float64", np.float16: "float16"}
    groups = {}
    for rank, value in enumerate(values):
        groups.setdefault(text.get(value, repr(value).strip("'")), []).append(rank)
    parts = []
    for value, ranks in groups.items():
        named = ", ".join(str(r) for r in ranks[:4]) + (
            f" and {len(ranks) - 4} more" if len(ranks) > 4 else "")
        parts.append(f"{value} on rank{'s' if len(ranks) > 1 else ''} {named}")
    return f"{option}: ranks disagree: " + ", ".join(parts)


def _layer_and_input(comm, options, rng):
    C = options.pop("num_features", 3)
    bn = cbn.SyncBatchNorm(C, comm, **options)
    shape = (4, C, 2, 2) if bn.layout == "NCHW" else (4, 2, 2, C)
    return bn, (rng.standard_normal(shape) + 1).astype(bn.dtype)


def _whole_state(bn):
    return (bn.state_dict(), bn._last_forward, bn.grad_weight, bn.grad_bias)


def _assert_same_state(before, after):
    assert after[0].keys() == before[0].keys()
    for key, value in before[0].items():
        np.testing.assert_array_equal(after[0][key], value)
    assert all(a is b for a, b in zip(after[1:], before[1:]))   # saved forward, gradients


def forward_with_disagreeing_option(comm, option, first, others):
    """Each rank's forward with option = first on rank 0, others elsewhere:
    the message it raised (None if it did not), after checking that its
    layer did not change."""
    rank = comm.Get_rank()
    bn, x = _layer_and_input(comm, {option: first if rank == 0 else others},
                             np.random.default_rng(rank))
    before = _whole_state(bn)
    try:
        bn(x)
    except ValueError as exc:
        _assert_same_state(before, _whole_state(bn))
        return str(exc)
    return None


def backward_of_different_forwards(comm):
    """Two forwards on every rank; rank 0 then differentiates the first (a
    copy taken between them keeps it) and the others the second: every
    rank's backward raises (the message), gradients untouched."""
    rank = comm.Get_rank()
    bn, x = _layer_and_input(comm, {}, np.random.default_rng(rank))
    bn(x)
    stale = copy.copy(bn)
    bn(x * 2 + 1)
    layer = stale if rank == 0 else bn
    before = _whole_state(layer)
    try:
        layer.backward(np.ones_like(x))
    except ValueError as exc:
        _assert_same_state(before, _whole_state(layer))
        return str(exc)
    return None


def backward_after_the_options_changed(comm):
    """Rank 0 changes eps and momentum between a forward and its backward,
    which reads neither: the backward runs (dx), the same as the others'."""
    rank = comm.Get_rank()
    bn, x = _layer_and_input(comm, {}, np.random.default_rng(rank))
    bn(x)
    if rank == 0:
        bn.eps, bn.momentum = 1e-3, 0.5
    return bn.backward(np.ones_like(x))


def operations_that_differ(comm):
    """Rank 0 runs a forward while the others run the backward of the last one."""
    rank = comm.Get_rank()
    bn, x = _layer_and_input(comm, {}, np.random.default_rng(rank))
    bn(x)
    try:
        bn(x) if rank == 0 else bn.backward(np.ones_like(x))
    except ValueError as exc:
        return str(exc)
    return None


def _allreduce_gradients_refused(comm, arrays):
    """(the exception's type, message) where allreduce_gradients(arrays)
    raised, after checking that no array changed; None where it did not."""
    copies = [a.copy() for a in arrays]
    try:
        cbn.allreduce_gradients(arrays, comm)
    except ValueError as exc:
        for a, c in zip(arrays, copies):
            np.testing.assert_array_equal(a, c)
        return type(exc).__name__, str(exc)
    return None


def gradients_that_differ(comm, sizes=(3, 0, 4)):
    """allreduce_gradients with sizes[0] values on rank 0, sizes[1] on rank 1,
    sizes[2] elsewhere: the message."""
    n = sizes[min(comm.Get_rank(), 2)]
    refused = _allreduce_gradients_refused(comm, [np.arange(float(n))] if n else [])
    return refused and refused[1]


def gradients_rejected_on_one_rank(comm):
    """A read-only array on rank 1: (the exception's type, message)."""
    arrays = [np.arange(4.0), np.arange(3.0)]
    if comm.Get_rank() == 1:
        arrays[1].flags.writeable = False
    return _allreduce_gradients_refused(comm, arrays)


def check_backward_and_gradient_cases(every_rank, size):
    """The disagreements of backward and allreduce_gradients, and what must
    not be one; every_rank(fn) runs fn(comm) on every rank and returns the
    results in rank order."""
    messages = every_rank(backward_of_different_forwards)
    assert len(set(messages)) == 1 and messages[0].startswith(
        "last_forward: ranks disagree: the one with statistics "), messages
    dx = every_rank(backward_after_the_options_changed)
    assert all(d.shape == dx[0].shape for d in dx)
    assert every_rank(operations_that_differ) == [
        disagreement_message("operation", ["forward"] + ["backward"] * (size - 1))] * size
    for sizes in ((3, 0, 4), (400, 600, 600)):   # the second: beyond the opening
        values = [f"{n} values in {1 if n else 0} arrays {[n] if n else []}"
                  for n in sizes[:2] + sizes[2:] * (size - 2)]
        assert every_rank(lambda comm: gradients_that_differ(comm, sizes)) == [
            disagreement_message("layers_or_arrays", values)] * size
    rejected = every_rank(gradients_rejected_on_one_rank)
    assert rejected[1][1].startswith("layers_or_arrays: expected writable arrays")
    assert all(r == ("ValueError", "layers_or_arrays: expected valid inputs on every rank, got "
                     "one rejected on rank 1; nothing was computed")
               for rank, r in enumerate(rejected) if rank != 1)
