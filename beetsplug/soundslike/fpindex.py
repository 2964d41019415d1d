"""Persistent landmark index and the clip matcher behind ``beet identify``.

Storage layout
--------------
The index is a directory::

    MANIFEST.json            which files make up the current state
    LOCK                     advisory fcntl lock, held by a writer
    seg-00000007.hash.npy    uint32 landmark hashes, sorted
    seg-00000007.post.npy    uint32 postings, same order: local item << 18 | frame (wrapped)
    seg-00000007.items.npy   int64 (n, 3): item id, hashes, frames per local item
    seg-00000007.fwd.npy     uint64 forward copy: frame << 32 | hash, each item's
                             landmarks one time-ordered run, items in local order
    seg-00000007.dir.npy     uint32 directory: where each run of hashes sharing their
                             top 16 to 23 bits starts in the sorted hashes (optional)
    tomb-00000009.npy        int64 (k, 2): item id, first live segment number
    counts-00000009.npy      uint16 postings per hash value in all segments
                             (saturating), for the candidate search's budget

Segments are immutable. Adding tracks buffers them in memory; :meth:`flush`
writes them as one new segment. A segment holds at most 16,384 items
(14-bit local number); 16 bytes per landmark (8 in the inverted index, 8
in the forward copy that verification reads). Format 2 segments (4,096
items, 20-bit frames in the postings, the local item in the forward copy's
top bits) are read as they are and rewritten by the next merge, so an
upgrade needs no rescan.
An item's copy in segment ``n`` is live unless a tombstone says the item's
first live segment is later than ``n``: replacing an item writes it into a
new segment plus a tombstone pointing there, removing it writes a tombstone
past every segment. Lookups memory-map the sorted hash arrays and binary
search them, so memory stays bounded at 100k tracks and opening an index
reads only the small manifest and the item tables. The directory
(memory-mapped like the rest) narrows each search to the hashes that
share the key's top bits: 16 bits (256 KiB) for up to 16 million
landmarks, more for larger segments, so that a run holds about 256
hashes (1 KiB) at any size. At 10,000 tracks it cut a clip's posting
lookups from 16 ms to 9 ms. Segments written before the directory existed
are searched whole. When the index is not in the page cache (larger than
RAM, or pushed out by other work), a search announces the pages it will
read before reading them (``madvise(MADV_WILLNEED)``), so the disk serves
them in parallel rather than one page fault at a time: at 10,000 tracks a
cold search of a clean clip fell from 1.5-2.5 s to 0.2 s.

Crash safety: every file is written under a temporary name, fsynced and
renamed to a name never used before; the new state becomes visible only
when ``MANIFEST.json`` is atomically replaced (``os.replace``) and the
directory fsynced. A crash at any moment leaves the old manifest and old
files (plus orphans that the next writer deletes) or the new ones. Writers
take an exclusive ``fcntl.flock`` on ``LOCK`` and re-read the manifest under
it, so two processes adding tracks never lose each other's work. Readers
keep the snapshot they opened; files that a compaction deletes stay
readable through open memory maps.

When there are too many small segments, segments of similar size are merged
(tiered, like an LSM tree): merging also drops dead copies and tombstones
that no longer hide anything.

Matching
--------
Two stages, so that the cost of a query grows slowly with the library:

1. Candidates: the clip's hashes for a single frame shift (speed 1.0
   first) are looked up in the inverted index, rarest first until
   :data:`CANDIDATE_POSTINGS` postings are read; every hit votes for
   (item, speed, coarse offset cell) and the :data:`CANDIDATES` items with
   the most votes in one cell go on. The cost is bounded whatever the
   library size.
2. Verification: the dense query (every frame shift and speed) is matched
   against the candidates' own landmarks, read as one contiguous run each
   from the forward copy, not against the index; its cost does not depend
   on the library size.

The two stages are :class:`LandmarkMatcher`, shared with the Qdrant-server
backend (:mod:`fpserver`), which finds candidates with a sparse-vector
search instead.

:func:`fingerprint.query_landmarks` gives the clip's hashes for each speed
hypothesis. Every hit of a query hash on a posting votes for (item, speed,
offset = reference frame - clip frame * speed). A true match piles its votes
into one offset (within a frame); chance hits scatter over every item,
offset and speed. Votes are counted in two passes: an approximate count
of coarse offset cells in a count-min sketch throws away the hits that
cannot reach a meaningful score, then the survivors are counted
exactly with +-1 frame tolerance. Hashes with very many postings (silence,
steady tones) carry no information and are skipped.

Speed 1.0 is searched first (verified with its neighbours); the remaining
speeds are searched only when that gives no confident answer, so unaltered
clips pay for one speed and altered ones for the grid. The wide search's
winner is judged against the stronger runner-up of both searches: two
looks at chance must not make chance look confident.

Verification and confidence: each candidate's votes are recounted as
distinct clip anchors (a clip peak hit through several pairs or several
frame shifts counts once); one with fewer than :data:`MIN_SCORE` cannot be
the answer. Votes place a candidate; its score is the number of its
reference peaks over the clip's span that the clip has too (peaks survive
noise about twice as often as pairs of peaks). The speed is refined by
fitting reference time against clip time over the matched landmarks. The
best score is then compared with what chance gives *for this query*: the
best candidate of an unrelated item (one that does not share the winner's
matched hashes). That runner-up reflects how many peaks the clip has and
how much the music resembles the library. Confidence is a logistic function
of the excess in Poisson units; ``identify`` answers ``None`` below
:data:`MIN_CONFIDENCE`. A runner-up that matches through the same clip
hashes is the same recording filed twice, not a rival: the answer is one of
them, not "unknown". Offsets where the passage repeats in the winning track
(loops, choruses) come back as ``Match.alternatives``; votes cannot rank
identical passages, :func:`audiocheck.refine_offset` can with the track's
audio.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import mmap
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from . import fingerprint as fp

MANIFEST = "MANIFEST.json"
LOCK = "LOCK"
FORMAT_VERSION = 3
#: Older formats this version reads (and upgrades as it writes).
READABLE_FORMATS = (2, 3)

#: Bits of the frame in a posting (local item << POST_TIME_BITS | frame).
#: The candidate search needs the frame only to find offset-consistent
#: votes, so frames wrap after 2**18 (2.3 hours; a clip across the wrap of
#: a longer track splits its votes); verification reads full frames from
#: the forward copy. Format 2 segments have 20 bits (and 4,096 items).
POST_TIME_BITS = 18
#: The frame bits of a current-format posting.
POST_FRAME_MASK = (1 << POST_TIME_BITS) - 1
#: Format 2 segments' frame bits.
LEGACY_POST_TIME_BITS = 20
#: Items per segment: the local item number has 32 - POST_TIME_BITS bits.
#: Large segments keep a 100,000-track library in a handful of segments:
#: a search looks up each hash once per segment.
MAX_SEGMENT_ITEMS = 1 << (32 - POST_TIME_BITS)
#: Postings a merge holds in memory at once: it streams the hash space
#: in slices, so merging 16,384 tracks needs a few hundred MB, not 5 GB.
MERGE_CHUNK_POSTINGS = 2_000_000
#: The low bits of a forward-copy entry: frame << 32 | hash.
_FWD_MASK = (1 << 52) - 1
#: Buffered landmarks that trigger an automatic flush.
AUTO_FLUSH_LANDMARKS = 2_000_000
#: Segments of one size tier that get merged.
MERGE_FANIN = 4
#: Segments that can still grow (under half full) kept at most: at
#: 100,000 tracks, tiers alone left 6 beside 8 full ones.
MAX_SMALL_SEGMENTS = 4

#: Shortest clip that can be identified, in seconds.
MIN_CLIP_SECONDS = 1.0
#: Hashes with more postings than STOP_POSTINGS_FACTOR times the mean per
#: hash value (with a floor for small libraries) are skipped: they match
#: everything, cost most of the lookup time and add only chance votes.
STOP_POSTINGS_FLOOR = 64
STOP_POSTINGS_FACTOR = 8
#: Items that the candidate stage passes on to verification.
CANDIDATES = 16
#: Postings the candidate stage reads per search. Query hashes are taken
#: rarest first until this many postings are spent: in a large library a
#: quarter of a clip's hashes hold most of its postings (common intervals
#: in common registers) and say least about which track it is, so the
#: cost of a search stays flat as the library grows while most of the
#: clip's evidence is still read. A small library is read whole.
CANDIDATE_POSTINGS = 150_000
#: Landmarks of the sample that judges which hashes fit in that budget
#: (the largest segments, at least this many landmarks: ~2,000 tracks).
BUDGET_SAMPLE_LANDMARKS = 40_000_000
#: Frame shifts of the candidate stage.
CANDIDATE_SHIFTS = (0.0,)
#: Clip analysis is capped: a longer clip adds latency, not certainty.
MAX_CLIP_SECONDS = 30.0

#: A match needs at least this many offset-consistent votes.
MIN_SCORE = 5
#: The runner-up's score is taken as at least this share of the reference
#: peaks over the clip's span: what chance reaches when no unrelated
#: candidate is there to show it (a library of a few tracks). The best
#: unrelated candidate of a dev-corpus clip has 0.16 to 0.48 of them
#: (5th to 95th percentile, median 0.29).
RUNNER_UP_SHARE = 0.2
#: Confidence below this is reported as "not in your library".
MIN_CONFIDENCE = 0.5
#: Confidence that ends the search after speed 1.0 and its neighbours.
EARLY_STOP_CONFIDENCE = 0.999
#: Logistic calibration of confidence (see :func:`_confidence`).
CONF_SLOPE = 2.46
CONF_CENTER = 2.64

_SEG_RE = re.compile(r"^seg-(\d{8})\.(hash|post|items|fwd|dir)\.npy$")
#: Files of a segment; the directory ("dir") is optional.
_SEG_FILES = ("hash", "post", "items", "fwd", "dir")
#: Prefix bits of a segment's directory: at least 16, and enough that a
#: prefix run holds about 2**DIR_RUN_BITS hashes (1 KiB, one page read
#: when the index is not in memory) however large the segment.
MIN_DIR_BITS = 16
DIR_RUN_BITS = 8
_TOMB_RE = re.compile(r"^tomb-(\d{8})\.npy$")
_COUNTS_RE = re.compile(r"^counts-(\d{8})\.npy$")
#: Postings per hash value in the whole index are kept up to this (uint16).
COUNT_SATURATED = (1 << 16) - 1


class FingerprintError(Exception):
    """The index cannot be used (corrupt, or built by an incompatible version)."""


class IndexVersionError(FingerprintError):
    """The index was written with another format or fingerprint version."""


class ClipTooShort(ValueError):
    """The clip is too short to be identified."""


@dataclass
class Candidate:
    """A place in a library track that a clip may come from."""

    item_id: int
    #: Seconds into the track where the clip would start.
    offset: float
    #: Clip speed relative to the track (a grid value of ``fp.SPEEDS``).
    speed: float
    #: Reference peaks over the clip's span that the clip has too.
    score: int
    #: Offset-consistent landmark votes (distinct clip anchors).
    votes: int


@dataclass
class Match:
    """A library recording that a clip comes from."""

    item_id: int
    #: Seconds into the library track where the clip starts.
    offset: float
    #: Estimated share of answers like this one that are right (0..1).
    confidence: float
    #: Clip speed relative to the library track (1.02: clip plays 2 % fast).
    speed: float
    #: Reference peaks over the clip's span that the clip has too: the
    #: evidence ``confidence`` weighs.
    score: int
    #: Offset-consistent landmark votes (distinct clip anchors).
    votes: int = 0
    #: Other offsets (seconds) in the same track that match almost as well:
    #: the passage repeats there (loops, choruses). A caller holding the
    #: track's audio can pick among ``[offset] + alternatives`` with
    #: :func:`audiocheck.refine_offset`.
    alternatives: list = field(default_factory=list)
    #: Score of the best unrelated candidate: what chance gives for this
    #: clip, the yardstick of ``confidence``.
    runner_up: int = 0
    #: The best place in each candidate track, this answer's first, then
    #: by ``score``: what a second look at the tracks' own audio
    #: (:mod:`audiocheck`) compares when the landmarks are not conclusive.
    candidates: list = field(default_factory=list)


class _Segment:
    """One immutable segment, memory-mapped."""

    def __init__(self, directory: str, seq: int, time_bits: int = POST_TIME_BITS):
        self.seq = seq
        self.time_bits = np.uint32(time_bits)
        self.frame_mask = np.uint32((1 << time_bits) - 1)
        base = os.path.join(directory, f"seg-{seq:08d}")
        self.hashes, self._hash_map = _map_npy(base + ".hash.npy")
        self.posts, self._post_map = _map_npy(base + ".post.npy")
        self.fwd, self._fwd_map = _map_npy(base + ".fwd.npy")
        try:
            self.prefix_starts, self._dir_map = _map_npy(base + ".dir.npy")
        except FileNotFoundError:
            self.prefix_starts, self._dir_map = None, None
        if self.prefix_starts is not None:
            bits = int(self.prefix_starts.size - 1).bit_length() - 1
            if (self.prefix_starts.size != (1 << bits) + 1 or not 0 < bits <= fp.HASH_BITS
                    or int(self.prefix_starts[-1]) != self.hashes.size):
                raise FingerprintError(f"segment {seq} has a malformed directory")
            #: Hash bits below the directory's prefix.
            self.dir_shift = fp.HASH_BITS - bits
        table = np.load(base + ".items.npy")
        if (table.ndim != 2 or table.shape[1] != 3 or self.hashes.shape != self.posts.shape
                or self.fwd.shape != self.hashes.shape):
            raise FingerprintError(f"segment {seq} is malformed")
        self.item_ids = table[:, 0].copy()
        self.item_hashes = table[:, 1].copy()
        self.item_frames = table[:, 2].copy()
        # Start of each local item's run in the forward copy.
        self.item_start = np.concatenate([[0], np.cumsum(self.item_hashes)]).astype(np.int64)
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
        prefix = np.unique(np.minimum(keys.astype(np.int64) >> self.dir_shift, self.prefix_starts.size - 2))
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
        # key and the first entry >= key + 1, each inside its prefix run.
        k = np.concatenate([keys, keys + 1]).astype(np.int64)
        prefix = np.minimum(k >> self.dir_shift, self.prefix_starts.size - 2)
        lo = self.prefix_starts[prefix].astype(np.int64)
        hi = self.prefix_starts[prefix + 1].astype(np.int64)
        lo = np.where(k >> self.dir_shift > prefix, hi, lo)  # past the last prefix
        hashes = self.hashes
        last = hashes.size - 1
        while True:
            open_ = lo < hi
            if not open_.any():
                break
            mid = (lo + hi) >> 1
            below = hashes[np.minimum(mid, last)].astype(np.int64) < k
            lo = np.where(open_ & below, mid + 1, lo)
            hi = np.where(open_ & ~below, mid, hi)
        n = keys.size
        return lo[:n], lo[n:] - lo[:n]


def _load_mincore():
    """libc's ``mincore`` (which pages of a mapping are in memory), or None."""
    try:
        func = ctypes.CDLL(None, use_errno=True).mincore
    except (OSError, AttributeError):
        return None
    func.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    func.restype = ctypes.c_int
    return func


_mincore = _load_mincore()


class _MappedFile:
    """A read-only memory map of one ``.npy`` file that can ask the kernel
    to read ranges of its array ahead (``madvise(MADV_WILLNEED)``).

    A search touches thousands of scattered pages of an index that may not
    be in the page cache (a library larger than RAM, or other work pushed
    it out): faulted one by one, each waits for the disk in turn. Announced
    together first, they are read in parallel. When a sample of the pages
    is in memory already, the announcement is skipped: it would cost a
    system call per range (a fifth of a search's time at 10,000 tracks)
    and save nothing.
    """

    #: Ranges closer than this (bytes) are read as one.
    GAP = 16 * 1024
    #: Ranges sampled to tell whether they are in memory already; all
    #: must be. With 8, a partly cached 100,000-track index (pages that
    #: earlier searches read) passed the sample now and then and the
    #: search faulted the rest in one by one: 10 s. With 32, a skip needs
    #: nearly every page cached, and what is missed costs milliseconds.
    PROBES = 32

    def __init__(self, mm: mmap.mmap, data_offset: int, itemsize: int):
        self._mm = mm
        self._offset = data_offset
        self._itemsize = itemsize
        self._address = np.frombuffer(mm, np.uint8).ctypes.data if len(mm) else 0

    def _in_memory(self, starts: np.ndarray) -> bool:
        """Whether the first page of each of a sample of ``starts`` (byte
        offsets, page-aligned) is in memory."""
        if _mincore is None or starts.size < 2 * self.PROBES:
            return False
        resident = ctypes.create_string_buffer(1)
        for start in starts[np.linspace(0, starts.size - 1, self.PROBES).astype(np.int64)].tolist():
            if _mincore(self._address + start, mmap.PAGESIZE, resident) != 0 or not resident.raw[0] & 1:
                return False
        return True

    def prefetch(self, start: np.ndarray, stop: np.ndarray) -> None:
        """Read ahead elements ``[start[i], stop[i])`` (any order)."""
        if start.size == 0 or not hasattr(self._mm, "madvise"):
            return
        order = np.argsort(start, kind="stable")
        a = start[order].astype(np.int64) * self._itemsize + self._offset
        b = stop[order].astype(np.int64) * self._itemsize + self._offset
        b = np.maximum.accumulate(b)
        # Coalesce: a new range starts where the gap to the previous end is large.
        new = np.r_[True, a[1:] > b[:-1] + self.GAP]
        first = np.flatnonzero(new)
        a = a[first] // mmap.PAGESIZE * mmap.PAGESIZE
        b = np.r_[b[first[1:] - 1], b[-1]]
        size = len(self._mm)
        inside = a < size
        a, b = a[inside], b[inside]
        if self._in_memory(a):
            return
        for lo, hi in zip(a.tolist(), np.minimum(b, size).tolist()):
            if hi > lo:
                try:
                    self._mm.madvise(mmap.MADV_WILLNEED, lo, hi - lo)
                except (OSError, ValueError):
                    return


def _map_npy(path: str) -> tuple[np.ndarray, _MappedFile]:
    """Memory-map a ``.npy`` file read-only: the array (a plain ndarray: the
    memmap subclass adds a Python-level cost to every one of the thousands
    of small reads a search makes) and its :class:`_MappedFile`."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise FingerprintError(f"{path}: unsupported .npy version {version}")
        offset = f.tell()
        size = os.fstat(f.fileno()).st_size
        if fortran or dtype.hasobject:
            raise FingerprintError(f"{path}: not a plain array")
        count = int(np.prod(shape, dtype=np.int64))
        if offset + count * dtype.itemsize > size:
            raise FingerprintError(f"{path}: truncated")
        if count == 0:  # nothing to map (and mmap refuses an empty range)
            empty = np.zeros(shape, dtype)
            empty.flags.writeable = False
            return empty, _MappedFile(b"", offset, dtype.itemsize)
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    array = np.frombuffer(mm, dtype, count, offset).reshape(shape)
    return array, _MappedFile(mm, offset, dtype.itemsize)


def _hash_directory(hashes: np.ndarray) -> np.ndarray:
    """Start of each prefix run in sorted ``hashes`` (and the end), for
    :meth:`_Segment.ranges`; the prefix length grows with the segment
    (:data:`MIN_DIR_BITS`, :data:`DIR_RUN_BITS`)."""
    bits = min(fp.HASH_BITS, max(MIN_DIR_BITS, int(hashes.size).bit_length() - DIR_RUN_BITS))
    shift = fp.HASH_BITS - bits
    # Bounds of the hashes' own dtype: numpy would otherwise convert the
    # whole array (2.4 GB for a 16,384-track segment) to compare.
    bounds = (np.arange((1 << bits) + 1, dtype=np.int64) << shift).astype(hashes.dtype)
    return np.searchsorted(hashes, bounds, side="left").astype(np.uint32)


def _posting(local, frames: np.ndarray) -> np.ndarray:
    """Postings of a segment's item ``local`` (scalar or per landmark) at
    ``frames``: local << POST_TIME_BITS | frame (wrapped)."""
    return ((np.asarray(local, np.uint32) << np.uint32(POST_TIME_BITS))
            | (np.asarray(frames, np.uint32) & np.uint32(POST_FRAME_MASK)))


def _add_counts(counts: np.ndarray, hashes: np.ndarray) -> None:
    """Count ``hashes`` into the saturating uint16 ``counts``, in place."""
    if hashes.size:
        total = counts + np.bincount(hashes, minlength=counts.size)
        np.minimum(total, COUNT_SATURATED, out=total)
        counts[:] = total


def _remove_counts(counts: np.ndarray, removed: np.ndarray) -> None:
    """Take ``removed`` postings (per hash value) out of ``counts``, in
    place; a saturated count stays saturated (its true value is unknown)."""
    total = counts.astype(np.int64) - removed
    total = np.where(counts == COUNT_SATURATED, COUNT_SATURATED, np.maximum(total, 0))
    counts[:] = total


def _ids_on_disk(directory: str, segments: list[int]) -> set[int]:
    """Item ids with a copy (live or not) in the given segments."""
    ids = [np.load(os.path.join(directory, f"seg-{seq:08d}.items.npy"))[:, 0] for seq in segments]
    return set(np.concatenate(ids).tolist()) if ids else set()


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(directory: str, name: str, write, suffix: str = "") -> None:
    """Create ``name`` in ``directory`` atomically: ``write(file)`` into a
    temporary file, fsync, rename; on any failure the temporary file goes."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _write_npy_streamed(directory: str, files: dict, fill) -> None:
    """Create ``.npy`` files too large to build in memory: ``files`` maps
    each name to (key, dtype, length); ``fill(arrays)`` writes the arrays
    (writable memory maps, by key). Atomic like :func:`_write_atomic`:
    temporary files, fsync, rename; on any failure they go."""
    tmps, arrays = {}, {}
    try:
        for name, (key, dtype, length) in files.items():
            fd, tmps[name] = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=directory)
            os.close(fd)
            if length:
                arrays[key] = np.lib.format.open_memmap(tmps[name], mode="w+", dtype=dtype, shape=(length,))
            else:
                np.save(tmps[name], np.zeros(0, dtype))
                arrays[key] = np.zeros(0, dtype)
        fill(arrays)
        for name, (key, _, _) in files.items():
            if isinstance(arrays[key], np.memmap):
                arrays[key].flush()
            fd = os.open(tmps[name], os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        arrays.clear()
        for name, tmp in tmps.items():
            os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        arrays.clear()
        for tmp in tmps.values():
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise


def _write_npy(directory: str, name: str, array: np.ndarray) -> None:
    """Write ``array`` as ``name`` atomically."""
    _write_atomic(directory, name, lambda f: np.save(f, np.ascontiguousarray(array)), ".npy")


class LandmarkMatcher:
    """The clip search shared by the local index and the Qdrant server
    backend; subclasses say how to find candidate tracks and read their
    landmarks (:meth:`_candidate_runs`)."""

    def identify(self, samples: np.ndarray, sample_rate: int,
                 min_confidence: float = MIN_CONFIDENCE) -> Match | None:
        """The library item a clip comes from, or None when nothing matches
        convincingly (confidence under ``min_confidence``). Raises
        :class:`ClipTooShort` for clips under :data:`MIN_CLIP_SECONDS`."""
        self._check_open()
        samples = np.asarray(samples, np.float32)
        if samples.ndim == 2:
            samples = samples.mean(axis=1)
        seconds = samples.shape[0] / float(sample_rate)
        if seconds < MIN_CLIP_SECONDS:
            raise ClipTooShort(
                f"clip is {seconds:.1f} s long; at least {MIN_CLIP_SECONDS:.0f} s is needed "
                "(5 s or more works best)"
            )
        if seconds > MAX_CLIP_SECONDS:
            samples = samples[: int(MAX_CLIP_SECONDS * sample_rate)]
        if self._is_empty():
            return None
        # Unaltered clips (most) are found from speed 1.0 candidates; the
        # whole speed grid is searched only when that is not conclusive.
        peaks = fp.clip_peaks(samples, sample_rate)
        best = self._search(peaks, fp.SPEEDS[:1], fp.SPEEDS[:3])
        if best is None or best.confidence < EARLY_STOP_CONFIDENCE:
            wide = self._search(peaks, fp.SPEEDS, fp.SPEEDS)
            if wide is not None:
                # Two searches are two looks at chance: the wide one is
                # judged against the stronger of both runner-ups. When
                # they name different tracks, each answer is also a rival
                # of the other.
                chance = max(wide.runner_up, best.runner_up if best is not None else 0)
                if best is not None and best.item_id != wide.item_id:
                    _rejudge(best, max(best.runner_up, wide.score))
                    chance = max(chance, best.score)
                _rejudge(wide, chance)
                if best is not None:
                    winner, other = (wide, best) if wide.confidence > best.confidence else (best, wide)
                    winner.candidates = _merged_candidates(winner, other)
                if best is None or wide.confidence > best.confidence:
                    best = wide
        if best is None or best.confidence < min_confidence:
            return None
        return best

    def _search(self, peaks: fp.ClipPeaks, candidate_speeds, speeds) -> Match | None:
        """Candidates from the clip's hashes at ``candidate_speeds`` (one
        frame shift), verified with every frame shift at ``speeds``."""
        q1 = fp.query_landmarks(None, None, speeds=candidate_speeds, shifts=CANDIDATE_SHIFTS,
                                peaks=peaks)
        if q1.hashes.size == 0:
            return None
        runs = self._candidate_runs(q1)
        if not runs:
            return None
        return verify(fp.query_landmarks(None, None, speeds=speeds, peaks=peaks), runs, peaks)

    def _check_open(self) -> None:
        raise NotImplementedError

    def _is_empty(self) -> bool:
        raise NotImplementedError

    def _candidate_runs(self, q1: fp.QueryLandmarks) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(item id, hashes, frames) of the tracks worth verifying for the
        sparse candidate query ``q1``, best first."""
        raise NotImplementedError


def verify(q: fp.QueryLandmarks, runs: list[tuple[int, np.ndarray, np.ndarray]],
           peaks: fp.ClipPeaks) -> Match | None:
    """The best of the candidate tracks ``runs`` (item id, hashes, frames)
    for the dense clip query ``q`` built from the clip's ``peaks``, with
    its confidence; None when no track has offset-consistent votes. The
    cost depends on the candidates, not on the library size."""
    hits = _match_runs(q, runs)
    if hits is None:
        return None
    ranked, bins = _count(q, *hits)
    if not ranked:
        return None
    return _decide(q, ranked, bins, runs, peaks)


def _match_runs(q: fp.QueryLandmarks, runs):
    """Hits of the query hashes on the candidates' landmarks, all matched
    in one pass: (run number, reference frame, query entry)."""
    if not runs:
        return None
    h = np.concatenate([r[1] for r in runs])
    t = np.concatenate([r[2] for r in runs])
    owner = np.repeat(np.arange(len(runs), dtype=np.int64), [r[1].size for r in runs])
    order = np.argsort(q.hashes, kind="stable")
    uq, first, qcnt = np.unique(q.hashes[order], return_index=True, return_counts=True)
    # Most landmarks share no hash with the clip: a bitmap over the hash
    # space (zero pages until written) drops them before the search.
    in_clip = np.zeros(1 << fp.HASH_BITS, bool)
    in_clip[uq] = True
    m = np.flatnonzero(in_clip[h])
    if m.size == 0:
        return None
    p = np.searchsorted(uq, h[m])
    c = qcnt[p]
    n = int(c.sum())
    entries = order[np.repeat(first[p] - (np.cumsum(c) - c), c) + np.arange(n)]
    return np.repeat(owner[m], c), np.repeat(t[m], c).astype(np.float64), entries


def _count(q: fp.QueryLandmarks, slot, tref, entry):
    """Offset-consistent vote counts of hits (run, reference frame,
    query entry): list of (score, run, speed index, offset frames,
    entries, reference frames) for the best bins, best first, one per
    run, and every bin's (cell, offset, score)."""
    ns = len(q.speeds)
    offset = np.rint(tref - q.ref_time[entry]).astype(np.int64)
    sp = q.speed_index[entry].astype(np.int64)
    cell = slot * ns + sp
    # Pass 1: approximate counts of 4-frame offset cells (two staggered
    # grids so a cluster on a cell border is not split) in a hashed
    # histogram; hits in cells below the bar cannot win.
    keep = np.zeros(cell.size, bool)
    for stagger in (0, 2):
        keep |= _approx_counts((cell << 22) + ((offset + stagger) >> 2)) >= MIN_SCORE - 1
    cell, offset, entry = cell[keep], offset[keep], entry[keep]
    if cell.size == 0:
        return [], None
    # Pass 2: exact counts per (cell, offset), +-1 frame tolerance.
    key = (cell << 24) + (offset + (1 << 23))
    order = np.argsort(key, kind="stable")
    key, entry, tref = key[order], entry[order], tref[keep][order]
    uk, first, cnt = np.unique(key, return_index=True, return_counts=True)
    left = np.searchsorted(uk, uk - 1)
    right = np.searchsorted(uk, uk + 1)
    has_l = (left < uk.size) & (uk[np.minimum(left, uk.size - 1)] == uk - 1)
    has_r = (right < uk.size) & (uk[np.minimum(right, uk.size - 1)] == uk + 1)
    score = cnt + np.where(has_l, cnt[np.minimum(left, uk.size - 1)], 0) + np.where(
        has_r, cnt[np.minimum(right, uk.size - 1)], 0)
    cells = uk >> 24
    # Best bin per slot (over speeds and offsets).
    slots_of = cells // ns
    order = np.lexsort((-score, slots_of))
    s_sorted = slots_of[order]
    firsts = order[np.r_[True, s_sorted[1:] != s_sorted[:-1]]]
    firsts = firsts[np.argsort(-score[firsts], kind="stable")][:CANDIDATES]
    ranked = []
    for i in firsts:
        k0 = uk[i]
        lo = np.searchsorted(key, k0 - 1, side="left")
        hi = np.searchsorted(key, k0 + 1, side="right")
        c = int(cells[i])
        ranked.append((int(score[i]), c // ns, c % ns, int((k0 & ((1 << 24) - 1)) - (1 << 23)),
                       entry[lo:hi], tref[lo:hi]))
    return ranked, (uk >> 24, (uk & ((1 << 24) - 1)) - (1 << 23), score)


def _decide(q: fp.QueryLandmarks, ranked, bins, runs, peaks: fp.ClipPeaks) -> Match | None:
    """Verify the candidates and attach a calibrated confidence.

    Votes of pairs find each candidate's place (speed and offset); the
    verdict counts *peaks*: how many of the candidate's reference peaks
    over the clip's span the clip has too (:func:`fingerprint.peak_cover`).
    A pair needs both of its peaks to survive noise, so a noisy clip keeps
    about twice as much evidence in peaks as in pairs, and every candidate
    is measured over the same span, so they compare fairly. Only a
    candidate with :data:`MIN_SCORE` distinct votes can be the answer.

    The evidence is the best count's excess over the best *unrelated*
    candidate's, in Poisson units: ``(s1 - s2) / sqrt(s2 + 1)``. The
    runner-up measures what chance gives for this very clip (how many
    peaks it has, how much the music resembles the library); it is never
    taken below :data:`RUNNER_UP_SHARE` of the top's span. A candidate
    that shares most of its matched clip hashes with the best one is the
    same recording filed twice, not a rival, and is skipped as runner-up.
    """
    votes = [_distinct_anchors(q, r[4]) for r in ranked]
    eligible = [k for k in range(len(ranked)) if votes[k] >= MIN_SCORE]
    if not eligible:
        return None
    covers: dict[int, np.ndarray] = {}
    seen = []
    for _, run, si, off, _, _ in ranked:
        if si not in covers:
            covers[si] = fp.peak_cover(peaks, q.speeds[si])
        seen.append(_peaks_seen(runs[run], off, covers[si]))
    top = max(eligible, key=lambda k: (seen[k][0], votes[k]))
    _, run, si, off, ents, tref = ranked[top]
    best_score, span = seen[top]
    top_entries = set(ents.tolist())
    runner_up = RUNNER_UP_SHARE * span
    for k, r in enumerate(ranked):
        if k != top and seen[k][0] > runner_up:
            shared = len(top_entries.intersection(r[4].tolist())) / max(1, r[4].size)
            if shared < 0.3:
                runner_up = seen[k][0]
    conf = _confidence(best_score, runner_up)
    speed = _fit_speed(q.ref_time[ents] / q.speeds[si], tref, q.speeds[si])
    cell = run * len(q.speeds) + si
    order = [top] + sorted((k for k in range(len(ranked)) if k != top),
                           key=lambda k: (-seen[k][0], -votes[k]))
    candidates = [Candidate(item_id=int(runs[ranked[k][1]][0]),
                            offset=max(0.0, ranked[k][3] * fp.FRAME_SECONDS),
                            speed=float(q.speeds[ranked[k][2]]), score=int(seen[k][0]),
                            votes=int(votes[k])) for k in order]
    return Match(item_id=int(runs[run][0]), offset=max(0.0, off * fp.FRAME_SECONDS),
                 confidence=conf, speed=speed, score=int(best_score), votes=int(votes[top]),
                 alternatives=_repeats(bins, cell, off, ranked[top][0]),
                 runner_up=int(round(runner_up)), candidates=_one_per_track(candidates))


def _merged_candidates(winner: Match, other: Match) -> list:
    """Both searches' places: the winner's own first, then the others by
    peak count, one per track."""
    rest = sorted(winner.candidates[1:] + other.candidates, key=lambda c: -c.score)
    return _one_per_track(winner.candidates[:1] + rest)


def _one_per_track(candidates: list) -> list:
    """The first (best) candidate of each track, in order."""
    seen_items: set[int] = set()
    out = []
    for c in candidates:
        if c.item_id not in seen_items:
            seen_items.add(c.item_id)
            out.append(c)
    return out


def _peaks_seen(run, offset: int, cover: np.ndarray) -> tuple[int, int]:
    """(reference peaks the clip has, reference peaks in its span) of one
    candidate run (item, hashes, frames) with the clip at ``offset``."""
    _, hashes, frames = run
    near = (frames >= offset - fp.DT_MAX) & (frames < offset + cover.shape[0])
    ref_t, ref_f = fp.landmark_peaks(hashes[near], frames[near])
    return fp.covered_peaks(cover, ref_t, ref_f, offset)


def _distinct_anchors(q: fp.QueryLandmarks, entries: np.ndarray) -> int:
    """Votes from distinct clip anchors: a clip anchor that hits the same
    place through several pairs (or both frame shifts) counts once."""
    t = np.rint(q.ref_time[entries] * 2).astype(np.int64)
    return int(np.unique(t).size)


class FingerprintIndex(LandmarkMatcher):
    """Landmark fingerprints of library items, on disk, with a matcher.

    Writes are buffered: :meth:`add` / :meth:`remove` take effect on disk at
    :meth:`flush` (also called by :meth:`close` and on leaving a ``with``
    block). :meth:`identify` sees the state on disk as of the last flush or
    :meth:`refresh`.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self._pending: dict[int, fp.Landmarks] = {}
        self._pending_removals: set[int] = set()
        self._pending_landmarks = 0
        self._closed = False
        self._manifest_stat = None
        self._load()

    # ------------------------------------------------------------------ state

    def _read_manifest(self) -> dict:
        path = os.path.join(self.directory, MANIFEST)
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read().decode("utf-8"))
        except FileNotFoundError:
            return {"format": FORMAT_VERSION, "fingerprint": fp.FINGERPRINT_VERSION,
                    "next_seq": 1, "segments": [], "tombstones": None}
        except (ValueError, UnicodeDecodeError) as exc:
            raise FingerprintError(f"{path}: unreadable manifest ({exc})")
        if data.get("format") not in READABLE_FORMATS or data.get("fingerprint") != fp.FINGERPRINT_VERSION:
            raise IndexVersionError(
                f"the fingerprint index in {self.directory} was built by another "
                "version of the plugin: run 'beet embed' to rebuild it "
                "(no re-embedding needed)"
            )
        if data["format"] == 2:
            # Every format 2 segment has 20-bit frames in its postings;
            # merges rewrite them in the current layout.
            data["legacy_segments"] = list(data["segments"])
        return data

    def _open_segment(self, manifest: dict, seq: int) -> "_Segment":
        legacy = seq in manifest.get("legacy_segments", ())
        return _Segment(self.directory, seq, LEGACY_POST_TIME_BITS if legacy else POST_TIME_BITS)

    def _load(self) -> None:
        """Read the manifest and map its files; retried if a concurrent
        compaction deleted a file between reading the manifest and opening it."""
        for attempt in range(20):
            manifest = self._read_manifest()
            try:
                segments = [self._open_segment(manifest, seq) for seq in manifest["segments"]]
                tomb_name = manifest.get("tombstones")
                tombs = (np.load(os.path.join(self.directory, tomb_name)) if tomb_name
                         else np.zeros((0, 2), np.int64))
                counts_name = manifest.get("counts")
                counts = _map_npy(os.path.join(self.directory, counts_name)) if counts_name else (None, None)
            except FileNotFoundError:
                time.sleep(0.01 * (attempt + 1))
                continue
            break
        else:
            raise FingerprintError(f"{self.directory}: index files keep disappearing")
        self._manifest = manifest
        self._segments = segments
        self._counts, self._counts_map = counts
        if self._counts is not None and self._counts.shape != (1 << fp.HASH_BITS,):
            raise FingerprintError(f"{self.directory}: malformed hash counts")
        self._tombs = {int(i): int(s) for i, s in tombs.reshape(-1, 2)}
        self._apply_tombstones()
        try:
            self._manifest_stat = os.stat(os.path.join(self.directory, MANIFEST)).st_mtime_ns
        except FileNotFoundError:
            self._manifest_stat = None

    def _apply_tombstones(self) -> None:
        """Mark dead copies: items whose first live segment is later than theirs."""
        if self._tombs:
            ids = np.fromiter(self._tombs.keys(), np.int64, len(self._tombs))
            lim = np.fromiter(self._tombs.values(), np.int64, len(self._tombs))
            order = np.argsort(ids)
            ids, lim = ids[order], lim[order]
        for seg in self._segments:
            seg.alive[:] = True
            if self._tombs:
                pos = np.clip(np.searchsorted(ids, seg.item_ids), 0, len(ids) - 1)
                hit = ids[pos] == seg.item_ids
                seg.alive &= ~(hit & (lim[pos] > seg.seq))
        # Global item slots for voting: segment base + local number.
        base = 0
        for seg in self._segments:
            seg.slot_base = base
            base += len(seg.item_ids)
        self._n_slots = base
        self._live: dict[int, tuple[int, int]] | None = None

    def _live_map(self) -> dict[int, tuple[int, int]]:
        if self._live is None:
            live = {}
            for k, seg in enumerate(self._segments):
                for local in np.flatnonzero(seg.alive):
                    live[int(seg.item_ids[local])] = (k, int(local))
            self._live = live
        return self._live

    def refresh(self) -> None:
        """Pick up changes other processes flushed since this one opened."""
        try:
            stat = os.stat(os.path.join(self.directory, MANIFEST)).st_mtime_ns
        except FileNotFoundError:
            stat = None
        if stat != self._manifest_stat:
            self._load()

    # --------------------------------------------------------------- queries

    def item_ids(self) -> set[int]:
        """Ids of items in the index, including unflushed changes."""
        ids = set(self._live_map()) - self._pending_removals
        ids |= set(self._pending)
        return ids

    def __contains__(self, item_id) -> bool:
        item_id = int(item_id)
        if item_id in self._pending:
            return True
        if item_id in self._pending_removals:
            return False
        return item_id in self._live_map()

    def __len__(self) -> int:
        return len(self.item_ids())

    def stats(self) -> dict:
        """Sizes on disk: items, landmarks, segments, bytes."""
        n_bytes = 0
        for name in os.listdir(self.directory):
            if _SEG_RE.match(name) or _TOMB_RE.match(name) or _COUNTS_RE.match(name) or name == MANIFEST:
                n_bytes += os.path.getsize(os.path.join(self.directory, name))
        return {
            "items": len(self._live_map()),
            "landmarks": sum(len(s) for s in self._segments),
            "segments": len(self._segments),
            "bytes": n_bytes,
        }

    # ---------------------------------------------------------------- writes

    def add(self, item_id: int, samples: np.ndarray, sample_rate: int) -> int:
        """Fingerprint a whole track and store it under ``item_id``
        (replacing an earlier version). Returns the number of landmarks."""
        return self.add_landmarks(item_id, fp.reference_landmarks(samples, sample_rate))

    def add_landmarks(self, item_id: int, landmarks: fp.Landmarks) -> int:
        """Store precomputed :func:`fingerprint.reference_landmarks`."""
        self._check_open()
        item_id = int(item_id)
        old = self._pending.pop(item_id, None)
        if old is not None:
            self._pending_landmarks -= len(old)
        self._pending_removals.discard(item_id)
        self._pending[item_id] = landmarks
        self._pending_landmarks += len(landmarks)
        if self._pending_landmarks >= AUTO_FLUSH_LANDMARKS or len(self._pending) >= MAX_SEGMENT_ITEMS:
            self.flush()
        return len(landmarks)

    def remove(self, item_ids: Iterable[int]) -> None:
        """Forget items (on disk at the next flush). Unknown ids are ignored."""
        self._check_open()
        for item_id in item_ids:
            item_id = int(item_id)
            old = self._pending.pop(item_id, None)
            if old is not None:
                self._pending_landmarks -= len(old)
            self._pending_removals.add(item_id)

    def flush(self) -> None:
        """Write buffered changes as a new segment and tombstones, then
        compact if there are too many segments."""
        self._check_open()
        if not self._pending and not self._pending_removals:
            return
        with self._writer_lock():
            manifest = self._read_manifest()
            self._gc(manifest)
            seq = manifest["next_seq"]
            segments = list(manifest["segments"])
            tombs = self._read_tombs(manifest)
            # Tombstones only for items that have a copy on disk: a fresh
            # item needs none, so the tombstone file stays small.
            on_disk = _ids_on_disk(self.directory, segments)
            counts = self._read_counts(manifest) if self._pending or not manifest.get("counts") else None
            if self._pending:
                added = self._write_segment(seq, sorted(self._pending.items()))
                _add_counts(counts, added)
                segments.append(seq)
                for item_id in self._pending:
                    if item_id in on_disk:
                        tombs[item_id] = seq
            for item_id in self._pending_removals:
                if item_id in on_disk:
                    tombs[item_id] = seq + 1
            manifest["next_seq"] = seq + 2
            manifest["segments"] = segments
            self._commit(manifest, tombs, counts)
            self._pending.clear()
            self._pending_removals.clear()
            self._pending_landmarks = 0
            self._compact_locked()
        self._load()

    def _read_tombs(self, manifest: dict) -> dict[int, int]:
        name = manifest.get("tombstones")
        if not name:
            return {}
        arr = np.load(os.path.join(self.directory, name))
        return {int(i): int(s) for i, s in arr.reshape(-1, 2)}

    def _read_counts(self, manifest: dict) -> np.ndarray:
        """The postings per hash value of the segments in ``manifest``
        (a writable copy); counted from the segments when the index has
        none yet (indexes written before it existed)."""
        name = manifest.get("counts")
        if name:
            counts = np.load(os.path.join(self.directory, name))
            if counts.shape == (1 << fp.HASH_BITS,):
                return counts
        counts = np.zeros(1 << fp.HASH_BITS, np.uint16)
        for seq in manifest["segments"]:
            hashes, _ = _map_npy(os.path.join(self.directory, f"seg-{seq:08d}.hash.npy"))
            for start in range(0, hashes.size, 1 << 24):  # bounded memory
                _add_counts(counts, hashes[start:start + (1 << 24)])
        return counts

    def _commit(self, manifest: dict, tombs: dict[int, int], counts: np.ndarray | None = None) -> None:
        """Write tombstones, the hash counts (when given) and the manifest;
        the manifest rename is the commit."""
        seq = manifest["next_seq"]
        manifest["next_seq"] = seq + 1
        if counts is not None:
            name = f"counts-{seq:08d}.npy"
            _write_npy(self.directory, name, counts)
            manifest["counts"] = name
        if tombs:
            arr = np.array(sorted(tombs.items()), np.int64).reshape(-1, 2)
            name = f"tomb-{seq:08d}.npy"
            _write_npy(self.directory, name, arr)
            manifest["tombstones"] = name
        else:
            manifest["tombstones"] = None
        manifest["format"] = FORMAT_VERSION
        manifest["fingerprint"] = fp.FINGERPRINT_VERSION
        manifest["legacy_segments"] = [s for s in manifest.get("legacy_segments", ()) if s in manifest["segments"]]
        data = json.dumps(manifest, sort_keys=True).encode("utf-8")
        _write_atomic(self.directory, MANIFEST, lambda f: f.write(data), ".json")
        _fsync_dir(self.directory)

    def _write_segment(self, seq: int, items: list[tuple[int, fp.Landmarks]]) -> np.ndarray:
        """Sort all landmarks of ``items`` by hash and write them as segment
        ``seq``; returns the hashes written."""
        if len(items) > MAX_SEGMENT_ITEMS:
            raise FingerprintError("too many items for one segment")
        table = np.zeros((len(items), 3), np.int64)
        hs, ps, fw = [], [], []
        for local, (item_id, lm) in enumerate(items):
            t = np.asarray(lm.times, np.uint32)
            h = np.asarray(lm.hashes, np.uint32)
            keep = t < fp.MAX_FRAMES
            t, h = t[keep], h[keep]
            hs.append(h)
            ps.append(_posting(local, t))
            run = (t.astype(np.uint64) << np.uint64(32)) | h.astype(np.uint64)
            run.sort()
            fw.append(run)
            table[local] = (item_id, h.size, lm.n_frames)
        hashes = np.concatenate(hs) if hs else np.zeros(0, np.uint32)
        posts = np.concatenate(ps) if ps else np.zeros(0, np.uint32)
        fwd = np.concatenate(fw) if fw else np.zeros(0, np.uint64)
        base = f"seg-{seq:08d}"
        _write_npy(self.directory, base + ".fwd.npy", fwd)
        del fwd
        key = (hashes.astype(np.uint64) << np.uint64(32)) | posts.astype(np.uint64)
        key.sort()
        sorted_hashes = (key >> np.uint64(32)).astype(np.uint32)
        _write_npy(self.directory, base + ".dir.npy", _hash_directory(sorted_hashes))
        _write_npy(self.directory, base + ".hash.npy", sorted_hashes)
        _write_npy(self.directory, base + ".post.npy", (key & np.uint64(0xFFFFFFFF)).astype(np.uint32))
        _write_npy(self.directory, base + ".items.npy", table)
        return hashes

    def compact(self) -> None:
        """Merge segments of similar size now (flush does it when needed)."""
        self._check_open()
        with self._writer_lock():
            self._compact_locked(force=True)
        self._load()

    def _compact_locked(self, force: bool = False) -> None:
        """Tiered merging: whenever MERGE_FANIN segments (or, with ``force``,
        any two) share a size tier, merge them into one, keeping live items
        only; beyond MAX_SMALL_SEGMENTS segments that can still grow, the
        two smallest are merged."""
        while True:
            manifest = self._read_manifest()
            segs = [self._open_segment(manifest, s) for s in manifest["segments"]]
            tombs = self._read_tombs(manifest)
            t_ids = np.fromiter(tombs.keys(), np.int64, len(tombs))
            t_lim = np.fromiter(tombs.values(), np.int64, len(tombs))
            for seg in segs:
                dead = np.isin(seg.item_ids, t_ids[t_lim > seg.seq])
                seg.alive = ~dead
            tiers: dict[int, list[_Segment]] = {}
            for seg in segs:
                live_items = int(seg.alive.sum())
                if live_items >= MAX_SEGMENT_ITEMS // 2:
                    continue
                size = int(seg.item_hashes[seg.alive].sum()) + 1
                tiers.setdefault(int(np.log(size) / np.log(MERGE_FANIN)), []).append(seg)
            group = None
            for tier in sorted(tiers):
                if len(tiers[tier]) >= (2 if force else MERGE_FANIN):
                    group = tiers[tier]
                    break
            if group is None and force and len(tiers) > 1:
                group = [s for t in sorted(tiers) for s in tiers[t]]
            small = [s for t in tiers.values() for s in t]
            if group is None and len(small) > MAX_SMALL_SEGMENTS:
                # A few segments in each of several tiers: every segment
                # costs a search one lookup per hash (a disk read when the
                # index is not cached), so the two smallest are merged.
                group = sorted(small, key=lambda s: int(s.item_hashes[s.alive].sum()))[:2]
            if group is None:
                return
            # Respect the item cap of one segment.
            chosen, n_items = [], 0
            for seg in sorted(group, key=lambda s: s.seq):
                n = int(seg.alive.sum())
                if n_items + n > MAX_SEGMENT_ITEMS:
                    break
                chosen.append(seg)
                n_items += n
            if len(chosen) < 2:
                return
            seq = manifest["next_seq"]
            counts = self._read_counts(manifest)
            _remove_counts(counts, self._merge(seq, chosen))
            merged = {s.seq for s in chosen}
            manifest["segments"] = sorted([s for s in manifest["segments"] if s not in merged] + [seq])
            manifest["next_seq"] = seq + 1
            # Live items moved to segment `seq`; other tombstones that still
            # hide a copy somewhere stay.
            remaining = [s for s in segs if s.seq not in merged]
            # A tombstone stays only while it hides a copy in a remaining
            # segment older than its limit (the merged one holds live copies).
            t_ids = np.fromiter(tombs.keys(), np.int64, len(tombs))
            t_lim = np.fromiter(tombs.values(), np.int64, len(tombs))
            needed = np.zeros(t_ids.size, bool)
            for seg in remaining:
                needed |= np.isin(t_ids, seg.item_ids) & (t_lim > seg.seq)
            kept = {int(i): int(v) for i, v in zip(t_ids[needed], t_lim[needed])}
            self._commit(manifest, kept, counts)
            self._gc(manifest)
            if force:
                continue

    def _merge(self, seq: int, segs: list[_Segment]) -> np.ndarray:
        """Write the live items of ``segs`` as segment ``seq`` in the current
        layout; returns how many dead postings of each hash value were
        left behind. Streams, in slices of MERGE_CHUNK_POSTINGS: the
        forward copy by runs of live items, the inverted index by ranges of
        the hash space (each one contiguous range of every input, already
        sorted by hash)."""
        base = f"seg-{seq:08d}"
        live = [np.flatnonzero(seg.alive) for seg in segs]
        new_local, first = [], 0
        for seg, lv in zip(segs, live):
            mapping = np.full(len(seg.item_ids), -1, np.int64)
            mapping[lv] = np.arange(lv.size) + first
            new_local.append(mapping)
            first += lv.size
        table = np.concatenate([np.stack([seg.item_ids, seg.item_hashes, seg.item_frames], 1)[lv]
                                for seg, lv in zip(segs, live)])
        total = int(table[:, 1].sum())

        def fill_forward(out):
            pos = 0
            for seg, lv in zip(segs, live):
                # Consecutive live items are one slice of the old copy.
                for group in np.split(lv, np.flatnonzero(np.diff(lv) != 1) + 1):
                    if not group.size:
                        continue
                    a, z = int(seg.item_start[group[0]]), int(seg.item_start[group[-1] + 1])
                    for start in range(a, z, MERGE_CHUNK_POSTINGS):  # bounded memory
                        stop = min(z, start + MERGE_CHUNK_POSTINGS)
                        out["fwd"][pos:pos + stop - start] = seg.fwd[start:stop] & np.uint64(_FWD_MASK)
                        pos += stop - start

        _write_npy_streamed(self.directory, {base + ".fwd.npy": ("fwd", np.uint64, total)}, fill_forward)
        dropped = np.zeros(1 << fp.HASH_BITS, np.int64)
        n_chunks = max(1, -(-sum(len(seg) for seg in segs) // MERGE_CHUNK_POSTINGS))
        bounds = np.linspace(0, 1 << fp.HASH_BITS, n_chunks + 1).astype(np.int64)

        def fill_inverted(out):
            pos = 0
            for h0, h1 in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
                keys = []
                for seg, mapping in zip(segs, new_local):
                    # Keys of the array's own dtype: mixed dtypes would
                    # make numpy convert the whole (memory-mapped) array.
                    lo, hi = np.searchsorted(seg.hashes, np.array([h0, h1], seg.hashes.dtype))
                    h, p = np.asarray(seg.hashes[lo:hi]), np.asarray(seg.posts[lo:hi])
                    local = (p >> seg.time_bits).astype(np.int64)
                    keep = seg.alive[local]
                    if not keep.all():
                        dropped[h0:h1] += np.bincount(h[~keep] - h0, minlength=h1 - h0)
                    post = _posting(mapping[local[keep]], p[keep] & seg.frame_mask)
                    keys.append((h[keep].astype(np.uint64) << np.uint64(32)) | post.astype(np.uint64))
                key = np.concatenate(keys)
                key.sort()
                out["hash"][pos:pos + key.size] = key >> np.uint64(32)
                out["post"][pos:pos + key.size] = key & np.uint64(0xFFFFFFFF)
                pos += key.size
            if pos != total:
                raise FingerprintError(f"merge into segment {seq}: {pos} postings, expected {total}")
            _write_npy(self.directory, base + ".dir.npy", _hash_directory(out["hash"]))

        _write_npy_streamed(self.directory, {base + ".hash.npy": ("hash", np.uint32, total),
                                             base + ".post.npy": ("post", np.uint32, total)}, fill_inverted)
        _write_npy(self.directory, base + ".items.npy", table)
        return dropped

    def _gc(self, manifest: dict) -> None:
        """Delete files the manifest does not name: orphans of a crashed
        writer and segments merged away. Called with the writer lock held."""
        live = {f"seg-{s:08d}.{k}.npy" for s in manifest["segments"] for k in _SEG_FILES}
        live.update(manifest[k] for k in ("tombstones", "counts") if manifest.get(k))
        for name in os.listdir(self.directory):
            stale_tmp = name.startswith(".tmp-")
            ours = _SEG_RE.match(name) or _TOMB_RE.match(name) or _COUNTS_RE.match(name)
            if (ours or stale_tmp) and name not in live:
                try:
                    os.unlink(os.path.join(self.directory, name))
                except OSError:
                    pass

    def _writer_lock(self):
        directory = self.directory

        class _Lock:
            def __enter__(self_):
                self_.f = open(os.path.join(directory, LOCK), "a+b")
                fcntl.flock(self_.f.fileno(), fcntl.LOCK_EX)
                return self_

            def __exit__(self_, *exc):
                fcntl.flock(self_.f.fileno(), fcntl.LOCK_UN)
                self_.f.close()

        return _Lock()

    def _check_open(self) -> None:
        if self._closed:
            raise FingerprintError("index is closed")

    def close(self) -> None:
        """Flush buffered changes and release the memory maps."""
        if self._closed:
            return
        self.flush()
        self._segments = []
        self._closed = True

    def __enter__(self) -> "FingerprintIndex":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._segments = []
            self._closed = True

    # -------------------------------------------------------------- matching

    def _is_empty(self) -> bool:
        return not self._segments

    def _candidate_runs(self, q1: fp.QueryLandmarks) -> list[tuple[int, np.ndarray, np.ndarray]]:
        places = [self._slot(slot) for slot in self._candidates(q1).tolist()]
        for seg, local in places:
            seg.prefetch_forward(local)
        return [(int(seg.item_ids[local]), *self._forward(seg, local)) for seg, local in places]

    def _candidates(self, q: fp.QueryLandmarks) -> np.ndarray:
        """Slots of the items with the most votes in one (speed, 4-frame
        offset cell), best first, at most :data:`CANDIDATES`.

        The postings read are bounded by :data:`CANDIDATE_POSTINGS`, so
        they are counted together: a hashed histogram of the cells keeps
        only the hits of cells with at least two votes, which are then
        counted exactly.
        """
        uq, inv = np.unique(q.hashes, return_inverse=True)
        ns = len(q.speeds)
        ref_time = np.rint(q.ref_time).astype(np.int32)
        cells, offsets = [], []
        for seg, lo, c, n in self._postings(uq, inv, self._stop(), budget=CANDIDATE_POSTINGS):
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
        keys = []
        for stagger in (0, 2):
            k = (cell << 20) + ((off + stagger + (1 << 21)) >> 2)
            keys.append(k[_approx_counts(k) >= 2])
        k = np.concatenate(keys)
        if k.size == 0:
            return np.zeros(0, np.int64)
        uk, kc = np.unique(k, return_counts=True)
        slot = (uk >> 20) // ns
        order = np.lexsort((-kc, slot))
        first = order[np.r_[True, slot[order][1:] != slot[order][:-1]]]
        top = first[np.argsort(-kc[first], kind="stable")[:CANDIDATES]]
        return slot[top].astype(np.int64)

    def _stop(self) -> int:
        total = sum(len(s) for s in self._segments)
        return max(STOP_POSTINGS_FLOOR, int(STOP_POSTINGS_FACTOR * total / (1 << 23)))

    def landmarks(self, item_id: int) -> fp.Landmarks | None:
        """The stored landmarks of an item (flushed state), or None.

        One contiguous read of the segment's forward copy.
        """
        where = self._live_map().get(int(item_id))
        if where is None:
            return None
        seg = self._segments[where[0]]
        h, t = self._forward(seg, where[1])
        return fp.Landmarks(h, t, int(seg.item_frames[where[1]]))

    @staticmethod
    def _forward(seg: "_Segment", local: int) -> tuple[np.ndarray, np.ndarray]:
        """Hashes and frames (uint32, time order) of one item of a segment."""
        run = np.asarray(seg.fwd[seg.item_start[local]:seg.item_start[local + 1]])
        return ((run & np.uint64(0xFFFFFFFF)).astype(np.uint32),
                ((run >> np.uint64(32)) & np.uint64(fp.MAX_FRAMES - 1)).astype(np.uint32))

    def same_recording(self, item_id: int, min_share: float = 0.25) -> list[int]:
        """Items that hold the same recording as ``item_id``: the same master
        re-encoded, copied or trimmed, not a live version or a cover.

        Two fingerprints of one recording share a large part of their hashes
        at a single time offset, over the whole shorter track; a remix,
        another performance or a repeated loop of a shared theme shares a
        few percent at scattered offsets. ``min_share`` is the share of the
        shorter track's landmarks that must agree at one offset.
        """
        lm = self.landmarks(item_id)
        if lm is None or len(lm) == 0:
            return []
        q = fp.QueryLandmarks(lm.hashes, lm.times.astype(np.float32), np.zeros(len(lm), np.uint8), (1.0,),
                              lm.n_frames)
        hits = self._lookup(q)
        if hits is None:
            return []
        slot, tref, _ = hits
        # Postings wrap their frames (POST_TIME_BITS): offsets are compared
        # modulo the wrap, where the two copies agree however long they are.
        off = np.rint(tref - q.ref_time[_]).astype(np.int64) & POST_FRAME_MASK
        key = slot * (1 << 22) + (off >> 2) + (1 << 21)
        uk, cnt = np.unique(key, return_counts=True)
        own = self._live_map()[int(item_id)]
        own_slot = self._segments[own[0]].slot_base + own[1]
        found = set()
        for k in np.flatnonzero(cnt >= MIN_SCORE):
            s_ = int(uk[k] >> 22)
            if s_ == own_slot:
                continue
            seg, local = self._slot(s_)
            if not seg.alive[local]:
                continue
            shorter = min(len(lm), int(seg.item_hashes[local]))
            if cnt[k] >= min_share * max(1, shorter):
                found.add(int(seg.item_ids[local]))
        return sorted(found)

    def _postings(self, unique_hashes, inverse, stop, budget: int | None = None):
        """Per segment with hits: (segment, first posting of each unique
        hash, postings per query entry, total). Hashes with more than
        ``stop`` postings (silence, steady tones) count as no hit; with a
        ``budget``, only the rarest hashes whose postings (times their
        uses in the query) fit in it count."""
        segments = [seg for seg in self._segments if len(seg)]
        # Every page the lookup needs is announced before it is read, in
        # waves (directories, hash runs, postings): read from disk, each
        # wave costs about one disk wait instead of one per page.
        for seg in segments:
            seg.prefetch_directory()
        wanted = np.ones(unique_hashes.size, bool)
        if budget is not None and segments:
            uses = np.bincount(inverse, minlength=unique_hashes.size)
            if self._counts is not None:
                # The index keeps how many postings each hash value has,
                # so only the hashes that fit in the budget are looked up.
                self._counts_map.prefetch(unique_hashes, unique_hashes + 1)
                cost = self._counts[unique_hashes].astype(np.int64) * uses
                wanted &= cost > 0  # in no segment: nothing to look up
            else:
                cost = self._sampled_cost(segments, unique_hashes, uses, stop)
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

    @staticmethod
    def _sampled_cost(segments, unique_hashes, uses, stop) -> np.ndarray:
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

    def _lookup(self, q: fp.QueryLandmarks):
        """All hits of the query hashes: (slot, reference frame, query entry)."""
        uq, inv = np.unique(q.hashes, return_inverse=True)
        stop = self._stop()
        slots, times, entries = [], [], []
        for seg, lo, c, n in self._postings(uq, inv, stop):
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

    def _slot(self, slot: int) -> tuple[_Segment, int]:
        for seg in self._segments:
            if slot < seg.slot_base + len(seg.item_ids):
                return seg, slot - seg.slot_base
        raise IndexError(slot)


def open_fingerprints(settings, store=None) -> LandmarkMatcher:
    """The fingerprint index the settings ask for: beside the library by
    default, on the Qdrant server with ``url:`` (``store``, the
    :class:`store.ServerStore` the vectors use, shares its connection)."""
    if settings.url:
        from .fpserver import ServerFingerprints
        from .store import ServerStore

        if not isinstance(store, ServerStore):
            store = ServerStore(settings.url, settings.api_key or None, settings.timeout)
        return ServerFingerprints(store)
    return FingerprintIndex(settings.fingerprint_dir)


def _approx_counts(keys: np.ndarray) -> np.ndarray:
    """Upper bounds of how often each key occurs, without sorting: a
    count-min sketch (two hashed histograms, the smaller count wins). Used
    to drop the hits of offset cells that cannot reach a useful score, most
    chance hits, before the survivors are counted exactly."""
    bits = min(20, max(12, int(keys.size).bit_length() + 1))
    k = keys.astype(np.uint64)
    counts = None
    # Multiplicative hashing: the top bits of the 64-bit product mix every
    # bit of the key (item, speed and offset alike).
    for multiplier in (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F):
        h = (k * np.uint64(multiplier)) >> np.uint64(64 - bits)
        row = np.bincount(h, minlength=1 << bits)[h]
        counts = row if counts is None else np.minimum(counts, row)
    return counts


def _repeats(bins, cell: int, offset: int, best: int, share: float = 0.6, limit: int = 8) -> list:
    """Offsets (seconds) of the same item and speed, at least 1 s from
    ``offset`` and from each other, with at least ``share`` of the best votes."""
    cells, offsets, score = bins
    mine = np.flatnonzero((cells == cell) & (score >= share * best))
    mine = mine[np.argsort(-score[mine], kind="stable")]
    taken = [offset]
    out = []
    min_gap = int(round(1.0 / fp.FRAME_SECONDS))
    for i in mine:
        o = int(offsets[i])
        if all(abs(o - t) >= min_gap for t in taken):
            taken.append(o)
            out.append(round(max(0.0, o * fp.FRAME_SECONDS), 3))
            if len(out) >= limit:
                break
    return out


def _fit_speed(t_clip: np.ndarray, t_ref: np.ndarray, s_hyp: float) -> float:
    """Clip speed from a least-squares line through the matched anchors
    (reference frame against clip frame); the hypothesis when the anchors
    span too little time to measure a slope."""
    if t_clip.size < 4 or np.ptp(t_clip) < 40:
        return float(s_hyp)
    slope = float(np.polyfit(t_clip, t_ref, 1)[0])
    # The vote already pinned the speed to within a grid step.
    return float(np.clip(slope, s_hyp - 0.005, s_hyp + 0.005))


def _rejudge(match: Match, runner_up: int) -> None:
    """Judge ``match`` again against a stronger runner-up."""
    match.runner_up = int(runner_up)
    match.confidence = _confidence(match.score, runner_up)


def _confidence(score: float, runner_up: float) -> float:
    """Share of right answers among matches with this evidence.

    The statistic is the best score's excess over the unrelated runner-up
    in units of the runner-up's Poisson spread. The logistic was fitted
    once (``bench/calibrate.py``), with equal weight on right answers and
    on chance: clips of tracks not in the library and library clips
    searched with their own track hidden, on the dev corpus (48 tracks,
    688 trials) and against 10,000 tracks (590 trials), where chance has
    many more candidates to pick its best from; 0.5 was then put where at
    most 0.5 % of either pool's chance trials pass (1 of 688, 2 of 590).
    With fewer unknown clips than known ones the true share of right
    answers is higher than this number, with more it is lower.
    """
    z = evidence(score, runner_up)
    return float(1.0 / (1.0 + np.exp(-CONF_SLOPE * (z - CONF_CENTER))))


def evidence(score: float, runner_up: float) -> float:
    """The statistic the confidence is a logistic of (``bench/calibrate.py``
    fits it): the score's excess over the runner-up in units of the
    runner-up's Poisson spread."""
    return float((score - runner_up) / np.sqrt(runner_up + 1.0))
