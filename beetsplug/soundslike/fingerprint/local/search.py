"""The search of the local index: candidate tracks for a clip, and the
lookups behind them.

The clip's speed-invariant keys for a single frame shift are looked up in
the inverted index of every segment, rarest first until
:data:`.params.CANDIDATE_FIRST_POSTINGS` postings are read, then, when
those do not settle the clip, on to :data:`.params.CANDIDATE_POSTINGS`
(:func:`candidate_rounds`); every hit votes for
(item, speed cell, coarse offset cell) and the
:data:`.params.VERIFY_CANDIDATES` items with the most votes in one cell go
on to verification (:mod:`..match`), each at its best cells' places
(:func:`spans`). The cost is bounded whatever the
library size. Every page a lookup needs is announced to the kernel before
it is read (:mod:`.mapping`).

The functions take the open index's segments (and its hash counts) and
give back global item *slots*: segment ``slot_base`` + local number.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..arrays import best_per_group, counted, inverse, merged
from ..landmarks import QueryLandmarks
from ..voting import may_reach, offset_cells
from ..params import (
    BUDGET_SAMPLE_LANDMARKS,
    CANDIDATE_CELL_VOTES,
    CANDIDATE_FIRST_POSTINGS,
    CANDIDATE_POSTINGS,
    OFFSET_CELL_BITS,
    OFFSET_GRIDS,
    STOP_POSTINGS_FACTOR,
    STOP_POSTINGS_FLOOR,
    VERIFY_CANDIDATES,
    VERIFY_MARGIN,
    VERIFY_PLACES,
)
from .segments import Segment


def candidate_rounds(segments: list[Segment], counts, counts_map, q: QueryLandmarks,
                    quick: bool = True) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """The clip's candidates, one round at a time: the slots of the items
    with the most votes in one (speed, 4-frame offset cell), best first,
    at most :data:`.params.VERIFY_CANDIDATES`, and each one's places: the
    reference frames where the clip would start in its best cells, at
    most :data:`.params.VERIFY_PLACES`, best first (what verification
    reads of the item, :func:`spans`).

    The first round (when ``quick``) counts the rarest hashes whose
    postings fit :data:`.params.CANDIDATE_FIRST_POSTINGS`; when that left
    hashes out, the next counts the rest of those that fit
    :data:`.params.CANDIDATE_POSTINGS` together with the first's: the
    candidates of the whole budget, as one round would find them.
    The caller stops asking once a round settles the clip. The postings are
    counted together: a hashed histogram of the cells keeps only the hits
    of cells with at least two votes, which are then counted exactly.
    """
    uq, inv = inverse(q.hashes)
    ns = len(q.speeds)
    ref_time = np.rint(q.ref_time).astype(np.int32)
    stop = stop_postings(segments)
    cells, offsets = [], []
    budgets = (CANDIDATE_FIRST_POSTINGS, CANDIDATE_POSTINGS) if quick else (CANDIDATE_POSTINGS,)
    waves = budget_waves(segments, counts, counts_map, uq, inv, stop, budgets)
    if not waves:
        yield np.zeros(0, np.int64), []
        return
    for wanted in waves:
        for seg, lo, c, n in postings(segments, uq, inv, stop, wanted):
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
        yield best_cells(cells, offsets, ns)


def best_cells(cells: list[np.ndarray], offsets: list[np.ndarray],
               ns: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The slots with the most votes in one cell and their places
    (:func:`candidate_rounds`), from the hits' (slot, speed) ``cells`` and
    offsets; the order the hits come in does not matter."""
    none = (np.zeros(0, np.int64), [])
    if not cells:
        return none
    cell, off = np.concatenate(cells), np.concatenate(offsets)
    # Offsets may be negative: biased, so that the slot and speed decode
    # from the key's high bits. Each grid is counted apart (the same key
    # value names different offsets on the two grids) and a slot keeps
    # its best cell on either.
    bias = 1 << 21
    cell_votes = []
    for stagger, k in zip(OFFSET_GRIDS, offset_cells(cell, off, group_shift=20, bias=bias)):
        u, c = counted(k[may_reach(k, CANDIDATE_CELL_VOTES)])
        # The middle of the cell's offsets, as reference frames.
        middle = ((u & ((1 << 20) - 1)) << OFFSET_CELL_BITS) - bias - stagger + (1 << OFFSET_CELL_BITS) // 2
        cell_votes.append((u >> 20, c, middle))
    group, kc, middle = (np.concatenate(parts) for parts in zip(*cell_votes))
    if group.size == 0:
        return none
    slot = group // ns
    first = best_per_group(slot, kc)
    top = slot[first[np.argsort(-kc[first], kind="stable")[:VERIFY_CANDIDATES]]].astype(np.int64)
    return top, best_places(slot, kc, middle, top)


def best_places(slot: np.ndarray, votes: np.ndarray, middle: np.ndarray,
                chosen: np.ndarray) -> list[np.ndarray]:
    """For each slot in ``chosen``: the middles of its cells with the most
    ``votes``, best first, at most :data:`.params.VERIFY_PLACES`, each
    more than :data:`.params.VERIFY_MARGIN` frames from the others: the
    span read for a place holds the clip's whole span at any place that
    near, so a nearer cell (the other grid's count of the same cluster,
    a neighbouring cell of a smeared one) would read nothing new."""
    order = np.lexsort((-votes, slot))
    slot, middle = slot[order], middle[order]
    lo = np.searchsorted(slot, chosen, side="left")
    hi = np.searchsorted(slot, chosen, side="right")
    out = []
    for a, b in zip(lo.tolist(), hi.tolist()):
        taken: list[int] = []
        for m in middle[a:b].tolist():
            if all(abs(m - t) > VERIFY_MARGIN for t in taken):
                taken.append(m)
                if len(taken) == VERIFY_PLACES:
                    break
        out.append(np.asarray(taken, np.int64))
    return out


def every_wrap(places: np.ndarray, n_frames: int, time_bits: int) -> np.ndarray:
    """Every place of a track ``n_frames`` long that ``places`` (read from
    postings) may stand for: a posting keeps ``time_bits`` bits of its
    frame, so past 2**time_bits frames (hours: DJ mixes, audiobooks) a
    place recurs once per wrap."""
    period = 1 << int(time_bits)
    wraps = np.arange(int(n_frames) // period + 1, dtype=np.int64)
    return (places[:, None] + period * wraps[None, :]).ravel()


def spans(places: np.ndarray, length: float) -> np.ndarray:
    """The frames verification reads of a candidate: ``length`` frames
    (the clip's span at the fastest speed searched) from each of its
    ``places``, with :data:`.params.VERIFY_MARGIN` frames either side;
    (start, stop) rows, sorted, overlapping ones merged."""
    start = np.asarray(places, np.int64) - VERIFY_MARGIN
    return merged(start, start + int(np.ceil(length)) + 2 * VERIFY_MARGIN)


def stop_postings(segments: list[Segment]) -> int:
    """Postings above which a hash is skipped: see :data:`.params.STOP_POSTINGS_FACTOR`."""
    total = sum(len(s) for s in segments)
    return max(STOP_POSTINGS_FLOOR, int(STOP_POSTINGS_FACTOR * total / (1 << 23)))


def budget_waves(segments: list[Segment], counts, counts_map, unique_hashes, inverse, stop,
                 budgets: tuple[int, ...]) -> list[np.ndarray]:
    """Which of ``unique_hashes`` each round reads: for each budget (rising),
    the rarest hashes whose postings (times their uses in the query) fit
    in it, less those an earlier round read. A round with nothing new is
    left out, so a small library is read whole by the first one. Hashes
    in no segment, or stopped in the sample that estimates their cost,
    are in none."""
    segments = [seg for seg in segments if len(seg)]
    if not segments:
        return []
    announce_directories(segments)  # read while the counts are
    uses = np.bincount(inverse, minlength=unique_hashes.size)
    if counts is not None:
        # The index keeps how many postings each hash value has,
        # so only the hashes that fit in the budget are looked up.
        counts_map.prefetch(unique_hashes, unique_hashes + 1)
        cost = counts[unique_hashes].astype(np.int64) * uses
        known = cost > 0  # in no segment: nothing to look up
    else:
        cost = sampled_cost(segments, unique_hashes, uses, stop)
        known = cost >= 0
    order = np.argsort(cost, kind="stable")
    running = np.cumsum(np.maximum(cost[order], 0))
    spent = np.empty_like(running)  # the postings read up to and with each hash
    spent[order] = running
    read = np.zeros(unique_hashes.size, bool)
    waves = []
    for budget in budgets:
        wanted = known & (spent <= budget) & ~read
        if wanted.any():
            waves.append(wanted)
            read |= wanted
    return waves


def announce_directories(segments: list[Segment]) -> None:
    """Ask the kernel to read every segment's prefix directory: the first
    wave of a lookup's pages, announced once however many rounds read
    postings after it."""
    for seg in segments:
        if len(seg):
            seg.prefetch_directory()


def postings(segments: list[Segment], unique_hashes, inverse, stop, wanted=None):
    """Per segment with hits: (segment, first posting of each unique
    hash, postings per query entry, total), for the hashes ``wanted``
    (default: all). Hashes with more than ``stop`` postings (silence,
    steady tones) count as no hit. The caller has announced the
    segments' directories (:func:`announce_directories`)."""
    segments = [seg for seg in segments if len(seg)]
    # Every page the lookup needs is announced before it is read, in
    # waves (directories, hash runs, postings): read from disk, each
    # wave costs about one disk wait instead of one per page.
    if wanted is None:
        wanted = np.ones(unique_hashes.size, bool)
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
    uq, inv = inverse(q.hashes)
    stop = stop_postings(segments)
    announce_directories(segments)
    slots, times, entries = [], [], []
    for seg, lo, c, n in postings(segments, uq, inv, stop):
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
