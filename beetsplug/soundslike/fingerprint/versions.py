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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .landmarks import Landmarks, unpack_peaks
from .params import (
    BIN_LO,
    COVER_BINS,
    COVER_FRAMES,
    FRAME_SECONDS,
    MEAN_BOX,
    MIN_SALIENCE,
    MIN_VERSION_HOLES,
    VERSION_HOLE_SHARE,
)
from .spectrum import log_spectrogram, to_analysis_rate, uniform_filter


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
