"""The clip against candidate tracks' own audio (``fingerprint.audiocheck``):
the second look finds a clip's recording and place where people talking
have masked the landmark peaks, and nothing for a stranger
(the place among repeats and variations: ``tests/test_fp_placement.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import gen_audio

from beetsplug.soundslike.audio import decode
from beetsplug.soundslike.fingerprint import Candidate, FingerprintIndex, audiocheck
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
