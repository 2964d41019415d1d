"""The clip against library tracks' own audio: where in the track it
sits, and a second look at uncertain matches.

Where: landmark votes cannot tell apart the places where a passage
repeats or comes back varied; :func:`refine_offset` compares the clip
with the track at the repeats the votes found, :func:`best_place` with
the whole track.

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
    EARLY_STOP_CONFIDENCE,
    FINE_BINS,
    FRAME_SECONDS,
    HOP,
    MEAN_BOX,
    NEAR_FRAMES,
    PLACE_FRAMES,
    PLACE_RATIO,
    PLACE_SECONDS,
    REFINE_MARGIN,
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


def place(samples: np.ndarray, sample_rate: int, match, path, looked_again: bool) -> float:
    """Where in the track at ``path`` the clip of ``match`` sits.

    When the landmarks settled the match on their own (confidence at
    least :data:`.params.EARLY_STOP_CONFIDENCE`, the bar that also ends the
    speed search, and no second look: ``looked_again``) and the votes found
    the passage at one place only, that place stands and no audio is read.
    Otherwise the clip is compared with the track's audio within
    :data:`.params.PLACE_SECONDS` of the votes' place: first at the repeats
    the votes found (:func:`refine_offset`), then everywhere
    (:func:`best_place`)."""
    offset = float(match.offset)
    settled = not looked_again and match.confidence >= EARLY_STOP_CONFIDENCE
    if path is None or (settled and not match.alternatives):
        return offset
    start = max(0.0, offset - PLACE_SECONDS)
    track = read_stretch(path, start, 2 * PLACE_SECONDS)
    if track is None:
        return offset  # the votes' best guess still stands
    if match.alternatives:
        offset = refine_offset(samples, sample_rate, track, ANALYSIS_RATE,
                               [offset] + list(match.alternatives), speed=match.speed,
                               reference_start=start)
    return best_place(samples, sample_rate, track, offset, speed=match.speed,
                      track_start=start)


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


def refine_offset(clip: np.ndarray, sample_rate: int, reference: np.ndarray, reference_rate: int,
                  candidates, speed: float = 1.0, reference_start: float = 0.0) -> float:
    """The candidate offset (seconds into the track) where ``clip`` fits best.

    Landmark votes cannot tell apart places where a passage repeats (loops,
    choruses): the same notes give the same hashes. When the caller has the
    track's audio (``reference``, starting ``reference_start`` seconds into
    the track), this compares the clip's whole local-contrast spectrogram
    with the track's at each candidate (+-2 frames), after undoing the
    clip's ``speed``. ``candidates[0]`` is the votes' choice; another
    candidate replaces it only when it correlates better by
    :data:`.params.REFINE_MARGIN`.
    """
    x = to_analysis_rate(clip, sample_rate)
    if abs(speed - 1.0) > 1e-4:
        x = resample_fft(x, int(round(x.size * speed)))
    r = to_analysis_rate(reference, reference_rate)
    q = _contrast(log_spectrogram(x))
    if q.shape[0] < 4:
        return float(candidates[0])
    fits = []  # (correlation, offset) of each candidate's best lag
    for c in candidates:
        a = int(round((c - reference_start) * ANALYSIS_RATE)) - 2 * HOP
        seg = r[max(0, a): max(0, a + x.size + 4 * HOP)]
        seg = np.concatenate([np.zeros(max(0, -a), np.float32), seg])
        ref = _contrast(log_spectrogram(seg))
        n = q.shape[0]
        best_r, best = -np.inf, float(c)
        for lag in range(0, ref.shape[0] - n + 1):
            corr = float(np.sum(q * ref[lag:lag + n]))
            if corr > best_r:
                best_r, best = corr, c + (lag - 2) * FRAME_SECONDS
        fits.append((best_r, best))
    # The votes' choice (the first candidate) stands unless another place
    # fits clearly better: in a noisy clip every place correlates weakly and
    # the differences are noise, while the votes still point the right way.
    # Compared as Fisher z (atanh), in which the noise of a correlation is
    # the same at any level: a clean clip's 0.90 against 0.85 is as telling
    # as a noisy clip's 0.15 against 0.10 is not.
    z = np.arctanh(np.clip([r_ for r_, _ in fits], -0.999, 0.999))
    chosen = 0
    for k in range(1, len(fits)):
        if z[k] > max(z[chosen], z[0] + REFINE_MARGIN):
            chosen = k
    return float(fits[chosen][1])


def _contrast(logspec: np.ndarray) -> np.ndarray:
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
    x = _analysis_clip(samples, sample_rate)
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
            clips[c.speed] = _clip_changes(x, c.speed)
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


def best_place(samples: np.ndarray, sample_rate: int, track: np.ndarray, offset: float,
               speed: float = 1.0, track_start: float = 0.0) -> float:
    """Where in ``track`` (audio at :data:`.params.ANALYSIS_RATE` from
    ``track_start`` seconds) the clip sits: ``offset`` (the votes' place),
    unless another place fits :data:`.params.PLACE_RATIO` times better and stands
    out of the track's chance correlations as a second look's answer must.

    Landmark votes cannot tell a passage from its variations (the theme
    restated with other drums, the last chorus): the same notes give the
    same hashes. The dense comparison of the whole track can, when the
    clip's own passage fits clearly better than the variation."""
    q = _clip_changes(_analysis_clip(samples, sample_rate), speed)
    profile = alignment_profile(q, spectral_changes(track))
    if profile.size == 0:
        return float(offset)
    here = int(round((offset - track_start) / FRAME_SECONDS))
    near = profile[max(0, here - PLACE_FRAMES): max(0, here + PLACE_FRAMES + 1)]
    at_place = float(near.max()) if near.size else 0.0
    k = int(np.argmax(profile))
    spread = float(np.sqrt(np.mean(profile ** 2)))
    if profile[k] >= PLACE_RATIO * max(at_place, 0.0) and profile[k] >= AUDIO_CENTER * spread:
        return float(track_start + k * FRAME_SECONDS)
    return float(offset)


def _analysis_clip(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """The clip at :data:`.params.ANALYSIS_RATE`, at most :data:`.params.SECOND_LOOK_SECONDS`."""
    x = to_analysis_rate(np.asarray(samples, np.float32), sample_rate)
    return x[: int(SECOND_LOOK_SECONDS * ANALYSIS_RATE)]


def _clip_changes(x: np.ndarray, speed: float) -> np.ndarray:
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
