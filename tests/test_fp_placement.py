"""Where in the matched track a clip sits (``fingerprint.placement``):
the clip's own passage among repeats and variations, found from windows
of the track, not the whole of it."""

from __future__ import annotations

import numpy as np
from conftest import gen_audio
from fp_helpers import SR, add_noise, clip, synth_piece

from beetsplug.soundslike import audio
from beetsplug.soundslike.fingerprint import Match, placement
from beetsplug.soundslike.fingerprint.landmarks import reference_landmarks
from beetsplug.soundslike.fingerprint.placement import Stretch
from beetsplug.soundslike.fingerprint.spectrum import resample_fft, to_analysis_rate

RATE = gen_audio.RATE


def _varied_track() -> np.ndarray:
    """24 s: 2-7 s of a piece comes back at 12 s with a second instrument
    on top (a variation: the landmark votes may name either place)."""
    base = gen_audio.piece(3, 24.0)
    varied = 0.6 * base[2 * RATE: 7 * RATE] + 0.6 * gen_audio.piece(8, 5.0)
    return np.concatenate([base[: 12 * RATE], varied, base[12 * RATE:]]).astype(np.float32)


def test_best_place_prefers_the_clips_own_passage_to_its_variation():
    track = _varied_track()
    x = to_analysis_rate(gen_audio.add_noise(track[12 * RATE: 17 * RATE], 10.0, seed=4), RATE)
    whole = [Stretch(0.0, to_analysis_rate(track, RATE))]
    assert abs(placement.best_place(x, whole, 2.0, [2.0]) - 12.0) < 0.1
    assert abs(placement.best_place(x, whole, 2.0, [2.0, 12.0]) - 12.0) < 0.1
    # Two windows of the track, one around each place.
    analysed = to_analysis_rate(track, RATE)
    windows = [Stretch(0.0, analysed[: 10 * 8000]), Stretch(9.0, analysed[9 * 8000: 21 * 8000])]
    assert abs(placement.best_place(x, windows, 2.0, [2.0, 12.0]) - 12.0) < 0.1
    # Without the variation's window, the votes' place stands.
    assert placement.best_place(x, windows[:1], 2.0, [2.0]) == 2.0


def test_best_place_keeps_the_votes_place_among_identical_repeats():
    base = gen_audio.piece(3, 24.0)
    track = np.concatenate([base[: 12 * RATE], base[2 * RATE: 7 * RATE], base[12 * RATE:]])
    x = to_analysis_rate(gen_audio.add_noise(track[12 * RATE: 17 * RATE], 10.0, seed=4), RATE)
    whole = [Stretch(0.0, to_analysis_rate(track.astype(np.float32), RATE))]
    assert placement.best_place(x, whole, 2.0, [2.0, 12.0]) == 2.0
    assert placement.best_place(x, whole, 12.0, [12.0, 2.0]) == 12.0


def test_likely_places_come_from_the_stored_peaks():
    track = _varied_track()
    landmarks = reference_landmarks(track, RATE)
    x = to_analysis_rate(track[15 * RATE: 20 * RATE], RATE)
    places = placement.likely_places(x, landmarks, 1.0, 4)
    assert len(places) == 4 and abs(places[0] - 15.0) < 0.1
    # At least a repeat gap apart.
    assert min(abs(a - b) for a in places for b in places if a != b) >= 1.0
    # A clip played 4% fast (4% higher, 4% shorter) is placed on the
    # track's time scale.
    fast = resample_fft(x, int(round(x.size / 1.04)))
    assert abs(placement.likely_places(fast, landmarks, 1.04, 1)[0] - 15.0) < 0.1


def test_place_reads_windows_unless_the_landmarks_settled_one_place(tmp_path, monkeypatch):
    # The clip is the varied restatement at 12 s; the votes said 2.0 and
    # found no repeat: the stored peaks point the placement at 12 s.
    track = _varied_track()
    path = tmp_path / "track.mp3"
    gen_audio.write(track, str(path))
    decoded = audio.decode(path, 16000).samples
    landmarks = reference_landmarks(decoded, 16000)
    end = decoded.size // 2  # at the comparison rate
    x = gen_audio.add_noise(track[12 * RATE: 17 * RATE], 10.0, seed=4)
    read = []
    real = placement.read_stretch
    monkeypatch.setattr(placement, "read_stretch",
                        lambda p, start, seconds: read.append((start, seconds)) or real(p, start, seconds))

    def at(confidence, alternatives=()):
        return Match(item_id=1, offset=2.0, confidence=confidence, speed=1.0, score=40,
                     alternatives=list(alternatives))

    # Settled, one place: the votes' place stands, nothing is read.
    assert placement.place(x, RATE, at(1.0), path, False, landmarks) == 2.0
    assert placement.place(x, RATE, at(1.0), tmp_path / "gone.mp3", False, landmarks) == 2.0
    assert not read
    # Settled, with a repeat elsewhere: the windows are compared.
    assert abs(placement.place(x, RATE, at(1.0, [20.0]), path, False, landmarks) - 12.0) < 0.1
    # Not settled (or settled by a second look): the windows are compared.
    assert abs(placement.place(x, RATE, at(0.9), path, False, landmarks) - 12.0) < 0.1
    assert abs(placement.place(x, RATE, at(1.0), path, True, landmarks) - 12.0) < 0.1
    # Only windows are decoded: none reaches past the track's end, and
    # each compare reads less than the track.
    assert read and all(start >= 0 and start + seconds <= end / 8000 for start, seconds in read)
    assert sum(seconds for _, seconds in read) / 3 < end / 8000
    # The stretches read come back with the place: the clip's span at the
    # place is in them (the version check reads nothing more), and
    # nothing is where nothing was read.
    offset, heard = placement.place_and_audio(x, RATE, at(0.9), path, False, landmarks)
    span = placement.audio_at(heard, offset, 5.0)
    assert span is not None and span.size == 5 * 8000
    assert placement.audio_at(heard, end / 8000 - 1.0, 5.0) is None
    assert placement.place_and_audio(x, RATE, at(1.0), path, False, landmarks) == (2.0, [])
    # A file that cannot be read, or no stored landmarks: the votes' place.
    assert placement.place(x, RATE, at(0.9), tmp_path / "gone.mp3", False, landmarks) == 2.0
    assert placement.place(x, RATE, at(0.9), path, False, None) == 2.0
    # A file cut short since it was fingerprinted (the windows reach past
    # its end): the votes' place, no error.
    short = tmp_path / "short.mp3"
    gen_audio.write(track[: 10 * RATE], str(short))
    assert placement.place(x, RATE, at(0.9), short, False, landmarks) == 2.0


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
    track = [Stretch(0.0, to_analysis_rate(_looped_track(), SR))]
    x = to_analysis_rate(clip(_looped_track(), 12.0, 5), SR)  # from the near repeat
    # The votes said 2.0 (the plain phrase); the audio says 12.0.
    assert abs(placement.refine_offset(x, track, [2.0, 12.0]) - 12.0) < 0.1


def test_refine_offset_keeps_the_votes_choice_among_identical_repeats():
    track = [Stretch(0.0, to_analysis_rate(_looped_track(), SR))]
    x = to_analysis_rate(add_noise(clip(_looped_track(), 22.0, 5), 0.0, seed=4), SR)
    assert abs(placement.refine_offset(x, track, [22.0, 2.0]) - 22.0) < 0.1
    assert abs(placement.refine_offset(x, track, [2.0, 22.0]) - 2.0) < 0.1
    # The same with each place in a window of its own.
    analysed = track[0].audio
    windows = [Stretch(0.0, analysed[: 8 * 8000]), Stretch(19.0, analysed[19 * 8000: 28 * 8000])]
    assert abs(placement.refine_offset(x, windows, [22.0, 2.0]) - 22.0) < 0.1
