"""Array helpers the fingerprint stages share."""

from __future__ import annotations

import numpy as np


#: The multiplier of multiplicative hashing: 2**64 over the golden ratio.
GOLDEN = 0x9E3779B97F4A7C15


def multiplicative_hash(words: np.ndarray, bits: int, multiplier: int = GOLDEN) -> np.ndarray:
    """The top ``bits`` bits of each 64-bit word (uint64) times
    ``multiplier``, as uint64: they mix every bit of the word, so values
    that differ in any bits spread evenly over ``2**bits``."""
    return (words * np.uint64(multiplier)) >> np.uint64(64 - bits)


def distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values of an array, sorted: what ``np.unique``
    returns. By sorting: numpy 2.4's ``np.unique`` finds them with a hash
    table when nothing else is asked for, which is 15-30 times slower on
    the 10^4-10^6 keys of a search than a sort (measured on this project's
    2-core machine)."""
    values = np.sort(np.ravel(values))
    return values[run_starts(values)]


def counted(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of an array, sorted, and how often each occurs:
    ``np.unique(values, return_counts=True)``, by one sort."""
    distinct_values, _, counts = runs(np.sort(np.ravel(values)))
    return distinct_values, counts


def stable_order(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.argsort(values, kind="stable")`` of values below 2**32 (keys,
    hashes), and the values in that order: one sort of 64-bit words, each
    a value above its position, which no two share (numpy sorts those
    with SIMD, a third faster than a stable argsort of 10^4-10^5 keys).
    Values already in order (a clip's keys) are taken as they are."""
    values = np.ravel(values)
    if values.size < 2 or bool(np.all(values[1:] >= values[:-1])):
        return np.arange(values.size, dtype=np.int64), values
    word = np.sort((values.astype(np.uint64) << np.uint64(32))
                   | np.arange(values.size, dtype=np.uint64))
    order = (word & np.uint64(0xFFFFFFFF)).astype(np.int64)
    return order, (word >> np.uint64(32)).astype(values.dtype)


def inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` of values below 2**32:
    the distinct values, sorted, and where each entry's value is among
    them (:func:`stable_order`)."""
    order, ordered = stable_order(values)
    starts = run_starts(ordered)
    where = np.empty(order.size, np.int64)
    where[order] = np.cumsum(starts) - 1
    return ordered[starts], where


def runs(ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct values of ``ordered`` (sorted), where each one's run
    starts and its length: ``np.unique(ordered, return_index=True,
    return_counts=True)`` without sorting again."""
    starts = np.flatnonzero(run_starts(ordered))
    return ordered[starts], starts, np.diff(np.append(starts, ordered.size))


def best_per_group(group: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Index of the entry with the highest ``score`` in each ``group``
    (the first of equals), in order of group: a candidate's best cell."""
    order = np.lexsort((-score, group))
    return order[run_starts(group[order])]


def run_starts(ordered: np.ndarray) -> np.ndarray:
    """Which entries of ``ordered`` (equal values next to each other) start
    a run of equal values."""
    starts = np.empty(ordered.size, bool)
    if ordered.size:
        starts[0] = True
        np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    return starts


def merged(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """The ranges ``[starts, stops)`` as (start, stop) rows, sorted, those
    that overlap or touch joined into one."""
    order = np.argsort(starts, kind="stable")
    starts, stops = np.asarray(starts)[order], np.asarray(stops)[order]
    if starts.size == 0:
        return np.zeros((0, 2), np.int64)
    # A range opens a new row where it begins after every earlier one ends.
    new = np.r_[True, starts[1:] > np.maximum.accumulate(stops)[:-1]]
    return np.stack([starts[new], np.maximum.reduceat(stops, np.flatnonzero(new))], axis=1)
