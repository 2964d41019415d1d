"""Decode any audio file to mono float32 samples at a fixed rate.

ffmpeg does the decoding and resampling: it reads every format beets
imports (mp3, m4a/AAC, flac, ogg, opus, wav, ...) at any sample rate and
channel count, streams its output, and runs in a separate process, so a
broken file can crash or hang only ffmpeg, never beets. Every failure is
raised as :class:`AudioError` with a one-line reason meant for the user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

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

    @property
    def seconds(self) -> float:
        return len(self.samples) / float(self.sample_rate)


def ffmpeg_binary() -> str:
    """Path of the ffmpeg executable, or an :class:`AudioError` saying how to
    install it."""
    path = shutil.which("ffmpeg")
    if not path:
        raise AudioError(
            "ffmpeg is not installed (apt install ffmpeg, brew install ffmpeg)"
        )
    return path


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
    skips asking ffprobe for the whole file's duration (a second process,
    about as slow as decoding a few seconds) when the caller only needs
    the samples. Raises
    :class:`AudioError` for a missing, empty, unreadable or silent file.
    """
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError("file not found")
    if os.path.isdir(path):
        raise AudioError("is a folder, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioError("empty file (0 bytes)")

    seek = ["-ss", f"{start:.3f}"] if start > 0 else []
    budget = max_seconds if max_seconds is not None else 4 * 3600.0
    samples = run_ffmpeg(
        seek + ["-i", path], sample_rate, max_seconds,
        timeout=_TIMEOUT_FIXED_S + budget / 60.0 * 5.0,
    )

    duration = probe_duration(path) if probe else None
    if duration is None or duration < start + len(samples) / sample_rate:
        duration = start + len(samples) / sample_rate
    return Audio(samples=samples, sample_rate=sample_rate, duration=duration)


def decode_bytes(
    data: bytes, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None
) -> Audio:
    """Decode an in-memory upload by piping it through ffmpeg; at most
    ``max_seconds`` are decoded, so a small file that expands to hours of
    audio cannot fill memory."""
    if not data:
        raise AudioError("empty upload")
    samples = run_ffmpeg(
        ["-i", "pipe:0"], sample_rate, max_seconds, timeout=_TIMEOUT_FIXED_S, data=data
    )
    return Audio(samples, sample_rate, len(samples) / float(sample_rate))


def decode_seekable_bytes(
    data: bytes, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None
) -> Audio:
    """Decode bytes that ffmpeg must seek in, which a pipe cannot offer (an
    MP4 whose index sits at the end: iPhone recordings). On Linux they stay
    in memory, in an anonymous file handed to ffmpeg; elsewhere they go
    through a private temporary file (mode 0600) removed at once."""
    if not data:
        raise AudioError("empty upload")
    timeout = _TIMEOUT_FIXED_S
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("soundslike-clip", os.MFD_CLOEXEC)
        try:
            with os.fdopen(os.dup(fd), "wb") as handle:
                handle.write(data)
            samples = run_ffmpeg(["-i", f"/dev/fd/{fd}"], sample_rate, max_seconds,
                                 timeout=timeout, pass_fds=(fd,))
        finally:
            os.close(fd)
    else:  # pragma: no cover - macOS, BSD
        import tempfile

        with tempfile.TemporaryDirectory(prefix="soundslike-clip-") as folder:
            path = os.path.join(folder, "clip.mp4")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            samples = run_ffmpeg(["-i", path], sample_rate, max_seconds, timeout=timeout)
    return Audio(samples, sample_rate, len(samples) / float(sample_rate))


def run_ffmpeg(
    source: list[str],
    sample_rate: int,
    max_seconds: float | None,
    timeout: float,
    data: bytes | None = None,
    pass_fds: tuple[int, ...] = (),
) -> np.ndarray:
    """Run ffmpeg on ``source`` (its input arguments: a file, or ``pipe:0``
    fed with ``data``) and return the first audio stream as mono float32
    at ``sample_rate``, at most ``max_seconds`` of it. Every failure is an
    :class:`AudioError` with a short reason."""
    cmd = [ffmpeg_binary(), "-nostdin", "-hide_banner", "-v", "error", *source,
           "-map", "0:a:0", "-vn", "-sn", "-dn"]
    if max_seconds is not None:
        cmd += ["-t", f"{max_seconds:.3f}"]
    cmd += ["-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "pipe:1"]
    try:
        proc = subprocess.run(
            cmd, input=data, capture_output=True, timeout=timeout, check=False,
            pass_fds=pass_fds,
        )
    except subprocess.TimeoutExpired:
        raise AudioError(f"decoding took longer than {timeout:.0f} s")
    except OSError as exc:
        raise AudioError(f"cannot run ffmpeg: {exc.strerror or exc}")
    samples = np.frombuffer(proc.stdout, dtype="<f4")
    if proc.returncode != 0 or samples.size == 0:
        raise AudioError(_ffmpeg_reason(proc.stderr, proc.returncode))
    samples = samples.astype(np.float32, copy=True)
    np.nan_to_num(samples, copy=False)
    return samples


def probe_duration(path: str) -> float | None:
    """Container duration in seconds from ffprobe, or None if unknown."""
    ffprobe = shutil.which("ffprobe")
    if not ffprobe:
        return None
    try:
        out = subprocess.run(
            [ffprobe, "-v", "error", "-show_entries", "format=duration",
             "-of", "default=noprint_wrappers=1:nokey=1", path],
            capture_output=True, text=True, timeout=30, check=False,
        )
        return float(out.stdout.strip())
    except (ValueError, subprocess.TimeoutExpired, OSError):
        return None


def is_silent(samples: np.ndarray) -> bool:
    """True when nothing in ``samples`` rises above digital silence."""
    return samples.size == 0 or float(np.max(np.abs(samples))) < SILENCE_PEAK


#: The reason for data ffmpeg cannot make sense of (docs/troubleshooting.md).
UNREADABLE = "not a readable audio file (invalid or unknown data)"
#: How ffmpeg words damaged or unknown data (it may still exit with 0).
DAMAGED = (
    "invalid data found", "cannot determine format", "could not find codec parameters",
    "header missing", "error marking filters", "invalid argument", "end of file",
    "moov atom not found", "partial file",
)


def _ffmpeg_reason(stderr: bytes, returncode: int) -> str:
    """Turn ffmpeg's complaint into one of the documented reasons. ffmpeg
    words the same damage differently by format and version ("Invalid
    data found", "Invalid argument", "End of file", "moov atom not
    found", ...): whatever it says that is not a known cause means the
    file is not audio ffmpeg can read."""
    low = stderr.decode("utf-8", "replace").lower()
    if "does not contain any stream" in low or "matches no streams" in low:
        return "no audio stream in file"
    if ("decoder" in low and "not found" in low) or "unsupported codec" in low:
        return "unsupported audio codec"
    if "permission denied" in low:
        return "permission denied"
    if "no such file or directory" in low:
        return "file not found"
    if "input/output error" in low:
        return "cannot read the file (input/output error): check the disk"
    if any(words in low for words in DAMAGED):
        return UNREADABLE
    if returncode == 0:
        return "file holds no audio samples"
    return UNREADABLE


def pick_excerpts(
    samples: np.ndarray,
    count: int,
    seconds: float,
    sample_rate: int = SAMPLE_RATE,
) -> list[np.ndarray]:
    """Up to ``count`` windows of ``seconds`` that describe a track's sound.

    Windows are centred at even spacing over the middle of the track (the
    first and last 10% are intros, fades and applause), and each one slides
    to the loudest nearby spot so a quiet break does not stand for the
    whole track. A track shorter than one window gives itself, whole.
    """
    length = int(round(seconds * sample_rate))
    total = len(samples)
    if total <= length:
        return [np.asarray(samples, dtype=np.float32)]
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
        windows.append(np.asarray(samples[start:start + length], dtype=np.float32))
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
