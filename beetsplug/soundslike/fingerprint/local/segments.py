"""Segments of the local index: immutable, memory-mapped runs of sorted
speed-invariant keys with their postings (the ``hashes`` array of a
segment holds keys), and the forward copy that verification reads.

A segment holds at most 131,072 items (17-bit local number; 16,384 in
segments written before format 6, with 18-bit frames). Format 5 and 6
store about 6.2 bytes per landmark:

* the inverted index: of each sorted key only the bits below the
  directory's prefix (one byte: the directory already says which prefix
  a run of keys has), and a 4-byte posting (local item, frame);
* the forward copy: each item's *peaks*, not its landmarks (a track has
  about a fifth as many): the frame's low 16 bits and the bin with its
  sub-bin code (4 bytes, packed). Reading an item pairs its peaks again
  (:func:`..landmarks.pair_peaks`), which gives its landmark words to the
  bit. Frames in an item's run only grow, so the high bits come back by
  counting where the low bits wrap; a segment holding a run that cannot
  be read back that way (a first peak after 34 minutes, or 34 minutes
  without one) keeps 4-byte frames.

Format 4 segments (the forward copy of landmark words, 6 or 8 bytes a
landmark: 11 bytes a landmark in all) and format 3 segments (full 4-byte
keys, frame << 32 | word in 8 bytes: 16 bytes a landmark) are read as
they are until a write rewrites them (one a write, or in a merge); the
rewrite takes their peaks from their landmark words
(:func:`..landmarks.peaks_of`).

The directory (memory-mapped like the rest) narrows each search to the
keys that share the searched key's top bits: 16 bits (256 KiB) for up to
16 million landmarks, more for larger segments, so that a run holds
about 256 keys at any size. At 10,000 tracks it cut a clip's posting
lookups from 16 ms to 9 ms. Format 3 segments written without the
directory are searched whole.
"""

from __future__ import annotations

import os

import numpy as np

from ..match import FingerprintError
from ..landmarks import pack_peaks, pair_peak_runs, pair_peaks, peaks_of, unpack_peaks
from ..params import DT_MAX, FINE_BITS, HASH_BITS, LEGACY_POST_TIME_BITS, MAX_FRAMES, POST_TIME_BITS
from .mapping import map_npy

#: A forward entry: one peak, the low 16 bits of its frame and its bin
#: and sub-bin code (the peak's low PEAK_BITS; 4 bytes, packed) ...
PEAKS_NARROW = np.dtype([("frame", "<u2"), ("peak", "<u2")])
#: ... or, in a segment with a run whose frames cannot be unwrapped, the
#: whole frame.
PEAKS_WIDE = np.dtype([("frame", "<u4"), ("peak", "<u2")])
#: A format 4 forward entry: the landmark word and the low 16 bits of
#: its frame (6 bytes, packed), or the whole frame.
FWD_NARROW = np.dtype([("word", "<u4"), ("frame", "<u2")])
FWD_WIDE = np.dtype([("word", "<u4"), ("frame", "<u4")])
#: Frame differences a narrow forward copy can carry (and first frames).
NARROW_SPAN = 1 << 16


def narrow_frames_fit(frames: np.ndarray, run_starts: np.ndarray) -> bool:
    """Whether the time-ordered ``frames`` of the runs starting at
    ``run_starts`` (offsets into ``frames``, the first one 0) can be
    stored as their low 16 bits: every first frame and every step within
    a run is under :data:`NARROW_SPAN`."""
    if frames.size == 0:
        return True
    step = np.diff(frames.astype(np.int64), prepend=0)
    starts = run_starts[run_starts < frames.size]
    step[starts] = frames[starts]
    return bool(step.max() < NARROW_SPAN)


def unwrap_frames(low: np.ndarray, run_starts: np.ndarray) -> np.ndarray:
    """Full frames (uint32) from their low 16 bits, runs starting at
    ``run_starts`` (offsets into ``low``, the first one 0): within a run,
    each place where the low bits fall is one more wrap."""
    low = np.asarray(low, np.int64)
    if low.size == 0:
        return np.zeros(0, np.uint32)
    wrap = np.zeros(low.size, np.int64)
    wrap[1:] = low[1:] < low[:-1]
    starts = run_starts[run_starts < low.size]
    wrap[starts] = 0
    total = np.cumsum(wrap)
    # Each run counts its own wraps: subtract the count at its start.
    run_of = np.searchsorted(starts, np.arange(low.size), side="right") - 1
    total -= total[starts][run_of]
    return (low + (total << 16)).astype(np.uint32)


class Segment:
    """One immutable segment, memory-mapped."""

    def __init__(self, directory: str, seq: int, time_bits: int = POST_TIME_BITS):
        self.seq = seq
        self.time_bits = np.uint32(time_bits)
        self.frame_mask = np.uint32((1 << time_bits) - 1)
        base = os.path.join(directory, f"seg-{seq:08d}")
        self.hashes, self._hash_map = map_npy(base + ".hash.npy")
        self.posts, self._post_map = map_npy(base + ".post.npy")
        self.fwd, self._fwd_map = map_npy(base + ".fwd.npy")
        try:
            self.prefix_starts, self._dir_map = map_npy(base + ".dir.npy")
        except FileNotFoundError:
            self.prefix_starts, self._dir_map = None, None
        #: Whether ``hashes`` holds only the key bits below the prefix
        #: (format 4) rather than whole keys (format 3).
        self.suffixes = self.hashes.dtype == np.uint8
        if self.prefix_starts is not None:
            bits = int(self.prefix_starts.size - 1).bit_length() - 1
            if (self.prefix_starts.size != (1 << bits) + 1 or not 0 < bits <= HASH_BITS
                    or int(self.prefix_starts[-1]) != self.hashes.size):
                raise FingerprintError(f"segment {seq} has a malformed directory")
            #: Hash bits below the directory's prefix.
            self.dir_shift = HASH_BITS - bits
        if self.suffixes and (self.prefix_starts is None or self.dir_shift > 8):
            raise FingerprintError(f"segment {seq} has key suffixes without a directory for them")
        #: Whether the forward copy holds peaks (format 5) rather than
        #: landmark words (formats 3 and 4).
        self.holds_peaks = self.fwd.dtype in (PEAKS_NARROW, PEAKS_WIDE)
        if not self.holds_peaks and self.fwd.dtype not in (np.dtype(np.uint64), FWD_NARROW, FWD_WIDE):
            raise FingerprintError(f"segment {seq} has a forward copy of unknown layout")
        table = np.load(base + ".items.npy")
        if (table.ndim != 2 or table.shape[1] != (4 if self.holds_peaks else 3)
                or self.hashes.shape != self.posts.shape):
            raise FingerprintError(f"segment {seq} is malformed")
        self.item_ids = table[:, 0].copy()
        self.item_hashes = table[:, 1].copy()
        self.item_frames = table[:, 2].copy()
        # Start of each local item's run in the forward copy.
        per_item = table[:, 3] if self.holds_peaks else self.item_hashes
        self.item_start = np.concatenate([[0], np.cumsum(per_item)]).astype(np.int64)
        if self.item_start[-1] != self.fwd.size or self.item_hashes.sum() != self.hashes.size:
            raise FingerprintError(f"segment {seq} is malformed")
        self.alive = np.ones(len(self.item_ids), bool)

    def __len__(self) -> int:
        return int(self.hashes.size)

    def prefetch_directory(self) -> None:
        """Ask the kernel to read the prefix directory (256 KiB to 4 MiB) in the background."""
        if self._dir_map is not None:
            self._dir_map.prefetch(np.zeros(1, np.int64), np.full(1, self.prefix_starts.size, np.int64))

    def prefetch_buckets(self, keys: np.ndarray) -> None:
        """Ask the kernel to read the runs of sorted hashes that a search
        for ``keys`` will probe (their prefix runs), all at once."""
        if self.prefix_starts is None or keys.size == 0:
            return
        prefix = np.minimum(keys.astype(np.int64) >> self.dir_shift, self.prefix_starts.size - 2)
        lo = self.prefix_starts[prefix].astype(np.int64)
        hi = self.prefix_starts[np.minimum(prefix + 2, self.prefix_starts.size - 1)].astype(np.int64)
        self._hash_map.prefetch(lo, hi)

    def prefetch_postings(self, lo: np.ndarray, count: np.ndarray) -> None:
        """Ask the kernel to read the posting runs ``[lo, lo + count)``."""
        some = count > 0
        self._post_map.prefetch(lo[some], lo[some] + count[some])

    def prefetch_forward(self, local: int) -> None:
        """Ask the kernel to read one item's run of the forward copy."""
        self._fwd_map.prefetch(self.item_start[local:local + 1], self.item_start[local + 1:local + 2])

    def ranges(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First posting and number of postings of each (sorted, unique)
        hash in ``keys``."""
        if self.prefix_starts is None:
            lo = np.searchsorted(self.hashes, keys, side="left")
            return lo, np.searchsorted(self.hashes, keys, side="right") - lo
        # Both bounds in one vectorised binary search: the first entry >=
        # key and the first entry >= key + 1, each inside its prefix run
        # (where every entry has the key's prefix, so comparing the bits
        # below it is enough).
        k = np.concatenate([keys, keys + 1]).astype(np.int64)
        prefix = np.minimum(k >> self.dir_shift, self.prefix_starts.size - 2)
        lo = self.prefix_starts[prefix].astype(np.int64)
        hi = self.prefix_starts[prefix + 1].astype(np.int64)
        lo = np.where(k >> self.dir_shift > prefix, hi, lo)  # past the last prefix
        if self.suffixes:
            k = k & ((1 << self.dir_shift) - 1)
        hashes = self.hashes
        last = hashes.size - 1
        found = lo  # each bound's answer, by its place in ``k``
        place = None  # the places of the bounds still searched (None: all)
        while True:
            open_ = lo < hi
            n_open = int(np.count_nonzero(open_))
            if n_open == 0:
                break
            if 2 * n_open < lo.size:
                # Most runs are short and their searches over: the rest
                # (the runs of common keys) go on alone.
                keep = np.flatnonzero(open_)
                if place is None:
                    found, place = lo.copy(), keep
                else:
                    found[place] = lo
                    place = place[keep]
                lo, hi, k = lo[keep], hi[keep], k[keep]
                continue
            mid = (lo + hi) >> 1
            below = hashes[np.minimum(mid, last)].astype(np.int64) < k
            lo = np.where(open_ & below, mid + 1, lo)
            hi = np.where(open_ & ~below, mid, hi)
        if place is not None:
            found[place] = lo
            lo = found
        n = keys.size
        return lo[:n], lo[n:] - lo[:n]

    def position(self, key: int) -> int:
        """Index of the first entry whose key is at least ``key`` (0 to 2**HASH_BITS)."""
        if not self.suffixes:
            return int(np.searchsorted(self.hashes, np.uint32(key)))
        prefix = key >> self.dir_shift
        if prefix >= self.prefix_starts.size - 1:
            return int(self.hashes.size)
        a, b = int(self.prefix_starts[prefix]), int(self.prefix_starts[prefix + 1])
        low = np.uint8(key & ((1 << self.dir_shift) - 1))
        return a + int(np.searchsorted(self.hashes[a:b], low))

    def keys(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """The whole keys (uint32) of entries ``[lo, hi)`` of the inverted index."""
        hi = len(self) if hi is None else hi
        if not self.suffixes:
            return np.asarray(self.hashes[lo:hi], np.uint32)
        prefix = np.searchsorted(self.prefix_starts, np.arange(lo, hi), side="right") - 1
        return ((prefix.astype(np.uint32) << np.uint32(self.dir_shift))
                | self.hashes[lo:hi].astype(np.uint32))

    def forward(self, local: int) -> tuple[np.ndarray, np.ndarray]:
        """Landmark words and frames (uint32, time order) of one item of
        the segment: one contiguous read of the forward copy."""
        return self.forward_runs(local, local + 1)

    def forward_runs(self, first: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Landmark words and frames (uint32) of local items ``[first,
        stop)``, their runs one after another, each in time order (ties
        by word)."""
        if not self.holds_peaks:
            return self._landmark_runs(first, stop)
        peaks, starts = self.peak_runs(first, stop)
        runs = [time_ordered(*pair_peaks(run)) for run in np.split(peaks, starts[1:])]
        return joined(runs)

    def peaks_within(self, local: int, spans: np.ndarray) -> np.ndarray:
        """The packed peaks of item ``local`` from each span's start to
        DT_MAX frames past its end: every peak the landmarks anchored in
        ``spans`` pair (format 5)."""
        peaks, _ = self.peak_runs(local, local + 1)
        return peaks[within(unpack_peaks(peaks)[0], spans[:, 0], spans[:, 1] + DT_MAX)]

    def peak_runs(self, first: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """The packed peaks (:func:`..landmarks.pack_peaks`, int64) of local
        items ``[first, stop)``, their runs one after another, and where
        each run starts. Segments that hold landmark words give the
        peaks those pair (:func:`..landmarks.peaks_of`)."""
        a, z = int(self.item_start[first]), int(self.item_start[stop])
        if not self.holds_peaks:
            words, frames = self._landmark_runs(first, stop)
            ends = self.item_start[first + 1:stop + 1] - a
            runs = [peaks_of(words[i:j], frames[i:j]) for i, j in zip(np.r_[0, ends[:-1]], ends)]
            starts = np.concatenate([[0], np.cumsum([r.size for r in runs])[:-1]]).astype(np.int64)
            return (np.concatenate(runs) if runs else np.zeros(0, np.int64)), starts
        run = np.asarray(self.fwd[a:z])
        starts = self.item_start[first:stop] - a
        frames = run["frame"] if self.fwd.dtype == PEAKS_WIDE else unwrap_frames(run["frame"], starts)
        peak = run["peak"].astype(np.int64)
        return pack_peaks(frames, peak >> FINE_BITS, peak), starts

    def _landmark_runs(self, first: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Landmark words and frames of a format 3 or 4 forward copy."""
        a, z = int(self.item_start[first]), int(self.item_start[stop])
        run = np.asarray(self.fwd[a:z])
        if self.fwd.dtype == np.uint64:  # format 3
            return ((run & np.uint64(0xFFFFFFFF)).astype(np.uint32),
                    ((run >> np.uint64(32)) & np.uint64(MAX_FRAMES - 1)).astype(np.uint32))
        words = run["word"].astype(np.uint32)
        if self.fwd.dtype == FWD_WIDE:
            return words, run["frame"].astype(np.uint32)
        return words, unwrap_frames(run["frame"], self.item_start[first:stop] - a)


def forward_within(wanted: list) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each (segment, local item, spans) of ``wanted``: the item's
    landmarks (words, frames) whose anchor frames lie in ``spans``
    ((start, stop) rows, sorted, apart), in the forward copy's order,
    pairing only the peaks they need. A pair's target lies at most DT_MAX
    frames after its anchor, so an anchor in a span meets among the peaks
    from the span's start to DT_MAX frames past its end every peak it
    meets in the whole track, in the same order, and pairs exactly as
    there. Every item's spans are paired in one call
    (:func:`..landmarks.pair_peak_runs`); pairs whose anchor lies outside
    every span (the peaks past a span's end) are dropped."""
    out: list = [None] * len(wanted)
    held = [k for k, (seg, _, _) in enumerate(wanted) if seg.holds_peaks]
    paired = iter(pair_peak_runs([wanted[k][0].peaks_within(*wanted[k][1:]) for k in held]))
    for k, (seg, local, spans) in enumerate(wanted):
        if seg.holds_peaks:
            words, frames = next(paired)
        else:
            words, frames = seg.forward(local)
        inside = within(frames, spans[:, 0], spans[:, 1])
        words, frames = words[inside], frames[inside]
        out[k] = time_ordered(words, frames) if seg.holds_peaks else (words, frames)
    return out


def within(values: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Which of the sorted ``values`` lie in any of the ranges
    ``[starts, stops)`` (sorted by start; they may overlap)."""
    opened = np.searchsorted(values, starts, side="left")
    closed = np.searchsorted(values, stops, side="left")
    depth = np.zeros(values.size + 1, np.int64)
    np.add.at(depth, opened, 1)
    np.add.at(depth, closed, -1)
    return np.cumsum(depth[:-1]) > 0


def time_ordered(words: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks in the forward copy's order: frame, then word. Pairs come
    in anchor order (frame, then bin): one key sorts both (no two pairs of
    a track share frame and word, so any sort gives the same order; a
    stable one runs in the frames' order already there, twice as fast)."""
    key = np.sort((frames.astype(np.uint64) << np.uint64(32)) | words, kind="stable")
    return (key & np.uint64(0xFFFFFFFF)).astype(np.uint32), (key >> np.uint64(32)).astype(np.uint32)


def joined(runs: list) -> tuple[np.ndarray, np.ndarray]:
    """(words, frames) runs one after another."""
    if not runs:
        return np.zeros(0, np.uint32), np.zeros(0, np.uint32)
    return np.concatenate([w for w, _ in runs]), np.concatenate([f for _, f in runs])


def open_segment(directory: str, manifest: dict, seq: int) -> Segment:
    """Segment ``seq`` of the index in ``directory`` as ``manifest`` lists
    it, with the posting layout the manifest names for it."""
    bits = manifest.get("post_bits", {}).get(str(seq))
    if bits not in (POST_TIME_BITS, LEGACY_POST_TIME_BITS):
        raise FingerprintError(f"segment {seq} has no known posting layout ({bits})")
    return Segment(directory, seq, bits)
