"""Decode any audio file to mono float32 samples at a fixed rate.

FFmpeg's libraries (through PyAV) do the decoding and resampling: they
read every format beets imports (mp3, m4a/AAC, flac, ogg, opus, wav, ...)
at any sample rate and channel count. They run in decoding processes
kept running (:mod:`.decoder`), so a broken file can crash or hang only
such a process, never beets, and no file pays for a process start. Every
failure is raised as :class:`AudioError` with a one-line reason meant for
the user.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .decoder import POOL, DecodeFailure

#: Rate every model and fingerprint in the plugin works at.
SAMPLE_RATE = 16000

#: Peak level under which a clip or track counts as silence.
SILENCE_PEAK = 1e-4

#: Seconds of wall clock allowed per minute of decoded audio, plus a fixed
#: allowance: a decoder that takes longer is stuck, not slow.
_TIMEOUT_FIXED_S = 60.0


class AudioError(Exception):
    """A file that cannot be turned into usable samples.

    The message is a short reason ("no audio stream", "silent", ...) that
    callers print after the path, on one line.
    """


@dataclass
class Audio:
    """Decoded mono samples and where they came from."""

    samples: np.ndarray
    sample_rate: int
    #: Seconds of the whole file, which may be longer than ``samples``
    #: when decoding was capped (unless decoded with ``probe=False``: then
    #: only as far as was read).
    duration: float
    #: Frames that would not decode were skipped (as ffmpeg skips them).
    damaged: bool = False

    @property
    def seconds(self) -> float:
        return len(self.samples) / float(self.sample_rate)


def decode(
    path: str | os.PathLike | bytes,
    sample_rate: int = SAMPLE_RATE,
    max_seconds: float | None = None,
    start: float = 0.0,
    probe: bool = True,
) -> Audio:
    """Decode ``path`` to mono float32 samples at ``sample_rate``.

    ``start`` and ``max_seconds`` read only a stretch of the file, which
    keeps a three-hour recording from filling memory. ``probe=False``
    leaves the whole file's duration unread (the container's header) when
    the caller only needs the samples. Raises
    :class:`AudioError` for a missing, empty, unreadable or silent file.
    """
    request = {"path": _readable(path), "start": start, "max_seconds": max_seconds,
               "probe": probe}
    samples, answer = _run(request, None, sample_rate, _allowance(max_seconds))
    duration = answer.get("duration")
    if duration is None or duration < start + len(samples) / sample_rate:
        duration = start + len(samples) / sample_rate
    return Audio(samples=samples, sample_rate=sample_rate, duration=duration,
                 damaged=bool(answer.get("damaged")))


def decode_bytes(
    data: bytes, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None
) -> Audio:
    """Decode an in-memory upload; at most ``max_seconds`` are decoded, so
    a small file that expands to hours of audio cannot fill memory. The
    bytes can be sought in, so an MP4 whose index sits at its end (iPhone
    recordings) reads too."""
    if not data:
        raise AudioError("empty upload")
    request = {"size": len(data), "max_seconds": max_seconds}
    samples, _ = _run(request, data, sample_rate, _TIMEOUT_FIXED_S)
    return Audio(samples, sample_rate, len(samples) / float(sample_rate))


def _readable(path: str | os.PathLike | bytes) -> str:
    """``path`` as the decoding process is to open it, or an
    :class:`AudioError` for a missing, folder or empty file."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    # Absolute: a relative name such as "concat:a.mp3" would read as one of
    # FFmpeg's protocols, not as the file.
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise AudioError("file not found")
    if os.path.isdir(path):
        raise AudioError("is a folder, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioError("empty file (0 bytes)")
    return path


def _allowance(max_seconds: float | None) -> float:
    """Seconds a decode of at most ``max_seconds`` (None: a whole file, up
    to four hours) may take before its process is killed."""
    budget = max_seconds if max_seconds is not None else 4 * 3600.0
    return _TIMEOUT_FIXED_S + budget / 60.0 * 5.0


def warm_up() -> None:
    """Have a decoding process ready before the first file (it starts on
    another core while the caller does other work)."""
    POOL.warm_up()


def _run(request: dict, data: bytes | None, sample_rate: int, timeout: float):
    """Samples and the answer's fields (``duration``, None unless probed;
    ``damaged``) from a decoding process; every failure is an
    :class:`AudioError` with a short reason."""
    try:
        samples, answer = POOL.decode(dict(request, rate=sample_rate), data, timeout)
    except DecodeFailure as exc:
        raise AudioError(str(exc))
    if samples.size == 0:
        raise AudioError("file holds no audio samples")
    np.nan_to_num(samples, copy=False)
    return samples, answer


def is_silent(samples: np.ndarray) -> bool:
    """True when nothing in ``samples`` rises above digital silence."""
    return samples.size == 0 or float(np.max(np.abs(samples))) < SILENCE_PEAK


def decode_windows(
    path: str | os.PathLike | bytes,
    windows: list[tuple[int, int]],
    sample_rate: int = SAMPLE_RATE,
) -> list[np.ndarray]:
    """The samples ``[start, start + count)`` of each of ``windows``, the
    same as slices of the whole decode at ``sample_rate``, for a fraction
    of its cost: the file is read from its start with every sample
    counted, but only the windows are resampled and sent, and in MP3, FLAC
    and PCM the packets far from any window are counted, not decoded.
    Raises :class:`AudioError`; a file shorter than the windows (changed
    since they were chosen) gives an error too."""
    request = {"path": _readable(path), "windows": [[int(a), int(n)] for a, n in windows]}
    samples, _ = _run(request, None, sample_rate, _allowance(None))
    bounds = np.cumsum([0] + [n for _, n in windows])
    if len(samples) != bounds[-1]:
        raise AudioError("the file changed while it was read")
    return [samples[bounds[i]:bounds[i + 1]] for i in range(len(windows))]


def pick_excerpts(
    samples: np.ndarray,
    count: int,
    seconds: float,
    sample_rate: int = SAMPLE_RATE,
) -> list[np.ndarray]:
    """Up to ``count`` windows of ``seconds`` that describe a track's sound
    (see :func:`excerpt_windows`)."""
    return [
        np.asarray(samples[start:start + length], dtype=np.float32)
        for start, length in excerpt_windows(samples, count, seconds, sample_rate)
    ]


def excerpt_windows(
    samples: np.ndarray,
    count: int,
    seconds: float,
    sample_rate: int = SAMPLE_RATE,
) -> list[tuple[int, int]]:
    """Up to ``count`` windows (start, length in samples) of ``seconds``
    that describe a track's sound.

    Windows are centred at even spacing over the middle of the track (the
    first and last 10% are intros, fades and applause), and each one slides
    to the loudest nearby spot so a quiet break does not stand for the
    whole track. A track shorter than one window gives itself, whole.
    """
    length = int(round(seconds * sample_rate))
    total = len(samples)
    if total <= length:
        return [(0, total)]
    count = max(1, min(count, total // length))

    margin = int(total * 0.1)
    lo, hi = margin, total - margin - length
    if hi <= lo:
        lo, hi = 0, total - length
    hop = max(1, sample_rate // 2)
    energy = _frame_energy(samples, hop)

    windows = []
    slot = (hi - lo) / count
    for k in range(count):
        start_lo = int(lo + k * slot)
        start_hi = int(lo + (k + 1) * slot) if count > 1 else hi
        start = _loudest_start(energy, hop, length, start_lo, max(start_lo, start_hi))
        windows.append((start, length))
    return windows


def _frame_energy(samples: np.ndarray, hop: int) -> np.ndarray:
    frames = len(samples) // hop
    if frames == 0:
        return np.zeros(1, dtype=np.float64)
    blocks = samples[: frames * hop].reshape(frames, hop).astype(np.float64)
    return np.einsum("ij,ij->i", blocks, blocks)


def _loudest_start(
    energy: np.ndarray, hop: int, length: int, start_lo: int, start_hi: int
) -> int:
    """Start sample in [start_lo, start_hi] whose window holds most energy,
    on a grid of ``hop`` samples."""
    span = max(1, length // hop)
    cumulative = np.concatenate([[0.0], np.cumsum(energy)])
    first = start_lo // hop
    last = max(first, start_hi // hop)
    best, best_start = -1.0, start_lo
    for frame in range(first, last + 1):
        end = min(frame + span, len(energy))
        total = cumulative[end] - cumulative[min(frame, len(energy))]
        if total > best:
            best, best_start = total, frame * hop
    return min(max(best_start, start_lo), start_hi)
