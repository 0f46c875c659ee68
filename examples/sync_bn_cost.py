"""What SyncBatchNorm's communication costs per training step.

    OMP_NUM_THREADS=1 mpiexec -n 2 python examples/sync_bn_cost.py [--rounds 200]

(ranks x threads should not exceed the cores: spinning OpenMP threads of one
rank otherwise stall the other rank's collectives by milliseconds).

For each channel count: the two collectives alone (forward Allgather of
(count, mean, M2), backward Allreduce of the two sums, with SyncBatchNorm's
buffer sizes), and a whole forward+backward step of SyncBatchNorm against
BatchNorm on the same local shard. Medians of interleaved rounds; every rank
times, rank 0 prints.
"""
import argparse
import time

import numpy as np
from mpi4py import MPI

import cbn

COMM = MPI.COMM_WORLD


def median_seconds(fns, rounds):
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            COMM.Barrier()
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: float(np.median(s)) for name, s in samples.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="timed rounds per case (200)")
    rounds = parser.parse_args().rounds
    size = COMM.Get_size()
    rng = np.random.default_rng(COMM.Get_rank())
    if COMM.Get_rank() == 0:
        print(f"SyncBatchNorm communication, {size} ranks ({MPI.Get_library_version().splitlines()[0]}), "
              f"float32, medians of {rounds} rounds, microseconds")
        print(f"{'C':>5} {'shard':>14} {'Allgather':>10} {'Allreduce':>10} {'BN step':>9} "
              f"{'Sync step':>10} {'extra':>8}")
    for C, shard in ((64, (8, 64, 14, 14)), (1024, (32, 1024))):
        gather_send, gather_recv = np.zeros(2 * C + 2), np.zeros((size, 2 * C + 2))
        reduce_send, reduce_recv = np.zeros(2 * C + 1), np.zeros(2 * C + 1)
        x = rng.standard_normal(shard).astype(np.float32)
        dy = rng.standard_normal(shard).astype(np.float32)
        bn, sync = cbn.BatchNorm2d(C) if len(shard) == 4 else cbn.BatchNorm1d(C), cbn.SyncBatchNorm(C, COMM)

        def step(layer):
            layer(x)
            layer.backward(dy)

        t = median_seconds({
            "allgather": lambda: COMM.Allgather(gather_send, gather_recv),
            "allreduce": lambda: COMM.Allreduce(reduce_send, reduce_recv),
            "bn": lambda: step(bn),
            "sync": lambda: step(sync),
        }, rounds)
        if COMM.Get_rank() == 0:
            print(f"{C:5d} {'x'.join(map(str, shard)):>14} {t['allgather'] * 1e6:10.1f} "
                  f"{t['allreduce'] * 1e6:10.1f} {t['bn'] * 1e6:9.1f} {t['sync'] * 1e6:10.1f} "
                  f"{(t['sync'] - t['bn']) * 1e6:8.1f}")


if __name__ == "__main__":
    main()
