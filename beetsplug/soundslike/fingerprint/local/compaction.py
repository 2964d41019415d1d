"""Compaction of the local index: merging segments, and deleting the
files no manifest names.

When there are too many small segments, segments of similar size are
merged (tiered, like an LSM tree): merging also drops dead copies and
tombstones that no longer hide anything. Readers keep the snapshot they
opened; files that a compaction deletes stay readable through open
memory maps. Every function here runs with the writer lock held.
"""

from __future__ import annotations

import os

import numpy as np
from beets import logging

from ..match import FingerprintError
from ..params import (
    HASH_BITS,
    LARGE_SEGMENT_ITEMS,
    MAX_SEGMENT_ITEMS,
    MAX_SMALL_SEGMENTS,
    MERGE_CHUNK_POSTINGS,
    MERGE_FANIN,
    PEAK_BITS,
    POST_TIME_BITS,
)
from .format import (
    SEG_FILES,
    commit,
    directory_bits,
    directory_of,
    forward_copy,
    index_file,
    key_suffixes,
    posting,
    prefix_counts,
    read_counts,
    read_manifest,
    read_tombs,
    remove_counts,
    write_npy,
    write_npy_streamed,
)
from .segments import PEAKS_NARROW, PEAKS_WIDE, Segment, narrow_frames_fit, open_segment

log = logging.getLogger("beets.soundslike")


def compact_locked(directory: str, force: bool = False, rewrite_only: bool = False) -> int:
    """Tiered merging: whenever MERGE_FANIN segments share a size tier,
    merge them into one, keeping live items only; two large segments that
    can still grow are merged, and beyond MAX_SMALL_SEGMENTS small ones,
    the lowest tier holding two (:func:`merge_group`). With ``force``
    (``beet embed``'s pack), every segment is merged, into as few as hold
    them. Then a segment of landmark words is rewritten, one in each
    call (with ``rewrite_only``, that alone, or else the segments of
    18-bit postings, together). Returns how many segments of an older
    layout were rewritten."""
    rewritten = 0
    while True:
        manifest = read_manifest(directory)
        segs = [open_segment(directory, manifest, s) for s in manifest["segments"]]
        tombs = read_tombs(directory, manifest)
        t_ids = np.fromiter(tombs.keys(), np.int64, len(tombs))
        t_lim = np.fromiter(tombs.values(), np.int64, len(tombs))
        for seg in segs:
            dead = np.isin(seg.item_ids, t_ids[t_lim > seg.seq])
            seg.alive = ~dead
        if force:  # a pack: every segment, into as few as hold them
            group = segs
        else:
            group = None if rewrite_only else merge_group(size_tiers(segs))
        if group is None and not rewritten:
            # A segment of landmark words (formats 3 and 4) is rewritten
            # on its own, into peaks (format 5): about half the bytes. One
            # a call, so that no single write of a large older index
            # holds the lock for all of it.
            group = [seg for seg in segs if not seg.holds_peaks][:1]
            if not group and rewrite_only:
                # Segments of 18-bit postings (before format 6, 16,384
                # items at most) are merged into the current layout
                # together, as many as one segment holds: a 100,000-track
                # index becomes one segment. Only ``beet embed``'s upgrade
                # does this (minutes at that size), never an import's write.
                group = [seg for seg in segs if older_layout(seg)]
            rewritten = len(group)
        if not group:
            return rewritten
        # Respect the item cap of one segment: oldest first, each that fits.
        chosen, n_items = [], 0
        for seg in sorted(group, key=lambda s: s.seq):
            n = int(seg.alive.sum())
            if n_items + n > MAX_SEGMENT_ITEMS:
                continue
            chosen.append(seg)
            n_items += n
        if len(chosen) < 2 and not (chosen and older_layout(chosen[0])):
            return rewritten
        if rewritten:
            rewritten = len(chosen)
        if n_items >= LARGE_SEGMENT_ITEMS:
            # A minute or more at 50,000 tracks: say why a write pauses.
            log.info("merging {} tracks of the fingerprint index into one part "
                     "(searches go on meanwhile)", n_items)
        seq = manifest["next_seq"]
        counts = read_counts(directory, manifest)
        remove_counts(counts, merge(directory, seq, chosen))
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
        commit(directory, manifest, kept, counts)
        gc(directory, manifest)


def older_layout(seg: Segment) -> bool:
    """Whether a segment is in a layout that ``beet embed`` rewrites: of
    landmark words (formats 3 and 4), or of 18-bit postings (before 6)."""
    return not seg.holds_peaks or seg.time_bits != POST_TIME_BITS


def items_held(seg: Segment) -> int:
    """The most items a segment of ``seg``'s posting layout holds."""
    return 1 << (32 - int(seg.time_bits))


def size_tiers(segs: list[Segment]) -> dict[int, list[Segment]]:
    """The segments that can still grow (under half of what their layout
    holds) by size tier: the log to base MERGE_FANIN of their live
    landmarks (``seg.alive`` marks the live items)."""
    tiers: dict[int, list[Segment]] = {}
    for seg in segs:
        if int(seg.alive.sum()) >= items_held(seg) // 2:
            continue
        size = int(seg.item_hashes[seg.alive].sum()) + 1
        tiers.setdefault(int(np.log(size) / np.log(MERGE_FANIN)), []).append(seg)
    return tiers


def merge_group(tiers: dict[int, list[Segment]]) -> list[Segment] | None:
    """The segments to merge next, by size tier, or None. Each merge is of
    segments of one tier (similar sizes), so that a track is rewritten
    about once a tier, never once a write; besides, the large segments
    that can still grow are merged together (one grows at a time)."""
    for tier in sorted(tiers):
        if len(tiers[tier]) >= MERGE_FANIN:
            return tiers[tier]
    growing = [s for t in tiers.values() for s in t]
    large = [s for s in growing if int(s.alive.sum()) >= LARGE_SEGMENT_ITEMS]
    if len(large) > 1:
        return large
    if len(growing) - len(large) > MAX_SMALL_SEGMENTS:
        for tier in sorted(tiers):
            small = [s for s in tiers[tier] if s not in large]
            if len(small) >= 2:
                return small
    return None


def merge(directory: str, seq: int, segs: list[Segment]) -> np.ndarray:
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

    def item_chunks(seg, lv):
        """Runs of consecutive live items of ``seg``, cut so that each
        holds at most MERGE_CHUNK_POSTINGS forward entries (or one item)."""
        for group in np.split(lv, np.flatnonzero(np.diff(lv) != 1) + 1):
            while group.size:
                ends = seg.item_start[group + 1] - seg.item_start[group[0]]
                take = max(1, int(np.searchsorted(ends, MERGE_CHUNK_POSTINGS, side="right")))
                yield int(group[0]), int(group[take - 1]) + 1
                group = group[take:]

    # Peaks per live item, and whether every run fits 16-bit frames: known
    # for segments written narrow, found for the others by reading them
    # (segments of landmark words, format 3 and 4, once more to convert).
    peak_counts, narrow = [], True
    for seg, lv in zip(segs, live):
        if seg.fwd.dtype == PEAKS_NARROW:
            peak_counts.append(np.diff(seg.item_start)[lv])
            continue
        for first, stop in item_chunks(seg, lv):  # bounded memory
            peaks, starts = seg.peak_runs(first, stop)
            peak_counts.append(np.diff(np.append(starts, peaks.size)))
            narrow = narrow and narrow_frames_fit(peaks >> PEAK_BITS, starts)
    table = np.concatenate([np.stack([seg.item_ids, seg.item_hashes, seg.item_frames], 1)[lv]
                            for seg, lv in zip(segs, live)])
    table = np.concatenate([table, np.concatenate(peak_counts + [np.zeros(0, np.int64)])[:, None]], 1)
    total = int(table[:, 1].sum())

    def fill_forward(out):
        pos = 0
        for seg, lv in zip(segs, live):
            for first, stop in item_chunks(seg, lv):
                peaks, _ = seg.peak_runs(first, stop)
                forward_copy(peaks, None, out["fwd"][pos:pos + peaks.size])
                pos += peaks.size

    layout = PEAKS_NARROW if narrow else PEAKS_WIDE
    write_npy_streamed(directory, {base + ".fwd.npy": ("fwd", layout, int(table[:, 3].sum()))}, fill_forward)
    dropped = np.zeros(1 << HASH_BITS, np.int64)
    n_chunks = max(1, -(-sum(len(seg) for seg in segs) // MERGE_CHUNK_POSTINGS))
    bounds = np.linspace(0, 1 << HASH_BITS, n_chunks + 1).astype(np.int64)
    bits = directory_bits(total)
    prefixes = np.zeros(1 << bits, np.int64)

    def fill_inverted(out):
        pos = 0
        for h0, h1 in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            keys = []
            for seg, mapping in zip(segs, new_local):
                lo, hi = seg.position(h0), seg.position(h1)
                h, p = seg.keys(lo, hi), np.asarray(seg.posts[lo:hi])
                local = (p >> seg.time_bits).astype(np.int64)
                keep = seg.alive[local]
                if not keep.all():
                    dropped[h0:h1] += np.bincount(h[~keep] - h0, minlength=h1 - h0)
                post = posting(mapping[local[keep]], p[keep] & seg.frame_mask)
                keys.append((h[keep].astype(np.uint64) << np.uint64(32)) | post.astype(np.uint64))
            key = np.concatenate(keys)
            key.sort()
            whole = (key >> np.uint64(32)).astype(np.uint32)
            prefixes[:] += prefix_counts(whole, bits)
            out["hash"][pos:pos + key.size] = key_suffixes(whole, bits)
            out["post"][pos:pos + key.size] = key & np.uint64(0xFFFFFFFF)
            pos += key.size
        if pos != total:
            raise FingerprintError(f"merge into segment {seq}: {pos} postings, expected {total}")
        write_npy(directory, base + ".dir.npy", directory_of(prefixes))

    write_npy_streamed(directory, {base + ".hash.npy": ("hash", np.uint8, total),
                                   base + ".post.npy": ("post", np.uint32, total)}, fill_inverted)
    write_npy(directory, base + ".items.npy", table)
    return dropped


def gc(directory: str, manifest: dict) -> None:
    """Delete files the manifest does not name: orphans of a crashed
    writer and segments merged away. Called with the writer lock held."""
    live = {f"seg-{s:08d}.{k}.npy" for s in manifest["segments"] for k in SEG_FILES}
    live.update(manifest[k] for k in ("tombstones", "counts", "sources") if manifest.get(k))
    for name in os.listdir(directory):
        stale_tmp = name.startswith(".tmp-")
        ours = index_file(name)
        if (ours or stale_tmp) and name not in live:
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass
