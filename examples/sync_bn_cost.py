"""What SyncBatchNorm's forward exchange costs, and how it grows with the process count.

    python examples/sync_bn_cost.py                    # P = 1, 2, 4, 8, 16; C = 64, 512, 2048
    python examples/sync_bn_cost.py --processes 1,2,4 --channels 64 --rounds 50

For each process count P it starts ``mpiexec -n P`` (one thread per process;
more processes than cores are oversubscribed) and measures, per process and
per forward, both exchanges of the per-channel statistics:

- ``allreduce``: one Allreduce of fixed-point shifted sums, 32 bytes per
  channel, in the steady state (cbn above GATHER_MAX_PROCESSES processes);
- ``allgather``: one Allgather of every process's float64 count, mean and
  M2, merged in rank order (cbn up to GATHER_MAX_PROCESSES processes; what
  PyTorch's SyncBatchNorm does at any count).

Bytes are measured two ways: what the exchange hands MPI (the send and
receive buffers of its collectives), and what crosses the wire: the
processes talk over loopback TCP (MPICH with UCX: MPIR_CVAR_NOLOCAL=1,
UCX_TLS=tcp) and the loopback interface's byte counter, which counts every
process's traffic (TCP headers, the barrier before each round and other
traffic on the machine included), is divided by P.
Times are medians over interleaved rounds, on loopback: they measure MPI's
software path, not a network.

Then a cost model, per exchange and channel count,

    time(P) = local + collectives * steps(P) * latency + wire_bytes(P) / bandwidth,

with local the time on one process (encoding, merging: no transfer),
steps(P) = ceil(log2 P) message steps for the Allgather and twice that for
the Allreduce (reduce-scatter, then allgather), and wire_bytes(P) fitted to
the measured bytes (a + b * (P - 1) / P for the Allreduce, a + b * (P - 1)
for the Allgather), is printed with its parameters and projected to
P = 64 ... 1024 on a 10 Gb/s and a 100 Gb/s network, whose latencies per
step are assumptions printed with them. The latency per step fitted here is
printed too: it is loopback's, on processes that share the cores.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

# name, bits per second, latency per message step (assumed: TCP over 10 GbE, RDMA over 100 Gb/s)
NETWORKS = (("10 Gb/s", 10e9, 25e-6), ("100 Gb/s", 100e9, 3e-6))
PROJECTED = (64, 128, 256, 1024)


def loopback_received_bytes():
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, fields = line.partition(":")
            if name.strip() == "lo":
                return int(fields.split()[0])
    return 0


# ---------------------------------------------------------------- one process (under mpiexec)

def worker(channels, rounds):
    from mpi4py import MPI

    from cbn import _collectives, _exchange
    from cbn._moments import Moments

    comm = MPI.COMM_WORLD
    size, rank = comm.Get_size(), comm.Get_rank()
    rng = np.random.default_rng(rank)

    class Counting:   # the buffers each collective is handed
        def __init__(self):
            self.bytes, self.calls = 0, 0

        def Get_size(self):
            return size

        def Get_rank(self):
            return rank

        def Allreduce(self, sendbuf, recvbuf, op):
            self.bytes += sendbuf.nbytes + recvbuf.nbytes
            self.calls += 1
            comm.Allreduce(sendbuf, recvbuf, op=op)

        def Allgather(self, sendbuf, recvbuf):
            self.bytes += sendbuf.nbytes + recvbuf.nbytes
            self.calls += 1
            comm.Allgather(sendbuf, recvbuf)

    for C in channels:
        values = rng.standard_normal((C, 8 * 7 * 7)) + 3   # a shard's (N, C, 7, 7), per channel
        mean = values.mean(axis=1)
        shard = _exchange.Shard(Moments(values.shape[1], mean,
                                        ((values - mean[:, None]) ** 2).sum(axis=1)), None, 0)
        counting = Counting()
        agreement = _collectives.Agreement("forward", (("num_features", C),))

        def exchange(frame, gather):
            # either path at any P: the opening's kind follows the same limit
            _collectives.GATHER_MAX_PROCESSES = size if gather else 0
            return _exchange.exchange(counting, shard, frame, None, agreement, C, False)

        state = {"frame": exchange(None, gather=False).frame}

        def allreduce():
            state["frame"] = exchange(state["frame"], gather=False).frame

        def allgather():
            exchange(None, gather=True)

        for name, fn in (("allreduce", allreduce), ("allgather", allgather)):
            fn()   # warm
            counting.bytes = counting.calls = 0
            comm.Barrier()
            wire_before = loopback_received_bytes()
            times = []
            for _ in range(rounds):
                comm.Barrier()
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            comm.Barrier()
            wire = (loopback_received_bytes() - wire_before) / size / rounds
            # the slowest process's median: the exchange ends when the last one has its result
            median = comm.allreduce(float(np.median(times)), op=MPI.MAX)
            if rank == 0:
                print(json.dumps(dict(P=size, C=C, path=name, seconds=median,
                                      collectives=counting.calls / rounds,
                                      buffer_bytes=counting.bytes / rounds, wire_bytes=wire)),
                      flush=True)


# ---------------------------------------------------------------- the driver

def measure(processes, channels, rounds, transport):
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        sys.exit('mpiexec not found: pip install "cbn[mpi]"')
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if transport == "tcp":
        env.update(MPIR_CVAR_NOLOCAL="1", UCX_TLS="tcp")
    rows = []
    for P in processes:
        out = subprocess.run([mpiexec, "-n", str(P), sys.executable, os.path.abspath(__file__),
                              "--worker", "--channels", ",".join(map(str, channels)),
                              "--rounds", str(rounds)],
                             env=env, capture_output=True, text=True, timeout=1800)
        if out.returncode:
            sys.exit(f"mpiexec -n {P} failed:\n{out.stderr[-3000:]}")
        rows += [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return rows


def steps(path, P):
    """Message steps of the collective: recursive doubling for the Allgather,
    reduce-scatter then allgather (twice as many) for the Allreduce."""
    rounds = np.ceil(np.log2(np.maximum(P, 1)))
    return 2 * rounds if path == "allreduce" else rounds


def growth(path, P):
    """How the bytes a process receives grow with P: 2 (P - 1) / P messages
    for an Allreduce, P - 1 rows for an Allgather."""
    return (P - 1) / P if path == "allreduce" else P - 1


def fit(rows):
    """Per (exchange, C): local = the time on one process (no transfer);
    wire bytes = a + b * growth(P) and latency per step, least squares over P >= 2."""
    models = {}
    for path in ("allreduce", "allgather"):
        for C in sorted({r["C"] for r in rows}):
            pts = [r for r in rows if r["path"] == path and r["C"] == C]
            one = [r["seconds"] for r in pts if r["P"] == 1]
            pts = [r for r in pts if r["P"] >= 2]
            if len(pts) < 2:
                continue
            P = np.array([r["P"] for r in pts], float)
            collectives = pts[-1]["collectives"]
            a, b = np.linalg.lstsq(np.stack([np.ones_like(P), growth(path, P)], 1),
                                   np.array([r["wire_bytes"] for r in pts]), rcond=None)[0]
            local = one[0] if one else 0.0
            extra = np.array([r["seconds"] for r in pts]) - local
            per_step = collectives * steps(path, P)
            latency = max(float(per_step @ extra / (per_step @ per_step)), 0.0)
            models[path, C] = dict(a=a, b=b, local=local, latency=latency,
                                   collectives=collectives)
    return models


def report(rows, models):
    print("Measured, per process and forward exchange (time: median of the slowest process)")
    print(f"{'P':>3} {'C':>5} {'exchange':>9} {'coll.':>5} {'buffers':>10} {'wire recv':>10} "
          f"{'time':>9}")
    for r in sorted(rows, key=lambda r: (r["C"], r["path"], r["P"])):
        print(f"{r['P']:3d} {r['C']:5d} {r['path']:>9} {r['collectives']:5.1f} "
              f"{r['buffer_bytes'] / 1e3:8.1f}kB {r['wire_bytes'] / 1e3:8.1f}kB "
              f"{r['seconds'] * 1e6:7.0f}µs")
    print("\nModel: time(P) = local + collectives * steps(P) * latency + wire_bytes(P) / bandwidth")
    print("  steps: ceil(log2 P) for the Allgather, twice that for the Allreduce; local: P = 1;")
    print("  wire bytes and the latency per step here: least squares over P >= 2")
    print(f"{'exchange':>9} {'C':>5} {'wire bytes(P)':>30} {'local':>8} {'latency/step here':>18}")
    for (path, C), m in sorted(models.items()):
        g = "(P-1)/P" if path == "allreduce" else "(P-1)"
        print(f"{path:>9} {C:5d} {m['a']:12.0f} + {m['b']:8.0f} * {g:<7} {m['local'] * 1e6:6.0f}µs "
              f"{m['latency'] * 1e6:16.0f}µs")
    print("\nProjected per forward exchange: bytes received per process, time "
          "(local and bytes as fitted; the network's latency per step and bandwidth assumed)")
    for name, bits, latency in NETWORKS:
        print(f"-- {name}, {latency * 1e6:.0f} µs per step")
        print(f"{'C':>5} {'exchange':>9} " + " ".join(f"{'P=' + str(P):>16}" for P in PROJECTED))
        for (path, C), m in sorted(models.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            cells = []
            for P in PROJECTED:
                b = m["a"] + m["b"] * growth(path, P)
                t = m["local"] + m["collectives"] * steps(path, P) * latency + b * 8 / bits
                cells.append(f"{b / 1e6:7.3f}MB {t * 1e3:6.2f}ms")
            print(f"{C:5d} {path:>9} " + " ".join(f"{c:>16}" for c in cells))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="1,2,4,8,16")
    parser.add_argument("--channels", default="64,512,2048")
    parser.add_argument("--rounds", type=int, default=100, help="timed rounds per case (100)")
    parser.add_argument("--transport", choices=("tcp", "shm"), default="tcp",
                        help="tcp: over loopback, its bytes measured (default); shm: MPI's "
                             "shared memory (faster, no wire bytes)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    channels = [int(c) for c in args.channels.split(",")]
    if args.worker:
        worker(channels, args.rounds)
        return
    rows = measure([int(p) for p in args.processes.split(",")], channels, args.rounds,
                   args.transport)
    report(rows, fit(rows))


if __name__ == "__main__":
    main()
