"""Synthetic library tracks for the fingerprint benchmarks: made of real
constellations, stored as the index stores a real track (its peaks and
the landmarks they pair).

A fake track is ``chunks`` stretches of ``chunk_seconds`` of real peaks,
each from a random real track, time-reversed, maybe mirrored in
frequency and shifted by up to 24 bins: the statistics of music (so
posting lists have the skew of real music whatever the hash layout is),
not a copy of a real track (a pitch-shifted copy would match its clips
at a nearby speed). Peaks get uniform sub-bin codes; the keys use them.
"""

from __future__ import annotations

import numpy as np

from beetsplug.soundslike.fingerprint import landmarks as fp
from beetsplug.soundslike.fingerprint import params


def real_peaks(lm: fp.Landmarks) -> tuple[np.ndarray, np.ndarray]:
    """(frames, bins) of a real track's peaks, from its landmarks."""
    t, f, _ = fp.unpack_peaks(lm.peaks if lm.peaks is not None else fp.peaks_of(lm.hashes, lm.times))
    return t.astype(np.int64), f.astype(np.int64)


def fake_track(rng: np.random.Generator, peaks: list, chunks: int = 8,
               chunk_seconds: float = 30.0) -> fp.Landmarks:
    """A synthetic track from ``peaks``, a list of real tracks' (frames,
    bins) (:func:`real_peaks`)."""
    chunk = int(chunk_seconds / params.FRAME_SECONDS)
    top = params.BIN_HI - params.BIN_LO - 1
    ts, fs = [], []
    for c in range(chunks):
        t, f = peaks[rng.integers(len(peaks))]
        a = rng.integers(0, max(1, t.max() - chunk))
        sel = (t >= a) & (t < a + chunk)
        ff = f[sel] if rng.random() < 0.5 else top - f[sel]
        ff = ff + int(rng.integers(-24, 25))
        ok = (ff > 0) & (ff < top)
        ts.append(chunk - 1 - (t[sel][ok] - a) + c * chunk)
        fs.append(ff[ok])
    t, f = np.concatenate(ts), np.concatenate(fs)
    packed = np.sort(fp.pack_peaks(t, f, rng.integers(0, 16, t.size)))
    return fp.Landmarks(*fp.pair_peaks(packed), chunks * chunk, packed)
