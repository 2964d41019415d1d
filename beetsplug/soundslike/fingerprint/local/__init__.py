"""The local fingerprint index: landmarks of library items in a folder
beside the library, and the clip search over them.

The index is a set of immutable segments (:mod:`.segments`) named by a
manifest (:mod:`.format`). Adding tracks buffers them in memory;
:meth:`FingerprintIndex.flush` writes them as one new segment. An item's
copy in segment ``n`` is live unless a tombstone says the item's first
live segment is later than ``n``: replacing an item writes it into a new
segment plus a tombstone pointing there, removing it writes a tombstone
past every segment. Lookups memory-map the sorted hash arrays and binary
search them (:mod:`.search`), so memory stays bounded at 100k tracks and
opening an index reads only the small manifest and the item tables.
Segments of similar size are merged as they accumulate
(:mod:`.compaction`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import numpy as np

from ..arrays import counted, inverse, multiplicative_hash
from ..backend import FingerprintBackend
from ..landmarks import Landmarks, QueryKeys, QueryLandmarks
from ..match import FingerprintError
from ..voting import may_reach, offset_cells
from ..params import (
    AUTO_FLUSH_LANDMARKS,
    HASH_BITS,
    MAX_SEGMENT_ITEMS,
    MIN_SCORE,
    NO_KEY,
    POST_FRAME_MASK,
    SAME_RECORDING_POSTINGS,
    SAME_RECORDING_SHARE,
)
from .compaction import compact_locked, gc, older_layout
from .format import (
    MANIFEST,
    WriterLock,
    add_counts,
    commit,
    ids_on_disk,
    index_file,
    read_counts,
    read_manifest,
    read_source_table,
    read_sources,
    read_tombs,
    sources_by_id,
    write_segment,
)
from .mapping import map_npy
from .search import (
    candidate_rounds,
    every_wrap,
    lookup,
    slot_place,
    spans,
    stop_postings,
)
from .segments import forward_within, open_segment


#: Up to this many ids, their identities are found in the table by id
#: (:meth:`FingerprintIndex.stored_sources`), not through a map of every item.
FEW_IDS = 64


class FingerprintIndex(FingerprintBackend):
    """Landmark fingerprints of library items, on disk, with a matcher.

    Writes are buffered: :meth:`add` / :meth:`remove` take effect on disk at
    :meth:`flush` (also called by :meth:`close` and on leaving a ``with``
    block). :meth:`identify` sees the state on disk as of the last flush or
    :meth:`refresh`.
    """

    def __init__(self, directory: str | os.PathLike, timeout: float | None = None):
        self.directory = os.fspath(directory)
        self.timeout = timeout  # for the writer lock; None: wait as long as it takes
        os.makedirs(self.directory, exist_ok=True)
        super().__init__()
        self._manifest_stat = None
        self._load()

    # ------------------------------------------------------------------ state

    def _load(self) -> None:
        """Read the manifest and map its files; retried if a concurrent
        compaction deleted a file between reading the manifest and opening it."""
        for attempt in range(20):
            manifest = read_manifest(self.directory)
            try:
                segments = [open_segment(self.directory, manifest, seq) for seq in manifest["segments"]]
                tomb_name = manifest.get("tombstones")
                tombs = (np.load(os.path.join(self.directory, tomb_name)) if tomb_name
                         else np.zeros((0, 2), np.int64))
                counts_name = manifest.get("counts")
                counts = map_npy(os.path.join(self.directory, counts_name)) if counts_name else (None, None)
            except FileNotFoundError:
                time.sleep(0.01 * (attempt + 1))
                continue
            break
        else:
            raise FingerprintError(f"{self.directory}: index files keep disappearing")
        self._manifest = manifest
        self._sources: dict[int, int] | None = None  # read on first need
        self._source_table: np.ndarray | None = None  # its rows, as read
        self._segments = segments
        self._counts, self._counts_map = counts
        if self._counts is not None and self._counts.shape != (1 << HASH_BITS,):
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

    def _where(self, item_id: int) -> tuple[int, int] | None:
        """(segment number, local number) of an item's live copy, or None:
        one comparison a segment, not the map of every item that
        :meth:`_live_map` builds (tens of milliseconds at 100,000 tracks,
        for the one item an answer names)."""
        if self._live is not None:
            return self._live.get(item_id)
        for k, seg in enumerate(self._segments):
            for local in np.flatnonzero(seg.item_ids == item_id).tolist():
                if seg.alive[local]:
                    return k, local
        return None

    def _live_map(self) -> dict[int, tuple[int, int]]:
        if self._live is None:
            live = {}
            for k, seg in enumerate(self._segments):
                for local in np.flatnonzero(seg.alive):
                    live[int(seg.item_ids[local])] = (k, int(local))
            self._live = live
        return self._live

    def stale(self) -> bool:
        """Whether another process flushed changes since this one last
        read the manifest."""
        try:
            stat = os.stat(os.path.join(self.directory, MANIFEST)).st_mtime_ns
        except FileNotFoundError:
            stat = None
        return stat != self._manifest_stat

    def refresh(self) -> None:
        """Pick up changes other processes flushed since this one opened."""
        if self.stale():
            self._load()

    def release(self) -> None:
        """Drop the memory maps."""
        self._segments = []

    # --------------------------------------------------------------- queries

    def stored_ids(self) -> dict[int, tuple[int, int]]:
        """Ids of the items on disk (as of the last flush or refresh)."""
        return self._live_map()

    def stored_sources(self, ids=None) -> dict[int, int]:
        """Identities of the live items on disk that have one."""
        if ids is not None and len(ids) <= FEW_IDS:
            return self._few_sources(ids)
        if self._sources is None:
            self._sources = sources_by_id(self._source_rows())
        live = self._live_map()
        if ids is None:
            return {i: s for i, s in self._sources.items() if i in live}
        return {i: self._sources[i] for i in ids if i in self._sources and i in live}

    def _few_sources(self, ids) -> dict[int, int]:
        """:meth:`stored_sources` of a few ``ids``, found in the table by
        id rather than from a map of every item."""
        table = self._source_rows()
        wanted = np.fromiter((int(i) for i in ids), np.int64)
        pos = np.minimum(np.searchsorted(table[:, 0], wanted), max(0, len(table) - 1))
        out = {}
        for item_id, p in zip(wanted.tolist(), pos.tolist()):
            if len(table) and table[p, 0] == item_id and self._where(item_id) is not None:
                out[item_id] = int(table[p, 1])
        return out

    def _source_rows(self) -> np.ndarray:
        """The identities on disk, (item id, identity) rows by id; read once."""
        if self._source_table is None:
            try:
                self._source_table = read_source_table(self.directory, self._manifest)
            except FileNotFoundError:  # a writer replaced it: read the new state
                self._load()
                self._source_table = read_source_table(self.directory, self._manifest)
        return self._source_table

    def stats(self) -> dict:
        """Sizes on disk: items, landmarks, segments, bytes."""
        n_bytes = 0
        for name in os.listdir(self.directory):
            if index_file(name) or name == MANIFEST:
                n_bytes += os.path.getsize(os.path.join(self.directory, name))
        return {
            "items": len(self._live_map()),
            "landmarks": sum(len(s) for s in self._segments),
            # Peaks in forward copies that hold them (format 5 segments).
            "peaks": sum(int(s.item_start[-1]) for s in self._segments if s.holds_peaks),
            "segments": len(self._segments),
            "bytes": n_bytes,
        }

    def landmarks(self, item_id: int) -> Landmarks | None:
        """The stored landmarks of an item (flushed state), or None.

        One contiguous read of the segment's forward copy, with the peaks
        the landmarks pair where the segment holds them (format 5).
        """
        where = self._where(int(item_id))
        if where is None:
            return None
        seg, local = self._segments[where[0]], where[1]
        h, t = seg.forward(local)
        peaks = seg.peak_runs(local, local + 1)[0] if seg.holds_peaks else None
        return Landmarks(h, t, int(seg.item_frames[local]), peaks)

    def same_recording(self, item_id: int, min_share: float = SAME_RECORDING_SHARE) -> list[int]:
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
        keyed = np.flatnonzero(lm.keys != NO_KEY)
        chosen, read = keyed, 1.0
        if self._counts is not None:
            # In a large library a track's hashes hold tens of millions of
            # postings (0.6-1.6 s a track at 100,000 tracks when all were
            # read). A share of its hashes that fits SAME_RECORDING_POSTINGS
            # is read instead, chosen by the hash value alone: a copy
            # chooses the same ones, and common and rare hashes (the rare
            # ones survive a codec less often) are read alike. The bar
            # below is a share of what was read.
            unique, inv = inverse(lm.keys[keyed])
            stop = stop_postings(self._segments)
            per_hash = self._counts[unique].astype(np.int64)
            uses = np.bincount(inv, minlength=unique.size)
            cost = int(np.where(per_hash > stop, 0, per_hash * uses).sum())
            if cost > SAME_RECORDING_POSTINGS:
                mixed = multiplicative_hash(unique.astype(np.uint64), 24)
                pick = mixed < np.uint64(SAME_RECORDING_POSTINGS / cost * (1 << 24))
                chosen = keyed[pick[inv]]
                read = chosen.size / keyed.size
        q = QueryLandmarks(lm.keys[chosen], lm.times[chosen].astype(np.float32),
                           np.zeros(chosen.size, np.uint8), (1.0,), lm.n_frames)
        hits = lookup(self._segments, q)
        if hits is None:
            return []
        slot, tref, _ = hits
        # Postings wrap their frames (POST_TIME_BITS): offsets are compared
        # modulo the wrap, where the two copies agree however long they are.
        # One grid of offset cells (not the staggered pair): the bar below
        # is a large share of the track, not a handful of votes.
        off = np.rint(tref - q.ref_time[_]).astype(np.int64) & POST_FRAME_MASK
        key, = offset_cells(slot, off, grids=(0,))
        uk, cnt = counted(key[may_reach(key, MIN_SCORE)])
        own = self._where(int(item_id))
        slots = uk >> 22
        segs = self._segments
        held = np.concatenate([seg.item_hashes for seg in segs])[slots]
        shorter = np.maximum(1, np.minimum(len(lm), held))
        same = ((cnt >= MIN_SCORE) & (cnt >= min_share * read * shorter)
                & np.concatenate([seg.alive for seg in segs])[slots]
                & (slots != segs[own[0]].slot_base + own[1]))
        ids = np.concatenate([seg.item_ids for seg in segs])[slots[same]]
        return sorted({int(i) for i in ids})

    # -------------------------------------------------------------- matching

    def is_empty(self) -> bool:
        return not any(seg.alive.any() for seg in self._segments)

    def candidate_rounds(self, qk: QueryKeys, quick: bool = True
                        ) -> Iterator[list[tuple[int, np.ndarray, np.ndarray]]]:
        # Each candidate is verified at the places its votes found, not
        # along the whole track: pairing its peaks and matching them are
        # the cost, and they grow with what is read.
        length = qk.n_frames * max(qk.speeds)
        for slots, places in candidate_rounds(self._segments, self._counts, self._counts_map, qk, quick):
            found = [slot_place(self._segments, slot) for slot in slots.tolist()]
            for seg, local in found:
                seg.prefetch_forward(local)
            wanted = [(seg, local, spans(every_wrap(where, seg.item_frames[local], seg.time_bits), length))
                      for (seg, local), where in zip(found, places)]
            yield [(int(seg.item_ids[local]), *landmarks)
                   for (seg, local, _), landmarks in zip(wanted, forward_within(wanted))]

    # ---------------------------------------------------------------- writes

    def buffer_full(self, items: int, landmarks: int) -> bool:
        return landmarks >= AUTO_FLUSH_LANDMARKS or items >= MAX_SEGMENT_ITEMS

    def write_changes(self, added: dict[int, Landmarks], removed: set[int], done,
                      sources: dict[int, int | None]) -> None:
        """Write the changes as a new segment and tombstones, then compact
        if there are too many segments."""
        with WriterLock(self.directory, self.timeout):
            manifest = read_manifest(self.directory)
            gc(self.directory, manifest)
            seq = manifest["next_seq"]
            segments = list(manifest["segments"])
            tombs = read_tombs(self.directory, manifest)
            # Tombstones only for items that have a copy on disk: a fresh
            # item needs none, so the tombstone file stays small.
            on_disk = ids_on_disk(self.directory, segments)
            counts = read_counts(self.directory, manifest) if added or not manifest.get("counts") else None
            if added:
                written = write_segment(self.directory, seq, sorted(added.items()))
                add_counts(counts, written)
                segments.append(seq)
                for item_id in added:
                    if item_id in on_disk:
                        tombs[item_id] = seq
            for item_id in removed:
                if item_id in on_disk:
                    tombs[item_id] = seq + 1
            table = read_sources(self.directory, manifest)
            before = dict(table)
            for item_id, source in sources.items():
                if source is None or item_id in removed:
                    table.pop(item_id, None)
                elif item_id in added or item_id in on_disk:
                    table[item_id] = source
            for item_id in removed:
                table.pop(item_id, None)
            manifest["next_seq"] = seq + 2
            manifest["segments"] = segments
            commit(self.directory, manifest, tombs, counts, table if table != before else None)
            done()
            compact_locked(self.directory)
        self._load()

    def older_parts(self) -> int:
        """Segments of an older layout: of landmark words (formats 3 and
        4), not yet peaks, or of 18-bit postings (before format 6)."""
        self.check_open()
        return sum(older_layout(seg) for seg in self._segments)

    def upgrade(self, progress=None) -> None:
        """Rewrite every segment of an older layout: those of landmark
        words into peaks, one under the writer lock at a time, so that
        another writer waits for one segment at most (a write rewrites one
        anyway; this does them all, for ``beet embed``'s progress bar);
        then those of 18-bit postings, merged into as few segments as hold
        them. ``progress`` gets the count of segments rewritten so far."""
        self.check_open()
        done = 0
        while True:
            with WriterLock(self.directory, self.timeout):
                rewritten = compact_locked(self.directory, rewrite_only=True)
            self._load()
            if not rewritten:
                return
            done += rewritten
            if progress is not None:
                progress(done)

    def compact(self) -> None:
        """Merge every segment into as few as hold them (a flush merges
        the segments that can still grow by size tiers, when needed)."""
        self.check_open()
        with WriterLock(self.directory, self.timeout):
            compact_locked(self.directory, force=True)
        self._load()
