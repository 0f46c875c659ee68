"""How cbn talks to a communicator: the protocol, and the opening message
every collective operation starts with.

The protocol. A communicator is any object with

- ``Get_size()`` and ``Get_rank()``, returning ints;
- ``Allgather(sendbuf, recvbuf)``: sendbuf a C-contiguous 1-D NumPy array of
  n values, recvbuf a C-contiguous (P, n) array of the same dtype, filled
  with every rank's sendbuf in rank order;
- ``Allreduce(sendbuf, recvbuf, op=op)``: recvbuf (sendbuf's shape and
  dtype, C-contiguous) filled with the elementwise reduction of every
  rank's sendbuf by op.

Buffers are float64 or int64 (the text of the disagreement round travels as
int64). op is SUM or MAX, picked by one rule whatever the communicator's
class (ReductionOps): mpi4py's ``MPI.SUM``/``MPI.MAX`` when ``mpi4py.MPI``
has been imported in this process — as it has wherever an mpi4py
communicator, or a wrapper of one, exists — else NumPy's ``np.add`` /
``np.maximum``. A stand-in that combines buffers itself handles both kinds
(``op.Reduce_local(buf, acc)`` for mpi4py's, ``op(buf, acc, out=acc)`` for
NumPy's). As in MPI, every rank calls the same collectives in the same order.

The opening. Messages of different sizes fail inside MPI (a truncation
error, a hang, or a buffer read short) before any rank could read a header
that says why, and a message's size depends on options the ranks may
disagree on (num_features, virtual_batch_size). So every operation (a
training forward, its backward, allreduce_gradients) starts with a message
of OPENING_VALUES values, whatever the options: the header — whether this
rank's input was rejected, and a fingerprint of its options — then the
start of the payload. It is one kind and one dtype whatever the operation,
so that ranks in different operations still meet in a well-formed
collective: an int64 Allgather of the rows' bytes up to
GATHER_MAX_PROCESSES processes, an int64 SUM Allreduce beyond (which
carries a float64 row's header only). What the opening did not carry
follows in a second collective, sent only once every rank knows that the
options, and so the payload's size, agree. Ranks whose fingerprints differ
instead exchange their options as text, in a collective of a fixed size,
and every rank raises the same ValueError naming the first option that
differs and its value on each rank.
"""
import functools
import hashlib
import sys
from typing import Any, NamedTuple

import numpy as np

# up to this many processes the openings, and SyncBatchNorm's forward
# exchange, are Allgathers: before the opening they moved no more bytes than
# the Allreduce and took 40-70% of its time (examples/sync_bn_cost.py, README)
GATHER_MAX_PROCESSES = 4
# values (8 bytes each) in every operation's first message: a forward's
# payload up to 250 channels by Allgather, 122 by sums (up to 4 KB more
# than the smallest messages: less than one more collective's latency
# costs on a network, README "The communicator protocol")
OPENING_VALUES = 512
# the disagreement round: each rank's options as text, this many of
# SLOT_BYTES each (longer texts are cut there; the fingerprint is not)
SLOTS = 16
SLOT_BYTES = 64
# ranks named per value in a disagreement message
RANKS_NAMED = 4


class ReductionOps(NamedTuple):
    """The op objects comm.Allreduce receives (see the module's protocol)."""

    sum: Any
    max: Any


def reduction_ops():
    """ReductionOps: mpi4py's when mpi4py.MPI is imported, else NumPy's ufuncs."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None:
        return ReductionOps(mpi.SUM, mpi.MAX)
    return ReductionOps(np.add, np.maximum)


def _text(value):
    if isinstance(value, np.dtype):
        return value.name
    if isinstance(value, float):
        return repr(float(value))   # every digit, and not "np.float64(...)"
    return str(value)


@functools.lru_cache(maxsize=256)
def agreement(operation, options):
    """The Agreement for operation and options (a tuple of (name, value)
    pairs), made once per distinct set (making one costs ~5 us)."""
    return Agreement(operation, options)


class Agreement:
    """What every rank of an operation must agree on, as (name, text) pairs.

    Parameters
    ----------
    operation : str
        The operation ("forward", "backward", ...): ranks in different ones disagree.
    options : iterable of (str, object)
        Each option's name and value (compared by their text).
    """

    # the opening's agreement fields: 1 (this rank's options are compared),
    # then (h, h * h) for 4 parts of a 64-bit hash of them
    FIELDS = 9

    def __init__(self, operation, options):
        self.items = (("operation", operation),) + tuple((n, _text(v)) for n, v in options)
        text = "\n".join(f"{n}={v}" for n, v in self.items).encode()
        digest = hashlib.blake2b(text, digest_size=8).digest()
        # in [1, 2**16]: P * h**2 summed stays exact
        h = [int.from_bytes(digest[i:i + 2], "little") + 1 for i in range(0, 8, 2)]
        self.fields = np.array([1] + [v for part in h for v in (part, part * part)], np.int64)

    def row(self):
        """This rank's options as text, for the disagreement round."""
        row = np.zeros((SLOTS, SLOT_BYTES), np.uint8)
        for slot, (name, value) in zip(row, self.items):
            text = f"{name}={value}".encode()[:SLOT_BYTES]
            slot[:len(text)] = np.frombuffer(text, np.uint8)
        return row.view(np.int64).ravel()


def same_everywhere(count, sums):
    """Whether count ranks each sent the same h, from the pairs (sum(h),
    sum(h**2)) of sums (summed over the ranks): iff count * sum(h**2) ==
    sum(h)**2 for each (Cauchy-Schwarz), exact in Python's integers."""
    s = [int(v) for v in sums]
    return all(count * s[i + 1] == s[i] * s[i] for i in range(0, len(s), 2))


def agreed(summed):
    """Whether the ranks that sent their options' fields (summed over the
    ranks: n of them, then the pairs of their hash's parts) sent the same."""
    n, *pairs = summed.astype(np.int64).tolist()
    return same_everywhere(n, pairs)


def disagreement(comm, agreement):
    """The ValueError every rank raises when the options differ, after a
    collective that gives every rank every rank's options (agreement: this
    rank's Agreement, or None when its own argument was rejected, which
    leaves it out of the comparison)."""
    row = agreement.row() if agreement is not None else np.zeros(SLOTS * SLOT_BYTES // 8, np.int64)
    rows = np.empty((comm.Get_size(), row.size), np.int64)
    comm.Allgather(row, rows)
    texts = {rank: [bytes(slot).rstrip(b"\0").decode(errors="replace")
                    for slot in r.view(np.uint8).reshape(SLOTS, SLOT_BYTES)]
             for rank, r in enumerate(rows) if r.any()}
    for slot in range(SLOTS):
        values = {rank: t[slot] for rank, t in texts.items()}
        if len(set(values.values())) > 1:
            name = next(iter(values.values())).partition("=")[0]
            return ValueError(f"{name}: ranks disagree: {_by_value(values, name)}")
    return ValueError(f"options: ranks disagree beyond the first {SLOT_BYTES} characters "
                      f"of an option")


def _by_value(values, name):
    """'2 on rank 0, 4 on ranks 1, 2' from each rank's 'name=value'."""
    ranks = {}
    for rank, text in values.items():
        key = text.partition("=")[2] if text.partition("=")[0] == name else f"({text})"
        ranks.setdefault(key, []).append(rank)
    parts = []
    for value, where in ranks.items():
        named = ", ".join(str(r) for r in where[:RANKS_NAMED])
        more = f" and {len(where) - RANKS_NAMED} more" if len(where) > RANKS_NAMED else ""
        parts.append(f"{value} on rank{'s' if len(where) > 1 else ''} {named}{more}")
    return ", ".join(parts)


def _check_opened(comm, layout, header, agreement, error, argument):
    """Raise on every rank when the options disagree or an input was
    rejected, in that order (header: the opening's header summed over the
    ranks)."""
    if not agreed(layout.read(header, "agreement")):
        raise disagreement(comm, agreement)
    layout.raise_if_rejected(header, error, argument)


def gathering(comm):
    """Whether operations open with an Allgather (up to GATHER_MAX_PROCESSES
    processes) rather than an Allreduce: one kind for every operation, so
    that ranks in different ones still meet in the same collective."""
    return comm.Get_size() <= GATHER_MAX_PROCESSES


def _open(comm, layout, row, agreement, error, argument):
    """The opening collective for row: (opened, n) where opened holds the
    first n values of every rank's row as (P, n) rows when gathering, else
    their sum as one row; raises on every rank as _check_opened. An int64
    Allgather of the row's bytes, or an int64 SUM Allreduce that carries a
    float row's header only (its values are integers)."""
    assert row.dtype.itemsize == 8   # float64 or int64: one int64 value each
    if agreement is not None:
        row[layout.slices["agreement"]] = agreement.fields
    first = np.zeros(OPENING_VALUES, np.int64)
    if gathering(comm):
        n = min(row.size, OPENING_VALUES)
        first.view(row.dtype)[:n] = row[:n]
        opened = np.empty((comm.Get_size(), OPENING_VALUES), np.int64)
        comm.Allgather(first, opened)
        opened = opened.view(row.dtype)
    else:
        n = min(row.size, OPENING_VALUES) if row.dtype == np.int64 else layout.HEADER
        first[:n] = row[:n]
        opened = np.empty((1, OPENING_VALUES), np.int64)
        comm.Allreduce(first, opened[0], op=reduction_ops().sum)
    _check_opened(comm, layout, opened[:, :layout.HEADER].sum(axis=0), agreement, error,
                  argument)
    return opened[:, :n].astype(row.dtype, copy=False), n


def allreduce_opening(comm, layout, row, agreement, error, argument):
    """The SUM over the ranks of row (a layout row, this rank's error packed
    in it), opening first; raises on every rank as _check_opened.
    agreement: this rank's options, or None when they are unknown (its
    argument was rejected). Gathered opening rows are added in rank order,
    so every rank has the same bits of that part."""
    opened, n = _open(comm, layout, row, agreement, error, argument)
    total = np.empty_like(row)
    total[:n] = opened.sum(axis=0)
    if row.size > n:
        rest = np.empty(row.size - n, row.dtype)
        comm.Allreduce(np.ascontiguousarray(row[n:]), rest, op=reduction_ops().sum)
        total[n:] = rest
    return total


def allgather_opening(comm, layout, row, agreement, error, argument):
    """Every rank's row (P, row.size), in rank order, opening first (only
    while gathering(comm)); raises on every rank as _check_opened
    (agreement as for allreduce_opening)."""
    opened, n = _open(comm, layout, row, agreement, error, argument)
    rows = np.empty((comm.Get_size(), row.size), row.dtype)
    rows[:, :n] = opened
    if row.size > n:
        rest = np.empty((comm.Get_size(), row.size - n), row.dtype)
        comm.Allgather(np.ascontiguousarray(row[n:]), rest)
        rows[:, n:] = rest
    return rows
