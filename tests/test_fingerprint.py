"""Landmark fingerprint index on generated music.

Every piece is synthesised from a seed: a random melody over random chords
(harmonic tones with attack/decay envelopes) and drum-like noise bursts, so
pieces differ in notes and rhythm, like different recordings. Clips are cut,
degraded (noise, lossy codec, speed change) and identified against an index
of ten pieces.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import subprocess

import numpy as np
import pytest
from scipy import signal

from beetsplug.soundslike import audiocheck
from beetsplug.soundslike import fingerprint as fp
from beetsplug.soundslike import fpindex
from beetsplug.soundslike.fpindex import (
    MANIFEST,
    ClipTooShort,
    FingerprintError,
    FingerprintIndex,
    Match,
    _map_npy,
    _MappedFile,
    verify,
)

SR = 16000
N_PIECES = 10


def synth_piece(seed: int, seconds: float = 36.0) -> np.ndarray:
    """A piece of music: melody, chords and drums, all decided by ``seed``."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    out = np.zeros(n, np.float64)
    beat = rng.uniform(0.22, 0.4)
    root = rng.integers(45, 57)
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12, 14, 16])
    t_note = np.arange(int(SR * 1.6)) / SR

    def tone(midi, length, amp, harmonics):
        f0 = 440.0 * 2 ** ((midi - 69) / 12)
        m = min(int(length * SR), t_note.size)
        t = t_note[:m]
        env = np.minimum(1.0, t / 0.01) * np.exp(-t * rng.uniform(2.0, 5.0))
        wave = sum(a * np.sin(2 * np.pi * f0 * (k + 1) * t) for k, a in enumerate(harmonics))
        return amp * env * wave

    pos = 0.0
    while pos < seconds - 1.7:
        start = int(pos * SR)
        # melody note on every beat, chord every four beats
        midi = root + 12 + scale[rng.integers(0, scale.size)]
        note = tone(midi, beat * rng.choice([1, 1, 2]), 0.5, [1.0, 0.5, 0.3, 0.15])
        out[start:start + note.size] += note
        if rng.random() < 0.3:
            chord_root = root + scale[rng.integers(0, 5)]
            for iv in (0, 4, 7):
                c = tone(chord_root + iv, beat * 4, 0.2, [1.0, 0.4, 0.2])
                out[start:start + c.size] += c
        if rng.random() < 0.5:
            m = int(0.08 * SR)
            burst = rng.standard_normal(m) * np.exp(-np.arange(m) / (0.015 * SR)) * 0.4
            out[start:start + m] += signal.lfilter([1, -0.9], [1], burst)
        pos += beat
    out /= np.max(np.abs(out)) + 1e-9
    return (0.8 * out).astype(np.float32)


def add_noise(x: np.ndarray, snr_db: float, seed: int, color: str = "pink") -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(x.size)
    if color == "pink":
        spec = np.fft.rfft(noise)
        f = np.arange(spec.size, dtype=np.float64)
        f[0] = 1
        noise = np.fft.irfft(spec / np.sqrt(f), x.size)
    gain = np.sqrt(np.mean(x.astype(np.float64) ** 2) / np.mean(noise ** 2)) / 10 ** (snr_db / 20)
    return (x + gain * noise).astype(np.float32)


def codec_roundtrip(x: np.ndarray, tmp_path, args: list[str], ext: str) -> np.ndarray:
    """Encode with ffmpeg and decode back (what a recorded/streamed clip goes through)."""
    src, dst = tmp_path / "clip.f32", tmp_path / f"clip.{ext}"
    x.astype("<f4").tofile(src)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "f32le", "-ar", str(SR), "-ac", "1", "-i", str(src),
                    *args, str(dst)], check=True)
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(dst), "-ac", "1", "-ar", str(SR), "-f", "f32le", "-"],
                         check=True, capture_output=True).stdout
    return np.frombuffer(out, "<f4").copy()


def clip(x: np.ndarray, start_s: float, seconds: float) -> np.ndarray:
    return x[int(start_s * SR): int((start_s + seconds) * SR)].copy()


@pytest.fixture(scope="module")
def pieces():
    return {item_id: synth_piece(seed=item_id) for item_id in range(1, N_PIECES + 2)}


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, pieces):
    """An index of pieces 1..10; piece 11 stays out (the "unknown" one)."""
    d = tmp_path_factory.mktemp("fpindex")
    with FingerprintIndex(d) as index:
        for item_id in range(1, N_PIECES + 1):
            assert index.add(item_id, pieces[item_id], SR) > 500
    return d


@pytest.fixture()
def index(index_dir, tmp_path):
    """A private copy of the shared index, so tests may modify it."""
    d = tmp_path / "idx"
    shutil.copytree(index_dir, d)
    with FingerprintIndex(d) as idx:
        yield idx


def assert_match(m: Match | None, item_id: int, offset: float, tol: float = 0.5):
    assert m is not None, "no match"
    assert m.item_id == item_id
    assert abs(m.offset - offset) <= tol, m
    assert 0.5 <= m.confidence <= 1.0
    assert m.score >= 5


def test_reference_landmarks_are_sparse_and_fast(pieces):
    lm = fp.reference_landmarks(pieces[1], SR)
    seconds = pieces[1].size / SR
    assert 20 < len(lm) / seconds < 200
    assert lm.hashes.dtype == np.uint32 and lm.times.dtype == np.uint32
    assert np.all(np.diff(lm.times.astype(np.int64)) >= 0)
    assert lm.hashes.max() < 1 << 23


def test_clean_clip(index, pieces):
    assert_match(index.identify(clip(pieces[3], 12.3, 5), SR), 3, 12.3)


def test_match_lists_the_candidate_places_answer_first(index, pieces):
    # What the second look at the audio compares: one place per track,
    # the answer's first, the others by their peak counts.
    m = index.identify(add_noise(clip(pieces[4], 9.0, 5), 0.0, seed=2), SR, min_confidence=0.0)
    first = m.candidates[0]
    assert (first.item_id, first.offset, first.score) == (m.item_id, m.offset, m.score)
    items = [c.item_id for c in m.candidates]
    assert len(items) == len(set(items)) >= 3
    assert [c.score for c in m.candidates[1:]] == sorted((c.score for c in m.candidates[1:]), reverse=True)


def test_three_second_clean_clip(index, pieces):
    assert_match(index.identify(clip(pieces[7], 20.0, 3), SR), 7, 20.0)


def test_noisy_reencoded_offset_clip(index, pieces, tmp_path):
    x = add_noise(clip(pieces[5], 17.4, 5), 5.0, seed=1)
    x = codec_roundtrip(x, tmp_path, ["-c:a", "libmp3lame", "-b:a", "64k"], "mp3")
    assert_match(index.identify(x, SR), 5, 17.4)


def test_white_noise_aac_clip(index, pieces, tmp_path):
    x = add_noise(clip(pieces[8], 4.0, 5), 5.0, seed=2, color="white")
    x = codec_roundtrip(x, tmp_path, ["-c:a", "aac", "-b:a", "32k"], "m4a")
    assert_match(index.identify(x, SR), 8, 4.0)


def test_telephone_band_at_8khz(index, pieces):
    x = clip(pieces[2], 9.0, 5)
    sos = signal.butter(4, [300, 3400], btype="band", fs=SR, output="sos")
    x = signal.resample_poly(signal.sosfilt(sos, x), 1, 2).astype(np.float32)
    assert_match(index.identify(x, 8000), 2, 9.0)


@pytest.mark.parametrize("percent", [2, -2])
def test_speed_change(index, pieces, percent):
    # Played `percent` % fast: fewer samples at the same rate, pitch moves too.
    x = clip(pieces[4], 10.0, 5)
    up, down = (100, 100 + percent) if percent > 0 else (100 - percent, 100)
    x = signal.resample_poly(x, up, down).astype(np.float32)
    m = index.identify(x, SR)
    assert_match(m, 4, 10.0)
    assert abs(m.speed - (1 + percent / 100)) < 0.006


def test_unknown_piece_is_none(index, pieces):
    assert index.identify(clip(pieces[11], 10.0, 5), SR) is None
    assert index.identify(add_noise(clip(pieces[11], 20.0, 5), 5.0, seed=3), SR) is None


def test_noise_only_is_none(index):
    rng = np.random.default_rng(5)
    assert index.identify((0.1 * rng.standard_normal(5 * SR)).astype(np.float32), SR) is None
    assert index.identify(np.zeros(5 * SR, np.float32), SR) is None


def test_too_short_clip_raises(index, pieces):
    with pytest.raises(ClipTooShort, match="too short|at least"):
        index.identify(clip(pieces[1], 3.0, 0.3), SR)


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
        hashes[:: max(1, hashes.size // 500)], rng.integers(0, 1 << fp.HASH_BITS, 500),
        [0, (1 << fp.HASH_BITS) - 1],
    ])).astype(np.uint32)
    lo, count = seg.ranges(keys)
    expected_lo = np.searchsorted(hashes, keys, side="left")
    assert np.array_equal(lo, expected_lo)
    assert np.array_equal(count, np.searchsorted(hashes, keys, side="right") - expected_lo)
    assert count.sum() > 0 and (count == 0).any()


def _verify_one_run(shared: int) -> Match:
    """verify() over one candidate track, and no other candidate at all,
    whose 90 peaks over the clip's span include ``shared`` of the clip's
    peaks (the others are random)."""
    rng = np.random.default_rng(shared)
    n_bins, n_frames, offset = fp.BIN_HI - fp.BIN_LO, 156, 300
    # The clip: 250 random peaks (50 a second), one frame shift.
    ct, cf = rng.integers(0, n_frames, 250), rng.integers(0, n_bins, 250)
    peaks = fp.ClipPeaks({0.0: (ct.astype(float), (cf + fp.BIN_LO).astype(float))}, n_frames)
    # The track: 18 peaks a second; over the clip's span, `shared` of them
    # are the clip's.
    pick = rng.choice(250, shared, replace=False)
    before, after = rng.integers(0, offset, 170), rng.integers(offset + n_frames, 2000, 1000)
    inside = rng.integers(offset, offset + n_frames, 90 - shared)
    rt = np.concatenate([before, inside, ct[pick] + offset, after])
    rf = np.concatenate([rng.integers(0, n_bins, 170 + 90 - shared), cf[pick], rng.integers(0, n_bins, 1000)])
    order = np.lexsort((rf, rt))
    rt, rf = rt[order], rf[order]
    a, b = fp._pairs(rt, rf, fp.REF_FANOUT, lookahead=4 * fp.REF_FANOUT)
    ref_hashes = fp.pack_hash(rf[a], rf[b] - rf[a], rt[b] - rt[a])
    q = fp.query_landmarks(None, None, speeds=(1.0,), shifts=(0.0,), peaks=peaks)
    return verify(q, [(7, ref_hashes, rt[a].astype(np.uint32))], peaks)


def test_stored_hashes_give_back_the_reference_peaks():
    # Verification needs the track's peaks, not its audio: every peak that
    # took part in a pair comes back from the hashes, and nothing else.
    rng = np.random.default_rng(3)
    t = np.sort(rng.integers(0, 3000, 900))
    f = rng.integers(0, fp.BIN_HI - fp.BIN_LO, 900)
    order = np.lexsort((f, t))
    t, f = t[order], f[order]
    a, b = fp._pairs(t, f, fp.REF_FANOUT, lookahead=4 * fp.REF_FANOUT)
    got_t, got_f = fp.landmark_peaks(fp.pack_hash(f[a], f[b] - f[a], t[b] - t[a]), t[a])
    used = np.unique(np.r_[a, b])
    want = sorted(set(zip(t[used].tolist(), f[used].tolist())))
    assert list(zip(got_t.tolist(), got_f.tolist())) == want


def test_peak_cover_counts_the_peaks_a_clip_shares_with_the_track(pieces):
    # A clean clip has (nearly) every reference peak over its span at its
    # place, and few of them a second later or at another speed.
    track = pieces[2]
    lm = fp.reference_landmarks(track, SR)
    ref_t, ref_f = fp.landmark_peaks(lm.hashes, lm.times)
    offset = 250  # frames: 8 s
    clip = track[int(offset * fp.FRAME_SECONDS * SR): int((offset * fp.FRAME_SECONDS + 5) * SR)]
    peaks = fp.clip_peaks(clip, SR)
    cover = fp.peak_cover(peaks)
    here, span = fp.covered_peaks(cover, ref_t, ref_f, offset)
    assert span > 50 and here >= 0.9 * span
    elsewhere, _ = fp.covered_peaks(cover, ref_t, ref_f, offset + 31)
    assert elsewhere < 0.5 * here
    fast, _ = fp.covered_peaks(fp.peak_cover(peaks, 1.03), ref_t, ref_f, offset)
    assert fast < 0.6 * here


def test_no_read_ahead_for_pages_already_in_memory(tmp_path):
    # Asking the kernel for pages it holds costs a system call per range
    # and gains nothing: a sample of them is checked first.
    path = tmp_path / "a.npy"
    np.save(path, np.arange(1 << 20, dtype=np.uint32))
    path.read_bytes()  # now in the page cache
    with open(path, "rb") as f:
        mm = _RecordingMap(f.fileno(), 0, access=mmap.ACCESS_READ)
    mm.calls = []
    mapped = _MappedFile(mm, 128, 4)
    starts = np.arange(0, 1 << 20, 5000)
    mapped.prefetch(starts, starts + 10)
    assert mm.calls == []
    # Out of the page cache, every range is asked for.
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)  # dirty pages cannot be dropped
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    mapped.prefetch(starts, starts + 10)
    if not mapped._in_memory(np.arange(0, len(mm) - 4096, 4096 * 37)):  # eviction works on this file system
        assert len(mm.calls) == starts.size


def test_a_lone_weak_match_is_not_certain():
    # No rival reached the counting bar, which does not mean chance gave
    # nothing: a handful of votes must not look certain (a certain answer
    # also ends the search before other speeds are tried).
    weak = _verify_one_run(25)
    assert weak.item_id == 7 and weak.votes >= fpindex.MIN_SCORE and 25 <= weak.score < 35
    assert weak.runner_up >= 0.2 * 90 and weak.confidence < 0.9
    strong = _verify_one_run(70)
    assert 70 <= strong.score < 80 and strong.confidence > fpindex.EARLY_STOP_CONFIDENCE


def test_mapped_arrays_equal_the_saved_ones(tmp_path):
    for name, array in (("a", np.arange(1000, dtype=np.uint32) * 7),
                        ("b", np.arange(30, dtype=np.int64).reshape(10, 3)),
                        ("c", np.zeros(0, np.uint64))):
        np.save(tmp_path / f"{name}.npy", array)
        mapped, _ = _map_npy(str(tmp_path / f"{name}.npy"))
        assert mapped.dtype == array.dtype and np.array_equal(mapped, array)
        assert not mapped.flags.writeable
    # A file cut short (a disk that filled up) is refused, not read past its end.
    raw = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(raw[:-100])
    with pytest.raises(FingerprintError, match="truncated"):
        _map_npy(str(tmp_path / "short.npy"))


class _AdviceRecorder(bytearray):
    """Stands in for the mmap: records what read-ahead is asked for."""

    def __init__(self, size):
        super().__init__(size)
        self.calls = []

    def madvise(self, option, start, length):
        self.calls.append((start, start + length))


class _RecordingMap(mmap.mmap):
    """A real memory map that records read-ahead requests."""

    def madvise(self, option, start=0, length=None):
        self.calls.append((start, length))


def test_read_ahead_ranges_are_page_aligned_coalesced_and_bounded():
    page = mmap.PAGESIZE
    rec = _AdviceRecorder(size=(1 << 22) + page)
    mapped = _MappedFile(rec, data_offset=128, itemsize=4)
    # Elements 0-9 and 100-109 lie within a few hundred bytes: one range.
    # Element 500,000 is ~2 MB further: a range of its own. The last one
    # runs past the end of the file and is cut there.
    mapped.prefetch(np.array([100, 500_000, 0, (1 << 20) - 5]), np.array([110, 500_010, 10, (1 << 20) + 2000]))
    assert rec.calls == [(0, 128 + 110 * 4),
                         ((128 + 500_000 * 4) // page * page, 128 + 500_010 * 4),
                         ((128 + ((1 << 20) - 5) * 4) // page * page, (1 << 22) + page)]
    assert all(start % page == 0 for start, _ in rec.calls)


def test_large_segments_get_a_finer_directory(pieces, tmp_path, monkeypatch):
    # A 16,384-track segment holds ~300 million landmarks: its directory
    # has more prefix bits so that a run stays about one page. Here a
    # small segment is given a 21-bit directory the same way.
    monkeypatch.setattr(fpindex, "MIN_DIR_BITS", 21)
    with FingerprintIndex(tmp_path / "fine") as index:
        for item_id in (1, 2, 3):
            index.add(item_id, pieces[item_id], SR)
        index.flush()
        seg = index._segments[0]
        assert seg.prefix_starts.size == (1 << 21) + 1 and seg.dir_shift == fp.HASH_BITS - 21
        hashes = np.asarray(seg.hashes)
        keys = np.unique(np.concatenate([hashes[::7], np.arange(0, 1 << fp.HASH_BITS, 4099),
                                         [(1 << fp.HASH_BITS) - 1]])).astype(np.uint32)
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
    total = np.zeros(1 << fp.HASH_BITS, np.int64)
    for seg in index._segments:
        total += np.bincount(np.asarray(seg.hashes), minlength=total.size)
    return total


def _assert_consistent(index: FingerprintIndex) -> None:
    """Every segment's inverted index holds exactly its forward copy."""
    for seg in index._segments:
        hashes, posts = np.asarray(seg.hashes), np.asarray(seg.posts)
        assert np.all(hashes[1:] >= hashes[:-1])
        local = posts >> seg.time_bits
        assert np.all(local < len(seg.item_ids))
        for k in range(len(seg.item_ids)):
            h, t = FingerprintIndex._forward(seg, k)
            assert np.all(np.diff(t.astype(np.int64)) >= 0)  # time order
            mine = local == k
            got = np.sort((hashes[mine].astype(np.uint64) << np.uint64(32)) | (posts[mine] & seg.frame_mask))
            want = np.sort((h.astype(np.uint64) << np.uint64(32)) | (t & seg.frame_mask))
            assert np.array_equal(got, want)


def test_hash_counts_follow_every_write(index, pieces, monkeypatch):
    # The candidate search budgets its reads from the index's count of
    # postings per hash value: it must match the segments after adds,
    # replacements, removals and merges (which drop dead copies).
    # Merges stream the hash space in slices: make them many.
    monkeypatch.setattr(fpindex, "MERGE_CHUNK_POSTINGS", 20_000)
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


def _rewrite_as_format_2(directory) -> None:
    """Turn an index into what version 2 of the format wrote: 4,096-item
    segments with 20-bit frames in the postings and the local item in the
    forward copy, no hash counts."""
    manifest = json.loads(open(os.path.join(directory, MANIFEST)).read())
    for seq in manifest["segments"]:
        seg = fpindex._Segment(str(directory), seq)
        hs, ps, fw = [], [], []
        for k in range(len(seg.item_ids)):
            h, t = FingerprintIndex._forward(seg, k)
            hs.append(h)
            ps.append((np.uint32(k) << np.uint32(20)) | t)
            fw.append((np.uint64(k) << np.uint64(52)) | (t.astype(np.uint64) << np.uint64(32)) | h)
        key = np.sort((np.concatenate(hs).astype(np.uint64) << np.uint64(32)) | np.concatenate(ps))
        base = os.path.join(directory, f"seg-{seq:08d}")
        del seg
        np.save(base + ".hash.npy", (key >> np.uint64(32)).astype(np.uint32))
        np.save(base + ".post.npy", (key & np.uint64(0xFFFFFFFF)).astype(np.uint32))
        np.save(base + ".fwd.npy", np.concatenate(fw))
        np.save(base + ".dir.npy", fpindex._hash_directory((key >> np.uint64(32)).astype(np.uint32)))
    os.unlink(os.path.join(directory, manifest.pop("counts")))
    manifest.pop("legacy_segments", None)
    manifest["format"] = 2
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(manifest, f)


def test_format_2_index_is_read_and_upgraded_by_merging(index_dir, pieces, tmp_path):
    # An index written by the previous release stays usable as it is (no
    # rescan after an upgrade); merges rewrite its segments in the new
    # layout.
    d = tmp_path / "v2"
    shutil.copytree(index_dir, d)
    _rewrite_as_format_2(d)
    with FingerprintIndex(d) as old:
        assert all(seg.time_bits == 20 for seg in old._segments)
        assert_match(old.identify(clip(pieces[6], 15.0, 5), SR), 6, 15.0)
        assert old.same_recording(6) == []
        old.add(40, pieces[6], SR)  # a second copy of piece 6
        old.flush()
        old.compact()
        assert [seg.time_bits for seg in old._segments] == [fpindex.POST_TIME_BITS]
        _assert_consistent(old)
        assert old.same_recording(6) == [40]
        m = old.identify(clip(pieces[2], 21.0, 5), SR)
        assert_match(m, 2, 21.0)
    manifest = json.loads(open(os.path.join(d, MANIFEST)).read())
    assert manifest["format"] == fpindex.FORMAT_VERSION and manifest["legacy_segments"] == []


def test_track_longer_than_the_posting_frames_wrap(index, pieces):
    # Postings keep 18 bits of frame (2.3 hours); a DJ mix or an audiobook
    # is longer. A passage past the wrap is still found at its true place.
    lm = fp.reference_landmarks(pieces[11], SR)
    shift = (1 << fpindex.POST_TIME_BITS) + 1000
    long_track = fp.Landmarks(lm.hashes, lm.times + np.uint32(shift), lm.n_frames + shift)
    index.add_landmarks(50, long_track)
    index.flush()
    m = index.identify(clip(pieces[11], 12.0, 5), SR)
    assert_match(m, 50, shift * fp.FRAME_SECONDS + 12.0)


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
        assert index.stats()["segments"] <= fpindex.MAX_SMALL_SEGMENTS
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


def test_identify_does_not_import_torch():
    code = ("import sys, numpy as np; from beetsplug.soundslike.fpindex import FingerprintIndex; "
            "import tempfile; FingerprintIndex(tempfile.mkdtemp()).identify(np.zeros(32000, np.float32), 16000); "
            "assert 'torch' not in sys.modules and 'librosa' not in sys.modules")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([os.environ.get("PYTHON", __import__("sys").executable), "-c", code], check=True, cwd=root)


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


def _looped_track(seed: int = 21) -> np.ndarray:
    """40 s: a 10 s phrase at 0 s and again, sample for sample, at 20 s;
    at 10 s the same phrase under a different accompaniment (a near
    repeat that a clean clip tells apart)."""
    phrase = synth_piece(seed, seconds=12.0)[: 10 * SR]
    other = synth_piece(seed + 100, seconds=12.0)[: 10 * SR]
    track = np.concatenate([phrase, 0.6 * phrase + 0.6 * other, phrase,
                            synth_piece(seed + 200, seconds=12.0)[: 10 * SR]])
    return track.astype(np.float32)


def test_refine_offset_picks_the_place_that_fits_clearly_better():
    track = _looped_track()
    x = clip(track, 12.0, 5)  # from the near repeat
    # The votes said 2.0 (the plain phrase); the audio says 12.0.
    best = audiocheck.refine_offset(x, SR, track, SR, [2.0, 12.0])
    assert abs(best - 12.0) < 0.1


def test_refine_offset_keeps_the_votes_choice_among_identical_repeats():
    track = _looped_track()
    x = add_noise(clip(track, 22.0, 5), 0.0, seed=4)  # noisy clip of an exact repeat
    best = audiocheck.refine_offset(x, SR, track, SR, [22.0, 2.0])
    assert abs(best - 22.0) < 0.1
    best = audiocheck.refine_offset(x, SR, track, SR, [2.0, 22.0])
    assert abs(best - 2.0) < 0.1
