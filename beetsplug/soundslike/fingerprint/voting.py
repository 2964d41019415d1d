"""Offset voting, shared by every stage that counts votes: a true match
piles its hits into one time offset (within a frame), chance hits
scatter. Hits are counted in coarse offset cells on two staggered grids
(:func:`offset_cells`), and a count-min sketch (:func:`may_reach`)
drops the hits of cells that cannot reach a useful count before the
survivors are counted exactly. Used by the candidate stage
(:mod:`.local.search`), the speed read-back (:mod:`.speed`),
verification (:mod:`.match`) and ``same_recording``; and the hits those
votes come from (:func:`hits_in_runs`).
"""

from __future__ import annotations

import numpy as np

from .arrays import GOLDEN, multiplicative_hash, runs, stable_order
from .params import HASH_BITS, OFFSET_CELL_BITS, OFFSET_GRIDS


def offset_cells(group: np.ndarray, offset: np.ndarray, grids=OFFSET_GRIDS, group_shift: int = 22,
                 bias: int = 0) -> list[np.ndarray]:
    """The coarse vote of each hit: for every grid in ``grids`` (the
    frames it is shifted by), the key ``group << group_shift`` plus the
    hit's offset cell of 2**OFFSET_CELL_BITS frames. Hits that agree on
    a place share a key on at least one grid; ``group`` is what they must
    agree on besides the offset (track, or track and speed).

    ``bias`` keeps negative offsets out of the group's bits where a
    caller decodes the group from the key; the key layout (``group_shift``,
    ``bias``) is each caller's own, since :func:`may_reach` hashes the
    key values."""
    return [(group << group_shift) + ((offset + stagger + bias) >> OFFSET_CELL_BITS)
            for stagger in grids]


def may_reach(keys: np.ndarray, votes: int) -> np.ndarray:
    """Whether each key may occur at least ``votes`` times, without
    sorting: a count-min sketch (two hashed histograms; a key passes when
    both of its bins hold ``votes``), so no key that does occur that often
    is dropped. Used to drop the hits of offset cells that cannot reach a
    useful score, most chance hits, before the survivors are counted
    exactly. Each histogram is read back as a table of bins that hold
    enough (a byte a bin, 1 MiB), not as counts (8 MiB, past the
    processor's caches): the same answer, read a third as slowly."""
    bits = min(20, max(12, int(keys.size).bit_length() + 1))
    # The keys' bits as unsigned words, and the bins as signed ones (they
    # are under 2**20): what numpy indexes with, so neither is copied.
    k = keys.view(np.uint64) if keys.dtype == np.int64 else keys.astype(np.uint64)
    passed = None
    # Multiplicative hashing: the top bits of the 64-bit product mix every
    # bit of the key (item, speed and offset alike).
    for multiplier in (GOLDEN, 0xC2B2AE3D27D4EB4F):
        h = multiplicative_hash(k, bits, multiplier).view(np.int64)
        enough = np.bincount(h, minlength=1 << bits) >= votes
        if passed is None:
            passed = enough[h]
        else:
            some = np.flatnonzero(passed)  # the second histogram is read for these only
            passed[some] = enough[h[some]]
    return passed


def hits_in_runs(query: np.ndarray, values: list, frames: list):
    """Every hit of a ``query`` value (hash or key, below 2**HASH_BITS) on
    the candidate runs' ``values`` (one array a run, with its ``frames``),
    all matched in one pass: (run number, the run entry's frame as
    float64, query entry), or None without a hit."""
    if not values:
        return None
    h = np.concatenate(values)
    t = np.concatenate(frames)
    owner = np.repeat(np.arange(len(values), dtype=np.int64), [v.size for v in values])
    # Most of the clip's values (10^5 of them, every speed and shift) meet
    # no landmark of the runs, and most landmarks meet no value of the
    # clip: bitmaps over the value space (zero pages until written) drop
    # both, so only the query entries that can hit are sorted.
    in_runs = np.zeros(1 << HASH_BITS, bool)
    in_runs[h] = True
    maybe = np.flatnonzero(in_runs[query])
    if maybe.size == 0:
        return None
    order, ordered = stable_order(query[maybe])
    order = maybe[order]  # query entries, by value, each value's in query order
    uq, first, qcnt = runs(ordered)
    in_query = np.zeros(1 << HASH_BITS, bool)
    in_query[uq] = True
    m = np.flatnonzero(in_query[h])
    p = np.searchsorted(uq, h[m])
    c = qcnt[p]
    n = int(c.sum())
    entries = order[np.repeat(first[p] - (np.cumsum(c) - c), c) + np.arange(n)]
    return np.repeat(owner[m], c), np.repeat(t[m], c).astype(np.float64), entries
