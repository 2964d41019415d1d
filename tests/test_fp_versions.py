"""A version, not the recording (fingerprint/versions.py): noise added to
the recording leaves the track's peaks standing and takes none of its
sound away; a version that drops one of the track's parts leaves holes
where that part played, and holds its sound far under the track's level."""

from __future__ import annotations

import numpy as np
import pytest
from fp_helpers import SR, add_noise, synth_piece

from beetsplug.soundslike.fingerprint import FingerprintIndex, deficits, holes, reference_landmarks
from beetsplug.soundslike.fingerprint.params import (
    ANALYSIS_RATE,
    MIN_VERSION_HOLES,
    VERSION_DEFICIT_SHARE,
    VERSION_HOLE_SHARE,
)
from beetsplug.soundslike.fingerprint.spectrum import to_analysis_rate

START, SECONDS = 8.0, 6.0


@pytest.fixture(scope="module")
def parts():
    """Two parts of one piece (think melody with chords, and a second
    line over them); the library track is their mix."""
    return synth_piece(31), synth_piece(32)


@pytest.fixture(scope="module")
def track(parts, tmp_path_factory):
    """The mix's stored fingerprint, read back from a real index."""
    mix = (0.5 * (parts[0] + parts[1])).astype(np.float32)
    with FingerprintIndex(str(tmp_path_factory.mktemp("versions") / "index")) as index:
        index.add_landmarks(1, reference_landmarks(mix, SR))
        index.flush()
        yield mix, index.landmarks(1)


def cut(x: np.ndarray) -> np.ndarray:
    return x[int(START * SR): int((START + SECONDS) * SR)]


def test_the_recording_under_loud_noise_leaves_its_peaks_standing(track):
    mix, landmarks = track
    for snr_db, seed in ((10.0, 1), (0.0, 2)):
        found = holes(add_noise(cut(mix), snr_db, seed=seed), SR, landmarks, START)
        assert found.peaks > 50
        assert not found.version, (snr_db, found)
        assert found.share < VERSION_HOLE_SHARE / 2


def test_a_gap_in_the_recording_is_no_version(track):
    # A dropped connection or a paused recording: a second of silence (or
    # of faint hiss) takes sound away, but across the whole frame.
    mix, landmarks = track
    for level in (0.0, 1e-4):
        x = cut(mix).copy()
        gap = slice(2 * SR, 3 * SR)
        x[gap] = level * np.random.default_rng(5).standard_normal(SR)
        assert holes(x, SR, landmarks, START).holes == 0


def test_a_version_without_one_of_the_parts_is_not_the_recording(parts, track):
    _, landmarks = track
    for kept in parts:
        found = holes(cut(kept), SR, landmarks, START)
        assert found.version, found
        assert found.holes >= MIN_VERSION_HOLES


def test_the_recording_played_fast_is_read_at_its_speed(track):
    mix, landmarks = track
    speed = 1.05  # every frequency x 1.05, every time / 1.05
    x = cut(mix)
    fast = np.interp(np.arange(0, x.size - 1, speed), np.arange(x.size), x).astype(np.float32)
    assert not holes(fast, SR, landmarks, START, speed).version
    # Read at the wrong place, the same clip is no version of anything:
    # the test is only meaningful where the votes put the clip.
    assert holes(x, SR, landmarks, START + 3.0).share > holes(x, SR, landmarks, START).share


def test_a_clip_outside_the_track_has_no_peaks_to_judge(track):
    mix, landmarks = track
    found = holes(cut(mix), SR, landmarks, 1000.0)
    assert (found.peaks, found.holes, found.version) == (0, 0, False)


# ------------------------------------------------------- the level test


def from_place(mix: np.ndarray, start: float = START) -> np.ndarray:
    """The track's audio at the analysis rate from the clip's place on:
    what ``beet identify`` reads of the track's file."""
    return to_analysis_rate(mix, SR)[int(round(start * ANALYSIS_RATE)):]


def band(x: np.ndarray, low: float, high: float, gain_db: float = 0.0) -> np.ndarray:
    """``x`` through a brick-wall band from ``low`` to ``high`` Hz,
    ``gain_db`` louder."""
    spectrum = np.fft.rfft(x)
    hz = np.fft.rfftfreq(x.size, 1 / SR)
    spectrum[(hz < low) | (hz > high)] = 0
    return (np.fft.irfft(spectrum, x.size) * 10 ** (gain_db / 20)).astype(np.float32)


def test_levels_the_recording_under_noise_or_through_a_phone_lacks_nothing(track):
    mix, _ = track
    reference = from_place(mix)
    clips = [add_noise(cut(mix), 10.0, seed=1), add_noise(cut(mix), 0.0, seed=2),
             band(cut(mix), 300, 3400, -12.0), add_noise(band(cut(mix), 300, 3400, 6.0), 5.0, seed=3),
             # a wall between (a muffled room), a thin line: past a steep
             # edge the clip's gain is unknown, not a part taken away
             band(cut(mix), 0, 1500), band(cut(mix), 600, 8000), band(cut(mix), 500, 2000)]
    for n, x in enumerate(clips):
        found = deficits(x, SR, reference)
        assert found.audible > 500, (n, found)
        assert not found.version and found.share < VERSION_DEFICIT_SHARE / 2, (n, found)


def test_levels_a_gap_or_a_level_turned_down_is_no_version(track):
    # Whole frames fall: a dropped connection, or a phone's gain control
    # (here 20 dB down three times a second, harsher than any).
    mix, _ = track
    gap = cut(mix).copy()
    gap[2 * SR: 3 * SR] = 0.0
    assert deficits(gap, SR, from_place(mix)).share < VERSION_DEFICIT_SHARE / 10
    ducked = cut(mix) * np.where((np.arange(int(SECONDS * SR)) // (SR // 6)) % 2, 0.1, 1.0)
    assert not deficits(ducked.astype(np.float32), SR, from_place(mix)).version


def test_levels_a_version_without_one_of_the_parts_lacks_what_the_recording_keeps(parts, track):
    mix, _ = track
    reference = from_place(mix)
    shares = []
    for n, kept in enumerate(parts):
        for snr_db in (None, 10.0):
            version, recording = cut(kept), cut(mix)
            if snr_db is not None:
                version = add_noise(version, snr_db, seed=4 + n)
                recording = add_noise(recording, snr_db, seed=4 + n)
            lacking = deficits(version, SR, reference)
            kept_all = deficits(recording, SR, reference)
            assert lacking.share > 0.1 and lacking.share > 10 * kept_all.share, (n, snr_db, lacking, kept_all)
            shares.append(lacking.share)
    assert max(shares) >= VERSION_DEFICIT_SHARE


def test_levels_the_recording_played_fast_is_read_at_its_speed(track):
    mix, _ = track
    speed = 1.05
    x = cut(mix)
    fast = np.interp(np.arange(0, x.size - 1, speed), np.arange(x.size), x).astype(np.float32)
    assert not deficits(fast, SR, from_place(mix), speed).version
    # At another place the clip lacks much of what the track plays there.
    assert deficits(x, SR, from_place(mix, START + 3.0)).share > 2 * deficits(x, SR, from_place(mix)).share


def test_levels_a_track_that_ends_inside_the_clip_gives_no_verdict(track):
    mix, _ = track
    found = deficits(cut(mix), SR, from_place(mix)[: int(ANALYSIS_RATE * SECONDS / 2)])
    assert (found.missing, found.audible, found.version) == (0, 0, False)
