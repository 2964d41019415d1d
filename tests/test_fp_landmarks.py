"""Stage 2 of the fingerprint: peaks and their hashes (landmarks), and the
peaks that verification compares."""

from __future__ import annotations

import numpy as np
from fp_helpers import SR, pieces  # noqa: F401 (fixture)

from beetsplug.soundslike.fingerprint import landmarks as fp
from beetsplug.soundslike.fingerprint import params
from beetsplug.soundslike.fingerprint.arrays import (
    best_per_group,
    counted,
    distinct,
    inverse,
    runs,
    stable_order,
)
from beetsplug.soundslike.fingerprint.spectrum import log_spectrogram, to_analysis_rate, uniform_filter
from beetsplug.soundslike.fingerprint.voting import hits_in_runs, may_reach


def test_reference_landmarks_are_sparse_and_fast(pieces):
    lm = fp.reference_landmarks(pieces[1], SR)
    seconds = pieces[1].size / SR
    assert 20 < len(lm) / seconds < 200
    assert lm.hashes.dtype == np.uint32 and lm.times.dtype == np.uint32
    assert np.all(np.diff(lm.times.astype(np.int64)) >= 0)
    assert lm.hashes.max() < 1 << 31  # hash (23 bits) and two 4-bit sub-bin codes
    keys = lm.keys
    assert keys.max() < 1 << 23 and np.all(keys != params.NO_KEY)


def test_stored_hashes_give_back_the_reference_peaks():
    # Verification needs the track's peaks, not its audio: every peak that
    # took part in a pair comes back from the hashes, and nothing else.
    rng = np.random.default_rng(3)
    t = np.sort(rng.integers(0, 3000, 900))
    f = rng.integers(0, params.BIN_HI - params.BIN_LO, 900)
    order = np.lexsort((f, t))
    t, f = t[order], f[order]
    a, b = fp.pairs(t, f, params.REF_FANOUT, lookahead=4 * params.REF_FANOUT)
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
    clip = track[int(offset * params.FRAME_SECONDS * SR): int((offset * params.FRAME_SECONDS + 5) * SR)]
    peaks = fp.clip_peaks(clip, SR)
    cover = fp.peak_cover(peaks)
    here, span = fp.covered_peaks(cover, ref_t, ref_f, offset)
    assert span > 50 and here >= 0.9 * span
    elsewhere, _ = fp.covered_peaks(cover, ref_t, ref_f, offset + 31)
    assert elsewhere < 0.5 * here
    fast, _ = fp.covered_peaks(fp.peak_cover(peaks, 1.03), ref_t, ref_f, offset)
    assert fast < 0.6 * here


def test_keys_survive_a_speed_change_and_say_the_speed():
    """A pair of peaks played 6 % fast (every frequency x 1.06, every
    time / 1.06) is found by the clip's keys in a search up to 8.5 %, and
    the hit says the speed to within the band's width."""
    t = np.array([10.0, 30.0])
    f = np.array([100.3, 131.8])  # absolute bins, sub-bin positions
    lo = f - params.BIN_LO
    whole = np.floor(lo + 0.5).astype(np.int64)
    word = fp.pack_word(fp.pack_hash(whole[:1], whole[1:] - whole[:1], np.array([20])),
                        fp.fine_code(lo[:1] - whole[:1]), fp.fine_code(lo[1:] - whole[1:]))
    key = fp.landmark_keys(word)[0]
    assert key != params.NO_KEY
    for speed in (1.0, 1.06, 1 / 1.08):
        clip = fp.ClipPeaks({0.0: (t / speed, f * speed)}, 40)
        q = fp.query_keys(clip, params.MAX_SPEED)
        hit = q.hashes == key
        assert hit.any(), speed
        assert np.all(np.abs(np.log(q.entry_speed[hit] / speed)) <= params.KEY_BAND), speed
        # Outside the narrow search's range, the narrow search misses it.
        near = fp.query_keys(clip, params.NEAR_SPEED)
        assert (near.hashes == key).any() == (abs(np.log(speed)) < np.log(params.NEAR_SPEED))


def test_stored_words_give_back_their_keys():
    """A key is a pure function of the stored word: what the index was
    built with can be computed again from the forward copy."""
    rng = np.random.default_rng(3)
    f1 = rng.integers(0, 300, 1000)
    df = np.clip(f1 + rng.integers(-100, 100, 1000), 0, params.BIN_HI - params.BIN_LO - 1) - f1
    dt = rng.integers(1, 64, 1000)
    words = fp.pack_word(fp.pack_hash(f1, df, dt), rng.integers(0, 16, 1000), rng.integers(0, 16, 1000))
    keys = fp.landmark_keys(words)
    assert np.array_equal(keys, fp.landmark_keys(words.copy()))
    assert np.all(keys != params.NO_KEY)
    assert np.array_equal(words & params.HASH_MASK, fp.pack_hash(f1, df, dt))


def test_distinct_is_np_unique_by_sorting():
    rng = np.random.default_rng(7)
    for values in (np.zeros(0, np.uint64), np.array([5], np.int64),
                   rng.integers(0, 50, 1000).astype(np.uint64),
                   rng.integers(-2**40, 2**40, 20000), rng.integers(0, 9, (30, 40))):
        got = distinct(values)
        assert got.dtype == values.dtype
        np.testing.assert_array_equal(got, np.unique(values))


def test_the_sorting_helpers_are_numpys_answers():
    rng = np.random.default_rng(11)
    for values in (np.zeros(0, np.uint32), np.array([7], np.uint32),
                   rng.integers(0, 40, 3000).astype(np.uint32),
                   rng.integers(0, 2**23, 50000).astype(np.uint32),
                   rng.integers(0, 2**32, 5000, dtype=np.uint64).astype(np.uint32),
                   rng.integers(0, 1000, 4000).astype(np.int64),
                   np.sort(rng.integers(0, 2**23, 9000)).astype(np.uint32)):
        order, ordered = stable_order(values)
        np.testing.assert_array_equal(order, np.argsort(values, kind="stable"))
        assert ordered.dtype == values.dtype
        np.testing.assert_array_equal(ordered, values[order])
        for got, want in zip(runs(ordered), np.unique(ordered, return_index=True, return_counts=True)):
            np.testing.assert_array_equal(got, want)
        for got, want in zip(inverse(values), np.unique(values, return_inverse=True)):
            np.testing.assert_array_equal(got, want)
        for got, want in zip(counted(values), np.unique(values, return_counts=True)):
            np.testing.assert_array_equal(got, want)


def test_hits_in_runs_are_every_hit_in_run_order_then_query_order():
    rng = np.random.default_rng(5)
    query = rng.integers(0, 300, 2000).astype(np.uint32)
    query[::7] = rng.integers(2**23 - 50, 2**23, query[::7].size)  # values no run holds
    values = [rng.integers(0, 600, n).astype(np.uint32) for n in (0, 500, 1, 800)]
    frames = [rng.integers(0, 9000, v.size).astype(np.uint32) for v in values]
    want = [(run, float(frame), entry)
            for run, (vs, fs) in enumerate(zip(values, frames))
            for v, frame in zip(vs.tolist(), fs.tolist())
            for entry in np.flatnonzero(query == v).tolist()]
    run, frame, entry = hits_in_runs(query, values, frames)
    assert frame.dtype == np.float64 and len(want) > 1000
    assert list(zip(run.tolist(), frame.tolist(), entry.tolist())) == want
    assert hits_in_runs(query, [values[0]], [frames[0]]) is None
    assert hits_in_runs(query, [], []) is None


def test_may_reach_is_the_two_histograms_count_min_and_drops_no_key_that_reaches():
    rng = np.random.default_rng(6)
    # Offset-cell keys of a vote: many lone chance hits, a few piled up.
    keys = (rng.integers(0, 5000, 300_000).astype(np.int64) << 20) + rng.integers(0, 3000, 300_000)
    keys[:4000] = keys[4000:8000:4].repeat(4)[:4000]
    values, where, counts = np.unique(keys, return_inverse=True, return_counts=True)
    bits = min(20, max(12, keys.size.bit_length() + 1))
    bound = None  # the count-min sketch spelled out: each key's smaller bin count
    for multiplier in (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F):
        h = [(int(k) * multiplier % 2**64) >> (64 - bits) for k in values.tolist()]
        row = np.bincount(h, weights=counts, minlength=1 << bits)[h]
        bound = row if bound is None else np.minimum(bound, row)
    for votes in (2, 3, 7):
        passed = may_reach(keys, votes)
        np.testing.assert_array_equal(passed, (bound >= votes)[where])
        assert passed[counts[where] >= votes].all() and not passed.all()


def test_a_clips_landmarks_at_many_speeds_are_each_speeds_own():
    # query_landmarks pairs all speeds in one call: each speed's hashes
    # must be those it gets alone, in the same order.
    rng = np.random.default_rng(2)
    by_shift = {}
    for shift in (0.0, 0.5):
        tq = np.sort(rng.uniform(0, 150, 700)) + shift
        fq = rng.uniform(params.BIN_LO - 5, params.BIN_HI + 5, tq.size)
        by_shift[shift] = (tq, fq)
    peaks = fp.ClipPeaks(by_shift, 156)
    speeds = (0.92, 0.97, 1.0, 1.03, 1.08)
    many = fp.query_landmarks(None, None, speeds, shifts=(0.0, 0.5), peaks=peaks)
    parts = []
    for shift in (0.0, 0.5):
        for k, s in enumerate(speeds):
            one = fp.query_landmarks(None, None, (s,), shifts=(shift,), peaks=peaks)
            parts.append((one.hashes, one.ref_time, np.full(one.hashes.size, k)))
    assert many.hashes.size > 10_000
    for got, want in zip((many.hashes, many.ref_time, many.speed_index), zip(*parts)):
        np.testing.assert_array_equal(got, np.concatenate(want))


def test_best_per_group_takes_each_groups_highest_score_first_of_equals():
    group = np.array([3, 1, 3, 1, 2, 3, 1])
    score = np.array([5, 2, 9, 7, 4, 9, 7])
    np.testing.assert_array_equal(best_per_group(group, score), [3, 4, 2])
    assert best_per_group(np.zeros(0, np.int64), np.zeros(0, np.int64)).size == 0


def _pairs_one_by_one(t, f, fanout, lookahead, dt_max=params.DT_MAX, df_max=params.DF_MAX):
    """The pairing rule spelled out anchor by anchor."""
    out = []
    for i in range(t.size):
        found = 0
        for j in range(i + 1, min(t.size, i + lookahead + 1)):
            if found < fanout and params.DT_MIN <= t[j] - t[i] <= dt_max and abs(f[j] - f[i]) <= df_max:
                out.append((i, j))
                found += 1
    return out


def test_pairs_follow_the_rule_for_sorted_and_unsorted_peaks():
    rng = np.random.default_rng(11)
    for trial in range(40):
        # both of pairs' ways: up to PAIRS_IN_ONE_STEP peaks and beyond
        n = int(rng.integers(0, fp.PAIRS_IN_ONE_STEP) if trial % 3 else rng.integers(fp.PAIRS_IN_ONE_STEP + 1, 1200))
        t = rng.integers(0, n + 1, n) if trial % 2 else rng.uniform(0, n, n)
        t = np.sort(t) if trial % 4 else t
        f = rng.integers(0, 416, n) if trial % 3 else rng.uniform(-300, 400, n)
        fanout = int(rng.integers(1, 13))
        kw = {"dt_max": params.DT_MAX * 1.085} if trial % 5 == 0 else {}
        a, b = fp.pairs(t, f, fanout, 4 * fanout, **kw)
        assert list(zip(a.tolist(), b.tolist())) == _pairs_one_by_one(t, f, fanout, 4 * fanout, **kw)


def test_peaks_pair_into_the_tracks_landmarks_and_come_back_from_them(pieces):
    # What the index stores of a track is its peaks: pairing them gives
    # the track's landmarks to the bit, and the landmarks name every peak
    # a pair uses (the peaks of an index written before format 5).
    lm = fp.reference_landmarks(pieces[4], SR)
    assert lm.peaks.size < 0.3 * len(lm) and np.all(np.diff(lm.peaks) > 0)
    words, times = fp.pair_peaks(lm.peaks)
    assert np.array_equal(words, lm.hashes) and np.array_equal(times, lm.times)
    back = fp.peaks_of(lm.hashes, lm.times)
    assert np.isin(back, lm.peaks).all() and back.size >= 0.98 * lm.peaks.size
    t, f, code = fp.unpack_peaks(lm.peaks)
    assert np.array_equal(fp.pack_peaks(t, f, code), lm.peaks)
    assert t.max() < lm.n_frames and f.max() < params.BIN_HI - params.BIN_LO and code.max() <= params.FINE_STEPS


def test_log_spectrogram_is_the_log_power_of_the_windowed_frames():
    # The definition, spelled out frame by frame: the fast path must give
    # the same numbers to the bit (fingerprints written before it are
    # compared with clips analysed after it), in both input precisions.
    x = np.random.default_rng(3).standard_normal(params.N_FFT + 37 * params.HOP).astype(np.float32)
    window = np.hanning(params.N_FFT).astype(np.float32)
    for samples in (x, x.astype(np.float64)):
        rows = []
        for start in range(0, samples.size - params.N_FFT + 1, params.HOP):
            spec = np.fft.rfft(samples[start:start + params.N_FFT] * window)[params.BIN_LO:params.BIN_HI]
            power = spec.real.astype(np.float32) ** 2 + spec.imag.astype(np.float32) ** 2
            rows.append(np.log(power + params.LOG_FLOOR).astype(np.float32))
        got = log_spectrogram(samples)
        assert got.dtype == np.float32 and got.shape == (38, params.BIN_HI - params.BIN_LO)
        assert np.array_equal(got, np.array(rows))


def test_uniform_filter_is_the_box_mean_with_edges_repeated():
    # scipy.ndimage's definition (mode "nearest"); a box one wide along
    # an axis leaves that axis as it is, which is skipped, not summed.
    from scipy import ndimage

    a = np.random.default_rng(5).normal(-5.0, 3.0, (300, 416)).astype(np.float32)
    for size in ((1, 43), (31, 43), (31, 1), (4, 8)):
        want = ndimage.uniform_filter(a.astype(np.float64), size, mode="nearest")
        got = uniform_filter(a, size)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.array_equal(uniform_filter(a, (1, 1)), a)


def test_the_analysis_rate_is_the_windowed_sinc_low_pass_every_other_sample():
    # The definition, sample by sample: each output sample the taps'
    # float32 products added in tap order, as fingerprints written
    # before any faster path were made (the same numbers to the bit).
    x = np.random.default_rng(7).standard_normal(16000 + 123).astype(np.float32)
    for m in (2, 3):
        half = 10 * m
        n = np.arange(-half, half + 1)
        h = np.sinc(n / m) * np.kaiser(n.size, 5.0)
        h = (h / h.sum()).astype(np.float32)
        xp = np.concatenate([np.zeros(half, np.float32), x, np.zeros(half + m, np.float32)])
        n_out = (x.size + m - 1) // m
        want = np.zeros(n_out, np.float32)
        for j in range(h.size):
            want += h[j] * xp[j: j + m * n_out: m]
        got = to_analysis_rate(x, params.ANALYSIS_RATE * m)
        assert got.dtype == np.float32 and np.array_equal(got, want)
