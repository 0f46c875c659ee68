"""An in-process stand-in for an MPI communicator: one thread per rank.

Follows cbn's communicator protocol (README, "The communicator protocol"):
Get_size, Get_rank, Allgather, and Allreduce with either kind of op cbn
passes (mpi4py's MPI.SUM/MPI.MAX once mpi4py.MPI is imported, else np.add /
np.maximum), with MPI's semantics: every rank must call each collective, in
the same order. A collective whose buffers differ in size between ranks
fails on every rank, as it would in MPI (there: an abort, a hang or
wrong values); so do buffers of different dtypes, ranks in different
collectives, and Allreduces with different ops. MPI may combine the ranks' buffers in any
order, and a different one on each rank: with ``rotate=True`` rank r adds
them starting from its own, so that float sums differ in their last bits
between ranks, as they may under MPI.
"""
import functools
import threading

import numpy as np


class FakeWorld:
    def __init__(self, size, rotate=False):
        self.size, self.rotate = size, rotate
        self._barrier = threading.Barrier(size, timeout=60)
        self._slots = [None] * size

    def comm(self, rank):
        return FakeComm(self, rank)

    def _exchange(self, rank, value, kind):
        """Every rank's value; kind names the collective (and its op): ranks
        in different collectives fail, as do messages whose type signatures
        (size, dtype) differ."""
        self._slots[rank] = (kind, np.array(value, copy=True))
        self._barrier.wait()
        slots = list(self._slots)
        self._barrier.wait()
        signatures = [(k, v.size, v.dtype.name) for k, v in slots]
        if len(set(signatures)) > 1:
            raise RuntimeError(f"fake MPI: ranks in collectives that do not match: {signatures}")
        values = [v for _, v in slots]
        return values[rank:] + values[:rank] if self.rotate else values


class FakeComm:
    def __init__(self, world, rank):
        self.world, self.rank = world, rank

    def Get_size(self):
        return self.world.size

    def Get_rank(self):
        return self.rank

    def Allgather(self, sendbuf, recvbuf):
        rows = self.world._exchange(self.rank, sendbuf, "Allgather")
        if self.world.rotate:   # back in rank order, as Allgather delivers them
            rows = rows[-self.rank:] + rows[:-self.rank] if self.rank else rows
        recvbuf[...] = np.stack(rows).reshape(recvbuf.shape)

    def Allreduce(self, sendbuf, recvbuf, op=np.add):
        kind = ("Allreduce", getattr(op, "__name__", repr(op)))   # np.add's name, MPI.SUM's repr
        values = self.world._exchange(self.rank, sendbuf, kind)
        recvbuf[...] = functools.reduce(_combine(op), values)


def _combine(op):
    """a op b for either kind of op the protocol names."""
    if isinstance(op, np.ufunc):
        return op

    def combine(a, b):
        b = b.copy()
        op.Reduce_local(a, b)   # mpi4py's: b = a op b
        return b
    return combine


def run_ranks(size, fn, rotate=False):
    """fn(rank, comm) on every rank in its own thread; the results in rank order.

    An exception on any rank is re-raised (the first by rank), after all finish."""
    world = FakeWorld(size, rotate)
    results, errors = [None] * size, [None] * size

    def target(rank):
        try:
            results[rank] = fn(rank, world.comm(rank))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            errors[rank] = exc

    threads = [threading.Thread(target=target, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    hung = [rank for rank, t in enumerate(threads) if t.is_alive()]
    if hung:   # (their results would read as None, as if they had returned it)
        raise RuntimeError(f"fake MPI: ranks {hung} did not finish within 120 s: a hang")
    for exc in errors:
        if exc is not None:
            raise exc
    return results, errors


class Forwarding:
    """A communicator that forwards every call to another one (as a wrapper
    that counts bytes, logs or adapts another library's communicator does):
    not an mpi4py.MPI.Comm, and what the protocol promises works for it."""

    def __init__(self, comm):
        self.comm = comm

    def __getattr__(self, name):
        return getattr(self.comm, name)


class CountingComm:
    """A communicator that records the bytes of each collective's send buffer."""

    def __init__(self, comm):
        self.comm, self.sent = comm, []

    def Get_size(self):
        return self.comm.Get_size()

    def Get_rank(self):
        return self.comm.Get_rank()

    def Allgather(self, sendbuf, recvbuf):
        self.sent.append(("Allgather", sendbuf.nbytes))
        self.comm.Allgather(sendbuf, recvbuf)

    def Allreduce(self, sendbuf, recvbuf, op=np.add):
        self.sent.append(("Allreduce", sendbuf.nbytes))
        self.comm.Allreduce(sendbuf, recvbuf, op=op)
