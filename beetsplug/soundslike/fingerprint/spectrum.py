"""Stage 1: audio to the analysis rate, and its log spectrogram.

Everything is analysed at 8 kHz mono (:data:`.params.ANALYSIS_RATE`): the
plugin's 16 kHz audio is decimated by a windowed-sinc (Kaiser) polyphase
filter; rates that are not a multiple of 8 kHz are resampled in the
frequency domain. The spectrogram has 1024-sample Hann frames (128 ms,
7.8 Hz bins) every 256 samples (32 ms), log power, band bins only
(250 to 3500 Hz, the band a telephone keeps). Long frames resolve the
notes of tonal music sharply, which keeps peaks put under additive noise;
32 ms frames are fine enough to place a clip to well under a second.

Only numpy is used (no scipy: importing ``scipy.signal`` or
``scipy.ndimage`` alone costs ``beet identify`` most of a second); the
filters below do what their scipy namesakes do.
"""

from __future__ import annotations

import numpy as np

from .params import ANALYSIS_RATE, BIN_HI, BIN_LO, HOP, LOG_FLOOR, N_FFT


def to_analysis_rate(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float32 at :data:`.params.ANALYSIS_RATE`.

    Stereo input (frames x channels) is averaged to mono.
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    sample_rate = int(sample_rate)
    if sample_rate != ANALYSIS_RATE:
        if sample_rate % ANALYSIS_RATE == 0:
            x = _decimate(x, sample_rate // ANALYSIS_RATE)
        else:
            x = resample_fft(x, int(round(x.size * ANALYSIS_RATE / sample_rate)))
    return x


def _decimate(x: np.ndarray, m: int) -> np.ndarray:
    """Low-pass (windowed sinc, Kaiser beta 5, 10 zero crossings a side, as
    ``scipy.signal.resample_poly`` designs it) and keep every ``m``-th sample."""
    half = 10 * m
    n = np.arange(-half, half + 1)
    h = (np.sinc(n / m) * np.kaiser(n.size, 5.0)).astype(np.float64)
    h = (h / h.sum()).astype(np.float32)
    n_out = (x.size + m - 1) // m
    xp = np.concatenate([np.zeros(half, np.float32), x, np.zeros(half + m, np.float32)])
    # Tap j reads every m-th sample from j on: one of m contiguous phases
    # of the signal, from sample j // m. Taps are added in order, each
    # product rounded to float32 first: the same sums, bit for bit, as
    # the strided loop, in under half its time.
    phases = [np.ascontiguousarray(xp[r::m]) for r in range(m)]
    y = np.zeros(n_out, np.float32)
    product = np.empty(n_out, np.float32)
    for j in range(h.size):
        q = j // m
        np.multiply(phases[j % m][q: q + n_out], h[j], out=product)
        y += product
    return y


def resample_fft(x: np.ndarray, n_out: int) -> np.ndarray:
    """``x`` resampled to ``n_out`` samples in the frequency domain (what
    ``scipy.signal.resample`` does), float32."""
    x = np.asarray(x, np.float32)
    if n_out == x.size or x.size == 0:
        return x.copy()
    spec = np.fft.rfft(x)
    k = min(spec.size, n_out // 2 + 1)
    out = np.zeros(n_out // 2 + 1, spec.dtype)
    out[:k] = spec[:k]
    if n_out < x.size and n_out % 2 == 0:
        out[n_out // 2] = out[n_out // 2].real  # fold the new Nyquist bin
    return (np.fft.irfft(out, n_out) * (n_out / x.size)).astype(np.float32)


def max_filter(a: np.ndarray, half_t: int, half_f: int) -> np.ndarray:
    """Maximum over a (2*half_t+1, 2*half_f+1) box, edges repeated (the
    ``mode="nearest"`` of ``scipy.ndimage.maximum_filter``)."""
    p = np.pad(a, ((half_t, half_t), (half_f, half_f)), mode="edge")
    p = _running_max(p, 2 * half_t + 1, axis=0)
    return _running_max(p, 2 * half_f + 1, axis=1)


def _running_max(a: np.ndarray, width: int, axis: int) -> np.ndarray:
    """Max over windows of ``width`` along ``axis`` (valid part only), by
    doubling: O(log width) passes."""
    a = np.moveaxis(a, axis, 0)
    out_len = a.shape[0] - width + 1
    m, span = a, 1
    while span * 2 <= width:
        m = np.maximum(m[:-span], m[span:])
        span *= 2
    # m[i] = max(a[i:i+span]); cover the rest with a shifted copy.
    res = np.maximum(m[:out_len], m[width - span: width - span + out_len])
    return np.moveaxis(res, 0, axis)


def uniform_filter(a: np.ndarray, size: tuple) -> np.ndarray:
    """Mean over a ``size`` box, edges repeated (``scipy.ndimage.uniform_filter``
    with ``mode="nearest"``), by running sums in float64."""
    out = np.asarray(a, np.float64)
    for axis, w in enumerate(size):
        if w == 1:
            continue  # the mean of one value is the value: no running sum
        lo, hi = w // 2, (w - 1) // 2
        pad = [(0, 0), (0, 0)]
        pad[axis] = (lo + 1, hi)
        c = np.cumsum(np.pad(out, pad, mode="edge"), axis=axis)
        n = out.shape[axis]
        if axis == 0:
            out = (c[w:w + n] - c[:n]) / w
        else:
            out = (c[:, w:w + n] - c[:, :n]) / w
    return out.astype(np.float32)


_WINDOW = np.hanning(N_FFT).astype(np.float32)


def log_spectrogram(x: np.ndarray, start: int = 0) -> np.ndarray:
    """Log power of frames starting at ``start, start+HOP, ...``, band bins only.

    Shape (frames, BIN_HI - BIN_LO), float32.
    """
    x = x[start:]
    n = 1 + (len(x) - N_FFT) // HOP if len(x) >= N_FFT else 0
    if n <= 0:
        return np.zeros((0, BIN_HI - BIN_LO), np.float32)
    frames = np.lib.stride_tricks.as_strided(
        x, shape=(n, N_FFT), strides=(x.strides[0] * HOP, x.strides[0]), writeable=False
    )
    spec = np.fft.rfft(frames * _WINDOW, axis=1)[:, BIN_LO:BIN_HI]
    # Real and imaginary parts side by side, squared in float32 in one
    # contiguous pass (taking .real and .imag apart read the spectrum
    # twice with a stride): the same numbers, bit for bit.
    parts = spec.view(spec.real.dtype).astype(np.float32)
    parts *= parts
    return np.log(parts[:, 0::2] + parts[:, 1::2] + LOG_FLOOR).astype(np.float32)

