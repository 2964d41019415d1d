"""The on-disk format of the local index: file names, the manifest, and
how segments, tombstones and hash counts are written.

The index is a directory::

    MANIFEST.json            which files make up the current state
    LOCK                     advisory fcntl lock, held by a writer
    seg-00000007.hash.npy    uint8 speed-invariant landmark keys, sorted, less the
                             top bits the directory gives (format 3: whole
                             uint32 keys)
    seg-00000007.post.npy    uint32 postings, same order: local item << 15 | frame (wrapped;
                             << 18 in segments written before format 6, as the
                             manifest's "post_bits" says)
    seg-00000007.items.npy   int64 (n, 4): item id, landmarks, frames, peaks per
                             local item (formats 3 and 4: the first three)
    seg-00000007.fwd.npy     forward copy: each item's peaks (bin and sub-bin
                             code, and frame), packed in 4 bytes (the frame's
                             low 16 bits) or 6; each item's peaks one
                             time-ordered run, items in local order (format 4:
                             landmark words and frames in 6 or 8 bytes; format
                             3: uint64 frame << 32 | word)
    seg-00000007.dir.npy     uint32 directory: where each run of keys sharing their
                             top 16 to 23 bits starts in the sorted keys
    tomb-00000009.npy        int64 (k, 2): item id, first live segment number
    counts-00000009.npy      uint16 postings per key value in all segments
                             (saturating), for the candidate search's budget
    src-00000009.npy         int64 (k, 2): item id, identity of the file its
                             record was computed from (:mod:`...provenance`;
                             absent in indexes written before identities)

Crash safety: every file is written under a temporary name, fsynced and
renamed to a name never used before (:func:`..files.write_atomic`); the
new state becomes visible only when ``MANIFEST.json`` is atomically
replaced (``os.replace``) and the directory fsynced. A crash at any
moment leaves the old manifest and old files (plus orphans that the next
writer deletes) or the new ones. Writers take an exclusive
``fcntl.flock`` on ``LOCK`` (:class:`WriterLock`) and re-read the
manifest under it, so two processes adding tracks never lose each
other's work.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
import time

import numpy as np

from ...files import fsync_dir, write_atomic
from ...store import StoreBusy
from ..landmarks import Landmarks, landmark_keys
from ..match import FingerprintError, IndexVersionError
from ..params import (
    COUNT_SATURATED,
    DIR_RUN_BITS,
    FINGERPRINT_VERSION,
    FORMAT_VERSION,
    HASH_BITS,
    LEGACY_POST_TIME_BITS,
    MAX_FRAMES,
    MAX_SEGMENT_ITEMS,
    MIN_DIR_BITS,
    PEAK_BITS,
    POST_FRAME_MASK,
    POST_TIME_BITS,
    READABLE_FORMATS,
)
from .segments import PEAKS_NARROW, PEAKS_WIDE, narrow_frames_fit, open_segment

MANIFEST = "MANIFEST.json"
LOCK = "LOCK"
SEG_RE = re.compile(r"^seg-(\d{8})\.(hash|post|items|fwd|dir)\.npy$")
#: Files of a segment; the directory ("dir") is optional.
SEG_FILES = ("hash", "post", "items", "fwd", "dir")
TOMB_RE = re.compile(r"^tomb-(\d{8})\.npy$")
COUNTS_RE = re.compile(r"^counts-(\d{8})\.npy$")
SOURCES_RE = re.compile(r"^src-(\d{8})\.npy$")
#: Index files are written readable by their owner only (as the
#: temporary files they start as).
FILE_MODE = 0o600


def index_file(name: str) -> bool:
    """Whether ``name`` is a segment, tombstone, counts or sources file."""
    return bool(SEG_RE.match(name) or TOMB_RE.match(name) or COUNTS_RE.match(name)
                or SOURCES_RE.match(name))


def read_manifest(directory: str) -> dict:
    """The index's manifest (a fresh one when there is none yet)."""
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return {"format": FORMAT_VERSION, "fingerprint": FINGERPRINT_VERSION,
                "next_seq": 1, "segments": [], "tombstones": None, "post_bits": {}}
    except (ValueError, UnicodeDecodeError) as exc:
        raise FingerprintError(f"{path}: unreadable manifest ({exc})")
    if data.get("format") not in READABLE_FORMATS or data.get("fingerprint") != FINGERPRINT_VERSION:
        raise IndexVersionError(
            f"the fingerprint index in {directory} was built by another "
            "version of the plugin: run 'beet embed' to rebuild it "
            "(no re-embedding needed)"
        )
    if "post_bits" not in data and data["format"] < 6:  # every segment had 18-bit frames then
        data["post_bits"] = {str(seq): LEGACY_POST_TIME_BITS for seq in data["segments"]}
    return data


def read_tombs(directory: str, manifest: dict) -> dict[int, int]:
    """The tombstones of ``manifest``: item id -> first live segment."""
    name = manifest.get("tombstones")
    if not name:
        return {}
    arr = np.load(os.path.join(directory, name))
    return {int(i): int(s) for i, s in arr.reshape(-1, 2)}


def read_sources(directory: str, manifest: dict) -> dict[int, int]:
    """The identities of ``manifest``: item id -> identity."""
    return sources_by_id(read_source_table(directory, manifest))


def sources_by_id(rows: np.ndarray) -> dict[int, int]:
    """(item id, identity) rows as a map: item id -> identity."""
    return {int(i): int(s) for i, s in rows.tolist()}


def read_source_table(directory: str, manifest: dict) -> np.ndarray:
    """The identities of ``manifest`` as (item id, identity) rows, by id."""
    name = manifest.get("sources")
    if not name:
        return np.zeros((0, 2), np.int64)
    return np.load(os.path.join(directory, name)).reshape(-1, 2)


def read_counts(directory: str, manifest: dict) -> np.ndarray:
    """The postings per hash value of the segments in ``manifest``
    (a writable copy); counted from the segments when the index has
    none yet (indexes written before it existed)."""
    name = manifest.get("counts")
    if name:
        counts = np.load(os.path.join(directory, name))
        if counts.shape == (1 << HASH_BITS,):
            return counts
    counts = np.zeros(1 << HASH_BITS, np.uint16)
    for seq in manifest["segments"]:
        seg = open_segment(directory, manifest, seq)
        for start in range(0, len(seg), 1 << 24):  # bounded memory
            add_counts(counts, seg.keys(start, min(len(seg), start + (1 << 24))))
    return counts


def commit(directory: str, manifest: dict, tombs: dict[int, int], counts: np.ndarray | None = None,
           sources: dict[int, int] | None = None) -> None:
    """Write tombstones, the hash counts and identities (when given) and
    the manifest; the manifest rename is the commit."""
    seq = manifest["next_seq"]
    manifest["next_seq"] = seq + 1
    if sources is not None:
        name = f"src-{seq:08d}.npy" if sources else None
        if name:
            write_npy(directory, name, np.array(sorted(sources.items()), np.int64).reshape(-1, 2))
        manifest["sources"] = name
    if counts is not None:
        name = f"counts-{seq:08d}.npy"
        write_npy(directory, name, counts)
        manifest["counts"] = name
    if tombs:
        arr = np.array(sorted(tombs.items()), np.int64).reshape(-1, 2)
        name = f"tomb-{seq:08d}.npy"
        write_npy(directory, name, arr)
        manifest["tombstones"] = name
    else:
        manifest["tombstones"] = None
    # Each segment's posting layout: what it was read with, or, for the
    # segments this writer added, the current one.
    bits = manifest.get("post_bits") or {}
    manifest["post_bits"] = {str(s): int(bits.get(str(s), POST_TIME_BITS)) for s in manifest["segments"]}
    manifest["format"] = FORMAT_VERSION
    manifest["fingerprint"] = FINGERPRINT_VERSION
    data = json.dumps(manifest, sort_keys=True).encode("utf-8")
    write_atomic(os.path.join(directory, MANIFEST), data, ".json", mode=FILE_MODE)
    fsync_dir(directory)


def write_segment(directory: str, seq: int, items: list[tuple[int, Landmarks]]) -> np.ndarray:
    """Write the landmarks of ``items`` as segment ``seq``: the inverted
    index sorted by key, the forward copy of their peaks by item and
    time; returns the keys written."""
    if len(items) > MAX_SEGMENT_ITEMS:
        raise FingerprintError("too many items for one segment")
    table = np.zeros((len(items), 4), np.int64)
    hs, ps, runs = [], [], []
    for local, (item_id, lm) in enumerate(items):
        t = np.asarray(lm.times, np.uint32)
        h = np.asarray(lm.hashes, np.uint32)
        keep = t < MAX_FRAMES
        t, h = t[keep], h[keep]
        hs.append(landmark_keys(h))
        ps.append(posting(local, t))
        runs.append(lm.stored_peaks())
        table[local] = (item_id, h.size, lm.n_frames, runs[-1].size)
    hashes = np.concatenate(hs) if hs else np.zeros(0, np.uint32)
    posts = np.concatenate(ps) if ps else np.zeros(0, np.uint32)
    peaks = np.concatenate(runs) if runs else np.zeros(0, np.int64)
    base = f"seg-{seq:08d}"
    write_npy(directory, base + ".fwd.npy", forward_copy(peaks, table[:, 3]))
    del peaks, runs
    key = (hashes.astype(np.uint64) << np.uint64(32)) | posts.astype(np.uint64)
    key.sort()
    sorted_hashes = (key >> np.uint64(32)).astype(np.uint32)
    bits = directory_bits(sorted_hashes.size)
    write_npy(directory, base + ".dir.npy", directory_of(prefix_counts(sorted_hashes, bits)))
    write_npy(directory, base + ".hash.npy", key_suffixes(sorted_hashes, bits))
    write_npy(directory, base + ".post.npy", (key & np.uint64(0xFFFFFFFF)).astype(np.uint32))
    write_npy(directory, base + ".items.npy", table)
    return hashes


def forward_copy(peaks: np.ndarray, per_item: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The forward copy of packed ``peaks`` (runs of ``per_item`` peaks
    one after another): 16-bit frames where every run can be unwrapped,
    else whole ones; written into ``out`` (of that layout) when given."""
    frames = np.asarray(peaks, np.int64) >> PEAK_BITS
    if out is None:
        starts = np.concatenate([[0], np.cumsum(per_item)[:-1]]).astype(np.int64)
        out = np.zeros(frames.size, PEAKS_NARROW if narrow_frames_fit(frames, starts) else PEAKS_WIDE)
    out["frame"] = frames  # the narrow layout keeps the low 16 bits
    out["peak"] = np.asarray(peaks, np.int64) & ((1 << PEAK_BITS) - 1)
    return out


class IndexBusy(FingerprintError, StoreBusy):
    """Another process held the writer lock for longer than ``timeout``:
    the same rule, and the same handling, as a busy vector store."""


class WriterLock:
    """The writers' exclusive lock on the index ``directory`` (``with``),
    waited for at most ``timeout`` seconds (None: as long as it takes)."""

    def __init__(self, directory: str, timeout: float | None = None):
        self.directory = directory
        self.timeout = timeout

    def __enter__(self):
        self.f = open(os.path.join(self.directory, LOCK), "a+b")
        if self.timeout is None:
            fcntl.flock(self.f.fileno(), fcntl.LOCK_EX)
            return self
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.f.close()
                    raise IndexBusy(
                        f"the fingerprint index in {self.directory} is busy: another "
                        f"beet process held it for over {self.timeout:.0f} s; "
                        "try again when it finishes"
                    ) from None
                time.sleep(0.05)

    def __exit__(self, *exc):
        fcntl.flock(self.f.fileno(), fcntl.LOCK_UN)
        self.f.close()


def directory_bits(n_keys: int) -> int:
    """Prefix bits of the directory of a segment of ``n_keys`` keys: at
    least :data:`MIN_DIR_BITS`, and enough that a prefix run holds about
    2**:data:`DIR_RUN_BITS` keys however large the segment."""
    return min(HASH_BITS, max(MIN_DIR_BITS, int(n_keys).bit_length() - DIR_RUN_BITS))


def prefix_counts(keys: np.ndarray, bits: int) -> np.ndarray:
    """How many of ``keys`` have each ``bits``-bit prefix; their running
    sum, from 0, is the directory (:func:`directory_of`)."""
    return np.bincount(keys >> np.uint32(HASH_BITS - bits), minlength=1 << bits)


def directory_of(counts: np.ndarray) -> np.ndarray:
    """Start of each prefix run in the sorted keys (and the end), for
    :meth:`.segments.Segment.ranges`, from :func:`prefix_counts`."""
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.uint32)


def key_suffixes(keys: np.ndarray, bits: int) -> np.ndarray:
    """What a format 4 segment stores of each key under a ``bits``-bit
    directory: the bits below the prefix, one byte."""
    return (keys & np.uint32((1 << (HASH_BITS - bits)) - 1)).astype(np.uint8)


def posting(local, frames: np.ndarray) -> np.ndarray:
    """Postings of a segment's item ``local`` (scalar or per landmark) at
    ``frames``: local << POST_TIME_BITS | frame (wrapped)."""
    return ((np.asarray(local, np.uint32) << np.uint32(POST_TIME_BITS))
            | (np.asarray(frames, np.uint32) & np.uint32(POST_FRAME_MASK)))


def add_counts(counts: np.ndarray, hashes: np.ndarray) -> None:
    """Count ``hashes`` into the saturating uint16 ``counts``, in place."""
    if hashes.size:
        total = counts + np.bincount(hashes, minlength=counts.size)
        np.minimum(total, COUNT_SATURATED, out=total)
        counts[:] = total


def remove_counts(counts: np.ndarray, removed: np.ndarray) -> None:
    """Take ``removed`` postings (per hash value) out of ``counts``, in
    place; a saturated count stays saturated (its true value is unknown)."""
    total = counts.astype(np.int64) - removed
    total = np.where(counts == COUNT_SATURATED, COUNT_SATURATED, np.maximum(total, 0))
    counts[:] = total


def ids_on_disk(directory: str, segments: list[int]) -> set[int]:
    """Item ids with a copy (live or not) in the given segments."""
    ids = [np.load(os.path.join(directory, f"seg-{seq:08d}.items.npy"))[:, 0] for seq in segments]
    return set(np.concatenate(ids).tolist()) if ids else set()


def write_npy_streamed(directory: str, files: dict, fill) -> None:
    """Create ``.npy`` files too large to build in memory: ``files`` maps
    each name to (key, dtype, length); ``fill(arrays)`` writes the arrays
    (writable memory maps, by key). Atomic like :func:`..files.write_atomic`:
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


def write_npy(directory: str, name: str, array: np.ndarray) -> None:
    """Write ``array`` as ``name`` atomically."""
    write_atomic(os.path.join(directory, name), lambda f: np.save(f, np.ascontiguousarray(array)), ".npy",
                 mode=FILE_MODE)
