"""Where in the matched track the clip sits.

Landmark votes place a clip to within a frame, but they cannot tell
apart the places where a passage repeats (loops, choruses: the same
notes give the same hashes), nor a passage from its variations (a theme
restated with other drums). The clip's own audio can: compared densely
with the track's (:mod:`.audiocheck`'s spectral changes), the clip fits
its own passage best.

The track is not read whole. Three kinds of place are worth a look:

* the votes' place,
* the repeats the votes found (:attr:`.match.Match.alternatives`),
* the places where the track's stored peaks meet the clip's peaks most
  often (:func:`likely_places`): single peaks, not pairs, so a variation
  that keeps the tune but not the pairs' timing still shows, and they
  come from the index, with no audio read.

Only windows around those places are decoded, each from a seek
(:func:`.audiocheck.read_stretch`, as the second look reads; a decode
from the file's start, only the windows kept, cost more). Among
the repeats, the clip's contrast spectrogram chooses
(:func:`refine_offset`); then a place anywhere in the windows that fits
:data:`.params.PLACE_RATIO` times better, and stands out of the chance
correlations *of these windows* as a second look's answer must, replaces
it (:func:`best_place`): the lags of a window away from its place
measure chance for this clip, as in the second look.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arrays import merged
from .audiocheck import (
    alignment_profile,
    analysis_clip,
    clip_changes,
    contrast,
    read_stretch,
    spectral_changes,
)
from .landmarks import Landmarks, clip_peaks, unpack_peaks
from .params import (
    ANALYSIS_RATE,
    AUDIO_CENTER,
    BIN_LO,
    COVER_BINS,
    COVER_FRAMES,
    EARLY_STOP_CONFIDENCE,
    FRAME_SECONDS,
    HOP,
    LIKELY_PLACES,
    N_FFT,
    NEAR_FRAMES,
    PLACE_FRAMES,
    PLACE_RATIO,
    REFINE_MARGIN,
    REPEAT_GAP_SECONDS,
    SEARCH_SECONDS,
)
from .spectrum import log_spectrogram, resample_fft


@dataclass
class Stretch:
    """Decoded audio of the track at :data:`.params.ANALYSIS_RATE` from
    ``start`` seconds."""

    start: float
    audio: np.ndarray

    def frames(self, seconds: float) -> int:
        """The frame of this stretch at ``seconds`` into the track."""
        return int(round((seconds - self.start) / FRAME_SECONDS))


def place(samples: np.ndarray, sample_rate: int, match, path, looked_again: bool,
          landmarks: Landmarks | None) -> float:
    """Where in the track at ``path`` (its stored ``landmarks``) the clip
    of ``match`` sits, in seconds (:func:`place_and_audio`)."""
    return place_and_audio(samples, sample_rate, match, path, looked_again, landmarks)[0]


def place_and_audio(samples: np.ndarray, sample_rate: int, match, path, looked_again: bool,
                    landmarks: Landmarks | None) -> tuple[float, list[Stretch]]:
    """Where in the track at ``path`` (its stored ``landmarks``) the clip
    of ``match`` sits, in seconds, and the stretches of the track read to
    find it (:func:`audio_at` takes the clip's span out of them).

    When the landmarks settled the match on their own (confidence at
    least :data:`.params.EARLY_STOP_CONFIDENCE`, the bar that also ends the
    speed search, and no second look: ``looked_again``) and the votes
    found the passage at one place only, that place stands and no audio
    is read; so it does when the track cannot be read."""
    offset = float(match.offset)
    settled = not looked_again and match.confidence >= EARLY_STOP_CONFIDENCE
    if path is None or landmarks is None or (settled and not match.alternatives):
        return offset, []
    x = analysis_clip(samples, sample_rate)
    repeats = [offset] + [float(a) for a in match.alternatives]
    places = repeats + likely_places(x, landmarks, match.speed, LIKELY_PLACES)
    span = x.size * match.speed / ANALYSIS_RATE
    stretches = read_places(path, places, span, landmarks.n_frames)
    if not stretches:
        return offset, []  # the votes' best guess still stands
    if len(repeats) > 1:
        offset = refine_offset(x, stretches, repeats, match.speed)
    return best_place(x, stretches, offset, places, match.speed), stretches


def audio_at(stretches: list[Stretch], start: float, seconds: float) -> np.ndarray | None:
    """The track's audio from ``start`` for ``seconds`` (seconds into the
    track) out of ``stretches``; None when no stretch holds all of it."""
    for stretch in stretches:
        first = int(round((start - stretch.start) * ANALYSIS_RATE))
        stop = first + int(np.ceil(seconds * ANALYSIS_RATE))
        if first >= 0 and stop <= stretch.audio.size:
            return stretch.audio[first:stop]
    return None


def likely_places(x: np.ndarray, landmarks: Landmarks, speed: float, count: int) -> list[float]:
    """Up to ``count`` places (seconds into the track) where the most of
    the track's stored peaks meet a peak of the clip (``x``, at
    :data:`.params.ANALYSIS_RATE`) played at ``speed``, within the
    verification's tolerance; at least :data:`.params.REPEAT_GAP_SECONDS`
    apart."""
    t, f, _ = unpack_peaks(landmarks.stored_peaks())
    if t.size == 0 or count <= 0:
        return []
    tq, fq = clip_peaks(x, ANALYSIS_RATE, shifts=(0.0,)).by_shift[0.0]
    order = np.argsort(f, kind="stable")
    track_bins = (f[order] + BIN_LO).astype(np.float64)
    track_frames = t[order].astype(np.float64)
    # The clip's peaks on the track's scales: frequencies / speed, times * speed.
    bins, frames = fq / speed, tq * speed
    lo = np.searchsorted(track_bins, bins - COVER_BINS, "left")
    hi = np.searchsorted(track_bins, bins + COVER_BINS, "right")
    found = hi - lo
    total = int(found.sum())
    if total == 0:
        return []
    # Every (clip peak, track peak) pair in one frequency neighbourhood
    # votes for the lag that lines them up.
    first = np.repeat(lo - (np.cumsum(found) - found), found) + np.arange(total)
    lags = np.rint(track_frames[first] - np.repeat(frames, found)).astype(np.int64)
    n = int(landmarks.n_frames) + 1
    lags = lags[(lags >= 0) & (lags < n)]
    votes = np.convolve(np.bincount(lags, minlength=n).astype(np.float64),
                        np.ones(2 * COVER_FRAMES + 1), "same")
    gap = int(round(REPEAT_GAP_SECONDS / FRAME_SECONDS))
    places = []
    for _ in range(count):
        k = int(np.argmax(votes))
        if votes[k] <= 0:
            break
        places.append(k * FRAME_SECONDS)
        votes[max(0, k - gap): k + gap + 1] = 0
    return places


def read_places(path, places: list[float], span: float, track_frames: int) -> list[Stretch]:
    """The track's audio around each of ``places``: from
    :data:`.params.SEARCH_SECONDS` before it to as much after the clip's
    ``span``, overlapping windows merged, within the track's length
    (``track_frames`` analysed frames); empty when it cannot be decoded."""
    end = max(0, (int(track_frames) - 1) * HOP + N_FFT - HOP)
    margin = int(round(SEARCH_SECONDS * ANALYSIS_RATE))
    starts = [max(0, int(p * ANALYSIS_RATE) - margin) // HOP * HOP for p in places]
    stops = [min(end, int(np.ceil((p + span) * ANALYSIS_RATE)) + margin + N_FFT) for p in places]
    wide = [(a, b) for a, b in zip(starts, stops) if b - a >= N_FFT]
    stretches = []
    for a, b in merged(np.array([a for a, _ in wide], np.int64),
                       np.array([b for _, b in wide], np.int64)).tolist():
        audio = read_stretch(path, a / ANALYSIS_RATE, (b - a) / ANALYSIS_RATE)
        if audio is None:
            return []
        stretches.append(Stretch(a / ANALYSIS_RATE, np.asarray(audio, np.float32)))
    return stretches


def refine_offset(x: np.ndarray, stretches: list[Stretch], candidates: list[float],
                  speed: float = 1.0) -> float:
    """The candidate offset (seconds into the track) where the clip ``x``
    (at :data:`.params.ANALYSIS_RATE`) fits best: the clip's whole
    contrast spectrogram against the track's at each candidate (+-2
    frames), after undoing the clip's ``speed``. ``candidates[0]`` is the
    votes' choice; another candidate replaces it only when it correlates
    better by :data:`.params.REFINE_MARGIN`."""
    if abs(speed - 1.0) > 1e-4:
        x = resample_fft(x, int(round(x.size * speed)))
    q = contrast(log_spectrogram(x))
    if q.shape[0] < 4:
        return float(candidates[0])
    fits = []  # (correlation, offset) of each candidate's best lag
    for c in candidates:
        best_r, best = -np.inf, float(c)
        for stretch in stretches:
            a = int(round((c - stretch.start) * ANALYSIS_RATE)) - 2 * HOP
            if a + x.size + 4 * HOP <= 0 or a >= stretch.audio.size:
                continue
            seg = stretch.audio[max(0, a): max(0, a + x.size + 4 * HOP)]
            seg = np.concatenate([np.zeros(max(0, -a), np.float32), seg])
            ref = contrast(log_spectrogram(seg))
            n = q.shape[0]
            for lag in range(0, ref.shape[0] - n + 1):
                corr = float(np.sum(q * ref[lag:lag + n]))
                if corr > best_r:
                    best_r, best = corr, c + (lag - 2) * FRAME_SECONDS
            break
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


def best_place(x: np.ndarray, stretches: list[Stretch], offset: float, places: list[float],
               speed: float = 1.0) -> float:
    """Where in the ``stretches`` of the track the clip ``x`` (at
    :data:`.params.ANALYSIS_RATE`) sits: ``offset``, unless another place
    fits :data:`.params.PLACE_RATIO` times better and
    :data:`.params.AUDIO_CENTER` times the chance spread, measured at the
    lags further than :data:`.params.NEAR_FRAMES` from every one of
    ``places`` (the places the stretches were read for)."""
    q = clip_changes(x, speed)
    at_place, best, best_at = 0.0, -np.inf, float(offset)
    chance = []
    for stretch in stretches:
        profile = alignment_profile(q, spectral_changes(stretch.audio))
        if profile.size == 0:
            continue
        here = stretch.frames(offset)
        near = profile[max(0, here - PLACE_FRAMES): max(0, here + PLACE_FRAMES + 1)]
        if near.size:
            at_place = max(at_place, float(near.max()))
        k = int(np.argmax(profile))
        if profile[k] > best:
            best, best_at = float(profile[k]), stretch.start + k * FRAME_SECONDS
        lag = np.arange(profile.size)
        away = np.ones(profile.size, bool)
        for p in places:
            away &= np.abs(lag - stretch.frames(p)) > NEAR_FRAMES
        chance.append(profile[away])
    pooled = np.concatenate(chance) if chance else np.zeros(0)
    if pooled.size == 0:
        return float(offset)
    spread = float(np.sqrt(np.mean(pooled ** 2)))
    if best >= PLACE_RATIO * max(at_place, 0.0) and best >= AUDIO_CENTER * spread:
        return float(best_at)
    return float(offset)
