"""Validate, compute, warn, then commit: no call leaves a half-changed layer.

Over every public entry point that changes state and every layer type: a
raise at any Python line of the call (simulated with a trace function that
raises KeyboardInterrupt at the k-th line cbn executes, for every k), or a
warning turned into an error, leaves the layer either exactly as it was or
exactly as a complete call leaves it, never in between.
"""
import copy
import linecache
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

import cbn
import cbn.functional as F
from fake_mpi import FakeWorld, run_ranks
from helpers import random_input

CBN_DIR = str(Path(cbn.__file__).resolve().parent)
C = 3


def make_layer(kind, training=True):
    rng = np.random.default_rng(7)
    ctor = {
        "BatchNorm1d": lambda: cbn.BatchNorm1d(C),
        "BatchNorm2d": lambda: cbn.BatchNorm2d(C),
        "BatchNorm3d": lambda: cbn.BatchNorm3d(C),
        "BatchNorm2d-ghost": lambda: cbn.BatchNorm2d(C, virtual_batch_size=2),
        "BatchNorm2d-relu": lambda: cbn.BatchNorm2d(C, activation="relu"),
        "BatchNorm2d-debiased": lambda: cbn.BatchNorm2d(C, bias_correction=True),
        "BatchRenorm2d": lambda: cbn.BatchRenorm2d(C, rmax=2.0, dmax=1.0),
        "SyncBatchNorm": lambda: cbn.SyncBatchNorm(C, FakeWorld(1).comm(0)),
    }[kind]
    bn = ctor()
    bn.weight[...] = rng.uniform(0.5, 2.0, C)
    bn.bias[...] = rng.standard_normal(C)
    bn(input_for(bn, rng))                     # running statistics, saved forward, ...
    bn.backward(np.ones_like(input_for(bn, rng)))   # ... and gradients that are not initial
    return bn.train(training)


LAYERS = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNorm2d-ghost", "BatchNorm2d-relu",
          "BatchNorm2d-debiased", "BatchRenorm2d", "SyncBatchNorm"]


def input_for(bn, rng, nan=False):
    ndim = {cbn.BatchNorm1d: 3, cbn.BatchNorm3d: 5}.get(type(bn), 4)
    x = random_input(rng, (4, C) + (3,) * (ndim - 2), np.float32)
    if nan:
        x[1, 1] = np.nan
    return x


def state(bn):
    """Everything a call may change, by value; the saved forward by identity."""
    arrays = {k: np.array(getattr(bn, k), copy=True) if getattr(bn, k) is not None else None
              for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked",
                        "grad_weight", "grad_bias")}
    return arrays, bn._saved


def same_values(a, b):
    return all((a[k] is None and b[k] is None)
               or (a[k] is not None and b[k] is not None and np.array_equal(a[k], b[k], equal_nan=True))
               for k in a)


class InterruptAtLine:
    """A trace function raising KeyboardInterrupt at the k-th point where cbn
    could be interrupted: a line it runs, or the start of a Python function
    it calls (CPython handles signals when a Python function starts, e.g. a
    Python-level __exit__).

    Not at a `with` statement's own line: CPython reports the exit of a with
    block there too, after the block's cleanup scope, so an exception raised
    by the tracer would skip __exit__, where a real KeyboardInterrupt cannot
    arrive for the C-level context managers cbn uses there (its locks); a
    Python-level __exit__ is covered by the call events."""

    def __init__(self, k):
        self.k, self.lines = k, 0

    def tick(self):
        self.lines += 1
        if self.lines == self.k:
            raise KeyboardInterrupt(f"at interruption point {self.k}")

    def __call__(self, frame, event, arg):
        code = frame.f_code
        if not code.co_filename.startswith(CBN_DIR):
            caller = frame.f_back
            if event == "call" and caller is not None and \
                    caller.f_code.co_filename.startswith(CBN_DIR):
                self.tick()
            return None
        if event == "line" and not linecache.getline(code.co_filename,
                                                     frame.f_lineno).lstrip().startswith("with "):
            self.tick()
        return self


def interrupt_everywhere(make, call, observe):
    """For every line k of call(obj), run it on a fresh object interrupted at
    line k; observe(obj) must then equal its value before or after a whole call.
    Returns the first k the call ran through uninterrupted: k - 1 points were
    interrupted (1: none, and nothing was tested)."""
    reference = make()
    before = observe(reference)
    call(reference)
    after = observe(reference)
    # else a half-done call would look like both, and pass
    assert after != before, "expected a call that changes what observe sees, got none"
    k = 0
    while True:
        k += 1
        obj = make()
        tracer = InterruptAtLine(k)
        sys.settrace(tracer)
        try:
            call(obj)
            finished = True
        except KeyboardInterrupt:
            finished = False
        finally:
            sys.settrace(None)
        seen = observe(obj)
        assert seen in (before, after), f"half-changed after an interrupt at line {k}: {seen}"
        if finished:
            return k
        assert k < 5000


def fingerprint(bn):
    """A comparable digest of state(): values as bytes, the saved forward as
    'old'/'new', and whether the layer's lock was left held (never)."""
    arrays, saved = state(bn)
    values = tuple((k, None if v is None else v.tobytes()) for k, v in sorted(arrays.items()))
    return values, saved is bn.__dict__.get("_fingerprint_saved"), bn._state_lock.locked()


def traced_case(kind, call, training):
    def make():
        bn = make_layer(kind, training)
        if not training:   # the saved forward is an eval one
            bn(input_for(bn, np.random.default_rng(12)))
        bn._fingerprint_saved = bn._saved   # marks the saved forward of before the call
        return bn

    def run(bn):
        call(bn, np.random.default_rng(11))

    return make, run


CALLS = {
    "forward-train": (True, lambda bn, rng: bn(input_for(bn, rng))),
    "forward-eval": (False, lambda bn, rng: bn(input_for(bn, rng))),
    # a dy other than make_layer's ones: its gradients would be those already there
    "backward": (True, lambda bn, rng: bn.backward(input_for(bn, rng))),
    "backward-eval": (False, lambda bn, rng: bn.backward(np.ones_like(input_for(bn, rng)))),
    "load_state_dict": (True, lambda bn, rng: bn.load_state_dict(
        {k: v + 1 for k, v in bn.state_dict().items()})),
    "reset_parameters": (True, lambda bn, rng: bn.reset_parameters()),
    "reset_running_stats": (True, lambda bn, rng: bn.reset_running_stats()),
}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("kind", LAYERS)
def test_an_interrupt_at_any_line_leaves_all_or_nothing(kind, call, python_path):
    """The Python path, line by line (the compiled path runs no Python line
    between its first check and its commit: test_compiled_path.py raises at
    each of its steps instead)."""
    training, fn = CALLS[call]
    make, run = traced_case(kind, fn, training)
    lines = interrupt_everywhere(make, run, fingerprint)
    assert lines > 1


def test_an_interrupt_at_any_line_of_precise_statistics_leaves_all_or_nothing():
    def make():
        return [make_layer("BatchNorm2d"), make_layer("BatchNorm1d")]

    def run(layers):
        rng = np.random.default_rng(3)
        with cbn.precise_statistics(*layers):
            for bn in layers:
                bn(input_for(bn, rng))

    def observe(layers):
        return [(bn.running_mean.tobytes(), bn.running_var.tobytes(), int(bn.num_batches_tracked),
                 bn._collector is None, bn._state_lock.locked()) for bn in layers]

    assert interrupt_everywhere(make, run, observe) > 1


def test_an_interrupt_at_any_line_of_the_functional_update_leaves_all_or_nothing():
    x = random_input(np.random.default_rng(5), (4, C, 3, 3), np.float32)

    def make():
        return np.zeros(C, np.float32), np.ones(C, np.float32)

    def run(stats):
        F.batch_norm(x, *stats, training=True, momentum=0.3)

    assert interrupt_everywhere(make, run, lambda stats: (stats[0].tobytes(),
                                                          stats[1].tobytes())) > 1


# ---------------------------------------------------------------- warnings as errors


@pytest.mark.parametrize("kind", LAYERS)
def test_a_nan_batch_under_an_error_filter_changes_nothing(kind):
    bn = make_layer(kind)
    before = state(bn)
    x = input_for(bn, np.random.default_rng(1), nan=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning, match="NaN or Inf"):
            bn(x)
    after = state(bn)
    assert same_values(after[0], before[0]) and after[1] is before[1]
    # the warning as a warning: the step is taken, the NaN channel keeps its statistics
    with pytest.warns(RuntimeWarning, match=r"channel\(s\) \[1\]"):
        bn(x)
    assert int(bn.num_batches_tracked) == int(before[0]["num_batches_tracked"]) + 1
    assert bn.running_mean[1] == before[0]["running_mean"][1]


def test_a_nan_batch_under_an_error_filter_changes_no_synced_layer():
    layers = [make_layer("SyncBatchNorm") for _ in range(2)]
    befores = [state(bn) for bn in layers]
    xs = [input_for(bn, np.random.default_rng(r), nan=(r == 0)) for r, bn in enumerate(layers)]

    def step(rank, comm):
        layers[rank].comm = comm
        layers[rank](xs[rank])

    with warnings.catch_warnings():
        warnings.simplefilter("error")   # filters are process-wide: set outside the rank threads
        with pytest.raises(RuntimeWarning):
            run_ranks(2, step)
    for bn, before in zip(layers, befores):
        after = state(bn)
        assert same_values(after[0], before[0]) and after[1] is before[1]


def test_functional_running_statistics_unchanged_under_an_error_filter():
    x = random_input(np.random.default_rng(2), (4, C, 3, 3), np.float32)
    x[0, 2] = np.inf
    mean, var = np.zeros(C, np.float32), np.ones(C, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning):
            F.batch_norm(x, mean, var, training=True)
    np.testing.assert_array_equal(mean, 0)
    np.testing.assert_array_equal(var, 1)


def test_precise_statistics_warning_as_error_restores_the_entry_state():
    bn = make_layer("BatchNorm2d")
    before = bn.state_dict()
    x = input_for(bn, np.random.default_rng(4), nan=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning):
            with cbn.precise_statistics(bn.eval()):
                bn(x)
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    assert bn._collector is None


# ---------------------------------------------------------------- backward


EDITS = {
    "in-place update": lambda bn: bn.weight.__isub__(0.5 * bn.grad_weight),
    "load_state_dict": lambda bn: bn.load_state_dict({k: v * 2 + 1 for k, v in bn.state_dict().items()}),
    "rebinding": lambda bn: setattr(bn, "weight", bn.weight * 3),
    "reset_parameters": lambda bn: bn.reset_parameters(),
}


@pytest.mark.parametrize("edit", list(EDITS))
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("kind", LAYERS)
def test_backward_differentiates_the_forward_that_ran(kind, training, edit):
    bn = make_layer(kind, training)
    rng = np.random.default_rng(9)
    x = input_for(bn, rng)
    dy = random_input(rng, x.shape, np.float32)
    bn(x)
    dx = bn.backward(dy)
    grads = bn.grad_weight.copy(), bn.grad_bias.copy()
    EDITS[edit](bn)
    np.testing.assert_array_equal(bn.backward(dy), dx)
    np.testing.assert_array_equal(bn.grad_weight, grads[0])
    np.testing.assert_array_equal(bn.grad_bias, grads[1])


# ---------------------------------------------------------------- threads


def train_concurrently(bn, x, nthreads=4, per_thread=400):
    """per_thread training forwards of x on bn from each of nthreads threads,
    switching threads as often as the interpreter can (so that an unlocked
    read-compute-replace would lose updates)."""
    barrier = threading.Barrier(nthreads)
    interval = sys.getswitchinterval()

    def train():
        barrier.wait()
        for _ in range(per_thread):
            bn(x)

    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=train) for _ in range(nthreads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        sys.setswitchinterval(interval)
    return nthreads * per_thread


@pytest.mark.parametrize("kind", ["BatchNorm2d", "BatchRenorm2d", "BatchNorm2d-ghost"])
def test_concurrent_training_forwards_lose_no_update(kind):
    bn = make_layer(kind)
    bn.momentum = None                  # a cumulative average: every batch counts equally
    start = int(bn.num_batches_tracked)
    steps = train_concurrently(bn, input_for(bn, np.random.default_rng(0)))
    assert int(bn.num_batches_tracked) == start + steps


def test_eval_kernels_run_without_the_lock(monkeypatch, python_path):
    """Eval forwards on one shared layer run in parallel: the layer's lock is
    held only to copy what they normalise with, never during the kernels
    (the Python path; the compiled one: test_compiled_path.py)."""
    bn = make_layer("BatchNorm2d").eval()
    x = input_for(bn, np.random.default_rng(0))
    held_during_kernel = []
    normalize = cbn._ops.normalize

    def watched(*args, **kwargs):
        held_during_kernel.append(bn._state_lock.locked())
        return normalize(*args, **kwargs)

    monkeypatch.setattr(cbn._ops, "normalize", watched)
    threads = [threading.Thread(target=lambda: [bn(x) for _ in range(20)]) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(held_during_kernel) == 60 and not any(held_during_kernel)


def test_a_commit_is_seen_whole_by_concurrent_readers():
    """load_state_dict in one thread, eval forwards and state_dict() in
    another: each sees the layer's state entirely before or entirely after a
    load (a large C makes the copies release the GIL)."""
    C_big = 200_000
    bn = cbn.BatchNorm1d(C_big).eval()
    states = [{"weight": np.full(C_big, v, np.float32), "bias": np.full(C_big, v, np.float32),
               "running_mean": np.full(C_big, v, np.float32),
               "running_var": np.full(C_big, v, np.float32), "num_batches_tracked": int(v)}
              for v in (1.0, 2.0)]
    bn.load_state_dict(states[0])
    x = np.zeros((2, C_big), np.float32)
    stop = threading.Event()
    seen = []

    def load():
        i = 0
        while not stop.is_set():
            bn.load_state_dict(states[i % 2])
            i += 1

    loader = threading.Thread(target=load)
    loader.start()
    try:
        for _ in range(40):
            sd = bn.state_dict()
            seen.append(len({float(sd[k][0]) for k in ("weight", "bias", "running_mean")}
                            | {float(sd[k][-1]) for k in ("weight", "bias", "running_var")}))
            y = bn(x)   # weight * (0 - mean) / sqrt(var + eps) + bias, all one value v
            seen.append(len(np.unique(y)))
    finally:
        stop.set()
        loader.join(30)
    assert set(seen) == {1}


def test_layers_with_their_lock_survive_copy_and_pickle():
    import pickle
    for kind in ("BatchNorm2d", "SyncBatchNorm"):
        bn = make_layer(kind)
        for clone in (copy.deepcopy(bn), pickle.loads(pickle.dumps(bn)) if kind != "SyncBatchNorm"
                      else copy.deepcopy(bn)):
            assert clone._state_lock is not bn._state_lock
            clone(input_for(clone, np.random.default_rng(0)))


# ---------------------------------------------------------------- one validator per kind of state


VECTORS = {   # values of the layer's dtype that the kernels can use as they are
    "finite": [0.5, 1.0, 2.0], "zeros": [0.0, 0.0, 0.0], "negative": [-1.0, 1.0, 1.0],
    "nan": [1.0, np.nan, 1.0], "inf": [1.0, 1.0, np.inf], "-inf": [-np.inf, 1.0, 1.0],
    "denormal": [1e-45, 1.0, 1.0], "max": [3.4e38, 1.0, 1.0], "shape-4": [1.0] * 4,
    "shape-2d": [[1.0], [1.0], [1.0]], "empty": [],
}


def accepted(fn):
    try:
        fn()
        return True
    except (TypeError, ValueError):
        return False


@pytest.mark.parametrize("value", list(VECTORS))
@pytest.mark.parametrize("key", ["weight", "bias", "running_mean", "running_var"])
def test_setters_accept_exactly_what_load_state_dict_accepts(key, value):
    bn = make_layer("BatchNorm2d")
    array = np.array(VECTORS[value], np.float32)
    by_setter = accepted(lambda: setattr(bn, key, array.copy()))
    by_load = accepted(lambda: bn.load_state_dict({key: array.copy()}, strict=False))
    assert by_setter == by_load


COUNTS = [0, 5, 2 ** 63 - 1, 2 ** 63, -1, 1.5, 1e20, np.float32(3), np.float64(7.0),
          np.int8(-2), np.uint64(2 ** 63), np.array(4), np.array([4]), np.ones(2), "3", True,
          float("nan")]


@pytest.mark.parametrize("count", COUNTS, ids=repr)
def test_the_count_setter_accepts_exactly_what_load_state_dict_accepts(count):
    bn = make_layer("BatchNorm2d")
    by_setter = accepted(lambda: setattr(bn, "num_batches_tracked", count))
    by_load = accepted(lambda: bn.load_state_dict({"num_batches_tracked": count}, strict=False))
    assert by_setter == by_load


def read_only(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("case,value,words", [
    ("strided", lambda: np.ones(6, np.float32)[::2], "contiguous"),
    ("unaligned", lambda: np.ones(13, np.uint8)[1:].view(np.float32), "aligned"),
    ("read-only", lambda: read_only(np.ones(3, np.float32)), "writable"),
    ("float64", lambda: np.ones(3), "dtype float32"),
])
def test_setters_bind_so_refuse_what_the_kernels_cannot_use_as_it_is(case, value, words):
    """load_state_dict copies and converts these; a setter binds the array
    itself and refuses them, naming the real problem."""
    bn = make_layer("BatchNorm2d")
    with pytest.raises((TypeError, ValueError), match=f"weight: expected .*{words}"):
        bn.weight = value()
    bn.load_state_dict({"weight": value()}, strict=False)


class TwoIdenticalRanks:
    """A communicator whose other rank sent the same values (in this thread,
    so that the trace function sees every line)."""

    def Get_size(self):
        return 2

    def Get_rank(self):
        return 0

    def Allgather(self, sendbuf, recvbuf):
        recvbuf[...] = sendbuf

    def Allreduce(self, sendbuf, recvbuf, op=np.add):
        recvbuf[...] = op(sendbuf, sendbuf)


def test_allreduce_gradients_updates_every_array_or_none():
    arrays = [np.arange(3.0), np.arange(4, dtype=np.float32)]

    def make():
        return [a.copy() for a in arrays]

    def run(items):
        cbn.allreduce_gradients(items, TwoIdenticalRanks(), average=False)

    assert interrupt_everywhere(make, run, lambda items: [a.tobytes() for a in items]) > 1


@pytest.mark.parametrize("virtual_batch_size", [None, 2])
def test_synced_backward_differentiates_the_forward_that_ran(virtual_batch_size):
    rng = np.random.default_rng(13)
    xs = [random_input(rng, (4, C, 3, 3), np.float32) for _ in range(2)]
    dys = [random_input(rng, (4, C, 3, 3), np.float32) for _ in range(2)]

    def step(rank, comm):
        bn = cbn.SyncBatchNorm(C, comm, virtual_batch_size=virtual_batch_size)
        bn.weight[...] = [0.5, 1.5, 2.0]
        bn(xs[rank])
        first = bn.backward(dys[rank]), bn.grad_weight.copy()
        bn.weight -= 0.5 * bn.grad_weight
        bn.load_state_dict({k: v + 1 for k, v in bn.state_dict().items()})
        second = bn.backward(dys[rank]), bn.grad_weight.copy()
        return first, second

    results, _ = run_ranks(2, step)
    for first, second in results:
        np.testing.assert_array_equal(first[0], second[0])
        np.testing.assert_array_equal(first[1], second[1])
