"""Data-parallel training of the demo MLP with cbn.SyncBatchNorm over MPI.

    OMP_NUM_THREADS=1 mpiexec -n 2 python examples/mpi_data_parallel.py [--steps 50]

Every batch of 60 digits is split across the processes; each runs the MLP
(3 hidden layers of 100 sigmoid units, SyncBatchNorm before each sigmoid) on
its shard, the gradients are summed over processes (cbn.allreduce_gradients;
the loss is divided by the whole batch's size) and every process takes the
same SGD step. Rank 0 also trains the same model in one process on the whole
batches with BatchNorm1d and prints both losses side by side: they agree to
rounding. Exits with an error if they differ by more than 1e-6.
"""
import argparse

import numpy as np
from mpi4py import MPI

import cbn
from cbn._mlp import MLP, batchnorm_factory, softmax_cross_entropy

SIZES = (64, 100, 100, 100, 10)
BATCH = 60


def main(steps=50, lr=0.5, seed=0):
    from sklearn.datasets import load_digits

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    order = np.random.default_rng(seed).permutation(len(X))
    model = MLP(SIZES, lambda C: cbn.SyncBatchNorm(C, comm, dtype=np.float64), seed=seed)
    single = MLP(SIZES, batchnorm_factory(), seed=seed) if rank == 0 else None
    if rank == 0:
        print(f"{size} processes, batches of {BATCH} split {[len(s) for s in np.array_split(range(BATCH), size)]}")
        print(f"{'step':>4} {'data-parallel loss':>20} {'one process loss':>18} {'difference':>11}")
    worst = 0.0
    for step in range(steps):
        start = (step * BATCH) % (len(order) - BATCH)
        rows = order[start:start + BATCH]
        shard = np.array_split(rows, size)[rank]
        logits, _ = model.forward(X[shard])
        local_loss, dlogits = softmax_cross_entropy(logits, y[shard], scale=BATCH)
        grads = model.backward(dlogits)
        cbn.allreduce_gradients(model.gradient_arrays(grads), comm, average=False)
        model.sgd(grads, lr)
        loss = comm.allreduce(local_loss)
        if rank == 0:
            logits, _ = single.forward(X[rows])
            single_loss, dlogits = softmax_cross_entropy(logits, y[rows])
            single.sgd(single.backward(dlogits), lr)
            worst = max(worst, abs(loss - single_loss))
            print(f"{step + 1:4d} {loss:20.12f} {single_loss:18.12f} {loss - single_loss:11.2e}")
    worst = comm.bcast(worst)
    if rank == 0:
        print(f"largest difference over {steps} steps: {worst:.2e}")
    if worst > 1e-6:
        raise SystemExit(f"data-parallel and single-process losses differ by {worst:.2e}")
    return worst


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    main(args.steps)
