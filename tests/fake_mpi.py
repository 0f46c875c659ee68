"""An in-process stand-in for an MPI communicator: one thread per rank.

Implements the part of mpi4py's interface SyncBatchNorm uses (Get_size,
Get_rank, Allgather, Allreduce with SUM), with the same semantics: every rank
must call each collective, in the same order.
"""
import threading

import numpy as np


class FakeWorld:
    def __init__(self, size):
        self.size = size
        self._barrier = threading.Barrier(size, timeout=60)
        self._slots = [None] * size

    def comm(self, rank):
        return FakeComm(self, rank)

    def _exchange(self, rank, value):
        self._slots[rank] = np.array(value, dtype=np.float64, copy=True)
        self._barrier.wait()
        values = list(self._slots)
        self._barrier.wait()
        return values


class FakeComm:
    def __init__(self, world, rank):
        self.world, self.rank = world, rank

    def Get_size(self):
        return self.world.size

    def Get_rank(self):
        return self.rank

    def Allgather(self, sendbuf, recvbuf):
        recvbuf[...] = np.stack(self.world._exchange(self.rank, sendbuf)).reshape(recvbuf.shape)

    def Allreduce(self, sendbuf, recvbuf):
        total = np.zeros_like(np.asarray(sendbuf, dtype=np.float64))
        for value in self.world._exchange(self.rank, sendbuf):  # rank order, as MPI's SUM here
            total += value
        recvbuf[...] = total


def run_ranks(size, fn):
    """fn(rank, comm) on every rank in its own thread; the results in rank order.

    An exception on any rank is re-raised (the first by rank), after all finish."""
    world = FakeWorld(size)
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
    for exc in errors:
        if exc is not None:
            raise exc
    return results, errors
