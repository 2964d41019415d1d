"""The local fingerprint index on disk: writes, replacements, merges,
crashes, older formats, and the answers it keeps giving."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from fp_helpers import (  # noqa: F401 (fixtures)
    N_PIECES,
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

from beetsplug.soundslike.fingerprint import (
    FingerprintIndex,
    IndexVersionError,
    open_fingerprints,
    params,
)
from beetsplug.soundslike.fingerprint import landmarks as fp
from beetsplug.soundslike.fingerprint.landmarks import QueryKeys
from beetsplug.soundslike.fingerprint.local import compaction, search
from beetsplug.soundslike.fingerprint.local import format as index_format
from beetsplug.soundslike.fingerprint.local.format import MANIFEST
from beetsplug.soundslike.fingerprint.local.segments import FWD_NARROW, forward_within, open_segment


def test_remove_then_identify(index, pieces):
    assert 6 in index and len(index) == N_PIECES
    index.remove([6])
    index.flush()
    assert 6 not in index and len(index) == N_PIECES - 1
    assert index.identify(clip(pieces[6], 8.0, 5), SR) is None
    # the others are still found
    assert_match(index.identify(clip(pieces[1], 8.0, 5), SR), 1, 8.0)


def test_reopen_gives_same_answers(index_dir, pieces):
    q = clip(pieces[9], 14.0, 5)
    with FingerprintIndex(index_dir) as a:
        first = a.identify(q, SR)
    with FingerprintIndex(index_dir) as b:
        again = b.identify(q, SR)
        assert b.item_ids() == set(range(1, N_PIECES + 1))
    assert_match(first, 9, 14.0)
    assert again == first


def test_hash_directory_finds_the_same_postings_as_a_full_search(index):
    # Each segment's prefix directory narrows the binary search; it must
    # give exactly the ranges a search of the whole sorted array gives,
    # for present and absent hashes and both ends of the hash space.
    seg = index._segments[0]
    assert seg.prefix_starts is not None
    hashes = seg.keys()
    rng = np.random.default_rng(3)
    keys = np.unique(np.concatenate([
        hashes[:: max(1, hashes.size // 500)], rng.integers(0, 1 << params.HASH_BITS, 500),
        [0, (1 << params.HASH_BITS) - 1],
    ])).astype(np.uint32)
    lo, count = seg.ranges(keys)
    expected_lo = np.searchsorted(hashes, keys, side="left")
    assert np.array_equal(lo, expected_lo)
    assert np.array_equal(count, np.searchsorted(hashes, keys, side="right") - expected_lo)
    assert count.sum() > 0 and (count == 0).any()


def test_large_segments_get_a_finer_directory(pieces, tmp_path, monkeypatch):
    # A 16,384-track segment holds ~300 million landmarks: its directory
    # has more prefix bits so that a run stays about one page. Here a
    # small segment is given a 21-bit directory the same way.
    monkeypatch.setattr(index_format, "MIN_DIR_BITS", 21)
    with FingerprintIndex(tmp_path / "fine") as index:
        for item_id in (1, 2, 3):
            index.add(item_id, pieces[item_id], SR)
        index.flush()
        seg = index._segments[0]
        assert seg.prefix_starts.size == (1 << 21) + 1 and seg.dir_shift == params.HASH_BITS - 21
        hashes = seg.keys()
        keys = np.unique(np.concatenate([hashes[::7], np.arange(0, 1 << params.HASH_BITS, 4099),
                                         [(1 << params.HASH_BITS) - 1]])).astype(np.uint32)
        lo, count = seg.ranges(keys)
        assert np.array_equal(lo, np.searchsorted(hashes, keys, side="left"))
        assert np.array_equal(count, np.searchsorted(hashes, keys, side="right") - lo)
        assert_match(index.identify(clip(pieces[2], 9.0, 5), SR), 2, 9.0)


def as_older_format(directory, version: int, keep_directory: bool = True) -> None:
    """Rewrite an index in the layout of an older format: landmark words
    in the forward copy (format 4: word and 16-bit frame; format 3:
    frame << 32 | word, whole uint32 keys and, early on, no prefix
    directories) and three columns in the item tables."""
    manifest = json.loads(open(os.path.join(directory, MANIFEST)).read())
    for seq in manifest["segments"]:
        seg = open_segment(str(directory), manifest, seq)
        keys = seg.keys()
        words, frames = seg.forward_runs(0, len(seg.item_ids))
        if version == 3:
            fwd = (frames.astype(np.uint64) << np.uint64(32)) | words.astype(np.uint64)
        else:
            fwd = np.zeros(words.size, FWD_NARROW)
            fwd["word"], fwd["frame"] = words, frames
        table = np.stack([seg.item_ids, seg.item_hashes, seg.item_frames], 1)
        base = os.path.join(directory, f"seg-{seq:08d}")
        del seg
        if version == 3:
            np.save(base + ".hash.npy", keys)
        np.save(base + ".fwd.npy", fwd)
        np.save(base + ".items.npy", table)
        if not keep_directory:
            os.unlink(base + ".dir.npy")
    manifest["format"] = version
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(manifest, f)


@pytest.mark.parametrize("version", [5, 4])
def test_the_places_verified_hold_the_whole_tracks_landmarks_there(index_dir, tmp_path, version):
    # Verification pairs only the peaks around a candidate's places: the
    # landmarks it gets there are the whole track's, word for word and in
    # the same order, at the track's start and end too (and an index of
    # landmark words gives the same).
    directory = tmp_path / "copy"
    shutil.copytree(index_dir, directory)
    if version != 5:
        as_older_format(directory, version)
    manifest = json.loads(open(os.path.join(directory, MANIFEST)).read())
    seg = open_segment(str(directory), manifest, manifest["segments"][0])
    wanted, expected = [], []
    for local in range(len(seg.item_ids)):
        words, frames = seg.forward(local)
        n = int(seg.item_frames[local])
        for rows in ([[-40, 100]], [[200, 450], [900, 1000]], [[n - 200, n + 200]], [[0, n + 1]]):
            within = np.asarray(rows, np.int64)
            inside = np.zeros(frames.size, bool)
            for start, stop in rows:
                inside |= (frames >= start) & (frames < stop)
            [(w, f)] = forward_within([(seg, local, within)])
            assert inside.any()
            assert np.array_equal(w, words[inside]) and np.array_equal(f, frames[inside])
            wanted.append((seg, local, within))
            expected.append((words[inside], frames[inside]))
    # A search pairs the places of all its candidates in one call: the
    # same landmarks, each item's its own.
    for (w, f), (words, frames) in zip(forward_within(wanted), expected, strict=True):
        assert np.array_equal(w, words) and np.array_equal(f, frames)


def test_spans_merge_and_places_recur_past_the_frame_wrap():
    m = params.VERIFY_MARGIN
    # Two places closer than a clip's span make one stretch to read.
    assert search.spans(np.array([1000, 100, 120]), 150).tolist() == [
        [100 - m, 120 + 150 + m], [1000 - m, 1000 + 150 + m]]
    assert search.spans(np.zeros(0, np.int64), 150).shape == (0, 2)
    # Postings keep 18 bits of frame: on a longer track a place read
    # from them stands for itself and for itself one wrap later.
    assert sorted(search.every_wrap(np.array([5, -3]), (1 << 18) + 100, 18).tolist()) == [
        -3, 5, (1 << 18) - 3, (1 << 18) + 5]
    assert search.every_wrap(np.array([5]), 9000, 18).tolist() == [5]


def test_each_candidate_keeps_its_best_distinct_places():
    # Cells within a margin of a better one are read with it (the other
    # grid's count of a cluster, a smeared cluster's neighbour), so they
    # do not use up a place: a looped track's repeats all get one.
    slot = np.array([3, 3, 3, 3, 3, 7])
    votes = np.array([11, 10, 10, 9, 8, 20])
    middle = np.array([100, 110, 500, 520, 900, 40])
    places = search.best_places(slot, votes, middle, np.array([3, 7]))
    assert [p.tolist() for p in places] == [[100, 500, 900], [40]]
    many = np.arange(3 * params.VERIFY_PLACES) * 100
    places = search.best_places(np.zeros(many.size, np.int64), -many, many, np.array([0]))
    assert places[0].tolist() == many[:params.VERIFY_PLACES].tolist()


@pytest.mark.parametrize("version,keep_directory", [(3, True), (3, False), (4, True)])
def test_older_formats_answer_the_same_and_merge_into_the_current_one(index_dir, pieces, tmp_path,
                                                                      version, keep_directory):
    # An index written by an earlier version (16 or 11 bytes a landmark)
    # is searched as it is, gives the same answers, and merges rewrite it
    # in the current layout (the peaks, about 6 bytes a landmark) without
    # losing a landmark: pairing the peaks that landmark words name gives
    # every one of them back.
    queries = [clip(pieces[k], 20.0, 5) for k in (2, 4, 9)]
    with FingerprintIndex(index_dir) as new:
        want = [new.identify(q, SR) for q in queries]
        stored = {i: new.landmarks(i) for i in new.item_ids()}
    d = tmp_path / "old"
    shutil.copytree(index_dir, d)
    as_older_format(d, version, keep_directory)
    with FingerprintIndex(d) as old:
        assert not any(seg.holds_peaks for seg in old._segments)
        assert all(seg.suffixes == (version == 4) for seg in old._segments)
        assert all((seg.prefix_starts is not None) == keep_directory for seg in old._segments)
        assert [old.identify(q, SR) for q in queries] == want
        old.add(40, pieces[11][: 20 * SR], SR)
        old.flush()  # the write rewrites the older segments, as peaks
        assert all(seg.holds_peaks and seg.fwd.dtype.itemsize == 4 for seg in old._segments)
        old.compact()
        assert old.stats()["segments"] == 1
        seg = old._segments[0]
        assert seg.suffixes and seg.holds_peaks and seg.fwd.dtype.itemsize == 4
        for item_id, lm in stored.items():
            got = old.landmarks(item_id)
            mine = set(zip(got.times.tolist(), got.hashes.tolist()))
            assert set(zip(lm.times.tolist(), lm.hashes.tolist())) <= mine
            assert len(mine) <= len(lm) * 1.01
        after = [old.identify(q, SR) for q in queries]
        assert [(m.item_id, m.offset, m.score, m.votes) for m in after] == [
            (m.item_id, m.offset, m.score, m.votes) for m in want]
    assert json.loads(open(d / MANIFEST).read())["format"] == params.FORMAT_VERSION


def three_older_segments(index_dir, tmp_path):
    """A copy of the index with two more flushes (three segments), in
    format 4's layout."""
    d = tmp_path / "old"
    shutil.copytree(index_dir, d)
    with FingerprintIndex(d) as index:
        for item_id in (41, 42):
            index.add(item_id, synth_piece(item_id, 15.0), SR)
            index.flush()
        assert index.stats()["segments"] == 3
    as_older_format(d, 4)
    return d


def test_each_write_rewrites_one_older_segment(index_dir, pieces, tmp_path):
    # A large older index is rewritten a segment at a time, so that no
    # single import holds the writer lock for all of it.
    d = three_older_segments(index_dir, tmp_path)
    q = clip(pieces[2], 4.0, 5)
    with FingerprintIndex(d) as old:
        want = old.identify(q, SR)
        older = [sum(not seg.holds_peaks for seg in old._segments)]
        for item_id in (43, 44, 45):
            old.add(item_id, synth_piece(item_id, 10.0), SR)
            old.flush()
            older.append(sum(not seg.holds_peaks for seg in old._segments))
        assert older == [3, 2, 1, 0]
        got = old.identify(q, SR)
        assert (got.item_id, got.offset, got.score) == (want.item_id, want.offset, want.score)


def test_upgrade_rewrites_every_older_segment_one_lock_at_a_time(index_dir, pieces, tmp_path):
    # beet embed rewrites a whole older index at once, a segment under the
    # writer lock at a time, and reports each one; the answers stay.
    d = three_older_segments(index_dir, tmp_path)
    q = clip(pieces[2], 4.0, 5)
    with FingerprintIndex(d) as old:
        want = old.identify(q, SR)
        assert old.older_parts() == 3
        reported = []
        old.upgrade(progress=reported.append)
        assert reported == [1, 2, 3] and old.older_parts() == 0
        assert old.stats()["segments"] == 3  # rewritten, not merged
        got = old.identify(q, SR)
        assert (got.item_id, got.offset, got.score) == (want.item_id, want.offset, want.score)
        old.upgrade(progress=reported.append)
        assert reported == [1, 2, 3]


def as_18_bit_postings(directory) -> None:
    """Rewrite an index's postings as the plugin wrote them before format
    6: local item << 18 | frame, and a format 5 manifest without the
    segments' layouts (its tracks are shorter than the 15-bit wrap)."""
    manifest = json.loads(open(os.path.join(directory, MANIFEST)).read())
    for seq in manifest["segments"]:
        path = os.path.join(directory, f"seg-{seq:08d}.post.npy")
        posts = np.load(path)
        local, frame = posts >> params.POST_TIME_BITS, posts & params.POST_FRAME_MASK
        np.save(path, (local << np.uint32(params.LEGACY_POST_TIME_BITS)) | frame)
    del manifest["post_bits"]
    manifest["format"] = 5
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(manifest, f)


def test_segments_of_18_bit_postings_answer_and_embed_merges_them_into_one(index_dir, pieces, tmp_path):
    # An index of the layout before format 6 (16,384 items a segment) is
    # read as it is, beside segments written since; beet embed's upgrade
    # merges its segments into the current layout, one segment for all.
    d = three_older_segments(index_dir, tmp_path)  # format 4 landmark words
    with FingerprintIndex(d) as index:
        index.upgrade()  # peaks first: the layout of format 5
        queries = [clip(pieces[k], 4.0 + k, 5) for k in (2, 5, 9)]
        want = [(m.item_id, m.offset, m.score) for m in (index.identify(q, SR) for q in queries)]
    as_18_bit_postings(d)
    with FingerprintIndex(d) as old:
        assert [int(seg.time_bits) for seg in old._segments] == [18, 18, 18]
        assert old.older_parts() == 3
        assert [(m.item_id, m.offset, m.score) for m in (old.identify(q, SR) for q in queries)] == want
        old.add(43, pieces[11][: 20 * SR], SR)
        old.flush()  # an import's write does not rewrite them
        assert sorted(int(seg.time_bits) for seg in old._segments) == [15, 18, 18, 18]
        assert_match(old.identify(clip(pieces[11], 6.0, 5), SR), 43, 6.0)
        reported = []
        old.upgrade(progress=reported.append)
        assert reported == [3] and old.older_parts() == 0
        assert [int(seg.time_bits) for seg in old._segments] == [15, 15]
        assert [(m.item_id, m.offset, m.score) for m in (old.identify(q, SR) for q in queries)] == want
        assert_match(old.identify(clip(pieces[11], 6.0, 5), SR), 43, 6.0)
    manifest = json.loads(open(d / MANIFEST).read())
    assert manifest["format"] == params.FORMAT_VERSION
    assert sorted(manifest["post_bits"]) == sorted(str(s) for s in manifest["segments"])


def test_a_rewrite_into_peaks_killed_midway_leaves_the_older_index_answering(index_dir, pieces, tmp_path,
                                                                            monkeypatch):
    # The write that rewrites an older index commits its own change first;
    # killed during the rewrite, the index keeps its older segments, answers
    # as before, and the next write finishes the rewrite.
    d = tmp_path / "old"
    shutil.copytree(index_dir, d)
    as_older_format(d, 4)
    q = clip(pieces[6], 11.0, 5)
    real_replace, renames = os.replace, []

    def dying_replace(src, dst):
        if os.path.basename(dst) == MANIFEST:
            renames.append(dst)
            if len(renames) == 2:  # the rewrite's commit
                raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    with FingerprintIndex(d) as old:
        want = old.identify(q, SR)
        monkeypatch.setattr(os, "replace", dying_replace)
        old.add(40, pieces[11][: 20 * SR], SR)
        with pytest.raises(KeyboardInterrupt):
            old.flush()
        monkeypatch.setattr(os, "replace", real_replace)
    with FingerprintIndex(d) as reopened:
        assert 40 in reopened and any(not seg.holds_peaks for seg in reopened._segments)
        got = reopened.identify(q, SR)
        assert (got.item_id, got.offset, got.score) == (want.item_id, want.offset, want.score)
        reopened.remove([40])
        reopened.flush()
        assert all(seg.holds_peaks for seg in reopened._segments)
        assert not any(n.startswith(".tmp-") for n in os.listdir(d))
        got = reopened.identify(q, SR)
        assert (got.item_id, got.offset, got.score) == (want.item_id, want.offset, want.score)


def test_the_index_stores_peaks_and_reads_back_every_landmark(index, pieces):
    # The forward copy keeps a track's peaks (4 bytes each, about a fifth
    # as many as its landmarks), and reading it pairs them again: the
    # same words and frames, to the bit, as the track's fingerprint.
    seg = index._segments[0]
    n = len(seg)
    assert seg.hashes.dtype == np.uint8 and seg.posts.dtype == np.uint32
    assert seg.holds_peaks and seg.fwd.dtype.itemsize == 4
    assert seg.fwd.size < 0.3 * n
    sizes = {kind: os.path.getsize(os.path.join(index.directory, f"seg-{seg.seq:08d}.{kind}.npy"))
             for kind in ("hash", "post", "fwd")}
    assert sizes["hash"] + sizes["post"] + sizes["fwd"] <= 5 * n + 4 * seg.fwd.size + 3 * 128
    for local, item_id in enumerate(seg.item_ids[:4]):
        lm = fp.reference_landmarks(pieces[int(item_id)], SR)
        got = index.landmarks(int(item_id))
        order = np.lexsort((lm.hashes, lm.times))
        assert np.array_equal(got.hashes, lm.hashes[order]) and np.array_equal(got.times, lm.times[order])
        assert np.array_equal(got.peaks, lm.peaks)


def _tiled(peaks: np.ndarray, span: int, laps: int, gap: int = 0) -> fp.Landmarks:
    """A track of ``laps`` copies of ``peaks`` every ``span`` frames, with
    ``gap`` more frames of nothing before each copy after the first."""
    tiled = np.concatenate([peaks + (np.int64(k * (span + gap)) << params.PEAK_BITS) for k in range(laps)])
    return fp.Landmarks(*fp.pair_peaks(tiled), laps * (span + gap), tiled)


def test_forward_frames_come_back_exactly(index, pieces, monkeypatch):
    # The forward copy keeps 16 bits of each peak's frame and unwraps them
    # by counting where they fall: a long track (past 65,536 frames, 34
    # minutes) reads back exactly. A run that cannot be unwrapped (its
    # first peak, or a silence, longer than that: a hidden track after
    # minutes of nothing) puts its segment in 4-byte frames; merges keep
    # every frame either way.
    monkeypatch.setattr(compaction, "MERGE_CHUNK_POSTINGS", 5_000)
    lm = fp.reference_landmarks(pieces[11], SR)
    span = int(lm.peaks.max() >> params.PEAK_BITS) + 1
    laps = (1 << 16) // span + 2
    long_track = _tiled(lm.peaks, span, laps)
    assert long_track.times.max() >= 1 << 16
    index.add_landmarks(60, long_track)
    index.flush()
    assert index._segments[-1].fwd.dtype.itemsize == 4
    hidden = _tiled(lm.peaks, span, 2, gap=(1 << 16) + 500)
    index.add_landmarks(61, hidden)
    index.flush()
    assert any(seg.holds_peaks and seg.fwd.dtype.itemsize == 6 for seg in index._segments)
    for item_id, want in ((60, long_track), (61, hidden)):
        got = index.landmarks(item_id)
        order = np.lexsort((want.hashes, want.times))
        assert np.array_equal(got.times, want.times[order]) and np.array_equal(got.hashes, want.hashes[order])
        assert np.array_equal(got.peaks, want.peaks)
    index.compact()
    assert index.stats()["segments"] == 1 and index._segments[0].fwd.dtype.itemsize == 6
    assert_consistent(index)
    index.remove([61])
    index.add(62, pieces[3][: 10 * SR], SR)
    index.flush()
    index.compact()
    assert index.stats()["segments"] == 1
    assert index._segments[0].fwd.dtype.itemsize == 4  # narrow again once the hidden track is gone
    got = index.landmarks(60)
    assert np.array_equal(np.sort(got.times), np.sort(long_track.times))
    m = index.identify(clip(pieces[11], 12.0, 5), SR)
    assert m.item_id == 60
    assert min(abs(m.offset - 12.0 - k * span * params.FRAME_SECONDS) for k in range(laps)) < 0.5


def test_replace_and_add_one_at_a_time(index, pieces):
    # Item 3 now holds piece 11; adds come one track at a time.
    index.add(3, pieces[11], SR)
    index.flush()
    # Its stored landmarks are the new copy's, looked up alone or
    # through the map of every item; the old copy is dead, not gone.
    new = fp.reference_landmarks(pieces[11], SR)
    assert sum(int((seg.item_ids == 3).sum()) for seg in index._segments) == 2
    assert np.array_equal(index.landmarks(3).times, new.times)
    index.stored_ids()
    assert np.array_equal(index.landmarks(3).times, new.times)
    for item_id in (21, 22, 23, 24, 25):
        index.add(item_id, pieces[(item_id % N_PIECES) + 1][: 20 * SR], SR)
        index.flush()
    assert_match(index.identify(clip(pieces[11], 10.0, 5), SR), 3, 10.0)
    m = index.identify(clip(pieces[3], 10.0, 5), SR)
    assert m is None or m.item_id != 3
    # tiered merging keeps the segment count small
    assert index.stats()["segments"] <= 5
    assert len(index) == N_PIECES + 5


def test_hash_counts_follow_every_write(index, pieces, monkeypatch):
    # The candidate search budgets its reads from the index's count of
    # postings per hash value: it must match the segments after adds,
    # replacements, removals and merges (which drop dead copies).
    # Merges stream the hash space in slices: make them many.
    monkeypatch.setattr(compaction, "MERGE_CHUNK_POSTINGS", 20_000)
    assert np.array_equal(index._counts, counted_on_disk(index))
    index.add(3, pieces[11], SR)
    index.flush()
    index.remove([5, 6])
    index.flush()
    assert np.array_equal(index._counts, counted_on_disk(index))
    for item_id in (21, 22, 23, 24):
        index.add(item_id, pieces[item_id % N_PIECES + 1][: 10 * SR], SR)
        index.flush()
    index.compact()
    assert index.stats()["segments"] == 1
    assert np.array_equal(index._counts, counted_on_disk(index))
    assert_consistent(index)
    assert index.item_ids() == set(range(1, N_PIECES + 1)) - {5, 6} | {21, 22, 23, 24}
    assert_match(index.identify(clip(pieces[11], 10.0, 5), SR), 3, 10.0)
    assert_match(index.identify(clip(pieces[5], 3.0, 5), SR), 24, 3.0)  # item 5 (piece 5) is gone


def test_track_longer_than_the_posting_frames_wrap(index, pieces):
    # Postings keep 18 bits of frame (2.3 hours); a DJ mix or an audiobook
    # is longer. A passage past the wrap is still found at its true place.
    lm = fp.reference_landmarks(pieces[11], SR)
    shift = (1 << params.POST_TIME_BITS) + 1000
    long_track = fp.Landmarks(lm.hashes, lm.times + np.uint32(shift), lm.n_frames + shift)
    index.add_landmarks(50, long_track)
    index.flush()
    m = index.identify(clip(pieces[11], 12.0, 5), SR)
    assert_match(m, 50, shift * params.FRAME_SECONDS + 12.0)


def test_index_without_hash_counts_matches_and_gets_them_at_the_next_write(index, pieces):
    # Indexes written before the counts existed: the search estimates the
    # costs from a sample; the next write counts the segments.
    manifest = json.loads(open(os.path.join(index.directory, MANIFEST)).read())
    os.unlink(os.path.join(index.directory, manifest.pop("counts")))
    with open(os.path.join(index.directory, MANIFEST), "w") as f:
        json.dump(manifest, f)
    with FingerprintIndex(index.directory) as old:
        assert old._counts is None
        assert_match(old.identify(clip(pieces[7], 12.0, 5), SR), 7, 12.0)
        old.add(30, pieces[2][: 10 * SR], SR)
    with FingerprintIndex(index.directory) as new:
        assert np.array_equal(new._counts, counted_on_disk(new))


def test_many_small_writes_leave_few_segments(index, pieces):
    # Each flush writes a segment; merging keeps the number of segments
    # that can still grow bounded, whatever tiers their sizes fall in.
    for item_id in range(30, 42):
        index.add(item_id, pieces[item_id % N_PIECES + 1][: (4 + item_id % 9) * SR], SR)
        index.flush()
        assert index.stats()["segments"] <= params.MAX_SMALL_SEGMENTS
    assert_consistent(index)
    assert len(index) == N_PIECES + 12
    assert_match(index.identify(clip(pieces[1], 20.0, 5), SR), 1, 20.0)


def test_two_writers_do_not_lose_work(index, pieces):
    d = index.directory
    other = FingerprintIndex(d)
    index.add(31, pieces[2][: 15 * SR], SR)
    other.add(32, pieces[3][: 15 * SR], SR)
    index.flush()
    other.flush()  # re-reads the manifest under the lock: keeps item 31
    other.close()
    with FingerprintIndex(d) as fresh:
        assert {31, 32} <= fresh.item_ids()


def test_crash_mid_write_leaves_valid_index(index, pieces, monkeypatch):
    d = index.directory
    before = index.identify(clip(pieces[2], 6.0, 5), SR)
    # A writer dies after writing segment files but before the manifest rename.
    real_replace = os.replace

    def dying_replace(src, dst):
        if os.path.basename(dst) == MANIFEST:
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)
    index.add(41, pieces[11], SR)
    with pytest.raises(KeyboardInterrupt):
        index.flush()
    monkeypatch.setattr(os, "replace", real_replace)
    # And a half-written temp file from another dead writer.
    with open(os.path.join(d, ".tmp-deadbeef.npy"), "wb") as f:
        f.write(b"\x93NUMPY garbage")
    with FingerprintIndex(d) as reopened:
        assert 41 not in reopened
        assert reopened.item_ids() == set(range(1, N_PIECES + 1))
        assert reopened.identify(clip(pieces[2], 6.0, 5), SR) == before
        # the next write cleans the orphans up and works
        reopened.add(42, pieces[11], SR)
        reopened.flush()
        assert not any(n.startswith(".tmp-") for n in os.listdir(d))
        assert_match(reopened.identify(clip(pieces[11], 3.0, 5), SR), 42, 3.0)


def test_an_outdated_index_is_rebuilt_only_when_asked(index, tmp_path):
    # open_fingerprints is the one switch: beside the library without
    # ``url:``. An index of another format is refused (identify says to
    # rebuild it) unless the caller rebuilds (what analysing tracks does).
    class Settings:
        url = ""
        fingerprint_dir = tmp_path / "fingerprints"
        timeout = 10.0  # the writer lock's, as soundslike.timeout

    shutil.copytree(index.directory, Settings.fingerprint_dir)
    with open_fingerprints(Settings()) as fps:
        assert isinstance(fps, FingerprintIndex) and len(fps) == N_PIECES
    manifest = Settings.fingerprint_dir / MANIFEST
    data = json.loads(manifest.read_text())
    data["format"] = -1  # as written by another version of the plugin
    manifest.write_text(json.dumps(data))
    with pytest.raises(IndexVersionError, match="run 'beet embed' to rebuild it"):
        open_fingerprints(Settings())
    with open_fingerprints(Settings(), rebuild=True) as fps:
        assert len(fps) == 0
    assert sorted(os.listdir(tmp_path)) == ["fingerprints", "idx"]


def test_candidates_are_ranked_by_their_best_offset_cell(tmp_path, pieces):
    # Votes are counted in 4-frame offset cells on two grids shifted by 2
    # frames; a track's count is its best cell on either grid. Counted
    # together, the two grids' keys collide (the same key value names
    # offsets 4k..4k+3 on one grid and 4k-2..4k+1 on the other): 7 hits at
    # one place counted 14 and outranked 12 hits at another.
    def words(piece, n):
        lm = fp.reference_landmarks(pieces[piece], SR)
        keys = fp.landmark_keys(lm.hashes)
        _, first = np.unique(keys, return_index=True)
        first = np.sort(first[keys[first] != params.NO_KEY])[:n]
        return lm.hashes[first], keys[first]

    clip_times = {"A": np.arange(12) * 10, "B": np.arange(7) * 10}
    places = {"A": 1002, "B": 2000}  # A's place is 2 frames into its cell, B's on a cell border
    picked = {"A": words(1, 12), "B": words(2, 7)}
    with FingerprintIndex(tmp_path / "crafted") as index:
        for item_id, name in ((1, "A"), (2, "B")):
            times = (places[name] + clip_times[name]).astype(np.uint32)
            index.add_landmarks(item_id, fp.Landmarks(picked[name][0], times, int(times.max()) + 10))
        index.flush()
        keys = np.concatenate([picked["A"][1], picked["B"][1]])
        t = np.concatenate([clip_times["A"], clip_times["B"]]).astype(np.float32)
        q = QueryKeys(keys, t, np.zeros(keys.size, np.uint8), (1.0,), 200,
                      entry_speed=np.ones(keys.size, np.float32), clip_time=t)
        slots, found = next(search.candidate_rounds(index._segments, index._counts, index._counts_map, q))
        ranked = []
        for slot in slots.tolist():
            seg, local = search.slot_place(index._segments, slot)
            ranked.append(int(seg.item_ids[local]))
        assert ranked == [1, 2]
        # Each one's best place is where its hits agree, to within a cell.
        assert abs(int(found[0][0]) - places["A"]) <= 2
        assert abs(int(found[1][0]) - places["B"]) <= 2
