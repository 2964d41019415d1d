"""A version, not the recording: the clip lacks the track's peaks where
noise could not have hidden them.

A clip of the recording is the track's sound with something added: noise,
voices, a room, another tune playing, a phone's band limits. Added sound
can *mask* a peak of the track (the cell is no longer a local maximum),
but it cannot take its energy away: where the track has a peak, the clip
still has at least that energy, so the cell stands level with its
surroundings or above them. Another version of the piece (a
re-arrangement that drops or changes parts, a different mix of the same
stems) *replaces* sound: where the track's part played, the version can
be quiet, and the track's peak falls in a valley of the clip's spectrum.

So the test needs no constant fitted to music: at each of the track's
stored peaks over the clip's span (at the answered place and speed), the
clip's salience (its log spectrum minus the mean of the same frame's
neighbouring bins: a gap in the clip, silent across whole frames, is no
valley) is read over the verification's tolerance
(:data:`.params.COVER_FRAMES`, :data:`.params.COVER_BINS`); a *hole* is a
peak whose whole neighbourhood stands below the local mean by as much as
a peak must stand above it (:data:`.params.MIN_SALIENCE`). Noise leaves
almost none (chance lows of a noisy cell are short and narrow), a
version leaves them where its parts differ. :data:`.params.VERSION_HOLE_SHARE`
is the share of holes that says "a version"; docs/benchmarks.md ("Versions")
has what the dev corpus's recordings, hostile clips and versions made from
its tracker modules give.

The peaks come from the index (the forward copy), the clip's spectrum is
one short FFT: no audio of the track is read.

A version that keeps the loud parts keeps those peaks, though. The level
test (:func:`deficits`) reads the track's own audio over the clip's span
and finds the cells the clip holds far under the track's level where
added sound cannot have hidden them (:data:`.params.DEFICIT_DB`); its
share that says "a version" (:data:`.params.VERSION_DEFICIT_SHARE`) is
chosen on the dev corpus (docs/benchmarks.md, "Versions by level").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .landmarks import Landmarks, unpack_peaks
from .params import (
    AUDIBLE_DB,
    BIN_LO,
    COVER_BINS,
    COVER_FRAMES,
    DEFICIT_DB,
    FLOOR_BINS,
    FRAME_SECONDS,
    GAIN_BINS,
    LOG_FLOOR,
    LOUDEST_SHARE,
    MEAN_BOX,
    MIN_AUDIBLE_CELLS,
    MIN_GAIN_CELLS,
    MIN_GAIN_GROUPS,
    MIN_SALIENCE,
    MIN_VERSION_HOLES,
    QUIET_SHARE,
    VERSION_DEFICIT_SHARE,
    VERSION_HOLE_SHARE,
)
from .spectrum import log_spectrogram, max_filter, resample_fft, to_analysis_rate, uniform_filter

#: One decibel of power in the natural log of the spectrogram.
_DB = np.log(10.0) / 10.0


@dataclass
class Holes:
    """The track's peaks over the clip's span, and those the clip lacks."""

    holes: int
    peaks: int

    @property
    def share(self) -> float:
        return self.holes / self.peaks if self.peaks else 0.0

    @property
    def version(self) -> bool:
        """Whether the clip is another version of the track, not its recording."""
        return self.holes >= MIN_VERSION_HOLES and self.share >= VERSION_HOLE_SHARE


def holes(samples: np.ndarray, sample_rate: int, landmarks: Landmarks,
          offset: float, speed: float = 1.0) -> Holes:
    """The track's (``landmarks``) peaks over the clip's span with the
    clip at ``offset`` seconds into the track, played at ``speed`` (its
    frequencies times ``speed``), and how many of them the clip lacks."""
    x = np.ascontiguousarray(to_analysis_rate(samples, sample_rate), np.float32)
    spectrum = log_spectrogram(x)
    # Against the same frame's neighbouring bins only: a gap in the clip
    # (a dropped connection, a paused recording) is silent across the
    # whole frame, a valley of nothing, which is no version.
    salience = spectrum - uniform_filter(spectrum, (1, MEAN_BOX[1]))
    frames, bins = salience.shape
    t, f, _ = unpack_peaks(landmarks.stored_peaks())
    tc = np.rint((t - offset / FRAME_SECONDS) / speed).astype(np.int64)
    fc = np.rint((f + BIN_LO) * speed - BIN_LO).astype(np.int64)
    inside = ((tc >= COVER_FRAMES) & (tc < frames - COVER_FRAMES)
              & (fc >= COVER_BINS) & (fc < bins - COVER_BINS))
    tc, fc = tc[inside], fc[inside]
    if tc.size == 0:
        return Holes(0, 0)
    highest = np.full(tc.size, -np.inf, np.float32)
    for dt in range(-COVER_FRAMES, COVER_FRAMES + 1):
        for df in range(-COVER_BINS, COVER_BINS + 1):
            np.maximum(highest, salience[tc + dt, fc + df], out=highest)
    return Holes(int(np.count_nonzero(highest < -MIN_SALIENCE)), int(tc.size))


@dataclass
class Deficits:
    """The track's audible cells over the clip's span, and those the
    clip holds far under the track's level."""

    missing: int
    audible: int

    @property
    def share(self) -> float:
        return self.missing / self.audible if self.audible else 0.0

    @property
    def version(self) -> bool:
        """Whether the clip is another version of the track, not its recording."""
        return self.audible >= MIN_AUDIBLE_CELLS and self.share >= VERSION_DEFICIT_SHARE


def deficits(samples: np.ndarray, sample_rate: int, track: np.ndarray,
             speed: float = 1.0) -> Deficits:
    """The level test of a version: the clip against ``track``, the
    track's audio at :data:`.params.ANALYSIS_RATE` from the clip's place
    on, played at ``speed``.

    The holes (:func:`holes`) see a part the version lacks only where
    the track's few stored peaks are, and a version that keeps the loud
    parts keeps those. The track's own audio shows every cell: where the
    clip should hold the track's sound well over its own noise floor (the
    level where the track is quiet) but falls far under it, the sound was
    taken away, which added noise cannot do (:data:`.params.DEFICIT_DB`).
    The clip's gain against the track (its level, a phone's band, an EQ)
    is read from the track's loudest cells, band by band."""
    x = np.asarray(to_analysis_rate(samples, sample_rate), np.float64)
    n = int(round(x.size * speed))
    reference = np.asarray(track[:n], np.float64)
    if n == 0 or reference.size < n:
        return Deficits(0, 0)  # the track ends inside the clip's span
    if abs(speed - 1.0) > 1e-4:
        reference = resample_fft(reference.astype(np.float32), x.size).astype(np.float64)
    clip, ref = log_spectrogram(x), log_spectrogram(reference)
    frames = min(clip.shape[0], ref.shape[0])
    clip, ref = clip[:frames], ref[:frames]
    if frames < 2 * COVER_FRAMES + 1:
        return Deficits(0, 0)
    floor = _noise_floor(clip, ref)
    gain = _gain(clip, ref, floor)
    if gain is None:
        return Deficits(0, 0)
    expected = ref + gain[None, :]
    audible = (expected > floor[None, :] + DEFICIT_DB * _DB) & (ref > np.log(LOG_FLOOR) + AUDIBLE_DB * _DB)
    # A bin the clip never holds over its floor is the channel's (past a
    # filter's edge), not a part taken away: it is not judged.
    held = (clip > floor[None, :] + DEFICIT_DB * _DB).any(axis=0)
    audible &= (~np.isnan(gain) & held)[None, :]
    # Generous to the clip: its highest level within the verification's
    # tolerance, so that a place a frame off takes nothing away.
    under = max_filter(clip, COVER_FRAMES, COVER_BINS) - expected
    # A frame down as a whole is a gap (a dropped connection, a paused
    # recording) or a level the phone turned down, not a part taken away:
    # it is not judged.
    # Frames with no audible cell have no level (NaN), and are not asked
    # for one: numpy warns of an all-NaN median, and silencing that warning
    # (``warnings.catch_warnings``) is not safe in threads.
    level = np.full(under.shape[0], np.nan)
    some = audible.any(axis=1)
    if some.any():
        level[some] = np.nanmedian(np.where(audible[some], under[some], np.nan), axis=1)
    judged = audible & ~(level <= -DEFICIT_DB * _DB)[:, None]
    missing = judged & (under < -DEFICIT_DB * _DB)
    return Deficits(int(np.count_nonzero(missing)), int(np.count_nonzero(judged)))


def _noise_floor(clip: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The clip's level in each bin where the track is quiet: what was
    added to it (noise, voices, a room), or its own silence."""
    quiet = ref <= np.quantile(ref, QUIET_SHARE, axis=0, keepdims=True)
    floor = np.nanmedian(np.where(quiet, clip, np.nan), axis=0)
    return uniform_filter(floor[None, :].astype(np.float32), (1, FLOOR_BINS))[0].astype(np.float64)


def _gain(clip: np.ndarray, ref: np.ndarray, floor: np.ndarray) -> np.ndarray | None:
    """The clip's level against the track's in each bin (log power), from
    the track's loudest cells that stand well over the clip's floor, per
    group of :data:`.params.GAIN_BINS` bins, NaN outside the groups
    measured; None when too few groups hold such cells."""
    loud = (ref >= np.quantile(ref, 1.0 - LOUDEST_SHARE)) & (clip > floor[None, :] + DEFICIT_DB * _DB)
    difference = clip - ref
    bins = ref.shape[1]
    centres, gains = [], []
    for first in range(0, bins, GAIN_BINS):
        group = slice(first, min(bins, first + GAIN_BINS))
        values = difference[:, group][loud[:, group]]
        if values.size >= MIN_GAIN_CELLS:
            centres.append((group.start + group.stop - 1) / 2)
            gains.append(float(np.median(values)))
    if len(gains) < MIN_GAIN_GROUPS:
        return None
    # Between the groups measured, not beyond: past a steep filter's edge
    # (a muffled room, a band-limited line) the gain is unknown.
    gain = np.interp(np.arange(bins), centres, gains)
    gain[(np.arange(bins) < centres[0]) | (np.arange(bins) > centres[-1])] = np.nan
    return gain
