"""The clip against library tracks' own audio: the comparison itself,
and a second look at uncertain matches (where in the track a clip sits
is :mod:`.placement`'s, with the same comparison).

The second look: landmarks are sparse on purpose (a track keeps about 90
peaks per 5 s), and a clip has to share enough of them to be told from
chance. People talking over the music (a cafe, a party) mask the music's
peaks at the same frequencies, and in such a clip the right track can
keep fewer of its peaks than an unrelated track keeps by chance. The
audio itself still carries the recording: compared densely, frame by
frame and bin by bin, the clip correlates with its own track at the right
place far above what any other place or track gives.

What is compared is how the spectrum's fine structure *changes*: the log
spectrogram minus its local mean over neighbouring bins (what is left is
the pattern of partials, not the loudness or the tone colour), differenced
over two frames (what is left is notes starting, stopping and moving, not
sustained chords). Two pieces in the same key share many partials and
correlate in plain spectrograms; they do not change at the same moments.

Only a few candidates are compared (decoding their audio is the cost), so
the chance level is measured on the spot: each candidate is correlated at
every lag within :data:`.params.SEARCH_SECONDS` of its place, and the lags away
from the place give the spread of chance correlations for this very clip.
The evidence is the best candidate's correlation at its place in units of
that spread.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..audio import AudioError, decode
from .match import Match
from .params import (
    ANALYSIS_RATE,
    AUDIO_CENTER,
    AUDIO_SLOPE,
    FINE_BINS,
    FRAME_SECONDS,
    HOP,
    MEAN_BOX,
    NEAR_FRAMES,
    PLACE_FRAMES,
    SEARCH_SECONDS,
    SECOND_LOOK_CANDIDATES,
    SECOND_LOOK_SECONDS,
)
from .spectrum import log_spectrogram, resample_fft, to_analysis_rate, uniform_filter


#: Reads ``seconds`` of a candidate track's audio from ``start`` at
#: :data:`.params.ANALYSIS_RATE` as float32 samples; None when it cannot be read.
ReadReference = Callable[[int, float, float], "np.ndarray | None"]


@dataclass
class AudioVerdict:
    """The candidate whose audio fits the clip best, and how sure."""

    item_id: int
    #: Seconds into the track where the clip starts (refined by the lag).
    offset: float
    speed: float
    #: Correlation at the place in units of the chance spread.
    z: float
    confidence: float
    #: Candidate tracks whose audio could be read and compared.
    compared: int

    def as_match(self) -> Match:
        """The verdict as a fingerprint :class:`.match.Match` (no landmark
        score: the audio decided)."""
        return Match(item_id=self.item_id, offset=self.offset, confidence=self.confidence,
                     speed=self.speed, score=0)


def read_stretch(path, start: float, seconds: float) -> np.ndarray | None:
    """``seconds`` of a library track from ``start`` at :data:`.params.ANALYSIS_RATE`;
    None when there is no path or the file cannot be decoded (moved, on an
    unmounted drive): the comparison then goes without it."""
    if path is None:
        return None
    try:
        return decode(path, ANALYSIS_RATE, start=start, max_seconds=seconds, probe=False).samples
    except AudioError:
        return None


def spectral_changes(x: np.ndarray) -> np.ndarray:
    """How the spectrum's fine structure changes, frame by frame, of
    ``x`` at :data:`.params.ANALYSIS_RATE`: shape (frames - 2, bins)."""
    # In float64: numpy's double-precision FFT is the fast path (its
    # single-precision one sets up slowly in every new process).
    spec = log_spectrogram(np.ascontiguousarray(x, np.float64))
    if spec.shape[0] < 3:
        return np.zeros((0, spec.shape[1]), np.float32)
    fine = spec - uniform_filter(spec, (1, FINE_BINS))
    return fine[2:] - fine[:-2]


def alignment_profile(clip: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Correlation of ``clip`` (frames x bins, zero mean, unit norm) with
    every same-length window of ``reference``, one value per lag."""
    n = clip.shape[0]
    lags = reference.shape[0] - n + 1
    if n == 0 or lags <= 0:
        return np.zeros(0)
    gram = reference @ clip.T  # (reference frames, clip frames)
    num = np.zeros(lags)
    for t in range(n):
        num += gram[t:t + lags, t]
    energy = np.concatenate([[0.0], np.cumsum(np.einsum("ij,ij->i", reference, reference), dtype=np.float64)])
    norm = np.sqrt(np.maximum(energy[n:] - energy[:-n], 0.0))
    return num / np.maximum(norm, 1e-6)


def contrast(logspec: np.ndarray) -> np.ndarray:
    """Log spectrogram minus its local mean, scaled to unit norm: what the
    peaks are picked from, comparable across gain, EQ and noise floor."""
    if logspec.shape[0] == 0:
        return logspec
    c = logspec - uniform_filter(logspec, MEAN_BOX)
    c -= c.mean()
    return c / (np.linalg.norm(c) + 1e-9)


def second_look(samples: np.ndarray, sample_rate: int, candidates: list,
                read_reference: ReadReference) -> AudioVerdict | None:
    """Compare the clip with the audio of the first :data:`.params.SECOND_LOOK_CANDIDATES`
    ``candidates`` (:class:`.match.Candidate`) at their places; None when no
    candidate's audio could be read or the clip is too short to compare."""
    candidates = list(candidates)[:SECOND_LOOK_CANDIDATES]
    if not candidates:
        return None
    x = analysis_clip(samples, sample_rate)
    search = int(round(SEARCH_SECONDS / FRAME_SECONDS))

    def window(c):
        seconds = x.size * c.speed / ANALYSIS_RATE
        start = c.offset - search * FRAME_SECONDS
        audio = read_reference(c.item_id, max(0.0, start), seconds + 2 * SEARCH_SECONDS + 0.1)
        return start, audio

    workers = max(1, min(len(candidates), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        windows = list(pool.map(window, candidates))

    clips: dict[float, np.ndarray] = {}
    fits = []  # (candidate, correlation at the place, lag offset in frames)
    chance = []
    for c, (start, audio) in zip(candidates, windows):
        if audio is None:
            continue
        if c.speed not in clips:
            clips[c.speed] = clip_changes(x, c.speed)
        q = clips[c.speed]
        if q.shape[0] < 2 * PLACE_FRAMES + 1:
            return None
        lead = max(0, -int(round(start * ANALYSIS_RATE)))  # the track starts inside the window
        ref = np.concatenate([np.zeros(lead, np.float32), np.asarray(audio, np.float32)])
        profile = alignment_profile(q, spectral_changes(ref))
        if profile.size <= search + PLACE_FRAMES:
            continue  # the track ends before the place
        first_valid = -(-lead // HOP)  # lags whose window holds no padding
        place = profile[search - PLACE_FRAMES: search + PLACE_FRAMES + 1]
        k = int(np.argmax(place))
        fits.append((c, float(place[k]), k - PLACE_FRAMES))
        lag = np.arange(profile.size)
        away = (np.abs(lag - search) > NEAR_FRAMES) & (lag >= first_valid)
        chance.append(profile[away])
    if not fits:
        return None
    pooled = np.concatenate(chance)
    spread = float(np.sqrt(np.mean(pooled ** 2))) if pooled.size else 0.0
    if spread <= 0.0:
        return None
    c, corr, shift = max(fits, key=lambda f: f[1])
    z = corr / spread
    return AudioVerdict(item_id=c.item_id, offset=max(0.0, c.offset + shift * FRAME_SECONDS),
                        speed=c.speed, z=z, confidence=confidence(z), compared=len(fits))


def analysis_clip(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """The clip at :data:`.params.ANALYSIS_RATE`, at most :data:`.params.SECOND_LOOK_SECONDS`."""
    x = to_analysis_rate(np.asarray(samples, np.float32), sample_rate)
    return x[: int(SECOND_LOOK_SECONDS * ANALYSIS_RATE)]


def clip_changes(x: np.ndarray, speed: float) -> np.ndarray:
    """The clip's spectral changes on the track's time scale (``speed``
    undone), zero mean and unit norm."""
    if abs(speed - 1.0) > 1e-4:
        x = resample_fft(x, int(round(x.size * speed)))
    q = spectral_changes(x)
    q = q - q.mean()
    return q / (np.linalg.norm(q) + 1e-9)


def confidence(z: float) -> float:
    """Share of right answers among second looks with evidence ``z``."""
    return float(1.0 / (1.0 + np.exp(-AUDIO_SLOPE * (z - AUDIO_CENTER))))
