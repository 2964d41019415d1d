"""The search of the local index: candidate tracks for a clip, and the
lookups behind them.

The clip's speed-invariant keys for a single frame shift are looked up in
the inverted index of every segment, rarest first until
:data:`.params.CANDIDATE_POSTINGS` postings are read; every hit votes for
(item, speed cell, coarse offset cell) and the
:data:`.params.VERIFY_CANDIDATES` items with the most votes in one cell go
on to verification (:mod:`..match`). The cost is bounded whatever the
library size. Every page a lookup needs is announced to the kernel before
it is read (:mod:`.mapping`).

The functions take the open index's segments (and its hash counts) and
give back global item *slots*: segment ``slot_base`` + local number.
"""

from __future__ import annotations

import numpy as np

from ..arrays import best_per_group
from ..landmarks import QueryLandmarks
from ..voting import approx_counts, offset_cells
from ..params import (
    BUDGET_SAMPLE_LANDMARKS,
    CANDIDATE_CELL_VOTES,
    CANDIDATE_POSTINGS,
    STOP_POSTINGS_FACTOR,
    STOP_POSTINGS_FLOOR,
    VERIFY_CANDIDATES,
)
from .segments import Segment


def candidate_slots(segments: list[Segment], counts, counts_map, q: QueryLandmarks) -> np.ndarray:
    """Slots of the items with the most votes in one (speed, 4-frame
    offset cell), best first, at most :data:`.params.VERIFY_CANDIDATES`.

    The postings read are bounded by :data:`.params.CANDIDATE_POSTINGS`, so
    they are counted together: a hashed histogram of the cells keeps
    only the hits of cells with at least two votes, which are then
    counted exactly.
    """
    uq, inv = np.unique(q.hashes, return_inverse=True)
    ns = len(q.speeds)
    ref_time = np.rint(q.ref_time).astype(np.int32)
    cells, offsets = [], []
    for seg, lo, c, n in postings(segments, counts, counts_map, uq, inv, stop_postings(segments),
                                budget=CANDIDATE_POSTINGS):
        nz = np.flatnonzero(c)
        c = c[nz]
        entry = np.repeat(nz.astype(np.int32), c)
        posts = seg.posts[np.repeat(lo[inv[nz]] - (np.cumsum(c) - c), c) + np.arange(n)]
        local = (posts >> seg.time_bits).astype(np.int64)
        live = seg.alive[local]
        entry = entry[live]
        cells.append((local[live] + seg.slot_base) * ns + q.speed_index[entry])
        offsets.append((posts[live] & seg.frame_mask).astype(np.int32)
                       - ref_time[entry])
    if not cells:
        return np.zeros(0, np.int64)
    cell, off = np.concatenate(cells), np.concatenate(offsets)
    # Offsets may be negative: biased, so that the slot and speed decode
    # from the key's high bits. Each grid is counted apart (the same key
    # value names different offsets on the two grids) and a slot keeps
    # its best cell on either.
    counted = []
    for k in offset_cells(cell, off, group_shift=20, bias=1 << 21):
        counted.append(np.unique(k[approx_counts(k) >= CANDIDATE_CELL_VOTES], return_counts=True))
    uk = np.concatenate([u for u, _ in counted])
    kc = np.concatenate([c for _, c in counted])
    if uk.size == 0:
        return np.zeros(0, np.int64)
    slot = (uk >> 20) // ns
    first = best_per_group(slot, kc)
    top = first[np.argsort(-kc[first], kind="stable")[:VERIFY_CANDIDATES]]
    return slot[top].astype(np.int64)


def stop_postings(segments: list[Segment]) -> int:
    """Postings above which a hash is skipped: see :data:`.params.STOP_POSTINGS_FACTOR`."""
    total = sum(len(s) for s in segments)
    return max(STOP_POSTINGS_FLOOR, int(STOP_POSTINGS_FACTOR * total / (1 << 23)))


def postings(segments: list[Segment], counts, counts_map, unique_hashes, inverse, stop,
             budget: int | None = None):
    """Per segment with hits: (segment, first posting of each unique
    hash, postings per query entry, total). Hashes with more than
    ``stop`` postings (silence, steady tones) count as no hit; with a
    ``budget``, only the rarest hashes whose postings (times their
    uses in the query) fit in it count."""
    segments = [seg for seg in segments if len(seg)]
    # Every page the lookup needs is announced before it is read, in
    # waves (directories, hash runs, postings): read from disk, each
    # wave costs about one disk wait instead of one per page.
    for seg in segments:
        seg.prefetch_directory()
    wanted = np.ones(unique_hashes.size, bool)
    if budget is not None and segments:
        uses = np.bincount(inverse, minlength=unique_hashes.size)
        if counts is not None:
            # The index keeps how many postings each hash value has,
            # so only the hashes that fit in the budget are looked up.
            counts_map.prefetch(unique_hashes, unique_hashes + 1)
            cost = counts[unique_hashes].astype(np.int64) * uses
            wanted &= cost > 0  # in no segment: nothing to look up
        else:
            cost = sampled_cost(segments, unique_hashes, uses, stop)
            wanted &= cost >= 0
        order = np.argsort(cost, kind="stable")
        wanted[order[np.cumsum(np.maximum(cost[order], 0)) > budget]] = False
    keys = unique_hashes[wanted]
    for seg in segments:
        seg.prefetch_buckets(keys)
    ranges = []
    for seg in segments:
        lo = np.zeros(unique_hashes.size, np.int64)
        cnt = np.zeros(unique_hashes.size, np.int64)
        lo[wanted], cnt[wanted] = seg.ranges(keys)
        cnt[cnt > stop] = 0
        ranges.append((seg, lo, cnt))
    for seg, lo, cnt in ranges:
        seg.prefetch_postings(lo, cnt)
    for seg, lo, cnt in ranges:
        per_entry = cnt[inverse]
        total = int(per_entry.sum())
        if total:
            yield seg, lo, per_entry, total


def sampled_cost(segments: list[Segment], unique_hashes, uses, stop) -> np.ndarray:
    """Postings each hash would cost, estimated from a sample of the
    index, its largest segments (a few thousand tracks), scaled up:
    for indexes written before the hash counts existed (until their
    next write). -1 for hashes a segment of the sample stops."""
    by_size = sorted(segments, key=len, reverse=True)
    sizes = np.cumsum([len(seg) for seg in by_size])
    sample = by_size[:int(np.searchsorted(sizes, BUDGET_SAMPLE_LANDMARKS)) + 1]
    for seg in sample:
        seg.prefetch_buckets(unique_hashes)
    counts = np.zeros(unique_hashes.size, np.int64)
    stopped = np.zeros(unique_hashes.size, bool)
    for seg in sample:
        c = seg.ranges(unique_hashes)[1]
        stopped |= c > stop
        counts += c
    cost = counts * uses * (sizes[-1] / sizes[len(sample) - 1])
    return np.where(stopped, -1, cost)


def lookup(segments: list[Segment], q: QueryLandmarks):
    """All hits of the query hashes: (slot, reference frame, query entry),
    or None."""
    uq, inv = np.unique(q.hashes, return_inverse=True)
    stop = stop_postings(segments)
    slots, times, entries = [], [], []
    for seg, lo, c, n in postings(segments, None, None, uq, inv, stop):
        entry = np.repeat(np.arange(c.size), c)
        within = np.arange(n) - np.repeat(np.cumsum(c) - c, c)
        idx = np.repeat(lo[inv], c) + within
        posts = seg.posts[idx]
        local = (posts >> seg.time_bits).astype(np.int64)
        keep = seg.alive[local]
        slots.append(local[keep] + seg.slot_base)
        times.append((posts[keep] & seg.frame_mask).astype(np.float64))
        entries.append(entry[keep])
    if not slots:
        return None
    return np.concatenate(slots), np.concatenate(times), np.concatenate(entries)


def slot_place(segments: list[Segment], slot: int) -> tuple[Segment, int]:
    """The segment and local number of a global item slot."""
    for seg in segments:
        if slot < seg.slot_base + len(seg.item_ids):
            return seg, slot - seg.slot_base
    raise IndexError(slot)
