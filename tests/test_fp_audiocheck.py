"""The clip against candidate tracks' own audio (``fingerprint.audiocheck``):
the second look finds a clip's recording and place where people talking
have masked the landmark peaks, and nothing for a stranger; the place
among repeats and variations of a passage."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import gen_audio
from fp_helpers import SR, add_noise, clip, synth_piece

from beetsplug.soundslike.audio import decode
from beetsplug.soundslike.fingerprint import Candidate, FingerprintIndex, Match, audiocheck
from beetsplug.soundslike.fingerprint.params import ANALYSIS_RATE, SECOND_LOOK_CANDIDATES
from beetsplug.soundslike.fingerprint.spectrum import to_analysis_rate

RATE = gen_audio.RATE


@pytest.fixture(scope="module")
def pieces():
    return {k + 1: gen_audio.piece(k, 24.0) for k in range(6)}


def reader(pieces):
    """Reads a stretch of a piece at the comparison rate, as `beet
    identify` reads a library file."""
    analysed = {k: to_analysis_rate(x, RATE) for k, x in pieces.items()}

    def read(item_id, start, seconds):
        x = analysed.get(item_id)
        if x is None:
            return None
        rate = ANALYSIS_RATE
        return x[int(start * rate): int((start + seconds) * rate)]
    return read


def talked_over(pieces, item_id, start, snr_db, seed=11):
    x = pieces[item_id][int(start * RATE): int((start + 5.0) * RATE)]
    return gen_audio.mix(x, gen_audio.babble(5.0, seed=seed), snr_db)


def test_alignment_profile_peaks_at_the_clip_place():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((300, 40)).astype(np.float32)
    clip = reference[120:220].copy()
    clip -= clip.mean()
    clip /= np.linalg.norm(clip)
    profile = audiocheck.alignment_profile(clip, reference)
    assert profile.size == 201
    assert int(np.argmax(profile)) == 120 and profile[120] > 0.99
    assert np.abs(np.delete(profile, 120)).max() < 0.3


def test_second_look_finds_the_track_the_landmarks_missed(pieces, tmp_path):
    index = FingerprintIndex(tmp_path / "fp")
    for item_id, x in pieces.items():
        index.add(item_id, x, RATE)
    index.flush()
    # Four people talking 9 dB louder than the music: the landmark peaks
    # that survive do not make item 4 (piece 3) a sure answer.
    clip = talked_over(pieces, 4, 8.0, -9.0)
    match = index.identify(clip, RATE, min_confidence=0.0)
    assert match is not None and match.confidence < 0.5
    assert 4 in [c.item_id for c in match.candidates[:SECOND_LOOK_CANDIDATES]]
    verdict = audiocheck.second_look(clip, RATE, match.candidates, reader(pieces))
    assert verdict.item_id == 4 and abs(verdict.offset - 8.0) < 0.1
    assert verdict.confidence > 0.5 and verdict.compared == SECOND_LOOK_CANDIDATES


def test_second_look_at_a_stranger_finds_nothing(pieces):
    clip = gen_audio.mix(gen_audio.piece(50, 24.0)[8 * RATE: 13 * RATE], gen_audio.babble(5.0), 0.0)
    places = [Candidate(item_id=k, offset=float(2 * k), speed=1.0, score=10, votes=5)
              for k in (1, 2, 3, 4)]
    verdict = audiocheck.second_look(clip, RATE, places, reader(pieces))
    assert verdict.compared == 4 and verdict.confidence < 0.5


def test_second_look_undoes_the_speed_and_skips_unreadable_tracks(pieces):
    x = pieces[2][int(6 * RATE): int(11.1 * RATE)]
    fast = np.interp(np.arange(0, len(x) - 1, 1.02), np.arange(len(x)), x).astype(np.float32)
    places = [Candidate(item_id=99, offset=6.0, speed=1.02, score=30, votes=20),  # file gone
              Candidate(item_id=2, offset=6.05, speed=1.02, score=30, votes=20),
              Candidate(item_id=5, offset=3.0, speed=1.0, score=12, votes=5)]
    verdict = audiocheck.second_look(fast, RATE, places, reader(pieces))
    assert verdict.item_id == 2 and abs(verdict.offset - 6.0) < 0.1 and verdict.compared == 2
    assert audiocheck.second_look(fast, RATE, places[:1], reader(pieces)) is None


def test_decode_without_probe_reads_only_the_stretch(audio_dir):
    audio = decode(audio_dir / "piece1.m4a", 8000, start=2.0, max_seconds=3.0, probe=False)
    assert abs(audio.seconds - 3.0) < 0.05 and abs(audio.duration - 5.0) < 0.05
    assert abs(decode(audio_dir / "piece1.m4a", 8000, start=2.0, max_seconds=3.0).duration - 24.0) < 0.1


def test_best_place_prefers_the_clips_own_passage_to_its_variation():
    # 2-7 s of a piece comes back at 12 s with a second instrument on top:
    # the landmark votes may name either place; the clip's own audio fits
    # its own place clearly better.
    base = gen_audio.piece(3, 24.0)
    varied = 0.6 * base[2 * RATE: 7 * RATE] + 0.6 * gen_audio.piece(8, 5.0)
    track = np.concatenate([base[: 12 * RATE], varied, base[12 * RATE:]]).astype(np.float32)
    clip = gen_audio.add_noise(track[12 * RATE: 17 * RATE], 10.0, seed=4)
    analysed = to_analysis_rate(track, RATE)
    assert abs(audiocheck.best_place(clip, RATE, analysed, offset=2.0) - 12.0) < 0.1
    # Looked for in a stretch of the track that starts 1 s in.
    stretch = analysed[ANALYSIS_RATE:]
    assert abs(audiocheck.best_place(clip, RATE, stretch, offset=2.0, track_start=1.0) - 12.0) < 0.1


def test_place_reads_the_track_unless_the_landmarks_settled_one_place(tmp_path):
    # The clip is the varied restatement at 12 s; the votes said 2.0.
    base = gen_audio.piece(3, 24.0)
    varied = 0.6 * base[2 * RATE: 7 * RATE] + 0.6 * gen_audio.piece(8, 5.0)
    track = np.concatenate([base[: 12 * RATE], varied, base[12 * RATE:]]).astype(np.float32)
    path = tmp_path / "track.mp3"
    gen_audio.write(track, str(path))
    clip = gen_audio.add_noise(track[12 * RATE: 17 * RATE], 10.0, seed=4)

    def at(confidence, alternatives=()):
        return Match(item_id=1, offset=2.0, confidence=confidence, speed=1.0, score=40,
                     alternatives=list(alternatives))

    # Settled, one place: the votes' place stands, nothing is read.
    assert audiocheck.place(clip, RATE, at(1.0), path, looked_again=False) == 2.0
    assert audiocheck.place(clip, RATE, at(1.0), tmp_path / "gone.mp3", False) == 2.0
    # Settled, with a repeat elsewhere: the track is compared.
    assert abs(audiocheck.place(clip, RATE, at(1.0, [20.0]), path, False) - 12.0) < 0.1
    # Not settled (or settled by a second look): the track is compared.
    assert abs(audiocheck.place(clip, RATE, at(0.9), path, False) - 12.0) < 0.1
    assert abs(audiocheck.place(clip, RATE, at(1.0), path, looked_again=True) - 12.0) < 0.1
    assert audiocheck.place(clip, RATE, at(0.9), tmp_path / "gone.mp3", False) == 2.0


def test_best_place_keeps_the_votes_place_among_identical_repeats():
    base = gen_audio.piece(3, 24.0)
    track = np.concatenate([base[: 12 * RATE], base[2 * RATE: 7 * RATE], base[12 * RATE:]])
    clip = gen_audio.add_noise(track[12 * RATE: 17 * RATE], 10.0, seed=4)
    analysed = to_analysis_rate(track.astype(np.float32), RATE)
    assert audiocheck.best_place(clip, RATE, analysed, offset=2.0) == 2.0
    assert audiocheck.best_place(clip, RATE, analysed, offset=12.0) == 12.0


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
