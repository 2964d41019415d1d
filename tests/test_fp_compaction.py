"""The local index's merge policy (:mod:`.fingerprint.local.compaction`)
as a library grows by imports: how often a track is written again, and
how many segments a search reads."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest

from beetsplug.soundslike.fingerprint import FingerprintIndex, params
from beetsplug.soundslike.fingerprint import landmarks as fp
from beetsplug.soundslike.fingerprint.local import compaction
from beetsplug.soundslike.fingerprint.local.compaction import merge_group, size_tiers
from fp_helpers import (  # noqa: F401 (fixtures)
    SR,
    assert_consistent,
    assert_match,
    clip,
    counted_on_disk,
    index,
    index_dir,
    pieces,
    synth_piece,
)

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


def test_adds_replacements_removals_and_packs_keep_every_item_whole(tmp_path, monkeypatch):
    # Random writes under the policy with small bounds (large from 6
    # items, full from 16, a cap of 24 a segment), so that every kind of
    # merge happens, of segments that are not neighbours by age too:
    # after each write the index holds exactly the items written, each
    # with its own landmarks, and the counts are those of the segments.
    monkeypatch.setattr(compaction, "LARGE_SEGMENT_ITEMS", 6)
    monkeypatch.setattr(compaction, "items_held", lambda seg: 32)
    monkeypatch.setattr(compaction, "MAX_SEGMENT_ITEMS", 24)
    rng = random.Random(11)
    tracks = [fp.reference_landmarks(synth_piece(seed=s, seconds=float(3 + s % 3 * 2)), SR)
              for s in range(1, 9)]
    index = FingerprintIndex(tmp_path / "idx")
    want: dict[int, fp.Landmarks] = {}

    def pairs(lm):
        return np.sort((lm.keys.astype(np.uint64) << np.uint64(32)) | lm.times.astype(np.uint64))

    for _ in range(150):
        if rng.random() < 0.65 or not want:
            item = rng.randrange(1, 80)
            want[item] = tracks[rng.randrange(len(tracks))]
            index.add_landmarks(item, want[item])
        else:
            gone = rng.choice(sorted(want))
            index.remove([gone])
            del want[gone]
        if rng.random() < 0.3:
            index.flush()
            if rng.random() < 0.1:
                index.compact()
            assert set(index.stored_ids()) == set(want)
            for item in want:
                assert np.array_equal(pairs(index.landmarks(item)), pairs(want[item])), item
            assert np.array_equal(index._counts, counted_on_disk(index))
            assert_consistent(index)
    assert all(len(seg.item_ids) <= 24 for seg in index._segments)
