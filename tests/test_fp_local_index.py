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
    assert_match,
    clip,
    codec_roundtrip,
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
from beetsplug.soundslike.fingerprint.local import compaction
from beetsplug.soundslike.fingerprint.local import format as index_format
from beetsplug.soundslike.fingerprint.local.format import MANIFEST


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
    hashes = np.asarray(seg.hashes)
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
        hashes = np.asarray(seg.hashes)
        keys = np.unique(np.concatenate([hashes[::7], np.arange(0, 1 << params.HASH_BITS, 4099),
                                         [(1 << params.HASH_BITS) - 1]])).astype(np.uint32)
        lo, count = seg.ranges(keys)
        assert np.array_equal(lo, np.searchsorted(hashes, keys, side="left"))
        assert np.array_equal(count, np.searchsorted(hashes, keys, side="right") - lo)
        assert_match(index.identify(clip(pieces[2], 9.0, 5), SR), 2, 9.0)


def test_segments_without_a_directory_still_match(index_dir, pieces, tmp_path):
    # Indexes written before the directory existed have no dir files.
    d = tmp_path / "old"
    shutil.copytree(index_dir, d)
    for name in os.listdir(d):
        if name.endswith(".dir.npy"):
            os.unlink(d / name)
    with FingerprintIndex(d) as old:
        assert all(seg.prefix_starts is None for seg in old._segments)
        assert_match(old.identify(clip(pieces[4], 20.0, 5), SR), 4, 20.0)


def test_replace_and_add_one_at_a_time(index, pieces):
    # Item 3 now holds piece 11; adds come one track at a time.
    index.add(3, pieces[11], SR)
    index.flush()
    for item_id in (21, 22, 23, 24, 25):
        index.add(item_id, pieces[(item_id % N_PIECES) + 1][: 20 * SR], SR)
        index.flush()
    assert_match(index.identify(clip(pieces[11], 10.0, 5), SR), 3, 10.0)
    m = index.identify(clip(pieces[3], 10.0, 5), SR)
    assert m is None or m.item_id != 3
    # tiered merging keeps the segment count small
    assert index.stats()["segments"] <= 5
    assert len(index) == N_PIECES + 5


def _counted_on_disk(index: FingerprintIndex) -> np.ndarray:
    total = np.zeros(1 << params.HASH_BITS, np.int64)
    for seg in index._segments:
        total += np.bincount(np.asarray(seg.hashes), minlength=total.size)
    return total


def _assert_consistent(index: FingerprintIndex) -> None:
    """Every segment's inverted index holds exactly the keys of its
    forward copy."""
    for seg in index._segments:
        hashes, posts = np.asarray(seg.hashes), np.asarray(seg.posts)
        assert np.all(hashes[1:] >= hashes[:-1])
        local = posts >> seg.time_bits
        assert np.all(local < len(seg.item_ids))
        for k in range(len(seg.item_ids)):
            h, t = seg.forward(k)
            assert np.all(np.diff(t.astype(np.int64)) >= 0)  # time order
            mine = local == k
            got = np.sort((hashes[mine].astype(np.uint64) << np.uint64(32)) | (posts[mine] & seg.frame_mask))
            want = np.sort((fp.landmark_keys(h).astype(np.uint64) << np.uint64(32))
                           | (t & seg.frame_mask))
            assert np.array_equal(got, want)


def test_hash_counts_follow_every_write(index, pieces, monkeypatch):
    # The candidate search budgets its reads from the index's count of
    # postings per hash value: it must match the segments after adds,
    # replacements, removals and merges (which drop dead copies).
    # Merges stream the hash space in slices: make them many.
    monkeypatch.setattr(compaction, "MERGE_CHUNK_POSTINGS", 20_000)
    assert np.array_equal(index._counts, _counted_on_disk(index))
    index.add(3, pieces[11], SR)
    index.flush()
    index.remove([5, 6])
    index.flush()
    assert np.array_equal(index._counts, _counted_on_disk(index))
    for item_id in (21, 22, 23, 24):
        index.add(item_id, pieces[item_id % N_PIECES + 1][: 10 * SR], SR)
        index.flush()
    index.compact()
    assert index.stats()["segments"] == 1
    assert np.array_equal(index._counts, _counted_on_disk(index))
    _assert_consistent(index)
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
        assert np.array_equal(new._counts, _counted_on_disk(new))


def test_many_small_writes_leave_few_segments(index, pieces):
    # Each flush writes a segment; merging keeps the number of segments
    # that can still grow bounded, whatever tiers their sizes fall in.
    for item_id in range(30, 42):
        index.add(item_id, pieces[item_id % N_PIECES + 1][: (4 + item_id % 9) * SR], SR)
        index.flush()
        assert index.stats()["segments"] <= params.MAX_SMALL_SEGMENTS
    _assert_consistent(index)
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


def test_same_recording(index, pieces, tmp_path):
    # Item 51 is piece 4 re-encoded as mp3 with its first 3 s cut; item 52
    # is another piece.
    copy = codec_roundtrip(pieces[4][3 * SR:], tmp_path, ["-c:a", "libmp3lame", "-b:a", "128k"], "mp3")
    index.add(51, copy, SR)
    index.add(52, synth_piece(99), SR)
    index.flush()
    assert index.same_recording(4) == [51]
    assert index.same_recording(51) == [4]
    assert index.same_recording(52) == []
    lm = index.landmarks(4)
    assert lm is not None and len(lm) > 500 and np.all(np.diff(lm.times.astype(np.int64)) >= 0)


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
