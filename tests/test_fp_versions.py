"""A version, not the recording (fingerprint/versions.py): noise added to
the recording leaves the track's peaks standing; a version that drops
one of the track's parts leaves holes where that part played."""

from __future__ import annotations

import numpy as np
import pytest
from fp_helpers import SR, add_noise, synth_piece

from beetsplug.soundslike.fingerprint import FingerprintIndex, holes, reference_landmarks
from beetsplug.soundslike.fingerprint.params import MIN_VERSION_HOLES, VERSION_HOLE_SHARE

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
