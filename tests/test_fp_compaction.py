"""The local index's merge policy (:mod:`.fingerprint.local.compaction`)
as a library grows by imports: how often a track is written again, and
how many segments a search reads."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from beetsplug.soundslike.fingerprint import params
from beetsplug.soundslike.fingerprint.local import compaction
from beetsplug.soundslike.fingerprint.local.compaction import merge_group, size_tiers
from fp_helpers import SR, assert_match, clip, index, index_dir, pieces  # noqa: F401 (fixtures)

#: Landmarks of a 4-minute track.
PER_TRACK = 19_000


def segment(seq: int, tracks: int) -> SimpleNamespace:
    """What the policy reads of a segment: its live items and their landmarks."""
    return SimpleNamespace(seq=seq, alive=np.ones(tracks, bool),
                           item_hashes=np.full(tracks, PER_TRACK, np.int64),
                           time_bits=params.POST_TIME_BITS, holds_peaks=True)


def grow(total: int, per_write: int):
    """Write ``per_write`` tracks at a time up to ``total``, merging after
    each write as the index does; yields (tracks written to disk so far,
    the segments' track counts) after each write."""
    segs, written, seq = [], 0, 0
    for done in range(per_write, total + 1, per_write):
        seq += 1
        segs.append(segment(seq, per_write))
        written += per_write
        while (group := merge_group(size_tiers(segs))) is not None:
            segs = [s for s in segs if all(s is not g for g in group)]
            seq += 1
            segs.append(segment(seq, sum(g.alive.size for g in group)))
            written += segs[-1].alive.size
        yield written, [s.alive.size for s in segs]


@pytest.mark.parametrize("total, per_write", [(20_000, 4), (100_000, 12)])
def test_a_library_grown_by_imports_writes_each_track_a_few_times(total, per_write):
    # An import writes a segment of a few tracks. Merging it into the
    # smallest other segment on every write rewrote a segment of up to
    # 16,384 tracks to take in 4: each track was written again about once
    # a write (320 times on the way to 20,000 tracks, 530 to 100,000 by
    # albums). Merges of one size tier write a track about once a tier.
    for written, sizes in grow(total, per_write):
        growing = [n for n in sizes if n < params.MAX_SEGMENT_ITEMS // 2]
        # From a cold page cache each large segment costs a search about
        # as much as the whole index in one: one grows at a time.
        assert sum(n >= params.LARGE_SEGMENT_ITEMS for n in growing) <= 1, sizes
        assert len(sizes) <= 10, sizes
    assert sum(sizes) == total // per_write * per_write
    assert written / total < 20


def test_a_pack_merges_full_segments_too(index, pieces, monkeypatch):
    # ``beet embed`` packs after a first analysis. Imports never merge a
    # full segment (half of what a segment holds: 65,536 tracks), but a
    # first analysis of 100,000 tracks leaves one full and one large that
    # can still grow, and a search reads both: the pack merges them too.
    monkeypatch.setattr(compaction, "items_held", lambda seg: 16)  # full at 8 items
    for item_id in (30, 31):
        index.add(item_id, pieces[item_id % 10 + 1][: 6 * SR], SR)
        index.flush()
    assert index.stats()["segments"] == 3  # the ten pieces (full) and the two
    index.compact()
    assert index.stats()["segments"] == 1
    assert len(index) == 12
    assert_match(index.identify(clip(pieces[4], 8.0, 5), SR), 4, 8.0)
